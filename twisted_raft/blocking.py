"""
A blocking client for raftkv: L{BlockingClient}, for programs that are not
Twisted programs (scripts, WSGI workers, task queues, threads).

    from twisted_raft.client import BlockingClient

    with BlockingClient(["127.0.0.1:8001", "127.0.0.1:8002", "127.0.0.1:8003"]) as client:
        revision = client.put("hello", b"world")
        client.get("hello")                       # b"world"
        with client.watch("app/", prefix=True) as events:
            for event in events:                  # Event(type, key, value, ...)
                ...

It is the Deferred client, L{twisted_raft.client.RaftKVClient}, run on a
reactor of its own in a thread of its own (L{twisted_raft.reactorthread}):
every call is handed to that thread (C{callFromThread}), runs there exactly
as it would in a Twisted program, and the calling thread waits for the
answer.  So the guarantees are the Deferred client's, from one place:
exactly-once sessions, retries with leader discovery, linearizable reads,
TLS, the same exceptions (L{Unavailable}, L{OutcomeUnknown},
L{NotProposed}, L{InvalidArgument}, L{ValueTooLarge}, L{Compacted}, ...).
Any number of threads may share one client and its connections: nothing of
the client is touched outside its reactor's thread.

Why our own reactor thread and not crochet: crochet runs the process's
global reactor, which is installed once per process and cannot be
restarted, so a program that already uses Twisted (or pytest-twisted)
would share or fight over it, and a client could not be made again after
a C{close()} that stopped it.  A private reactor instance per client
(epoll, or select off Linux) has none of that: the global
C{twisted.internet.reactor} is never imported, several clients and a
Twisted program coexist, and C{close()} stops the reactor and joins its
thread, leaving nothing behind.  It is a few dozen lines, tested here,
against one more dependency.

Timeouts.  Each operation is bounded by the client's C{timeout} (retries
included), as in the Deferred client, and fails as it does.  A call may
also pass C{timeout=} (seconds) to give up earlier: the operation is then
cancelled in the reactor thread, and the call raises L{OutcomeUnknown} for
a write that was started (it may or may not have been applied: read
before writing again), L{NotProposed} for one never started, and
L{Unavailable} for a read.  An answer that arrives as the time runs out is
returned, not thrown away.  (C{addMember} and C{promoteMember} keep their
C{timeout}: the seconds to wait for a learner to catch up.)
"""

import itertools
import threading
import weakref
from collections import deque

from twisted.internet.defer import CancelledError, Deferred

from twisted_raft.clientpath import OutcomeUnknown
from twisted_raft.connections import parseAddresses
from twisted_raft.kvclient import closePages, nextPage
from twisted_raft.memberclient import CATCH_UP_TIMEOUT
from twisted_raft.reactorthread import ReactorStopped, ReactorThread
from twisted_raft.rpc.commands import NotProposed, Unavailable

WATCH_QUEUE_BATCHES = 64
"""How many batches of events a L{BlockingWatch} holds for its reader, by
default, before it stops answering the node (a batch is at most about
256 KiB or 1,000 events, bar one revision larger than that)."""

_names = itertools.count(1)


def _abandoned(thread, client):
    """
    A L{BlockingClient} was collected unclosed: close its connections, stop
    its thread.  (A client with a watch still open is not collected: the
    watch, which the Deferred client holds, holds it.  Close watches.)
    """
    try:
        thread.submit(client.close)
    except Exception:  # stopped already: nothing to do
        return
    thread.stop(timeout=0)  # (collection may happen in any thread: never wait)


def _describe(what):
    """An operation's name in an error: C{what} as L{BlockingClient._call} takes it."""
    if isinstance(what, tuple):
        verb, key = what
        return f"{verb} {key!r}"
    return what


class _Call:
    """One blocking call as the reactor thread sees it."""

    __slots__ = ("deferred", "cancelled", "started")

    def __init__(self):
        self.deferred = None
        self.cancelled = False
        self.started = False


