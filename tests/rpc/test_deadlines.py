"""
L{Deadlines}: one timer for many request deadlines, each request cancelled
at exactly its own deadline, as C{Deferred.addTimeout} would.
"""

from twisted.internet import defer, task

from twisted_raft.rpc.deadlines import Deadlines


def timedOut(failure, name):
    failure.trap(defer.CancelledError)
    return f"timeout {name}"


def track(d):
    results = []
    d.addBoth(results.append)
    return results


def test_a_request_that_answers_in_time_keeps_its_result_and_leaves_no_timer():
    clock = task.Clock()
    deadlines = Deadlines(clock)
    d = defer.Deferred()
    results = track(deadlines.add(d, 5.0, timedOut, "a"))
    assert len(clock.getDelayedCalls()) == 1
    clock.advance(4.9)
    d.callback("answer")
    assert results == ["answer"]
    assert clock.getDelayedCalls() == [] and len(deadlines) == 0


def test_each_request_expires_at_its_own_deadline():
    clock = task.Clock()
    deadlines = Deadlines(clock)
    ds = {}
    results = {}
    for name, at in [("a", 0.0), ("b", 1.0), ("c", 1.0), ("d", 2.5)]:
        clock.advance(at - clock.seconds())
        ds[name] = defer.Deferred()
        results[name] = track(deadlines.add(ds[name], 5.0, timedOut, name))
    # one timer, however many requests
    assert len(clock.getDelayedCalls()) == 1
    def at(t):
        clock.advance(t - clock.seconds())

    at(4.999)
    assert all(r == [] for r in results.values())
    at(5.0)
    assert results["a"] == ["timeout a"] and results["b"] == []
    at(5.999)
    assert results["b"] == []
    at(6.0)
    assert results["b"] == ["timeout b"] and results["c"] == ["timeout c"]
    assert results["d"] == []
    at(7.0)
    ds["d"].callback("late but in time")  # t = 7 < 7.5
    assert results["d"] == ["late but in time"]
    assert clock.getDelayedCalls() == []


def test_an_answer_after_the_deadline_is_dropped():
    clock = task.Clock()
    deadlines = Deadlines(clock)
    d = defer.Deferred()
    results = track(deadlines.add(d, 1.0, timedOut, "x"))
    clock.advance(1.0)
    assert results == ["timeout x"]
    d.callback("too late")  # a cancelled Deferred ignores one late result
    assert results == ["timeout x"]


def test_the_cancel_reaches_what_the_request_waits_on():
    clock = task.Clock()
    deadlines = Deadlines(clock)
    cancelled = []
    inner = defer.Deferred(cancelled.append)
    outer = defer.Deferred()
    outer.callback(None)
    outer.addCallback(lambda _: inner)
    results = track(deadlines.add(outer, 2.0, timedOut, "y"))
    clock.advance(2.0)
    assert cancelled == [inner] and results == ["timeout y"]


def test_requests_added_while_expiring_are_timed_from_their_own_start():
    clock = task.Clock()
    deadlines = Deadlines(clock)
    later = []

    def retry(failure, name):
        d = defer.Deferred()
        later.append(track(deadlines.add(d, 3.0, timedOut, "retry")))
        return f"timeout {name}"

    results = track(deadlines.add(defer.Deferred(), 1.0, retry, "first"))
    clock.advance(1.0)
    assert results == ["timeout first"] and later[0] == []
    clock.advance(2.999)
    assert later[0] == []
    clock.advance(0.001)
    assert later[0] == ["timeout retry"]
    assert clock.getDelayedCalls() == []


def test_a_shorter_timeout_after_a_longer_one_still_expires_on_time():
    clock = task.Clock()
    deadlines = Deadlines(clock)
    long = track(deadlines.add(defer.Deferred(), 5.0, timedOut, "long"))
    clock.advance(0.01)
    short = track(deadlines.add(defer.Deferred(), 2.5, timedOut, "short"))
    clock.advance(2.5)
    assert short == ["timeout short"] and long == []
    clock.advance(2.49)
    assert long == ["timeout long"]
    assert clock.getDelayedCalls() == []


def test_a_clock_stepping_back_does_not_delay_new_requests():
    clock = task.Clock()
    clock.advance(100)
    deadlines = Deadlines(clock)
    old = track(deadlines.add(defer.Deferred(), 5.0, timedOut, "old"))
    clock.rightNow -= 60  # the wall clock steps back
    new = track(deadlines.add(defer.Deferred(), 5.0, timedOut, "new"))
    clock.advance(5.0)
    assert new == ["timeout new"] and old == []


def test_a_request_added_while_expiring_does_not_delay_earlier_ones():
    clock = task.Clock()
    deadlines = Deadlines(clock)
    later = []

    def addAnother(failure, name):
        later.append(track(deadlines.add(defer.Deferred(), 3.0, timedOut, "added")))
        return f"timeout {name}"

    a = track(deadlines.add(defer.Deferred(), 1.0, addAnother, "a"))
    clock.advance(0.5)
    b = track(deadlines.add(defer.Deferred(), 1.0, timedOut, "b"))
    clock.advance(0.5)  # t = 1.0: a expires and adds one due at 4.0
    assert a == ["timeout a"] and b == []
    clock.advance(0.5)  # t = 1.5
    assert b == ["timeout b"]
    clock.advance(2.5)  # t = 4.0
    assert later[0] == ["timeout added"]
    assert clock.getDelayedCalls() == []


def test_a_request_finished_by_another_timing_out_keeps_its_own_result():
    clock = task.Clock()
    deadlines = Deadlines(clock)
    b = defer.Deferred()

    def finishB(failure, name):
        b.callback("b's real answer")
        return f"timeout {name}"

    a = track(deadlines.add(defer.Deferred(), 1.0, finishB, "a"))
    bResults = track(deadlines.add(b, 1.0, timedOut, "b"))
    clock.advance(1.0)
    assert a == ["timeout a"] and bResults == ["b's real answer"]
    assert clock.getDelayedCalls() == []
