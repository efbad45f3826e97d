"""
How the store keeps a key (kvstored): one bytes object, a header packing the
metadata, then the value; every layout, the metadata floor, and a store and
its v2 snapshot payload past 32-bit indexes.
"""

import io
import struct
import zlib

import pytest

from twisted_raft import kv, kvstored
from twisted_raft.kvrecords import KeyValue
from tests.statemachine.test_kv_metadata import v1Payload

WIDE = 2**32


@pytest.mark.parametrize(
    "create, mod, version, size",
    [
        (1, 1, 1, 5),  # written once
        (0, 0, 1, 5),  # seeded through store.data before any entry
        (WIDE - 1, WIDE - 1, 1, 5),
        (WIDE, WIDE, 1, 9),
        (3, 9, 4, 13),  # written again
        (3, 9, 1, 13),  # version 1 but create < mod: not the written-once layout
        (7, 7, 2, 13),  # two writes at one index (store.data)
        (3, WIDE - 1, WIDE - 1, 13),
        (3, WIDE, 2, 25),
        (WIDE, WIDE + 5, 6, 25),
        (1, 2**64 - 1, 2**64 - 1, 25),
    ],
)
def test_every_layout_keeps_metadata_and_value(create, mod, version, size):
    for value in (b"", b"v", bytes(range(256)) * 5):
        stored = kvstored.pack(value, create, mod, version)
        assert type(stored) is bytes and len(stored) == size + len(value)
        assert kvstored.HEADER_SIZES[stored[0]] == size
        assert kvstored.meta(stored) == (create, mod, version)
        assert kvstored.effectiveMeta(stored, 0) == (create, mod, version)
        assert kvstored.value(stored) == value and type(kvstored.value(stored)) is bytes
        assert kvstored.valueSize(stored) == len(value)
        assert kvstored.keyValue("k", stored, 0) == KeyValue("k", value, create, mod, version)
        assert kvstored.keyValue("k", stored, 0, True) == KeyValue("k", None, create, mod, version)
        if version == 1 and create == mod:
            assert kvstored.packOnce(value, mod) == stored


def test_value_equals_compares_the_whole_value():
    stored = kvstored.pack(b"xabc", 1, 5, 2)
    assert kvstored.valueEquals(stored, b"xabc")
    assert not kvstored.valueEquals(stored, b"abc")  # a suffix
    assert not kvstored.valueEquals(stored, b"yabc")
    assert not kvstored.valueEquals(stored, b"\x00xabc")  # a header byte and the value
    assert kvstored.valueEquals(kvstored.pack(b"", 1, 1, 1), b"")
    assert not kvstored.valueEquals(kvstored.pack(b"", 1, 1, 1), b"\x01")


@pytest.mark.parametrize("stored", [
    kvstored.pack(b"v", 3, 3, 1), kvstored.pack(b"v", 2, 3, 2),
    kvstored.pack(b"v", 3, 3, 1 + WIDE), kvstored.pack(b"v", WIDE, WIDE, 1),
])
def test_below_the_floor_a_key_reads_as_written_there(stored):
    assert kvstored.effectiveMeta(stored, 10 * WIDE) == (10 * WIDE, 10 * WIDE, 1)
    assert kvstored.keyValue("k", stored, 10 * WIDE) == KeyValue("k", b"v", 10 * WIDE, 10 * WIDE, 1)
    assert kvstored.effectiveMeta(stored, 1) == kvstored.meta(stored)


def test_cas_compares_the_whole_value():
    store = kv.KVStore()
    store.apply(1, kv.encodePut("k", b"xabc"))
    assert store.apply(2, kv.encodeCompareAndSet("k", b"abc", b"no")) is False
    assert store.apply(3, kv.encodeCompareAndSet("k", b"xabc", b"yes")) is True
    assert store.get("k") == b"yes" and type(store.get("k")) is bytes


