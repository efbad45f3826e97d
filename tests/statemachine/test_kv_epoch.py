"""
The metadata epoch: the METADATA_EPOCH entry sets the floor once, keys last
written below it read as (floor, floor, 1) on every node, transactions are
refused until it, and the floor travels in the version 2 payload.  Above
all: stores that started from different version 1 payloads, or replayed
the log from its start, agree on every result and every key's metadata
once the epoch is applied.
"""

import io
import struct
import zlib

import pytest
from hypothesis import given, settings, strategies as st

from twisted_raft import kv, kvsnapshot
from twisted_raft.kvrecords import KeyValue, MetadataUnavailable, PutResult, TxnResult
from twisted_raft.kvtxn import Compare, Put, Range, Txn

from tests.statemachine.test_kv_metadata import v1Payload
from tests.statemachine.test_kv_model import commands, encode


def payload(store):
    write = store.snapshotWriter()
    out = io.BytesIO()
    write(out)
    store.snapshotDone()
    return out.getvalue()


def restored(blob):
    store = kv.KVStore()
    store.restoreSnapshot(store.parseSnapshot(io.BytesIO(blob)))
    return store


EPOCH = kv.encodeMetadataEpoch()
BUMP = Txn([Compare("k", "version", "==", 1)], [Put("k", b"bumped")])
BUMPED = TxnResult(True, [PutResult(None)])


def test_the_entry_is_the_op_byte_alone():
    assert EPOCH == bytes([kv.METADATA_EPOCH]) == b"\x05"


def test_the_first_epoch_sets_the_floor_and_later_ones_change_nothing():
    store = kv.KVStore()
    assert store.needsMetadataEpoch() and store.metadataFloor == 0
    store.apply(1, kv.encodePut("k", b"v"))
    assert store.apply(2, EPOCH) == 2
    assert not store.needsMetadataEpoch() and store.metadataFloor == 2
    assert store.apply(3, EPOCH) == 2 and store.metadataFloor == 2
    assert store.appliedIndex == 3 and len(store.history) == 1  # no events


@pytest.mark.parametrize("data", [EPOCH + b"\x00", kv.encodeSession("c", 1, EPOCH)])
def test_a_malformed_or_session_wrapped_epoch_raises_and_changes_nothing(data):
    store = kv.KVStore()
    with pytest.raises(kv.CommandError):
        store.apply(1, data)
    assert store.metadataFloor == 0 and store.sessions == {}


def test_transactions_are_refused_until_the_epoch():
    store = kv.KVStore()
    store.apply(1, kv.encodePut("k", b"v"))
    refused = store.apply(2, kv.encodeTxn(BUMP))
    assert refused == MetadataUnavailable() and isinstance(refused, kv.MetadataUnavailable)
    assert "upgrading its key metadata; retry" in str(refused)
    for one in (kv.encodePutPrevKv("k", b"x"), kv.encodeDeleteRange("", kv.ALL_KEYS_END)):
        assert store.apply(3, one) == MetadataUnavailable()
    assert store.data == {"k": b"v"} and len(store.history) == 1  # nothing changed
    # the old entry kinds do not depend on metadata: they apply
    assert store.apply(4, kv.encodeCompareAndSet("k", b"v", b"w")) is True
    store.apply(5, EPOCH)
    assert store.apply(6, kv.encodeTxn(BUMP)) == BUMPED
    assert store.getKeyValue("k") == KeyValue("k", b"bumped", 5, 6, 2)


def test_a_refused_session_transaction_keeps_its_sequence_for_the_retry():
    store = kv.KVStore()
    store.apply(1, kv.encodePut("k", b"v"))
    txn = kv.encodeSession("c", 7, kv.encodeTxn(BUMP))
    assert store.apply(2, txn) == MetadataUnavailable()
    assert store.sessions["c"].results == {} and store.cachedResults == 0
    store.apply(3, EPOCH)
    assert store.apply(4, txn) == kv.Applied(BUMPED, 4)
    assert store.apply(5, txn) == kv.Applied(BUMPED, 4, duplicate=True)


def test_keys_below_the_floor_read_as_written_at_it():
    store = kv.KVStore()
    store.apply(1, kv.encodePut("a", b"1"))
    store.apply(2, kv.encodePut("a", b"2"))  # version 2 here, node-local
    store.apply(3, kv.encodePut("b", b"1"))
    store.apply(4, kv.encodePut("gone", b"1"))
    assert store.getKeyValue("a") == KeyValue("a", b"2", 1, 2, 2)  # provisional
    store.apply(5, EPOCH)
    store.apply(6, kv.encodeDelete("gone"))
    assert store.range("", prefix=True).kvs == [
        KeyValue("a", b"2", 5, 5, 1), KeyValue("b", b"1", 5, 5, 1)]
    # a write goes on from there; a key created after the floor is its own
    store.apply(7, kv.encodePut("a", b"3"))
    store.apply(8, kv.encodePut("gone", b"again"))
    assert store.getKeyValue("a") == KeyValue("a", b"3", 5, 7, 2)
    assert store.getKeyValue("gone") == KeyValue("gone", b"again", 8, 8, 1)
    # compares see the same
    ok = Txn([Compare("b", "mod_revision", "==", 5), Compare("b", "create_revision", "==", 5),
              Compare("b", "version", "==", 1), Compare("a", "version", "==", 2)],
             [Range("b")])
    assert store.apply(9, kv.encodeTxn(ok)).succeeded


