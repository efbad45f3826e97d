"""
The persistence barrier (twisted_raft.raft.durability), alone: Figure 2,
"Rules for Servers": answer only once what was written before is durable.
"""

from twisted.internet import defer
from twisted.python.failure import Failure

from twisted_raft.raft.durability import WriteBarrier
from twisted_raft.raft.messages import StorageFailed


def barrier():
    failures = []
    return WriteBarrier(failures.append), failures


def test_nothing_issued_is_durable_at_once():
    b, _ = barrier()
    fired = []
    b.whenDurable().addCallback(fired.append)
    assert fired == [None]


def test_a_waiter_waits_for_every_write_issued_before_it():
    b, _ = barrier()
    first, second = defer.Deferred(), defer.Deferred()
    b.track(first)
    early = []
    b.whenDurable().addCallback(early.append)
    b.track(second)
    late = []
    b.whenDurable().addCallback(late.append)
    first.callback(None)
    assert early == [None] and late == []
    second.callback(None)
    assert late == [None]


def test_a_failed_write_fails_waiters_and_every_later_wait():
    b, failures = barrier()
    write = defer.Deferred()
    b.track(write)
    waiting = []
    b.whenDurable().addErrback(waiting.append)
    write.errback(Failure(OSError("EIO")))
    assert waiting[0].check(StorageFailed)
    assert len(failures) == 1 and failures[0].check(OSError)
    assert b.failed is failures[0]
    later = []
    b.whenDurable().addErrback(later.append)
    assert later[0].check(StorageFailed)


def test_only_the_first_failure_is_reported():
    b, failures = barrier()
    for _ in range(2):
        write = defer.Deferred()
        b.track(write)
        write.errback(Failure(OSError("EIO")))
    assert len(failures) == 1