def payload(store):
    write = store.snapshotWriter()
    out = io.BytesIO()
    write(out)
    store.snapshotDone()
    return out.getvalue()


def test_a_store_past_32_bit_indexes_and_its_v2_payload():
    store = kv.KVStore()
    store.apply(WIDE - 2, kv.encodeMetadataEpoch())
    store.apply(WIDE - 1, kv.encodePut("a", b"1"))
    store.apply(WIDE, kv.encodePut("b", b"2"))
    store.apply(WIDE + 1, kv.encodePut("a", b"3"))
    store.apply(WIDE + 2, kv.encodePut("c", b""))
    store.apply(WIDE + 3, kv.encodePut("c", b"4"))
    expected = [
        KeyValue("a", b"3", WIDE - 1, WIDE + 1, 2),
        KeyValue("b", b"2", WIDE, WIDE, 1),
        KeyValue("c", b"4", WIDE + 2, WIDE + 3, 2),
    ]
    assert store.range("", prefix=True).kvs == expected
    blob = payload(store)
    # the payload, built by hand from its documented format (version 2)
    out = bytearray(struct.pack(">8sHHQ", b"RKVSNAP\x00", 2, 0, WIDE + 3))
    out += struct.pack(">Q", WIDE - 2) + struct.pack(">cQ", b"D", 3)
    for k in expected:
        key = k.key.encode()
        out += struct.pack(">IIQQQ", len(key), len(k.value), k.create_revision,
                           k.mod_revision, k.version) + key + k.value
    out += struct.pack(">cI", b"S", 0)
    out += struct.pack(">cI", b"E", zlib.crc32(bytes(out)))
    assert blob == bytes(out)
    copy = kv.KVStore()
    copy.restoreSnapshot(copy.parseSnapshot(io.BytesIO(blob)))
    assert copy.range("", prefix=True).kvs == expected
    assert copy.data == store.data
    copy.apply(WIDE + 4, kv.encodePut("b", b"5"))
    assert copy.getKeyValue("b") == KeyValue("b", b"5", WIDE, WIDE + 4, 2)


def test_long_values_are_stored_whole_through_every_write():
    # a value at least VIEW_FROM long is viewed in its entry, not sliced
    long, longer = bytes(range(256)) * 20, b"L" * (kvstored.VIEW_FROM * 2)
    assert len(long) >= kvstored.VIEW_FROM
    store = kv.KVStore()
    entry = kv.encodePut("a", long)
    store.apply(1, entry)
    store.apply(2, kv.encodeCompareAndSet("a", long, longer))
    store.apply(3, kv.encodeSession("c", 1, kv.encodePut("b", longer)))
    store.apply(4, kv.encodeCompareAndSet("c", None, long))
    for key, value in (("a", longer), ("b", longer), ("c", long)):
        assert store.get(key) == value and type(store.get(key)) is bytes
        assert type(store._data.get(key)) is bytes
    assert store.getKeyValue("a") == KeyValue("a", longer, 1, 2, 2)
    assert [e.value for e in store.watchEvents(1, "", prefix=True).events] == [
        long, longer, longer, long,
    ]
    assert kv.decode(entry)[3] == long and type(kv.decode(entry)[3]) is bytes
    copy = kv.KVStore()
    copy.restoreSnapshot(copy.parseSnapshot(io.BytesIO(payload(store))))
    assert copy.data == store.data


def test_a_version_1_payload_with_long_values_loads():
    long = bytes(range(256)) * 20
    store = kv.KVStore()
    store.restoreSnapshot(store.parseSnapshot(io.BytesIO(
        v1Payload(WIDE + 7, [("b", long), ("a", b"s")], [])
    )))
    assert store.range("", prefix=True).kvs == [
        KeyValue("a", b"s", WIDE + 7, WIDE + 7, 1), KeyValue("b", long, WIDE + 7, WIDE + 7, 1),
    ]
    assert type(store._data.get("b")) is bytes
