"""
Watches, the client's side: L{Watcher}, what L{RaftKVClient.watch} returns.

A watcher opens a L{commands.Watch} on one node's connection (any node:
followers serve watches too), hands each batch of events to C{onEvents}
(the node sends the next batch only once C{onEvents} is done: if it returns
a Deferred, once that fires), and keeps C{nextRevision}, the revision every
change below which has been delivered.  When the node is lost (connection
lost, node killed, the node dropped the watch) it watches again on the next
node from C{nextRevision}: nothing is lost, nothing repeated.  A node
refusing with COMPACTED (its history no longer holds C{nextRevision}) is
not the end while another node may still hold it: the watcher fails with
L{Compacted} only once every node has refused so (or could not be reached)
since it last had a watch open.

    def show(events):
        for e in events:
            print(e.type, e.key, e.value, e.mod_revision)

    watcher = client.watch("config/", prefix=True, onEvents=show)
    ...
    await watcher.cancel()      # or: await watcher.done (a failure ends it)
"""

import itertools

from twisted.internet import defer, task
from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from twisted_raft.connections import alive
from twisted_raft.rpc.commands import (
    COMPACTED,
    CancelWatch,
    Compacted,
    InvalidArgument,
    PermissionDenied,
    Unavailable,
    ValueTooLarge,
    Watch,
)
from twisted_raft.rpc.watchwire import decodeEvents

_FINAL = (InvalidArgument, ValueTooLarge, PermissionDenied)
"""A refusal that no other node would answer differently."""


def resumeAfter(current, events, nextRevision):
    """
    The resume rule, for a batch of C{events} a node sent with its
    C{nextRevision} to a watch that has delivered everything below
    C{current} (C{None}: nothing yet): the events not yet delivered (a node
    resumed on may send again what the last one did), and where the watch
    resumes from after them -- never back.  (The sim's watchers,
    L{twisted_raft.testing.watchchecks}, follow it too.)
    """
    floor = current or 0
    fresh = [e for e in events if e.mod_revision >= floor]
    if fresh:
        nextRevision = max(nextRevision, fresh[-1].mod_revision + 1)
    return fresh, (nextRevision if nextRevision > floor else current)


class _Session:
    """One L{commands.Watch} on one connection: the handler of its calls."""

    def __init__(self, watcher, proto, watchId):
        self.watcher = watcher
        self.proto = proto
        self.watchId = watchId
        self.ended = Deferred()
        self.partial = []  # the first parts of a revision split over calls
        self.active = True

    def watchEvents(self, events, nextRevision, continues):
        if not self.active:
            raise InvalidArgument(f"watch {self.watchId} has ended")
        return self.watcher._received(self, events, nextRevision, continues)

    def watchCancelled(self, code, compactRevision, description):
        self.end(("cancelled", code, compactRevision, description))

    def end(self, why):
        if self.active:
            self.active = False
            remove = getattr(self.proto, "removeWatchHandler", None)
            if remove is not None:
                remove(self.watchId, self)
            self.ended.callback(why)


