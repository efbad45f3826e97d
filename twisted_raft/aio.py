"""
The asyncio client: L{AsyncioClient}, L{RaftKVClient}'s API as coroutines on
the caller's asyncio event loop, and L{AsyncioWatch}, a watch as an
asynchronous iterator.

    async with AsyncioClient(["127.0.0.1:8001", "127.0.0.1:8002"]) as client:
        revision = await client.put("hello", b"world")
        value = await client.get("hello")
        async with client.watch("app/", prefix=True) as events:
            async for event in events:
                print(event.type, event.key, event.value)

How it runs (docs/design.rst, "The asyncio client").  Each client makes a
reactor of its own, Twisted's L{AsyncioSelectorReactor} on the running
loop, never installed as the global reactor, and hands it to a
L{RaftKVClient}: connections, retries, leader discovery, sessions and the
contract's errors are that client's, in one place.  Its sockets and timers
are the loop's own readers, writers and timers, so no thread runs for it; a
Deferred becomes an awaitable with L{Deferred.asFuture}, and cancelling the
awaiting task cancels the Deferred (and with it the request's retries).

The other design, an AMP client over asyncio streams, would have to do
again what L{RaftKVClient} does: retries, exactly-once sessions, leader
discovery, the failure classification, watches that resume on another
node.  Two copies of that would drift apart.

What the private reactor needs, since it is never C{run()}:

  - It is not started (C{running} stays false; no C{startRunning}): that
    would register this thread as Twisted's I/O thread for the whole
    process and install signal handlers, and its C{stop()} would stop the
    caller's loop.  Nothing on the client's path asks whether it runs:
    connections, C{callLater} and Deferred timeouts work as they are
    (Twisted's asyncio reactor hands each to the loop).
  - The one thing gated on C{callWhenRunning} is the reactor's thread pool,
    which only name resolution uses: a resolver on the loop's own
    C{getaddrinfo} (L{LoopResolver}) replaces it, so a host name resolves
    as asyncio resolves one, and an IP address needs nothing.
  - No system event triggers fire ("startup", "shutdown"): L{close} undoes
    by hand what making the reactor did (its waker pipe, a reader of the
    loop) and what it read (connections left, if any).
"""

import asyncio
import functools
import socket
from collections import OrderedDict, deque

from twisted.internet.asyncioreactor import AsyncioSelectorReactor
from twisted.internet.defer import Deferred
from twisted.internet.error import DNSLookupError
from twisted.internet.interfaces import IResolverSimple
from zope.interface import implementer

from twisted_raft.kvclient import closePages, nextPage
from twisted_raft.memberclient import CATCH_UP_TIMEOUT

__all__ = ["AsyncioClient", "AsyncioWatch", "WATCH_BUFFER"]


WATCH_BUFFER = 64
"""Batches of events an L{AsyncioWatch} holds for its reader by default."""


# -- the private reactor ------------------------------------------------------


def selectorLoop():
    """
    The running loop, if a reactor can run on it.

    @raise RuntimeError: no loop is running (not called from a coroutine).
    @raise TypeError: the loop is not one of asyncio's selector loops
        (uvloop, Windows' proactor loop): Twisted's asyncio reactor is
        written for those.
    """
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        raise RuntimeError(
            "AsyncioClient must be made inside a running asyncio event loop "
            "(in a coroutine, e.g. under asyncio.run)"
        ) from None
    if not isinstance(loop, asyncio.selector_events.BaseSelectorEventLoop):
        raise TypeError(
            f"AsyncioClient needs one of asyncio's selector event loops, not "
            f"{type(loop).__module__}.{type(loop).__qualname__} (uvloop and the Windows "
            "proactor loop are not supported: use asyncio's default loop, and on "
            "Windows asyncio.WindowsSelectorEventLoopPolicy())"
        )
    return loop


