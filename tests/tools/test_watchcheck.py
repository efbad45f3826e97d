"""
The pure checks of C{raftkv chaos}'s watch completeness
(L{twisted_raft.tools.watchcheck}) and bank audit
(L{twisted_raft.tools.bank.BankAudit}), with planted bugs; and the offline
read of a data dir's committed events (L{twisted_raft.tools.eventlog}).
"""

import os

from twisted_raft.kv import KVStore, encodeDelete, encodeMetadataEpoch, encodePut
from twisted_raft.kvrecords import Event, KeyValue
from twisted_raft.kvtxn import Put, Txn, encodeTxn
from twisted_raft.raft.messages import CONFIGURATION, Entry, SnapshotMeta
from twisted_raft.storage.files import WAL_DIR
from twisted_raft.storage.snapshot import SnapshotFiles
from twisted_raft.storage.wal import WriteAheadLog
from twisted_raft.tools.bank import BankAudit, accountKeys
from twisted_raft.tools.eventlog import readWindow
from twisted_raft.tools.watchcheck import LogWindow, WatchCheck


def put(key, value, mod, create=None, version=1):
    return Event("put", key, value, mod if create is None else create, mod, version)


def delete(key, mod):
    return Event("delete", key, None, 0, mod, 0)


def history():
    """A correct run: k0 created at 5, written at 6 and 8 (a txn with k1),
    deleted at 9, created again at 10; k1 existed before the start."""
    return [
        put("k0", b"a", 5),
        put("k0", b"b", 6, create=5, version=2),
        put("k0", b"c", 8, create=5, version=3), put("k1", b"y", 8, create=2, version=4),
        delete("k0", 9),
        put("k0", b"d", 10),
    ]


def finished(events, initial=(KeyValue("k1", b"x", 2, 4, 3),), acks=(), final=True,
             end=11):
    check = WatchCheck("k", 5, initial)
    for e in events:
        check.delivered([e])
    for ack in acks:
        check.acknowledged(*ack)
    check.endRevision = end
    if final:
        check.finalRead(10, [KeyValue("k0", b"d", 10, 10, 1), KeyValue("k1", b"y", 2, 8, 4)])
    return check


ACKS = [("put", "k0", b"b", 6), ("none", "k0", None, 7), ("put", "k1", b"y", 8),
        ("delete", "k0", None, 9), ("put", "k0", b"d", 10), ("put", "other", b"z", 7)]


def test_a_complete_history_passes():
    check = finished(history(), acks=ACKS)
    status, lines = check.verdict()
    assert status == "ok", lines
    assert "acknowledged writes delivered at their revisions: 5/5" in lines[1]
    j = check.toJSON()
    assert j["ok"] and j["events"] == 6 and j["acknowledged"] == 5


def test_a_duplicated_event_is_caught():
    events = history()
    events.insert(2, events[1])
    status, lines = finished(events).verdict()
    assert status == "violation"
    assert any("duplicated event: put 'k0'=b'b' @6" in line for line in lines), lines


def test_a_gap_is_caught_by_the_versions():
    events = history()
    del events[1]  # k0's second write, version 2, never delivered
    status, lines = finished(events, final=False).verdict()
    assert status == "violation"
    assert any("expected create 5, version 2" in line for line in lines), lines


def test_a_missed_acknowledged_write_is_caught():
    events = history()
    del events[3]  # k1 at 8: the version chain of k1 alone cannot see it (no later event)
    status, lines = finished(events, acks=ACKS, final=False).verdict()
    assert status == "violation"
    assert lines == ["acknowledged put of 'k1' at revision 8 was never delivered"]


def test_a_missed_event_before_a_delete_is_caught_by_the_log():
    events = history()
    del events[2]  # k0's version 3 at 8, just before its delete: no chain breaks
    check = finished(events, final=False)
    assert check.verdict()[0] == "ok"
    check.addLog(LogWindow(2, 7, 10, history()[2:]))
    status, lines = check.verdict()
    assert status == "violation"
    assert lines == ["n2's log, revisions 7-10: 1 committed event(s) never delivered, the "
                     "first put 'k0'=b'c' @8 (create 5, version 3)"]


def test_an_out_of_order_event_is_caught():
    events = history()
    events[1], events[2] = events[2], events[1]
    status, lines = finished(events).verdict()
    assert status == "violation"
    assert any(line.startswith("out of order: put 'k0'=b'b' @6") and
               line.endswith("delivered after revision 8") for line in lines), lines


def test_a_wrong_end_state_is_caught():
    events = history()[:-1]  # the last put of k0 missing, and nothing after it
    status, lines = finished(events).verdict()
    assert status == "violation"
    assert lines == ["'k0': the events make None, the final read at revision 10 says "
                     "(b'd', 10, 10, 1)"]


def test_a_watcher_that_did_not_catch_up_is_caught():
    status, lines = finished(history(), end=9).verdict()
    assert status == "violation"
    assert lines == ["the watcher stopped at revision 9, before the final read's revision 10"]


