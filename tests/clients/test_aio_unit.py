"""
L{twisted_raft.aio} without nodes: the API beside L{RaftKVClient}'s, the
loop it needs and leaves as it found it, cancellation (down to the request's
Deferred) and the cancelled write's session sequence, over a scripted
connection; L{AsyncioWatch}'s buffer and ending over a stub watcher.  Each
test runs its coroutine with C{asyncio.run}: the client must not care
about pytest-twisted's global reactor.
"""

import asyncio
import inspect
import selectors
from types import SimpleNamespace

import pytest
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ConnectionDone

from twisted_raft import aio
from twisted_raft.client import (
    AsyncioClient,
    Compacted,
    Event,
    NotProposed,
    RaftKVClient,
)
from twisted_raft.clientpath import STATUS_FIELDS
from twisted_raft.rpc.commands import InvalidArgument, Put, Status, Unavailable
from twisted_raft.tools.launcher import freePorts

LEADER = dict.fromkeys(STATUS_FIELDS, 0) | {
    "node_id": 1, "role": "leader", "leader_id": 1, "term": 2, "voter": True,
}


class ScriptedNode:
    """
    A connection to node 1, the leader: C{Status} answered at once; every
    other call kept in C{calls} (command, arguments, Deferred) unanswered,
    or answered at once with a revision if C{answer}.
    """

    def __init__(self):
        self.transport = SimpleNamespace(
            disconnecting=False, loseConnection=self.lose, abortConnection=self.lose,
        )
        self.lost = False
        self.calls = []
        self.cancelled = []
        self.answer = False

    def callRemote(self, command, **kwargs):
        if command is Status:
            return succeed(dict(LEADER))
        if self.answer:
            return succeed({"revision": 100 + len(self.calls)})
        d = Deferred(lambda d: self.cancelled.append(kwargs))
        self.calls.append((command, kwargs, d))
        return d

    def lose(self):
        """As AMP: the calls unanswered fail with the connection."""
        for _, _, d in self.calls:
            if not d.called:
                d.errback(ConnectionDone())

    def connect(self, address):
        return succeed(self)


def run(coroutine):
    return asyncio.run(coroutine)


async def until(predicate):
    for _ in range(1000):
        if predicate():
            return
        await asyncio.sleep(0)
    raise AssertionError("never happened")


# -- the API --------------------------------------------------------------------


def _deferredMethods():
    names = []
    for name, member in inspect.getmembers(RaftKVClient, inspect.isfunction):
        if not name.startswith("_") and name not in ("watch", "setAddresses"):
            names.append(name)
    return names


def test_every_deferred_method_is_a_coroutine_with_the_same_signature():
    """
    Each public method of L{RaftKVClient} (bar the synchronous C{watch} and
    C{setAddresses}) has its twin here: a coroutine function (C{rangePages}
    an asynchronous generator, as there) taking the same arguments.
    """
    names = _deferredMethods()
    assert {"put", "get", "delete", "compareAndSet", "txn", "range", "rangeAll",
            "status", "clusterStatus", "members", "close"} <= set(names)
    for name in names:
        ours = getattr(AsyncioClient, name)
        if name == "rangePages":
            assert inspect.isasyncgenfunction(ours)
        else:
            assert inspect.iscoroutinefunction(ours), name
        assert inspect.signature(ours) == inspect.signature(getattr(RaftKVClient, name)), name
    assert callable(AsyncioClient.watch) and callable(AsyncioClient.setAddresses)


def test_made_outside_a_running_loop():
    with pytest.raises(RuntimeError, match="running asyncio event loop"):
        AsyncioClient("127.0.0.1:1")


def test_no_reactor_of_ours():
    async def main():
        with pytest.raises(TypeError, match="its own reactor"):
            AsyncioClient("127.0.0.1:1", reactor=object())

    run(main())


class NotASelectorLoop(asyncio.BaseEventLoop):
    """An event loop that is not one of asyncio's selector loops (as uvloop's is not)."""

    def __init__(self):
        super().__init__()
        self._selector = selectors.DefaultSelector()

    def _process_events(self, events):
        pass

    def _write_to_self(self):
        pass

    def close(self):
        super().close()
        self._selector.close()


