"""
Per-key metadata (create_revision, mod_revision, version) through every entry
kind, session duplicates, snapshots (payload version 2) and version 1
payloads written before metadata existed.
"""

import io
import struct
import zlib

import pytest

from twisted_raft import kv, kvsnapshot
from twisted_raft.kvrecords import KeyValue


def sput(seq, key, value, cid="c"):
    return kv.encodeSession(cid, seq, kv.encodePut(key, value))


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


def test_create_mod_version_through_old_entry_kinds():
    store = kv.KVStore()
    assert store.apply(3, kv.encodePut("k", b"1")) is None
    assert store.getKeyValue("k") == KeyValue("k", b"1", 3, 3, 1)
    store.apply(5, kv.encodePut("k", b"2"))
    assert store.getKeyValue("k") == KeyValue("k", b"2", 3, 5, 2)
    assert store.apply(6, kv.encodeCompareAndSet("k", b"nope", b"3")) is False
    assert store.getKeyValue("k") == KeyValue("k", b"2", 3, 5, 2)  # no write
    assert store.apply(7, kv.encodeCompareAndSet("k", b"2", b"3")) is True
    assert store.getKeyValue("k") == KeyValue("k", b"3", 3, 7, 3)
    assert store.apply(8, kv.encodeDelete("k")) is True
    assert store.getKeyValue("k") is None and store.get("k") is None
    assert store.apply(9, kv.encodeDelete("k")) is False
    # a later put creates the key anew
    assert store.apply(10, kv.encodeCompareAndSet("k", None, b"4")) is True
    assert store.getKeyValue("k") == KeyValue("k", b"4", 10, 10, 1)
    assert store.appliedIndex == 10


def test_same_value_is_still_a_write():
    store = kv.KVStore()
    store.apply(1, kv.encodePut("k", b"v"))
    store.apply(2, kv.encodePut("k", b"v"))
    assert store.getKeyValue("k") == KeyValue("k", b"v", 1, 2, 2)


def test_a_session_duplicate_changes_nothing():
    store = kv.KVStore()
    store.apply(1, sput(1, "k", b"first"))
    store.apply(2, sput(2, "k", b"second"))
    before = store.getKeyValue("k")
    events = len(store.history)
    assert store.apply(3, sput(1, "k", b"first")) == kv.Applied(None, 1, duplicate=True)
    assert store.getKeyValue("k") == before == KeyValue("k", b"second", 1, 2, 2)
    assert len(store.history) == events  # no event either
    assert store.appliedIndex == 3


def test_metadata_survives_a_snapshot_and_a_restart():
    store = kv.KVStore()
    store.apply(1, kv.encodePut("a", b"1"))
    store.apply(2, kv.encodePut("a", b"2"))
    store.apply(3, kv.encodePut("\u4e16", b"x"))
    store.apply(4, kv.encodePut("b", b""))
    store.apply(5, kv.encodeDelete("b"))
    blob = payload(store)
    assert blob[8:10] == b"\x00\x02"  # version 2
    copy = restored(blob)
    assert copy.range("", prefix=True) == store.range("", prefix=True)
    assert copy.getKeyValue("a") == KeyValue("a", b"2", 1, 2, 2)
    # and it goes on from there like the original
    for machine in (store, copy):
        machine.apply(6, kv.encodePut("a", b"3"))
        assert machine.getKeyValue("a") == KeyValue("a", b"3", 1, 6, 3)


def test_v2_payload_keys_are_in_utf8_byte_order():
    store = kv.KVStore()
    for i, key in enumerate(["\U0001f600", "z", "\u00e9", "a", "\u4e16", "A", "a\x00"]):
        store.apply(i + 1, kv.encodePut(key, b""))
    blob = payload(store)
    order, pos = [], 8 + 4 + 8 + 8 + 9  # header, then the data section's tag and count
    for _ in range(7):
        klen, vlen = struct.unpack_from(">II", blob, pos)
        pos += 32
        order.append(blob[pos : pos + klen])
        pos += klen + vlen
    assert order == sorted(order)


def test_a_v2_payload_with_keys_out_of_order_is_refused():
    store = kv.KVStore()
    store.apply(1, kv.encodePut("a", b""))
    store.apply(2, kv.encodePut("b", b""))
    blob = bytearray(payload(store))
    start = 8 + 4 + 8 + 8 + 9
    # swap the two keys (same length) and fix the checksum
    blob[start + 32], blob[start + 32 + 1 + 32] = blob[start + 32 + 1 + 32], blob[start + 32]
    body = bytes(blob[:-4])
    blob[-4:] = struct.pack(">I", zlib.crc32(body))
    with pytest.raises(kv.MalformedSnapshotPayload, match="order"):
        restored(bytes(blob))


def v1Payload(appliedIndex, data, sessions):
    """A version 1 payload, built by hand from its documented format."""
    out = bytearray(struct.pack(">8sHHQ", b"RKVSNAP\x00", 1, 0, appliedIndex))
    out += struct.pack(">cQ", b"D", len(data))
    for key, value in data:
        k = key.encode()
        out += struct.pack(">II", len(k), len(value)) + k + value
    out += struct.pack(">cI", b"S", len(sessions))
    for cid, highest, last, results in sessions:
        c = cid.encode()
        out += struct.pack(">HQQI", len(c), highest, last, len(results)) + c
        for seq, index, code in results:
            out += struct.pack(">QQB", seq, index, code)
    out += struct.pack(">cI", b"E", zlib.crc32(bytes(out)))
    return bytes(out)


def test_a_version_1_payload_still_loads():
    blob = v1Payload(
        500,
        [("zeta", b"z"), ("alpha", b"a"), ("\u4e16", b"w")],  # v1: in any order
        [("old", 3, 480, [(2, 470, 2), (3, 480, 0)])],
    )
    store = restored(blob)
    # old keys: created and last written "at" the snapshot's index, version 1
    assert store.range("", prefix=True).kvs == [
        KeyValue("alpha", b"a", 500, 500, 1),
        KeyValue("zeta", b"z", 500, 500, 1),
        KeyValue("\u4e16", b"w", 500, 500, 1),
    ]
    assert store.appliedIndex == 500 and store.history.oldestRevision == 501
    assert store.apply(501, kv.encodeSession("old", 2, kv.encodeDelete("x"))) == kv.Applied(
        True, 470, duplicate=True
    )
    store.apply(502, kv.encodePut("alpha", b"a2"))
    assert store.getKeyValue("alpha") == KeyValue("alpha", b"a2", 500, 502, 2)
    # written again, it is a version 2 payload holding the same
    again = restored(payload(store))
    assert again.range("", prefix=True) == store.range("", prefix=True)


def test_a_version_1_payload_repeating_a_key_is_refused():
    with pytest.raises(kv.MalformedSnapshotPayload, match="repeats a key"):
        restored(v1Payload(1, [("a", b""), ("a", b"")], []))


def test_readable_versions():
    assert kvsnapshot.SNAPSHOT_VERSION == 2 and kvsnapshot.READABLE_VERSIONS == (1, 2)


def test_data_views_compare_metadata_too():
    """What the simulation compares across nodes (store.data)."""
    one, two = kv.KVStore(), kv.KVStore()
    one.apply(1, kv.encodePut("k", b"v"))
    two.apply(1, kv.encodePut("k", b"v"))
    assert one.data == two.data == {"k": b"v"}
    one.apply(2, kv.encodePut("k", b"v"))  # same value, a newer write
    assert one.data == {"k": b"v"} and one.data != two.data
    two.apply(2, kv.encodePut("k", b"v"))
    assert one.data == two.data