@implementer(IResolverSimple)
class LoopResolver:
    """
    Host names resolved by the asyncio loop's C{getaddrinfo} (IPv4, as
    C{connectTCP} wants), in place of the reactor's thread pool, which
    would only start once the reactor runs (C{callWhenRunning}).
    """

    def __init__(self, loop):
        self._loop = loop

    def getHostByName(self, name, timeout=None):
        async def lookup():
            try:
                infos = await self._loop.getaddrinfo(
                    name, None, family=socket.AF_INET, type=socket.SOCK_STREAM,
                )
            except OSError as e:
                raise DNSLookupError(f"{name}: {e}") from None
            if not infos:
                raise DNSLookupError(f"{name}: no IPv4 address")
            return infos[0][4][0]

        return Deferred.fromFuture(self._loop.create_task(lookup()))


def privateReactor(loop):
    """
    A reactor of Twisted's on C{loop}, for one client: never installed as
    the global reactor, never run (see the module docstring).  Undo with
    L{releaseReactor}.
    """
    reactor = AsyncioSelectorReactor(loop)
    reactor.installResolver(LoopResolver(loop))
    return reactor


def releaseReactor(reactor):
    """
    Leave C{reactor}'s loop as it was before L{privateReactor}: nothing of
    it read or written any more, its waker's pipe closed.  Its timers are
    left to run out (each a few seconds at most, in the loop): one may be
    what ends a closed client's last wait (a watch's pause before it tries
    another node, which then sees the client closed).
    """
    reactor.removeAll()
    waker = reactor.waker
    if waker is not None:
        reactor.removeReader(waker)
        waker.connectionLost(None)
        reactor.waker = None


# -- the client ---------------------------------------------------------------


REUSE_WINDOW = 512
"""A cancelled write's sequence is reused only while fewer than this many
writes were issued since: half the sequences the cluster remembers of a
client (C{twisted_raft.kv.SESSION_WINDOW}, not imported: a client needs
nothing of the store), so the retry itself may take as many again before
the cluster would refuse it as too old."""

_REUSE_MAX = 1_000
"""Cancelled writes remembered for a retry (L{AsyncioClient}'s "Cancelled
writes"), at most."""


@functools.cache
def _clientClass():
    """
    L{RaftKVClient} with a cancelled write's session sequence kept for its
    retry.  Made on first use: C{twisted_raft.client} imports this module
    (its last line) to export L{AsyncioClient}.
    """
    from twisted_raft.client import RaftKVClient

    class SequenceKeeping(RaftKVClient):
        """
        @ivar writeName: the name of the write method being called, set
            around the call by L{AsyncioClient} (its L{_session} is called
            synchronously inside it).
        @ivar lastWrite: C{(identity, sequence)} of the last write given a
            sequence, for L{AsyncioClient} to take.
        @ivar cancelled: C{{identity: (sequence, when)}} of writes
            cancelled after they took a sequence, oldest first.
        """

        reuseWindow = REUSE_WINDOW

        @property
        def reuseSeconds(self):
            """A retry comes at once: after the client's C{timeout}, the
            same call is a new write (setting a key back to what it was,
            say), not a retry."""
            return self.timeout

        writeName = None
        lastWrite = None

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.cancelled = OrderedDict()

        def _session(self, kwargs):
            name, self.writeName = self.writeName, None
            if not self.sessions or name is None:
                return super()._session(kwargs)
            self._forgetOld()
            identity = (name, tuple(sorted(kwargs.items())))
            sequence, _ = self.cancelled.pop(identity, (None, None))
            if sequence is not None:
                self._checkOpen()
                kwargs["client_id"] = self.clientId
                kwargs["sequence"] = sequence
            else:
                super()._session(kwargs)
            self.lastWrite = (identity, kwargs["sequence"])
            return kwargs

        def noteCancelled(self, write):
            identity, sequence = write
            self.cancelled[identity] = (sequence, self._reactor.seconds())
            self.cancelled.move_to_end(identity)
            self._forgetOld()

        def _forgetOld(self):
            """Forget the cancelled writes too far back to be retried."""
            cancelled = self.cancelled
            since = self._reactor.seconds() - self.reuseSeconds
            while cancelled:
                sequence, when = next(iter(cancelled.values()))
                if (len(cancelled) <= _REUSE_MAX and self.sequence - sequence < self.reuseWindow
                        and when >= since):
                    break
                cancelled.popitem(last=False)

    return SequenceKeeping