class Watcher:
    """
    A watch of C{key} (or every key starting with it, with C{prefix}) that
    resumes on another node by itself.

    @ivar nextRevision: every change below this revision has been handed
        to C{onEvents}; where the watch resumes.  C{None} until a node
        first said where "now" (the default start) is.
    @ivar address: the node the watch is open on, or C{None} between nodes.
    @ivar startRevision: the revision the watch started from, once a node
        first accepted it (L{whenStarted}).
    @ivar done: a Deferred firing with C{None} once L{cancel}led, or
        failing with L{Compacted} (no node holds C{nextRevision} any more:
        read the keys with a range and watch from after it),
        INVALID_ARGUMENT and the like, L{Unavailable} if the client was
        closed, or whatever C{onEvents} raised.
    @ivar resumes: how many times the watch moved to another node.
    """

    log = Logger()

    def __init__(self, pool, addresses, reactor, key, prefix, startRevision, onEvents,
                 attemptTimeout, first=0, ids=None, retryInitialDelay=0.05,
                 retryMaxDelay=0.5):
        self._pool = pool
        if callable(addresses):
            self._currentAddresses = addresses
        else:
            fixed = list(addresses)
            self._currentAddresses = lambda: fixed
        self._reactor = reactor
        self.key = key
        self.prefix = bool(prefix)
        self._start = startRevision
        self.nextRevision = startRevision
        self._onEvents = onEvents
        self._attemptTimeout = attemptTimeout
        self._next = first
        self._ids = ids if ids is not None else itertools.count(1)
        self._retryInitialDelay = retryInitialDelay
        self._retryMaxDelay = retryMaxDelay
        self.address = None
        self.resumes = 0
        self.startRevision = None
        self._startWaiters = []
        self._ended = None  # the Failure the watch ended with, if it failed
        self._stopping = False
        self._session = None
        self._waiting = None  # the Deferred the loop waits on, cancelled by cancel()
        self._delivering = None  # the last onEvents' Deferred, until it fires
        self._failure = None  # what onEvents raised
        self.done = Deferred.fromCoroutine(self._run())

    def whenStarted(self):
        """
        A Deferred firing with the revision the watch started from once a
        node first accepted it, or failing as L{done} does if it ended
        before.
        """
        if self.startRevision is not None:
            return succeed(self.startRevision)
        if self._ended is not None:
            return fail(self._ended)
        d = Deferred()
        self._startWaiters.append(d)
        return d

    def _fireStarted(self, result):
        waiters, self._startWaiters = self._startWaiters, []
        for d in waiters:
            if isinstance(result, Failure):
                d.errback(result)
            else:
                d.callback(result)

    def cancel(self):
        """
        End the watch: no events are delivered after this returns (but one
        C{onEvents} already running finishes).  @return: L{done}.
        """
        if not self._stopping:
            self._stopping = True
            if self._session is not None:
                self._session.end(("stopped",))
            elif self._waiting is not None:
                self._waiting.cancel()
        return self.done

    # -- events ---------------------------------------------------------------

    def _received(self, session, data, nextRevision, continues):
        if self._stopping:
            raise InvalidArgument("the watch was cancelled")
        try:
            events = decodeEvents(data)
        except ValueError as e:
            session.end(("broken", str(e)))
            raise InvalidArgument(str(e)) from None
        if continues:
            session.partial.extend(events)
            return None
        if session.partial:
            events = session.partial + events
            session.partial = []
        fresh, self.nextRevision = resumeAfter(self.nextRevision, events, nextRevision)
        if not fresh:
            return None
        d = defer.maybeDeferred(self._onEvents, fresh)
        delivering = self._delivering = Deferred()

        def delivered(result):
            if self._delivering is delivering:
                self._delivering = None
            delivering.callback(None)
            if isinstance(result, Failure):
                self._failure = result
                session.end(("failed",))
                raise InvalidArgument("the client's event handler failed")
            return None

        return d.addBoth(delivered)

    # -- the loop -------------------------------------------------------------

    async def _wait(self, d):
        """Await C{d}; L{cancel} cancels it."""
        self._waiting = d
        try:
            return await d
        finally:
            self._waiting = None

    async def _run(self):
        refusals = {}  # address -> compact revision, or None if unreachable
        rounds = 0
        try:
            while not self._stopping:
                if self._delivering is not None:
                    await self._delivering
                if self._pool.closed:
                    raise Unavailable(f"watch {self.key!r}: the client is closed")
                # the client's addresses as they are now (setAddresses)
                addresses = self._currentAddresses()
                n = len(addresses)
                for gone in [a for a in refusals if a not in addresses]:
                    del refusals[gone]
                address = addresses[self._next % n]
                self._next += 1
                try:
                    session, answer = await self._open(address)
                except Compacted as e:
                    refusals[address] = e.compact_revision
                    self._checkRefusals(refusals)
                    continue
                except _FINAL:
                    raise
                except CancelledError:
                    if self._stopping:
                        break
                    raise
                except Exception as e:
                    if self._pool.closed:
                        raise Unavailable(f"watch {self.key!r}: the client is closed") from None
                    self.log.debug("watch {key!r} on {address}: {e}", key=self.key,
                                   address=address, e=e)
                    refusals[address] = None
                    self._checkRefusals(refusals)
                    if len(refusals) >= n:
                        rounds += 1
                        refusals = {a: r for a, r in refusals.items() if r is not None}
                        delay = min(self._retryMaxDelay,
                                    self._retryInitialDelay * 2 ** min(rounds - 1, 16))
                        try:
                            await self._wait(task.deferLater(self._reactor, delay))
                        except CancelledError:
                            break
                    continue
                refusals.clear()
                rounds = 0
                if self._stopping:
                    session.end(("stopped",))
                else:
                    self._session = session
                    self.address = address
                    if self.nextRevision is None:
                        self.nextRevision = answer["start_revision"]
                    if self.startRevision is None:
                        self.startRevision = answer["start_revision"]
                        self._fireStarted(self.startRevision)
                whenLost = getattr(session.proto, "whenLost", None)
                if whenLost is not None:
                    whenLost().addCallback(lambda _, s=session: s.end(("lost",)))
                why = await session.ended
                self._session = None
                self.address = None
                if why[0] == "stopped":
                    await self._cancelRemote(session)
                    break
                if why[0] == "failed":
                    self._failure.raiseException()
                if why[0] == "cancelled" and why[1] == COMPACTED.decode("ascii"):
                    if why[2] is not None:
                        refusals[address] = why[2]
                        self._checkRefusals(refusals)
                self.resumes += 1
                self.log.info(
                    "watch {key!r} lost node {address} ({why}); resuming from revision"
                    " {revision}", key=self.key, address=address, why=why[0],
                    revision=self.nextRevision,
                )
        except BaseException:
            self._ended = Failure()
            self._fireStarted(self._ended)
            raise
        if self.startRevision is None:
            self._ended = Failure(
                Unavailable(f"watch {self.key!r} was cancelled before it started")
            )
            self._fireStarted(self._ended)
        return None

    def _checkRefusals(self, refusals):
        """@raise Compacted: every node refused as compacted, or could not be reached."""
        compacted = [r for r in refusals.values() if r is not None]
        if compacted and len(refusals) >= len(self._currentAddresses()):
            raise Compacted(min(compacted))

    async def _open(self, address):
        """
        Open the watch on C{address}.  @return: C{(session, answer)}.
        """
        proto = await self._wait(self._pool.get(address))
        if not alive(proto):
            self._pool.drop(address, proto)
            raise Unavailable("connection lost before sending")
        watchId = next(self._ids)
        session = _Session(self, proto, watchId)
        proto.addWatchHandler(watchId, session)
        kwargs = {"watch_id": watchId, "key": self.key}
        if self.prefix:
            kwargs["prefix"] = True
        start = self.nextRevision
        if start is not None:
            kwargs["start_revision"] = start
        try:
            answer = await self._wait(
                proto.callRemote(Watch, **kwargs).addTimeout(self._attemptTimeout, self._reactor)
            )
        except BaseException as e:
            session.end(("failed-open",))
            if isinstance(e, defer.TimeoutError):
                self._pool.drop(address, proto, abort=True)
            raise
        return session, answer

    async def _cancelRemote(self, session):
        """Tell the node (best effort, briefly) that the watch is over."""
        if not alive(session.proto):
            return
        try:
            await session.proto.callRemote(
                CancelWatch, watch_id=session.watchId,
            ).addTimeout(self._attemptTimeout, self._reactor)
        except Exception:
            pass