def test_a_compacted_watcher_is_reported_not_passed():
    check = finished(history()[:3], end=9)
    check.compacted = 50
    status, lines = check.verdict()
    assert status == "inconclusive"
    assert "COMPACTED" in lines[0] and check.toJSON()["status"] == "inconclusive"


def test_the_log_comparison_covers_only_what_was_delivered_and_logged():
    check = finished(history(), acks=ACKS)
    check.addLog(LogWindow(1, 8, 40, history()[2:]))  # compacted up to 7; holds more than seen
    check.addLog(LogWindow(3, 3, 9, history()[:5]))
    status, lines = check.verdict()
    assert status == "ok", lines
    assert check.logCoverage() == [(5, 10)]
    assert "equal to the committed log for 6 revisions (5-10)" in lines[2]


def test_bank_audit():
    keys = accountKeys(3)
    audit = BankAudit(keys)

    def kvs(*balances):
        return [KeyValue(k, str(b).encode(), 1, 1, 1) for k, b in zip(keys, balances)]

    assert audit.read(5, kvs(100, 100, 100)) and audit.total == 300
    assert audit.read(6, kvs(50, 150, 100))
    assert not audit.read(7, kvs(50, 150, 99), "client 3")
    assert audit.problems == ["client 3's read at revision 7: the total is 299, not 300"]
    assert not audit.read(8, kvs(-1, 201, 100))
    assert not audit.read(9, kvs(100, 200))
    assert not audit.read(10, [KeyValue(keys[0], b"x", 1, 1, 1)] + kvs(100, 200)[1:])
    assert audit.violations == 4 and audit.reads == 6
    assert "negative" in audit.problems[1] and "the accounts are" in audit.problems[2]
    assert "not a balance" in audit.problems[3]


def test_read_window_replays_the_log_after_the_snapshot(tmp_path):
    """The committed events of a data dir: a snapshot up to 3, then the
    log; entries past C{upTo} and other keys are left out."""
    data = str(tmp_path)
    store = KVStore()
    entries = [Entry(1, 1, encodeMetadataEpoch()), Entry(2, 1, encodePut("k0", b"a")),
               Entry(3, 1, encodePut("x", b"-"))]
    for e in entries:
        store.apply(e.index, e.data)
    SnapshotFiles(data, os.fsync).save(SnapshotMeta(3, 1), store.snapshotWriter())
    wal = WriteAheadLog(os.path.join(data, WAL_DIR), 1 << 20, os.fsync)
    wal.recover()
    wal.append(entries + [
        Entry(4, 2, b""),
        Entry(5, 2, encodePut("k0", b"b")),
        Entry(6, 2, b"config", CONFIGURATION),
        Entry(7, 2, encodeTxn(Txn([], [Put("k1", b"y"), Put("k0", b"c")]))),
        Entry(8, 2, encodeDelete("k0")),
        Entry(9, 2, encodePut("k0", b"past upTo")),
    ])
    wal.sync()
    wal.close()
    window = readWindow(2, data, "k", 8)
    assert (window.node, window.first, window.last, window.snapshot) == (2, 4, 8, 3)
    assert window.events == [
        put("k0", b"b", 5, create=2, version=2),
        put("k1", b"y", 7), put("k0", b"c", 7, create=2, version=3),
        delete("k0", 8),
    ]
    assert os.listdir(os.path.join(data, WAL_DIR))  # read, not changed


def test_the_watcher_starts_only_after_the_metadata_epoch():
    # Keys written before the epoch rebase their create_revision and version
    # at it, which the version check would read as a missed event: the run
    # waits for an empty transaction (refused until the epoch) first.
    from twisted.internet import defer, task

    from twisted_raft.kvrecords import RangeResult
    from twisted_raft.rpc.commands import Unavailable
    from twisted_raft.tools.watchrun import WatchRun

    clock = task.Clock()
    calls = []

    class Client:
        addresses = ["127.0.0.1:1"]

        def txn(self, *args):
            calls.append("txn")
            if calls.count("txn") < 3:
                return defer.fail(Unavailable("the cluster is upgrading its key metadata; retry"))
            return defer.succeed(None)

        def rangeAll(self, key, prefix=False):
            calls.append("range")
            return defer.succeed(RangeResult([], False, 0, 7))

        def watch(self, key, prefix, startRevision, onEvents):
            calls.append(("watch", startRevision))

            class Watcher:
                done = defer.Deferred()

                def whenStarted(self):
                    return defer.succeed(startRevision)

            return Watcher()

    run = WatchRun(clock, Client, lambda c: defer.succeed(None), "k", lambda line: None)
    started = run.start()
    assert calls == ["txn"]
    clock.advance(0.2)
    clock.advance(0.2)
    assert calls == ["txn", "txn", "txn", "range", ("watch", 8)]
    assert started.called and run.check.startRevision == 8