class AsyncioClient:
    """
    A client of a raftkv cluster for asyncio programs: every method of
    L{RaftKVClient} that returns a Deferred is a coroutine here, with the
    same arguments, answers and exceptions (L{Unavailable},
    L{OutcomeUnknown}, L{InvalidArgument}, L{ValueTooLarge}, ...; see
    L{twisted_raft.client}).  L{watch} returns an L{AsyncioWatch}.

    Make it inside a running loop (in a coroutine); it runs on that loop,
    with no thread of its own, and only there.  Close it (C{await
    client.close()}, or C{async with}) before the loop ends.

    Cancelling a task that awaits a call cancels the call: nothing more is
    sent for it.  A write already sent may still be applied.  Cancelled
    writes: with sessions (the default), a cancelled write whose same call
    (same method, same arguments) is made again by this client -- a retry
    -- carries the cancelled one's session sequence, so the cluster applies
    the two at most once between them (the second answers like the first
    if that was applied): C{asyncio.wait_for(client.put(k, v), 1)} in a
    retry loop writes once.  A retry is recognised only within the
    client's C{timeout} (seconds) and L{REUSE_WINDOW} (512) writes of the
    cancelled one; later, the same call is a new write (a program that
    sets a key back to a value it once wrote means a new write).

    @param addresses: as for L{RaftKVClient}.
    @param timeout: overall seconds per operation, retries included.
    @param options: L{RaftKVClient}'s other keyword arguments
        (C{connectTimeout}, C{sessions}, C{tls}, C{clientId}, ...), except
        C{reactor}: the client makes its own on the running loop.
    @raise RuntimeError: no loop is running.
    @raise TypeError: the running loop is not a selector loop (uvloop, the
        Windows proactor loop), or C{reactor} was given.
    """

    def __init__(self, addresses, timeout=5.0, **options):
        if "reactor" in options:
            raise TypeError("AsyncioClient makes its own reactor on the running loop")
        loop = selectorLoop()
        reactor = privateReactor(loop)
        try:
            self._client = _clientClass()(addresses, reactor=reactor, timeout=timeout, **options)
        except BaseException:
            releaseReactor(reactor)
            raise
        self._loop = loop
        self._reactor = reactor
        self._closing = None

    # -- what the client is ------------------------------------------------

    @property
    def addresses(self):
        return self._client.addresses

    @property
    def timeout(self):
        return self._client.timeout

    @property
    def clientId(self):
        return self._client.clientId

    @property
    def sequence(self):
        """The session sequence of the last write issued."""
        return self._client.sequence

    def setAddresses(self, addresses):
        """As L{RaftKVClient.setAddresses} (not a coroutine)."""
        self._client.setAddresses(addresses)

    # -- awaiting the Deferred client --------------------------------------

    def _here(self):
        if asyncio.get_running_loop() is not self._loop:
            raise RuntimeError("an AsyncioClient is used only on the loop it was made on")

    async def _call(self, name, *args, **kwargs):
        self._here()
        return await getattr(self._client, name)(*args, **kwargs).asFuture(self._loop)

    async def _write(self, name, *args, **kwargs):
        self._here()
        client = self._client
        client.writeName = name
        try:
            d = getattr(client, name)(*args, **kwargs)
        finally:
            client.writeName = None
        write, client.lastWrite = client.lastWrite, None
        try:
            return await d.asFuture(self._loop)
        except asyncio.CancelledError:
            if write is not None:
                client.noteCancelled(write)
            raise

    # -- keys -----------------------------------------------------------------

    async def put(self, key, value, prevKV=False):
        """As L{RaftKVClient.put}: the revision (with C{prevKV}, a L{PutResponse})."""
        return await self._write("put", key, value, prevKV)

    async def get(self, key, stale=False):
        """As L{RaftKVClient.get}: the value, or C{None}."""
        return await self._call("get", key, stale)

    async def delete(self, key, end=None, prefix=False, prevKV=False):
        """As L{RaftKVClient.delete}: C{(deleted, revision)}, or a L{DeleteResponse}."""
        return await self._write("delete", key, end, prefix, prevKV)

    async def compareAndSet(self, key, expected, value):
        """As L{RaftKVClient.compareAndSet}: C{(succeeded, revision)}."""
        return await self._write("compareAndSet", key, expected, value)

    async def range(
        self, key, end=None, prefix=False, limit=0, after=None, keysOnly=False,
        countOnly=False, stale=False,
    ):
        """As L{RaftKVClient.range}: one page, a L{RangeResult}."""
        return await self._call("range", key, end, prefix, limit, after, keysOnly, countOnly, stale)

    async def rangePages(
        self, key, end=None, prefix=False, limit=0, after=None, keysOnly=False, stale=False,
    ):
        """
        As L{RaftKVClient.rangePages}: C{async for page in
        client.rangePages(...)}, each page read when asked for (that
        client's paging, each step driven as a Deferred).
        """
        self._here()
        pages = self._client.rangePages(key, end, prefix, limit, after, keysOnly, stale)
        try:
            while True:
                page = await nextPage(pages).asFuture(self._loop)
                if page is None:
                    return
                yield page
        finally:
            await closePages(pages).asFuture(self._loop)

    async def rangeAll(
        self, key, end=None, prefix=False, limit=0, after=None, keysOnly=False, stale=False,
    ):
        """As L{RaftKVClient.rangeAll}: every page as one L{RangeResult}."""
        return await self._call("rangeAll", key, end, prefix, limit, after, keysOnly, stale)

    async def txn(self, compare=(), success=(), failure=()):
        """As L{RaftKVClient.txn}: a L{TxnResponse}."""
        return await self._write("txn", compare, success, failure)

    # -- the cluster ----------------------------------------------------------

    async def status(self, address=None):
        """As L{RaftKVClient.status}: one node's status, a dict."""
        return await self._call("status", address)

    async def clusterStatus(self):
        """As L{RaftKVClient.clusterStatus}: C{[(address, dict or None)]}."""
        return await self._call("clusterStatus")

    async def members(self):
        """As L{RaftKVClient.members}: a L{Membership}."""
        return await self._call("members")

    async def addMember(self, nodeId, address, learner=False, timeout=CATCH_UP_TIMEOUT):
        """As L{RaftKVClient.addMember}: the revision of the change."""
        return await self._call("addMember", nodeId, address, learner, timeout)

    async def promoteMember(self, nodeId, timeout=CATCH_UP_TIMEOUT):
        """As L{RaftKVClient.promoteMember}: the revision of the change."""
        return await self._call("promoteMember", nodeId, timeout)

    async def removeMember(self, nodeId):
        """As L{RaftKVClient.removeMember}: the revision of the change."""
        return await self._call("removeMember", nodeId)

    async def transferLeader(self, nodeId=0):
        """As L{RaftKVClient.transferLeader}: the new leader's id."""
        return await self._call("transferLeader", nodeId)

    # -- watches -----------------------------------------------------------------

    def watch(self, key, prefix=False, startRevision=None, buffer=WATCH_BUFFER):
        """
        Watch C{key} (with C{prefix}: every key starting with it) from
        C{startRevision} (C{None}: from now), as L{RaftKVClient.watch}
        does: C{async with client.watch(...) as events: async for event in
        events: ...}.  Not a coroutine: the watch starts at once.

        @param buffer: batches of events held for the reader (see
            L{AsyncioWatch}).
        @return: an L{AsyncioWatch}.
        @raise InvalidArgument: a bad key or start revision.
        @raise Unavailable: the client is closed.
        """
        self._here()
        return AsyncioWatch(self, key, prefix, startRevision, buffer)

    # -- closing -------------------------------------------------------------------

    async def close(self):
        """
        As L{RaftKVClient.close} (pending calls fail with L{Unavailable}),
        then leave the loop as it was: the client's reactor reads and
        writes nothing (see L{releaseReactor}).  Later calls raise
        L{Unavailable}.
        """
        if self._closing is None:
            self._closing = self._loop.create_task(self._close())
        await asyncio.shield(self._closing)

    async def _close(self):
        try:
            await self._client.close().asFuture(self._loop)
        finally:
            releaseReactor(self._reactor)

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.close()