def test_the_payload_carries_the_floor_and_metadata_as_read():
    store = kv.KVStore()
    store.apply(1, kv.encodePut("a", b"1"))
    store.apply(2, kv.encodePut("a", b"2"))
    store.apply(3, EPOCH)
    store.apply(4, kv.encodePut("b", b"1"))
    store.apply(5, kv.encodePut("b", b"2"))
    blob = payload(store)
    assert struct.unpack_from(">HHQQ", blob, 8) == (2, 0, 5, 3)
    # the record of "a" holds (3, 3, 1), what every node reads, not (1, 2, 2)
    pos = 8 + 4 + 8 + 8 + 9
    assert struct.unpack_from(">IIQQQ", blob, pos) == (1, 1, 3, 3, 1)
    copy = restored(blob)
    assert copy.metadataFloor == 3 and not copy.needsMetadataEpoch()
    assert copy.range("", prefix=True) == store.range("", prefix=True)
    assert copy.range("b").kvs == [KeyValue("b", b"2", 4, 5, 2)]
    for s in (store, copy):
        assert s.apply(6, kv.encodeTxn(BUMP)) == TxnResult(False, [])


def test_a_payload_without_a_floor_restores_a_store_that_needs_one():
    store = kv.KVStore()
    store.apply(1, kv.encodePut("a", b"1"))
    copy = restored(payload(store))
    assert copy.needsMetadataEpoch()
    assert copy.apply(2, kv.encodeTxn(BUMP)) == MetadataUnavailable()


def test_a_version_1_payload_has_no_floor():
    store = restored(v1Payload(40, [("a", b"1")], []))
    assert store.needsMetadataEpoch()
    assert store.getKeyValue("a") == KeyValue("a", b"1", 40, 40, 1)
    store.apply(41, EPOCH)
    assert store.getKeyValue("a") == KeyValue("a", b"1", 41, 41, 1)


def _patched(blob, offset, fmt, *values):
    """C{blob} with C{values} packed at C{offset} and the trailer's CRC fixed."""
    out = bytearray(blob)
    struct.pack_into(fmt, out, offset, *values)
    out[-4:] = struct.pack(">I", zlib.crc32(bytes(out[:-4])))
    return bytes(out)


def test_impossible_floors_and_metadata_are_refused():
    store = kv.KVStore()
    store.apply(1, kv.encodePut("a", b"1"))
    store.apply(2, EPOCH)
    blob = payload(store)
    with pytest.raises(kv.MalformedSnapshotPayload, match="floor 9 above"):
        restored(_patched(blob, 20, ">Q", 9))
    pos = 8 + 4 + 8 + 8 + 9 + 8
    with pytest.raises(kv.MalformedSnapshotPayload, match="impossible"):
        restored(_patched(blob, pos, ">QQQ", 3, 2, 1))  # created after its last write
    with pytest.raises(kv.MalformedSnapshotPayload, match="impossible"):
        restored(_patched(blob, pos, ">QQQ", 2, 2, 0))  # version 0


# -- determinism across nodes -------------------------------------------------------


def v1Of(store):
    """What a node running the version before metadata wrote for C{store}'s state."""
    sessions = []
    for cid, session in store.sessions.items():  # least recently used first
        results = []
        for seq, (result, index) in session.results.items():
            assert result in (None, False, True), result  # no transaction ran yet
            results.append((seq, index, {None: 0, False: 1, True: 2}[result]))
        sessions.append((cid, session.highest, session.lastIndex, results))
    return v1Payload(store.appliedIndex, list(store.data.items()), sessions)


entries = st.tuples(commands, st.none() | st.tuples(st.sampled_from(["c1", "c2"]),
                                                    st.integers(1, 6)))


@settings(max_examples=300, deadline=None)
@given(st.lists(entries, min_size=2, max_size=30), st.data())
def test_stores_from_version_1_payloads_agree_with_one_replaying_the_log(script, data):
    """
    Three nodes: A replays the log from index 1; B and C start from version
    1 payloads taken at their own indexes before the epoch (an upgraded
    cluster, each node having snapshotted when it liked) and apply the rest.
    Every result from their start on is the same (transactions before the
    epoch are refused by all), and once the epoch is applied every key's
    metadata is the same too, and so are the payloads they write.
    """
    log = []
    for command, session in script:
        entry = encode(command)
        log.append(entry if session is None else kv.encodeSession(*session, entry))
    epochAt = data.draw(st.integers(2, len(log) + 1), label="epoch index")
    log.insert(epochAt - 1, EPOCH)
    if data.draw(st.booleans(), label="a second epoch"):
        log.insert(data.draw(st.integers(epochAt, len(log)), label="at"), EPOCH)
    starts = [data.draw(st.integers(1, epochAt - 1), label=f"v1 payload {n}") for n in "BC"]

    a = kv.KVStore()
    nodes = {}
    for index, entry in enumerate(log, 1):
        expected = a.apply(index, entry)
        for name, node in nodes.items():
            assert node.apply(index, entry) == expected, (name, index)
            assert dict(node.data) == dict(a.data)  # the values, always
            if index >= epochAt:
                assert node.metadataFloor == a.metadataFloor == epochAt
                assert node.range("", prefix=True) == a.range("", prefix=True), (name, index)
                assert node.data == a.data  # values, metadata as read and the floor
        for name, start in zip("BC", starts):
            if index == start:
                nodes[name] = restored(v1Of(a))
    for node in nodes.values():
        assert payload(node) == payload(a)
