"""
The event history watches will read: the events each entry makes, whole
revisions, bounds and trimming, COMPACTED below the oldest revision, the
reset on restore, the hooks, and reads that cost what they return.
"""

import io

import pytest

from twisted_raft import kv, kvstored
from twisted_raft.kvhistory import EVENT_OVERHEAD, EventHistory
from twisted_raft.kvrecords import Compacted, Event, KeyRange
from twisted_raft.kvtxn import Delete, Put, Txn


def epoched(**kw):
    """A store past its metadata epoch (at index 1), so transactions apply."""
    store = kv.KVStore(**kw)
    store.apply(1, kv.encodeMetadataEpoch())
    return store


def test_events_of_each_entry_kind():
    store = kv.KVStore()
    store.apply(1, kv.encodePut("a", b"1"))
    store.apply(2, kv.encodeCompareAndSet("a", b"1", b"2"))
    store.apply(3, kv.encodeCompareAndSet("a", b"1", b"3"))  # fails: no event
    store.apply(4, kv.encodeDelete("a"))
    store.apply(5, kv.encodeDelete("a"))  # nothing to delete: no event
    store.apply(6, kv.encodeSession("c", 1, kv.encodePut("b", b"x")))
    store.apply(7, kv.encodeSession("c", 1, kv.encodePut("b", b"x")))  # duplicate
    store.apply(8, kv.encodeMetadataEpoch())  # no event
    store.apply(9, kv.encodeTxn(Txn(success=[Put("b", b"y"), Delete("b"), Put("a", b"z")])))
    assert store.watchEvents(1, "", prefix=True).events == [
        Event("put", "a", b"1", 1, 1, 1),
        Event("put", "a", b"2", 1, 2, 2),
        Event("delete", "a", None, 0, 4, 0),
        Event("put", "b", b"x", 6, 6, 1),
        # b was last written below the floor (8): it goes on from (8, 8, 1)
        Event("put", "b", b"y", 8, 9, 2),
        Event("delete", "b", None, 0, 9, 0),
        Event("put", "a", b"z", 9, 9, 1),
    ]
    assert len(store.history) == 5  # revisions with changes: 1, 2, 4, 6, 9


def test_reads_from_a_revision_for_a_key_or_prefix():
    store = kv.KVStore()
    for i, key in enumerate(["a", "ab", "b", "a", "abc", "a\x00"]):
        store.apply(i + 1, kv.encodePut(key, b"v"))
    keysOf = lambda batch: [(e.key, e.mod_revision) for e in batch.events]  # noqa: E731
    assert keysOf(store.watchEvents(1, "a")) == [("a", 1), ("a", 4)]
    assert keysOf(store.watchEvents(2, "a")) == [("a", 4)]
    assert keysOf(store.watchEvents(1, "ab", prefix=True)) == [("ab", 2), ("abc", 5)]
    assert keysOf(store.watchEvents(3, "a", "b")) == [("a", 4), ("abc", 5), ("a\x00", 6)]
    assert store.watchEvents(5, "b").events == []
    # from the future: nothing yet, and the next read starts there
    future = store.watchEvents(10, "a", prefix=True)
    assert future.events == [] and future.next_revision == 10
    assert store.watchEvents(7, "a").next_revision == 7


def test_next_revision_covers_revisions_without_changes():
    store = kv.KVStore()
    store.apply(1, kv.encodePut("a", b"1"))
    store.apply(2, kv.encodeDelete("nothing"))
    store.apply(3, kv.encodeCompareAndSet("a", b"no", b"x"))
    batch = store.watchEvents(1, "a")
    assert len(batch.events) == 1 and batch.next_revision == 4
    assert store.watchEvents(2, "a").next_revision == 4


def test_pages_hold_whole_revisions():
    store = epoched()
    store.apply(2, kv.encodeTxn(Txn(success=[Put(f"k{i}", b"v") for i in range(5)])))
    store.apply(3, kv.encodePut("k9", b"v"))
    store.apply(4, kv.encodeTxn(Txn(success=[Put("k1", b"w"), Put("k2", b"w")])))
    first = store.watchEvents(1, "k", prefix=True, maxEvents=2)
    assert len(first.events) == 5 and first.next_revision == 3  # never half a txn
    second = store.watchEvents(3, "k", prefix=True, maxEvents=2)
    assert [e.key for e in second.events] == ["k9"] and second.next_revision == 4
    third = store.watchEvents(4, "k", prefix=True, maxEvents=2)
    assert len(third.events) == 2 and third.next_revision == 5
    size = 2 + 1 + EVENT_OVERHEAD
    bybytes = store.watchEvents(3, "k", prefix=True, maxBytes=2 * size)
    assert [e.key for e in bybytes.events] == ["k9"] and bybytes.next_revision == 4