def test_a_loop_that_is_not_a_selector_loop_is_refused():
    async def main():
        with pytest.raises(TypeError, match="NotASelectorLoop.*uvloop"):
            AsyncioClient("127.0.0.1:1")
        return "ran"

    with asyncio.Runner(loop_factory=NotASelectorLoop) as runner:
        assert runner.run(main()) == "ran"


def test_used_on_another_loop():
    async def make():
        return AsyncioClient("127.0.0.1:1")

    client = run(make())

    async def other():
        with pytest.raises(RuntimeError, match="only on the loop it was made on"):
            await client.get("k")

    run(other())


def test_close_leaves_the_loop_as_it_was():
    """
    The reactor's waker and connections are the loop's readers while the
    client is open; after C{close} none is left.
    """
    node = ScriptedNode()

    async def main():
        loop = asyncio.get_running_loop()
        before = len(loop._selector.get_map())
        client = AsyncioClient("127.0.0.1:1", connect=node.connect, timeout=30)
        assert len(loop._selector.get_map()) == before + 1  # the waker
        pending = asyncio.create_task(client.get("k"))
        await until(lambda: node.calls)
        assert client._reactor.getDelayedCalls()  # the attempt's timeout
        await client.close()
        with pytest.raises(Unavailable, match="closed"):
            await pending
        assert len(loop._selector.get_map()) == before
        with pytest.raises(Unavailable, match="closed"):
            await client.put("k", b"v")
        await client.close()  # again: nothing more to do

    run(main())


def test_unavailable_when_nothing_answers():
    (port,) = freePorts(1)

    async def main():
        async with AsyncioClient(f"127.0.0.1:{port}", timeout=0.5, connectTimeout=0.2) as client:
            with pytest.raises(Unavailable, match="no node answered"):
                await client.get("k")
            with pytest.raises(NotProposed):
                await client.put("k", b"v")

    run(main())


def test_argument_errors_are_the_clients():
    async def main():
        async with AsyncioClient("127.0.0.1:1") as client:
            with pytest.raises(TypeError, match="value must be bytes"):
                await client.put("k", "text")
            with pytest.raises(InvalidArgument, match="empty key"):
                client.watch("")

    run(main())


# -- cancellation -----------------------------------------------------------------


def test_cancelling_the_task_cancels_the_request():
    """
    C{asFuture} passes the task's cancellation to the Deferred, down to
    the request's own: nothing is left waiting (no timer, no sleep), and
    the next call works.
    """
    node = ScriptedNode()

    async def main():
        async with AsyncioClient("127.0.0.1:1", connect=node.connect, timeout=30) as client:
            task = asyncio.create_task(client.get("k"))
            await until(lambda: node.calls)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert node.cancelled == [{"key": "k"}]
            assert client._reactor.getDelayedCalls() == []
            assert client._client._sleeps == set()
            task = asyncio.create_task(client.get("k"))
            await until(lambda: len(node.calls) == 2)
            node.calls[1][2].callback({"found": True, "value": b"v"})
            assert await task == b"v"

    run(main())


def test_a_cancelled_write_retried_carries_its_sequence(monkeypatch):
    """
    The same write made again after it was cancelled is the same write to
    the cluster (its session sequence); any other write, or the same one
    once it succeeded, is a new one.
    """
    node = ScriptedNode()

    async def cancelled(client, call):
        task = asyncio.create_task(call)
        n = len(node.calls)
        await until(lambda: len(node.calls) > n)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return node.calls[-1][1]["sequence"]

    async def answered(client, call, revision):
        task = asyncio.create_task(call)
        n = len(node.calls)
        await until(lambda: len(node.calls) > n)
        node.calls[-1][2].callback({"revision": revision})
        assert await task == revision
        return node.calls[-1][1]["sequence"]

    async def main():
        async with AsyncioClient("127.0.0.1:1", connect=node.connect, timeout=30) as client:
            first = await cancelled(client, client.put("k", b"v"))
            other = await answered(client, client.put("k", b"w"), 8)
            assert other == first + 1
            assert await answered(client, client.put("k", b"v"), 7) == first
            assert node.calls[-1][0] is Put
            assert await answered(client, client.put("k", b"v"), 9) == other + 1
            # not a put with the same key and value: a compare-and-set
            cas = await cancelled(client, client.compareAndSet("k", None, b"v"))
            assert await answered(client, client.put("k", b"v"), 10) == cas + 1
            # too many writes since: a new write
            late = await cancelled(client, client.put("late", b"v"))
            node.answer = True
            for i in range(client._client.reuseWindow):
                await client.put(f"n{i}", b"")
            node.answer = False
            assert await answered(client, client.put("late", b"v"), 11) > late + client._client.reuseWindow
            assert client._client.cancelled == {}
            # made again after the client's timeout: a new write (a key set
            # back to a value it had), not a retry
            stale = await cancelled(client, client.put("stale", b"v"))
            monkeypatch.setattr(type(client._client), "reuseSeconds", 0.0)
            await asyncio.sleep(0.01)
            assert await answered(client, client.put("stale", b"v"), 12) == stale + 1
            assert client._client.cancelled == {}

    run(main())