_END = object()
"""What the queue of an L{AsyncioWatch} holds after its last batch."""


class AsyncioWatch:
    """
    A watch as an asynchronous iterator of L{Event}s, in revision order,
    resumed on another node by itself (L{twisted_raft.watchclient.Watcher}
    underneath).  C{async with} waits until a node accepted it (so every
    change after that is seen) and cancels it on the way out; L{aclose}
    cancels it too.  What ends it (L{Compacted}: no node holds its next
    revision any more; L{Unavailable}: the client was closed; ...) is
    raised by the iteration, after every event received before it.

    The buffer: at most C{buffer} batches wait in an C{asyncio.Queue} for
    the reader.  When it is full the watch holds the next batch, unread,
    and the node sends nothing more until the reader takes one: no event
    is dropped or reordered, and memory stays bounded.  A reader that
    stops for long makes the node hold its watch (after 60 s unanswered it
    closes the connection, and the watch resumes from where it was, on the
    next node); one that stays behind the writes for good falls out of
    the nodes' history and the watch ends with L{Compacted}.

    @ivar startRevision: the revision the watch started from, once a node
        accepted it (C{None} before).
    @ivar nextRevision: every change below it has been received (not
        necessarily read yet).
    """

    def __init__(self, client, key, prefix, startRevision, buffer):
        if isinstance(buffer, bool) or not isinstance(buffer, int) or buffer < 1:
            raise ValueError(f"buffer must be a positive int, not {buffer!r}")
        self._loop = client._loop
        self._queue = asyncio.Queue(maxsize=buffer)
        self._held = None  # (batch, Deferred) waiting for room in the queue
        self._events = deque()  # the batch being read
        self._over = False  # the watch ended
        self._error = None  # what it ended with, if it failed
        self._finished = False  # the reader saw the end
        self._watcher = client._client.watch(key, prefix, startRevision, onEvents=self._received)
        self._watcher.done.addBoth(self._end)

    @property
    def startRevision(self):
        return self._watcher.startRevision

    @property
    def nextRevision(self):
        return self._watcher.nextRevision

    def _received(self, batch):
        if not self._queue.full():
            self._queue.put_nowait(batch)
            return None
        d = Deferred()
        self._held = (batch, d)
        return d

    def _end(self, result):
        self._over = True
        self._error = getattr(result, "value", None)
        if not self._queue.full():
            self._queue.put_nowait(_END)
        return None

    def _make_room(self):
        if self._held is not None and not self._queue.full():
            (batch, d), self._held = self._held, None
            self._queue.put_nowait(batch)
            d.callback(None)

    def __aiter__(self):
        return self

    async def __anext__(self):
        while not self._events:
            if self._finished:
                raise StopAsyncIteration
            if self._queue.empty() and self._over:
                if self._held is not None:
                    (batch, d), self._held = self._held, None
                    d.callback(None)
                    self._events.extend(batch)
                    continue
                item = _END
            else:
                item = await self._queue.get()
                self._make_room()
            if item is _END:
                self._finished = True
                if self._error is not None:
                    raise self._error
                raise StopAsyncIteration
            self._events.extend(item)
        return self._events.popleft()

    async def started(self):
        """Wait until a node accepted the watch.  @return: its start revision."""
        return await self._watcher.whenStarted().asFuture(self._loop)

    async def aclose(self):
        """Cancel the watch and wait until it ended; the iteration then ends."""
        self._events.clear()
        self._finished = True
        if self._held is not None:
            self._held[1].callback(None)
            self._held = None
        await self._watcher.cancel().asFuture(self._loop)

    async def __aenter__(self):
        try:
            await self.started()
        except BaseException:
            await self.aclose()
            raise
        return self

    async def __aexit__(self, *exc):
        await self.aclose()