def test_a_bounded_scan_says_where_it_stopped():
    store = kv.KVStore()
    for i in range(10):
        store.apply(i + 1, kv.encodePut("noise", b"v"))
    store.apply(11, kv.encodePut("wanted", b"v"))
    batch = store.watchEvents(1, "wanted", maxScan=4)
    assert batch.events == [] and batch.next_revision == 5
    batch = store.watchEvents(batch.next_revision, "wanted", maxScan=100)
    assert [e.mod_revision for e in batch.events] == [11] and batch.next_revision == 12


def test_trimming_raises_the_oldest_revision():
    store = kv.KVStore(historyEvents=3)
    for i in range(1, 5):
        store.apply(i, kv.encodePut(f"k{i}", b"v"))
    # 4 events: over the bound, trimmed to a 64th (at least one) below it (2)
    assert store.history.oldestRevision == 3 and store.history.events == 2
    store.apply(5, kv.encodePut("k5", b"v"))
    assert store.history.oldestRevision == 3 and store.history.events == 3
    with pytest.raises(Compacted) as caught:
        store.watchEvents(2, "", prefix=True)
    assert caught.value.compact_revision == 3
    assert [e.mod_revision for e in store.watchEvents(3, "", prefix=True).events] == [3, 4, 5]


def test_trimming_by_bytes_keeps_the_newest_revision_whole():
    store = epoched(historyBytes=1000)
    store.apply(2, kv.encodePut("a", b"x" * 100))
    store.apply(3, kv.encodeTxn(Txn(success=[Put(f"b{i}", b"x" * 300) for i in range(4)])))
    assert store.history.oldestRevision == 3  # only revision 3 is left, over budget
    assert len(store.watchEvents(3, "", prefix=True).events) == 4
    store.apply(4, kv.encodePut("c", b"x"))
    assert store.history.oldestRevision == 4 and store.history.bytes < 1000


def test_the_history_list_is_compacted_as_it_trims():
    history = EventHistory(maxEvents=10)
    for revision in range(1, 5001):
        history.append(revision, [("k", kvstored.pack(b"v", 1, revision, revision))])
    # trimmed to one below the bound when over it: 9 or 10 revisions held
    assert 9 <= len(history) <= 10 and history.oldestRevision == 5001 - len(history)
    assert len(history._revisions) < 2 * 1024 + 10  # the trimmed head was dropped
    oldest = history.oldestRevision
    batch = history.read(oldest, KeyRange.of("k"), 5000)
    assert [e.mod_revision for e in batch.events] == list(range(oldest, 5001))
    with pytest.raises(Compacted):
        history.read(oldest - 1, KeyRange.of("k"), 5000)


def test_a_restart_rebuilds_the_history_from_the_snapshot_on():
    store = kv.KVStore()
    store.apply(1, kv.encodePut("a", b"1"))
    store.apply(2, kv.encodePut("a", b"2"))
    write = store.snapshotWriter()
    out = io.BytesIO()
    write(out)
    store.snapshotDone()
    store.apply(3, kv.encodePut("a", b"3"))
    # a restart: restore the snapshot, replay the log after it
    restarted = kv.KVStore()
    restarted.restoreSnapshot(restarted.parseSnapshot(io.BytesIO(out.getvalue())))
    assert restarted.history.oldestRevision == 3
    with pytest.raises(Compacted) as caught:
        restarted.watchEvents(2, "a")
    assert caught.value.compact_revision == 3
    restarted.apply(3, kv.encodePut("a", b"3"))
    assert restarted.watchEvents(3, "a") == store.watchEvents(3, "a")


def test_hooks():
    store = kv.KVStore()
    applied, restoredAt = [], []
    store.onApplied = applied.append
    store.onRestored = restoredAt.append
    store.apply(1, kv.encodePut("a", b"1"))
    store.apply(2, kv.encodeDelete("none"))  # no change, no call
    store.apply(3, kv.encodeMetadataEpoch())  # no change, no call
    store.apply(4, kv.encodeTxn(Txn(success=[Put("a", b"2"), Put("b", b"2")])))
    assert applied == [1, 4]
    write = store.snapshotWriter()
    out = io.BytesIO()
    write(out)
    store.snapshotDone()
    store.restoreSnapshot(store.parseSnapshot(io.BytesIO(out.getvalue())))
    assert restoredAt == [4] and store.history.oldestRevision == 5