def test_the_reuse_window_is_well_inside_the_sessions():
    """A retry at the window's edge has as many writes again to go before
    the cluster forgets its sequence."""
    from twisted_raft.kv import SESSION_WINDOW

    assert aio.REUSE_WINDOW <= SESSION_WINDOW // 2


def test_no_session_no_sequence_kept():
    node = ScriptedNode()

    async def main():
        async with AsyncioClient("127.0.0.1:1", connect=node.connect, sessions=False) as client:
            task = asyncio.create_task(client.put("k", b"v"))
            await until(lambda: node.calls)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert "sequence" not in node.calls[0][1]
            assert client._client.cancelled == {}

    run(main())


# -- watches over a stub watcher ------------------------------------------------------


class StubWatcher:
    def __init__(self, onEvents):
        self.onEvents = onEvents
        self.done = Deferred()
        self.startRevision = None
        self.nextRevision = None
        self.cancels = 0

    def whenStarted(self):
        return succeed(self.startRevision)

    def cancel(self):
        self.cancels += 1
        if not self.done.called:
            self.done.callback(None)
        return self.done


def stubWatch(buffer):
    loop = asyncio.get_running_loop()
    watchers = []

    def watch(key, prefix, startRevision, onEvents):
        watchers.append(StubWatcher(onEvents))
        return watchers[-1]

    client = SimpleNamespace(_loop=loop, _client=SimpleNamespace(watch=watch))
    return aio.AsyncioWatch(client, "k", False, None, buffer), watchers[0]


def event(revision):
    return Event("put", "k", b"%d" % revision, 1, revision, revision)


def test_watch_events_in_order_then_the_error():
    async def main():
        w, watcher = stubWatch(buffer=8)
        assert watcher.onEvents([event(2), event(3)]) is None
        assert watcher.onEvents([event(4)]) is None
        watcher.done.errback(Compacted(9))
        got = []
        with pytest.raises(Compacted) as caught:
            async for e in w:
                got.append(e.mod_revision)
        assert got == [2, 3, 4]
        assert caught.value.compact_revision == 9
        with pytest.raises(StopAsyncIteration):
            await w.__anext__()

    run(main())


def test_watch_full_buffer_holds_the_node_back():
    """
    With the buffer full the next batch is held, unanswered (the node
    sends nothing more), until the reader makes room; nothing is dropped.
    """
    async def main():
        w, watcher = stubWatch(buffer=1)
        assert watcher.onEvents([event(2)]) is None
        held = watcher.onEvents([event(3)])
        assert isinstance(held, Deferred) and not held.called
        assert (await w.__anext__()).mod_revision == 2
        assert held.called
        assert watcher.onEvents([event(4)]) is not None  # full again
        watcher.done.callback(None)  # ended with both batches unread
        assert [e.mod_revision async for e in w] == [3, 4]

    run(main())


def test_watch_reader_waits_for_events_and_aclose_ends_it():
    async def main():
        w, watcher = stubWatch(buffer=4)
        reader = asyncio.create_task(w.__anext__())
        await asyncio.sleep(0)
        assert not reader.done()
        watcher.onEvents([event(5)])
        assert (await reader).mod_revision == 5
        async with w:
            watcher.onEvents([event(6)])
        assert watcher.cancels == 1
        assert [e async for e in w] == []

    run(main())
