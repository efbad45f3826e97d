"""
The KV state machine, the command encoding and the wire encodings (entry
batches, BigBytes).
"""

import pytest
from hypothesis import given, strategies as st
from twisted.protocols import amp

from twisted_raft import kv, kvcodec
from twisted_raft.raft.messages import Entry
from twisted_raft.rpc import commands, wire
from twisted_raft.rpc.arguments import CHUNK, BigBytes


def test_kv_re_exports_the_command_encoding():
    # code imports the encoding from kv: every public name of kvcodec is there
    names = [n for n in vars(kvcodec) if not n.startswith("_") and n != "struct"]
    assert {"encodePut", "decode", "decodeSession", "checkSession", "SESSION"} <= set(names)
    for name in names:
        assert getattr(kv, name) is getattr(kvcodec, name), name


def test_a_long_value_decodes_as_a_view_only_if_asked():
    value = b"v" * 5000
    for entry in (kv.encodePut("k", value), kv.encodeCompareAndSet("k", b"e", value)):
        assert type(kv.decode(entry)[3]) is bytes and kv.decode(entry)[3] == value
        viewed = kv.decode(entry, 4096)[3]
        assert type(viewed) is memoryview and viewed == value
        assert type(kv.decode(entry, 5001)[3]) is bytes


def test_put_get_delete_cas():
    store = kv.KVStore()
    assert store.apply(1, kv.encodePut("a", b"1")) is None
    assert store.get("a") == b"1"
    assert store.apply(2, kv.encodeCompareAndSet("a", b"2", b"x")) is False
    assert store.apply(3, kv.encodeCompareAndSet("a", b"1", b"x")) is True
    assert store.get("a") == b"x"
    assert store.apply(4, kv.encodeCompareAndSet("b", None, b"new")) is True
    assert store.apply(5, kv.encodeCompareAndSet("b", None, b"again")) is False
    assert store.apply(6, kv.encodeDelete("a")) is True
    assert store.apply(7, kv.encodeDelete("a")) is False
    assert store.get("a") is None and store.get("b") == b"new"


def test_cas_expected_empty_differs_from_absent():
    store = kv.KVStore()
    assert store.apply(1, kv.encodeCompareAndSet("k", b"", b"v")) is False
    store.apply(2, kv.encodePut("k", b""))
    assert store.apply(3, kv.encodeCompareAndSet("k", None, b"v")) is False
    assert store.apply(4, kv.encodeCompareAndSet("k", b"", b"v")) is True


@given(st.text(min_size=1), st.one_of(st.none(), st.binary()), st.binary())
def test_command_roundtrip(key, expected, value):
    assert kv.decode(kv.encodePut(key, value)) == (kv.PUT, key, None, value)
    assert kv.decode(kv.encodeDelete(key)) == (kv.DELETE, key, None, None)
    assert kv.decode(kv.encodeCompareAndSet(key, expected, value)) == (kv.CAS, key, expected, value)


@pytest.mark.parametrize("data", [b"", b"\x09\x00\x00\x00\x00", b"\x03\x00\x00\x00\x05ab"])
def test_malformed_command_raises(data):
    with pytest.raises(kv.CommandError):
        kv.decode(data)


@given(st.lists(st.tuples(st.integers(0, 2**63), st.binary(max_size=300)), max_size=20),
       st.integers(1, 1000))
def test_entry_batch_roundtrip(pairs, first):
    entries = [Entry(first + n, term, data) for n, (term, data) in enumerate(pairs)]
    assert wire.decodeEntries(wire.encodeEntries(entries), first) == entries


@pytest.mark.parametrize("cut", [1, 5, 13])
def test_truncated_entry_batch_rejected(cut):
    blob = wire.encodeEntries([Entry(1, 1, b"hello"), Entry(2, 1, b"world")])
    with pytest.raises(ValueError):
        wire.decodeEntries(blob[:-cut], 1)
    with pytest.raises(ValueError):
        wire.decodeEntries(blob + b"x", 1)


@pytest.mark.parametrize("size", [0, 1, CHUNK, CHUNK + 1, 3 * CHUNK + 7, 1024 * 1024])
def test_bigbytes_splits_and_joins(size):
    value = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    box = {}
    BigBytes().toBox(b"value", box, {"value": value}, None)
    assert all(len(v) <= CHUNK for v in box.values())
    assert box[b"value"] == value[:CHUNK]
    chunks = [b"value"] + [b"value.%d" % n for n in range(2, len(box) + 1)]
    assert sorted(box) == sorted(chunks)
    objects = {}
    BigBytes().fromBox(b"value", dict(box), objects, None)
    assert objects == {"value": value}


def test_bigbytes_gap_is_malformed():
    box = {b"value": b"a" * CHUNK, b"value.3": b"c"}
    objects = {}
    BigBytes().fromBox(b"value", box, objects, None)
    assert "_malformed" in objects


def test_malformed_arguments_become_invalid_argument():
    with pytest.raises(amp.RemoteAmpError) as caught:
        commands.Put.parseArguments(amp.AmpBox({b"value": b"x"}), None)
    assert caught.value.errorCode == commands.INVALID_ARGUMENT
