"""
L{twisted_raft.blocking} and L{twisted_raft.reactorthread} without a
cluster: the reactor thread's life, the client's calls, timeouts and
close, and a watch's queue (driven from its reactor thread as the Deferred
client drives it).
"""

import os
import threading
import time

import pytest
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from twisted_raft.blocking import BlockingClient, BlockingWatch
from twisted_raft.client import Compacted, Event, NotProposed, OutcomeUnknown
from twisted_raft.reactorthread import ReactorStopped, ReactorThread
from twisted_raft.rpc.commands import Unavailable
from twisted_raft.tools import launcher


def ourThreads():
    return [t for t in threading.enumerate() if t.name.startswith("raftkv-reactor")]


def nobody(n=2):
    """Addresses where nothing listens."""
    return launcher.localAddresses(n)


# -- the reactor thread -------------------------------------------------------------


def test_a_reactor_thread_runs_calls_and_deferreds_and_joins():
    t = ReactorThread(name="raftkv-reactor-test").start()
    assert t.call(lambda: threading.current_thread().name) == "raftkv-reactor-test"
    assert t.call(lambda: t.reactor.running) is True

    def later():
        d = Deferred()
        t.reactor.callLater(0.01, d.callback, 42)
        return d

    assert t.call(later) == 42
    with pytest.raises(ZeroDivisionError):
        t.call(lambda: 1 / 0)
    assert t.stop(timeout=10) is True
    assert t.stop() is True  # idempotent
    with pytest.raises(ReactorStopped):
        t.submit(lambda: None)
    assert ourThreads() == []


def test_a_call_left_waiting_by_the_stop_fails():
    t = ReactorThread().start()
    future = t.submit(Deferred)  # never fires
    t.stop(timeout=10)
    with pytest.raises(ReactorStopped):
        future.result(timeout=1)


def test_calls_queued_while_the_reactor_is_busy_run_in_order_on_one_wake_up():
    t = ReactorThread().start()
    wakeUps = []
    callFromThread = t.reactor.callFromThread

    def counting(f, *args):
        wakeUps.append(f)
        return callFromThread(f, *args)

    t.reactor.callFromThread = counting
    try:
        busy, release = threading.Event(), threading.Event()

        def hold():
            busy.set()
            assert release.wait(10)

        first = t.submit(hold)
        assert busy.wait(10)
        ran = []
        queued = [t.submit(ran.append, i) for i in range(20)]
        assert len(wakeUps) == 2  # one for hold, one for all twenty
        release.set()
        assert [p.result(10) for p in queued] == [None] * 20
        assert first.result(10) is None
        assert ran == list(range(20))
    finally:
        t.stop()


def test_a_wake_up_that_raises_leaves_the_thread_usable():
    t = ReactorThread().start()
    callFromThread = t.reactor.callFromThread

    def interrupted(f, *args):
        t.reactor.callFromThread = callFromThread  # once
        raise KeyboardInterrupt

    t.reactor.callFromThread = interrupted
    try:
        with pytest.raises(KeyboardInterrupt):
            t.submit(lambda: 1)
        assert t.submit(lambda: 2).result(timeout=10) == 2  # woken again, not wedged
    finally:
        t.stop()


def test_a_pending_answer_waits_with_a_timeout_and_can_be_read_again():
    t = ReactorThread().start()
    try:
        d = Deferred()
        pending = t.submit(lambda: d)
        with pytest.raises(TimeoutError):
            pending.result(timeout=0.01)
        assert not pending.done()
        t.call(d.callback, 7)
        assert pending.done()
        assert pending.result(timeout=0) == 7
        assert pending.result() == 7  # read again: the answer stays
        failing = t.submit(lambda: 1 / 0)
        for _ in range(2):
            with pytest.raises(ZeroDivisionError):
                failing.result(timeout=10)
    finally:
        t.stop()


def test_the_global_reactor_is_not_the_thread_reactor():
    from twisted.internet import reactor as globalReactor  # pytest-twisted's

    t = ReactorThread().start()
    try:
        assert t.reactor is not globalReactor
    finally:
        t.stop()


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts /proc/self/fd")
def test_reactor_threads_made_and_stopped_leak_no_file_descriptors():
    import gc

    def fds():
        gc.collect()
        return len(os.listdir("/proc/self/fd"))

    ReactorThread().start().stop()  # whatever is made once per process
    before = fds()
    for _ in range(10):
        ReactorThread().start().stop()
    assert fds() <= before


# -- the client without a cluster ---------------------------------------------------


def test_a_client_dropped_without_close_stops_its_thread():
    import gc

    client = BlockingClient(nobody(), timeout=0.5, connectTimeout=0.2)
    thread = client._thread
    del client
    gc.collect()
    deadline = time.monotonic() + 10
    while thread._thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not thread._thread.is_alive()


def test_an_answer_that_lands_as_the_call_times_out_is_returned(monkeypatch):
    from twisted_raft import reactorthread

    result = reactorthread.Pending.result

    def slowToWake(self, timeout=None):
        try:
            return result(self, timeout)
        except TimeoutError:
            time.sleep(0.3)  # the caller runs again only after the answer came
            raise

    with BlockingClient(nobody(), timeout=5, connectTimeout=0.2) as client:
        def answerSoon():
            d = Deferred()
            client._thread.reactor.callLater(0.1, d.callback, 1234)
            return d

        monkeypatch.setattr(reactorthread.Pending, "result", slowToWake)
        assert client._call(("put", "k"), True, answerSoon, (), {}, timeout=0.05) == 1234