class BlockingClient:
    """
    A client of a raftkv cluster whose methods block and return values.

    @param addresses: as for L{RaftKVClient}: C{"host:port"} strings, or
        one comma-separated string.
    @param timeout: overall seconds per operation, retries included.
    @param options: any other keyword argument of L{RaftKVClient}
        (C{connectTimeout}, C{readAttemptTimeout}, C{sessions},
        C{writeAttemptTimeout}, C{clientId}, C{tls}, C{connect}) but
        C{reactor}: the client runs its own.
    @ivar clientId: the session's client id.
    @raise ValueError: an address is malformed, or none is given.
    """

    def __init__(self, addresses, timeout=5.0, **options):
        if "reactor" in options:
            raise TypeError("BlockingClient runs a reactor of its own: it takes no reactor=")
        from twisted_raft.client import RaftKVClient  # (client.py imports this module)

        parseAddresses(addresses)  # malformed: raise here, before a thread starts
        self.timeout = float(timeout)
        self._lock = threading.Lock()
        self._closed = False
        self._thread = ReactorThread(name=f"raftkv-reactor-{next(_names)}").start()
        # reactor thread only, from here on:
        self._watches = set()
        self._calls = set()
        try:
            self._client = self._thread.call(
                RaftKVClient, addresses, reactor=self._thread.reactor, timeout=timeout,
                **options,
            )
        except BaseException:
            self._thread.stop()
            raise
        self.clientId = self._client.clientId
        # a client dropped without close() must not keep its thread and
        # connections for the rest of the process
        # (not at exit: the daemon thread ends with the process, and a
        # program's own exit hooks may still use the client)
        self._finalizer = weakref.finalize(self, _abandoned, self._thread, self._client)
        self._finalizer.atexit = False

    def __repr__(self):
        state = "closed" if self._closed else "open"
        return f"<BlockingClient {self.clientId} ({state}) on {self._thread.name}>"

    # -- the calls -----------------------------------------------------------

    def _call(self, what, write, method, args, kwargs, timeout=None):
        """
        C{method(*args, **kwargs)} of the Deferred client, in the reactor
        thread; wait for its result (at most C{timeout} seconds if given).
        C{what} names the operation in errors: a string, or C{(verb, key)}
        (formatted only if an error needs it: this is every call's path).
        """
        if self._closed:
            raise Unavailable(f"{_describe(what)}: the client is closed")
        if self._thread.inThread():
            raise RuntimeError("a blocking call from the client's own reactor thread would "
                               "deadlock")
        call = _Call()
        try:
            pending = self._thread.submit(self._start, call, method, args, kwargs)
        except ReactorStopped:
            raise Unavailable(f"{_describe(what)}: the client is closed") from None
        try:
            return pending.result(timeout)
        except TimeoutError:
            if pending.done():
                # the answer came as the time ran out (or the operation
                # itself raised TimeoutError): that is the outcome
                return pending.result()
        except (ReactorStopped, CancelledError):
            if not self._closed:
                raise
            raise self._stopped(_describe(what), write, call) from None
        except KeyboardInterrupt:
            # the caller gives up (Ctrl-C): so does the operation
            self._cancelQuietly(call)
            raise
        # out of time: cancel it there, then take whatever it ended with (an
        # answer that came meanwhile is as good as any)
        self._cancelQuietly(call)
        try:
            return pending.result(self.timeout)
        except (CancelledError, ReactorStopped, TimeoutError):
            pass
        raise self._timedOut(_describe(what), write, call, timeout) from None

    def _start(self, call, method, args, kwargs):
        if call.cancelled:
            raise CancelledError()
        call.started = True
        d = method(*args, **kwargs)
        if not isinstance(d, Deferred):
            return d
        call.deferred = d
        self._calls.add(call)
        return d.addBoth(self._finished, call)

    def _finished(self, result, call):
        self._calls.discard(call)
        return result

    def _cancelQuietly(self, call):
        try:
            self._thread.submit(self._cancel, call)
        except ReactorStopped:
            pass

    @staticmethod
    def _cancel(call):
        call.cancelled = True
        if call.deferred is not None:
            call.deferred.cancel()

    @staticmethod
    def _timedOut(what, write, call, timeout):
        if not write:
            return Unavailable(f"{what}: no answer within {timeout:g}s (this call's timeout)")
        if not call.started:
            return NotProposed(f"{what}: not sent within {timeout:g}s (this call's timeout)")
        return OutcomeUnknown(
            f"outcome unknown: {what}: no answer within {timeout:g}s (this call's "
            "timeout); the write may or may not have been applied"
        )

    @staticmethod
    def _stopped(what, write, call):
        if write and call.started:
            return OutcomeUnknown(
                f"outcome unknown: {what}: the client was closed during the write; "
                "it may or may not have been applied"
            )
        return Unavailable(f"{what}: the client is closed")

    # -- key-value operations ----------------------------------------------------

    def put(self, key, value, prevKV=False, timeout=None):
        """
        Set C{key} to C{value} (bytes).

        @return: the revision; with C{prevKV}, a L{PutResponse}.
        """
        return self._call(("put", key), True, self._client.put, (key, value, prevKV), {},
                          timeout)

    def get(self, key, stale=False, timeout=None):
        """
        Read C{key}: its value (bytes), or C{None} if it does not exist.
        Linearizable unless C{stale}.
        """
        return self._call(("get", key), False, self._client.get, (key, stale), {}, timeout)

    def delete(self, key, end=None, prefix=False, prevKV=False, timeout=None):
        """
        Delete C{key} (with C{end} or C{prefix}: a range of keys).

        @return: C{(deleted, revision)}; with C{end}, C{prefix} or
            C{prevKV}, a L{DeleteResponse}.
        """
        return self._call(("delete", key), True, self._client.delete,
                          (key, end, prefix, prevKV), {}, timeout)

    def compareAndSet(self, key, expected, value, timeout=None):
        """
        Set C{key} to C{value} only if its value is C{expected} (C{None}:
        only if it does not exist).  @return: C{(succeeded, revision)}.
        """
        return self._call(("compareAndSet", key), True, self._client.compareAndSet,
                          (key, expected, value), {}, timeout)

    def range(self, key, end=None, prefix=False, limit=0, after=None, keysOnly=False,
              countOnly=False, stale=False, timeout=None):
        """One page of a range (see L{RaftKVClient.range}): a L{RangeResult}."""
        return self._call(("range", key), False, self._client.range,
                          (key, end, prefix, limit, after, keysOnly, countOnly, stale), {},
                          timeout)

    def rangeAll(self, key, end=None, prefix=False, limit=0, after=None, keysOnly=False,
                 stale=False, timeout=None):
        """Every page of a range together (see L{RaftKVClient.rangeAll})."""
        return self._call(("range", key), False, self._client.rangeAll,
                          (key, end, prefix, limit, after, keysOnly, stale), {}, timeout)

    def rangePages(self, key, end=None, prefix=False, limit=0, after=None, keysOnly=False,
                   stale=False, timeout=None):
        """
        Every page of a range, as an iterator of L{RangeResult}s (see
        L{RaftKVClient.rangePages}); C{timeout} bounds each page.
        """
        pages = self._call(("range", key), False, self._client.rangePages,
                           (key, end, prefix, limit, after, keysOnly, stale), {})
        return self._iteratePages(key, pages, timeout)

    def _iteratePages(self, key, pages, timeout):
        finished = False
        try:
            while True:
                page = self._call(("range", key), False, nextPage, (pages,), {}, timeout)
                if page is None:
                    finished = True
                    return
                yield page
        finally:
            # left early (break, an error): end the pages' generator there,
            # waiting no longer than an operation may
            if not finished and not self._closed and not self._thread.inThread():
                try:
                    self._thread.submit(closePages, pages).result(self.timeout)
                except Exception:
                    pass  # (an error ending it changes nothing for the caller)

    def txn(self, compare=(), success=(), failure=(), timeout=None):
        """A transaction (see L{RaftKVClient.txn}): a L{TxnResponse}."""
        return self._call("txn", True, self._client.txn, (compare, success, failure), {},
                          timeout)

    # -- status and membership ---------------------------------------------------

    def status(self, address=None, timeout=None):
        """The status of one node (the leader's if C{address} is C{None}): a dict."""
        return self._call("status", False, self._client.status, (address,), {}, timeout)

    def clusterStatus(self, timeout=None):
        """Every node's status: C{[(address, dict or None), ...]}."""
        return self._call("cluster status", False, self._client.clusterStatus, (), {}, timeout)

    def members(self, timeout=None):
        """The cluster's members: a L{Membership}."""
        return self._call("member list", False, self._client.members, (), {}, timeout)

    def addMember(self, nodeId, address, learner=False, timeout=CATCH_UP_TIMEOUT):
        """Add a member (see L{RaftKVClient.addMember}); C{timeout} is the
        catch-up wait.  @return: the revision of the last change."""
        return self._call(f"add member {nodeId}", True, self._client.addMember,
                          (nodeId, address, learner, timeout), {})

    def promoteMember(self, nodeId, timeout=CATCH_UP_TIMEOUT):
        """Promote a learner (see L{RaftKVClient.promoteMember}); C{timeout}
        is the catch-up wait.  @return: the change's revision."""
        return self._call(f"promote member {nodeId}", True, self._client.promoteMember,
                          (nodeId, timeout), {})

    def removeMember(self, nodeId, timeout=None):
        """Remove a member.  @return: the change's revision."""
        return self._call(f"remove member {nodeId}", True, self._client.removeMember,
                          (nodeId,), {}, timeout)

    def transferLeader(self, nodeId=0, timeout=None):
        """Hand leadership over (see L{RaftKVClient.transferLeader}).
        @return: the new leader's id."""
        return self._call("transfer leader", True, self._client.transferLeader, (nodeId,), {},
                          timeout)

    # -- the client's state --------------------------------------------------------

    @property
    def addresses(self):
        """The nodes' addresses (a copy)."""
        return self._call("addresses", False, lambda: list(self._client.addresses), (), {})

    @property
    def sequence(self):
        """The sequence number of the last write issued."""
        return self._call("sequence", False, lambda: self._client.sequence, (), {})

    def setAddresses(self, addresses):
        """Talk to C{addresses} from the next attempt on (see
        L{RaftKVClient.setAddresses})."""
        self._call("set addresses", False, self._client.setAddresses, (addresses,), {})

    # -- watches -------------------------------------------------------------------

    def watch(self, key, prefix=False, startRevision=None, maxBatches=WATCH_QUEUE_BATCHES):
        """
        Watch C{key} (with C{prefix}: every key starting with it) from
        C{startRevision} (C{None}: from now), on any node; it resumes on
        another node by itself, nothing lost or repeated.

        @return: a L{BlockingWatch}, an iterator of L{Event}s and a context
            manager; closing it cancels the watch.
        @raise InvalidArgument: a bad key or start revision.
        """
        watch = BlockingWatch(self, key, maxBatches)
        self._call(f"watch {key!r}", False, self._openWatch, (watch, key, prefix, startRevision),
                   {})
        return watch

    def _openWatch(self, watch, key, prefix, startRevision):
        watch._watcher = self._client.watch(key, prefix, startRevision, watch._onEvents)
        self._watches.add(watch)
        watch._watcher.done.addBoth(watch._ended)

    # -- closing ---------------------------------------------------------------

    def close(self):
        """
        Cancel every watch, fail the calls still waiting (with
        L{Unavailable}, or L{OutcomeUnknown} for a write that may have
        been applied), close every connection, stop the reactor and join
        its thread.  Idempotent; any call after it raises L{Unavailable}.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
        try:
            if not self._thread.inThread():
                self._thread.submit(self._closeInReactor).result(self.timeout)
        except (ReactorStopped, TimeoutError):
            pass
        finally:
            self._finalizer.detach()
            self._thread.stop()

    def _closeInReactor(self):
        for watch in list(self._watches):
            watch._stop()
        closed = self._client.close()
        # what close() did not end at once (an attempt in flight, a pause
        # between retries) ends now, as the client says: "closed", or
        # "outcome unknown" for a write that may have been applied
        for call in list(self._calls):
            call.deferred.cancel()
        return closed

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


class BlockingWatch:
    """
    A watch, read by one thread: an iterator of L{Event}s (C{for event in
    watch}) and a context manager.  Iteration ends when the watch is
    closed (L{close}, leaving the C{with} block, or the client's
    C{close()}); a watch that ends with an error (L{Compacted}: no node
    holds its next revision any more; L{InvalidArgument}) raises it from
    C{next()} once the events before it are read.

    Back-pressure: the events wait in a bounded queue of C{maxBatches}
    batches.  When it is full the watch stops answering the node, which
    then sends nothing more for it (the Deferred client's flow control):
    a slow reader holds at most C{maxBatches} batches, and the node waits.
    A node closes a connection whose watch call stays unanswered for 60 s;
    the watch then resumes (on any node, from where it was) once the reader
    has caught up, and the client's other requests on that connection are
    retried as after any lost connection.
    """

    def __init__(self, client, key, maxBatches=WATCH_QUEUE_BATCHES):
        if maxBatches < 1:
            raise ValueError("maxBatches must be at least 1")
        self.key = key
        self.maxBatches = maxBatches
        self._client = client
        self._watcher = None  # reactor thread only
        self._paused = None  # reactor thread only: the Deferred the node waits on
        self._cond = threading.Condition()
        # guarded by _cond:
        self._batches = deque()
        self._resumeWanted = False
        self._end = None  # once the watch ended: (error or None,)
        self._closed = False
        # the reader's own:
        self._events = iter(())

    # -- the reactor's side --------------------------------------------------------

    def _onEvents(self, events):
        with self._cond:
            if self._closed:
                return None
            self._batches.append(events)
            self._cond.notify()
            if len(self._batches) < self.maxBatches:
                return None
            self._resumeWanted = True
        self._paused = Deferred()
        return self._paused

    def _resume(self):
        paused, self._paused = self._paused, None
        if paused is not None:
            paused.callback(None)

    def _ended(self, result):
        self._client._watches.discard(self)
        error = getattr(result, "value", None)
        with self._cond:
            self._end = (error,)
            self._cond.notify_all()
        return None

    def _stop(self):
        """Close it from the reactor thread (the client closes)."""
        with self._cond:
            self._closed = True
            self._batches.clear()
            self._cond.notify_all()
        self._resume()
        return self._watcher.cancel()

    # -- the reader's side -----------------------------------------------------------

    def _nextBatch(self, timeout):
        with self._cond:
            while True:
                if self._closed:
                    return None
                if self._batches:
                    batch = self._batches.popleft()
                    resume = self._resumeWanted and len(self._batches) < self.maxBatches
                    if resume:
                        self._resumeWanted = False
                    break
                if self._end is not None:
                    if self._end[0] is not None:
                        raise self._end[0]
                    return None
                if not self._cond.wait(timeout):
                    raise TimeoutError(f"watch {self.key!r}: no event within {timeout:g}s")
        if resume:
            try:
                self._client._thread.submit(self._resume)
            except ReactorStopped:
                pass
        return batch

    def get(self, timeout=None):
        """
        The next event; wait at most C{timeout} seconds (C{None}: for good).

        @return: an L{Event}, or C{None} once the watch is closed.
        @raise TimeoutError: no event came within C{timeout}.
        @raise Compacted: (and the like) the watch ended with that error.
        """
        for event in self._events:
            return event
        while True:
            batch = self._nextBatch(timeout)
            if batch is None:
                return None
            self._events = iter(batch)
            for event in self._events:
                return event

    def __iter__(self):
        return self

    def __next__(self):
        event = self.get()
        if event is None:
            raise StopIteration
        return event

    def started(self, timeout=None):
        """
        Wait until a node accepted the watch.  @return: the revision it
        started from (events from that revision on are delivered).
        """
        return self._client._call(f"watch {self.key!r}", False,
                                  lambda: self._watcher.whenStarted(), (), {}, timeout)

    @property
    def nextRevision(self):
        """Every change below this revision has been received (not
        necessarily read yet); C{None} before the watch started."""
        return self._client._call("watch", False, lambda: self._watcher.nextRevision, (), {})

    def close(self):
        """Cancel the watch (idempotent); iteration ends."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._batches.clear()
            self._cond.notify_all()
        try:
            future = self._client._thread.submit(self._stop)
        except ReactorStopped:
            return
        try:
            future.result(self._client.timeout)
        except Exception:
            pass  # ended already (with an error the reader no longer wants)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False