def test_calls_fail_as_the_deferred_client_fails_and_close_joins():
    with BlockingClient(nobody(), timeout=0.5, connectTimeout=0.2) as client:
        assert len(ourThreads()) == 1
        with pytest.raises(Unavailable, match="no node answered within 0.5s"):
            client.get("k")
        with pytest.raises(NotProposed):
            client.put("k", b"v")
        with pytest.raises(TypeError):
            client.put("k", "not bytes")
    assert ourThreads() == []
    client.close()  # idempotent
    with pytest.raises(Unavailable, match="closed"):
        client.get("k")
    with pytest.raises(Unavailable, match="closed"):
        client.put("k", b"v")


def test_a_call_timeout_cancels_the_operation():
    with BlockingClient(nobody(), timeout=30, connectTimeout=0.2) as client:
        start = time.monotonic()
        with pytest.raises(Unavailable, match="no answer within 0.3s") as read:
            client.get("k", timeout=0.3)
        assert not isinstance(read.value, OutcomeUnknown)
        with pytest.raises(OutcomeUnknown, match="may or may not have been applied"):
            client.put("k", b"v", timeout=0.3)
        assert time.monotonic() - start < 10  # not the client's 30 s
        # cancelled there: nothing of those calls is left waiting
        assert client._thread.call(lambda: len(client._calls)) == 0


def test_close_fails_a_waiting_call_from_another_thread():
    client = BlockingClient(nobody(), timeout=30, connectTimeout=0.2)
    errors = []

    def reader():
        try:
            client.get("k")
        except Exception as e:
            errors.append(e)

    t = threading.Thread(target=reader)
    t.start()
    while not client._thread.call(lambda: len(client._calls)):
        time.sleep(0.01)  # until the call is under way
    client.close()
    t.join(10)
    assert not t.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], Unavailable)
    assert "closed" in str(errors[0])
    assert ourThreads() == []


def test_options():
    with pytest.raises(TypeError, match="reactor"):
        BlockingClient(nobody(), reactor=object())
    with pytest.raises(ValueError):
        BlockingClient(["no-port"])
    assert ourThreads() == []
    with BlockingClient("127.0.0.1:1, 127.0.0.1:2", clientId="me") as client:
        assert client.clientId == "me"
        assert client.addresses == ["127.0.0.1:1", "127.0.0.1:2"]
        assert client.sequence == 0
        client.setAddresses(["127.0.0.1:3"])
        assert client.addresses == ["127.0.0.1:3"]
        with pytest.raises(Exception, match="empty key"):
            client.watch("")


# -- a watch's queue ----------------------------------------------------------------


class _Owner:
    """What a L{BlockingWatch} needs of its client: the reactor thread."""

    timeout = 5.0

    def __init__(self):
        self._thread = ReactorThread().start()
        self._watches = set()


@pytest.fixture
def owner():
    o = _Owner()
    yield o
    o._thread.stop()


def events(*revisions):
    return [Event("put", f"k{r}", b"v", r, r, 1) for r in revisions]


def test_a_watch_hands_over_events_in_order_then_ends(owner):
    w = BlockingWatch(owner, "k")
    assert owner._thread.call(w._onEvents, events(1, 2)) is None
    assert owner._thread.call(w._onEvents, events(3)) is None
    assert [e.mod_revision for e in (next(w), next(w), next(w))] == [1, 2, 3]
    with pytest.raises(TimeoutError):
        w.get(timeout=0.01)
    owner._thread.call(w._ended, None)
    assert list(w) == []


def test_a_full_queue_holds_the_node_until_the_reader_takes_a_batch(owner):
    w = BlockingWatch(owner, "k", maxBatches=2)
    assert owner._thread.call(w._onEvents, events(1)) is None
    [held] = owner._thread.call(lambda: [w._onEvents(events(2))])  # (not waited for)
    assert isinstance(held, Deferred) and not held.called  # the node waits
    assert w.get().mod_revision == 1
    owner._thread.call(lambda: None)  # the resume was submitted before this
    assert held.called
    assert w.get().mod_revision == 2


def test_an_error_is_raised_after_the_events_before_it(owner):
    w = BlockingWatch(owner, "k")
    owner._thread.call(w._onEvents, events(7))
    owner._thread.call(w._ended, Failure(Compacted(5)))
    assert next(w).mod_revision == 7
    with pytest.raises(Compacted):
        next(w)
    with pytest.raises(Compacted):
        w.get(timeout=0)


def test_closing_a_watch_ends_a_reader_blocked_in_another_thread(owner):
    w = BlockingWatch(owner, "k")

    class Watcher:
        cancelled = False

        def cancel(self):
            Watcher.cancelled = True

    w._watcher = Watcher()
    owner._thread.call(w._onEvents, events(1))
    got = []
    t = threading.Thread(target=lambda: got.extend(w))
    t.start()
    while not got:
        time.sleep(0.01)  # until the reader took the event and waits for more
    w.close()
    t.join(10)
    assert not t.is_alive() and [e.mod_revision for e in got] == [1]
    assert Watcher.cancelled
    assert owner._thread.call(w._onEvents, events(2)) is None  # dropped
    assert list(w) == []
