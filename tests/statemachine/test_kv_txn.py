"""
Transactions: the TXN entry's encoding (its documented layout, the
encoders' limits, malformed bytes), applying them (compares, branches,
atomic writes at one index), exactly-once with sessions, the bounded
result cache and its snapshot.
"""

import io
import struct

import pytest
from hypothesis import given, strategies as st

from twisted_raft import kv, kvlimits, kvtxn
from twisted_raft.kvrecords import DeleteResult, KeyValue, PutResult, RangeResult, TxnResult
from twisted_raft.kvtxn import Compare, Delete, Put, Range, Txn


def epoched(**kw):
    """A store past its metadata epoch (at index 1), so transactions apply."""
    store = kv.KVStore(**kw)
    store.apply(1, kv.encodeMetadataEpoch())
    return store


def payload(store):
    write = store.snapshotWriter()
    out = io.BytesIO()
    write(out)
    store.snapshotDone()
    return out.getvalue()


def restored(blob, **kw):
    store = kv.KVStore(**kw)
    store.restoreSnapshot(store.parseSnapshot(io.BytesIO(blob)))
    return store


# -- encoding ---------------------------------------------------------------------


def test_the_documented_byte_layout():
    data = kv.encodeTxn(Txn(
        [Compare("k", "version", ">", 2), Compare("k", "value", "==", b"v")],
        [Put("k", b"new", prevKv=True), Delete("p", prefix=True)],
        [Range("a", "b", limit=5, after="a0", keysOnly=True)],
    ))
    expected = (
        b"\x04" + struct.pack(">HHH", 2, 2, 1)
        + b"\x02\x04" + struct.pack(">H", 1) + b"k" + struct.pack(">Q", 2)
        + b"\x01\x01" + struct.pack(">H", 1) + b"k" + struct.pack(">I", 1) + b"v"
        + b"\x01\x01" + struct.pack(">H", 1) + b"k" + struct.pack(">I", 3) + b"new"
        + b"\x02\x02" + struct.pack(">H", 1) + b"p"
        + b"\x03\x15" + struct.pack(">H", 1) + b"a" + struct.pack(">H", 1) + b"b"
        + struct.pack(">H", 2) + b"a0" + struct.pack(">II", 5, kvlimits.MAX_TXN_RANGE_BYTES)
    )
    assert data == expected


keys = st.text(min_size=1, max_size=8)
ops = st.one_of(
    st.builds(Put, keys, st.binary(max_size=8), st.booleans()),
    st.builds(Delete, keys, st.none() | keys, st.just(False), st.booleans()),
    st.builds(Delete, st.text(max_size=4), st.none(), st.just(True), st.booleans()),
    st.builds(Range, keys, st.none() | keys, st.just(False), st.integers(0, 2**32 - 1),
              st.none() | st.text(max_size=4), st.booleans(), st.booleans(),
              st.integers(1, kvlimits.MAX_TXN_RANGE_BYTES)),
)
compares = st.one_of(
    st.builds(Compare, keys, st.just("value"), st.sampled_from(sorted(kvtxn.OPERATORS)),
              st.binary(max_size=8)),
    st.builds(Compare, keys, st.sampled_from(["version", "create_revision", "mod_revision"]),
              st.sampled_from(sorted(kvtxn.OPERATORS)), st.integers(0, 2**64 - 1)),
)


@given(st.builds(Txn, st.lists(compares, max_size=4), st.lists(ops, max_size=4),
                 st.lists(ops, max_size=4)))
def test_roundtrip(txn):
    assert kvtxn.decodeTxn(kv.encodeTxn(txn)) == txn
    # session-wrapped too
    _, _, inner = kv.decodeSession(kv.encodeSession("c", 1, kv.encodeTxn(txn)))
    assert kvtxn.decodeTxn(inner) == txn


@pytest.mark.parametrize(
    "txn,message",
    [
        (Txn([Compare("k", "colour", "==", 1)]), "target"),
        (Txn([Compare("k", "version", "<=", 1)]), "op"),
        (Txn([Compare("k", "version", "==", -1)]), "int 0 to"),
        (Txn([Compare("k", "version", "==", True)]), "int 0 to"),
        (Txn([Compare("k", "value", "==", "text")]), "bytes"),
        (Txn([Compare("", "version", "==", 1)]), "empty compare key"),
        (Txn(success=[Put("", b"v")]), "empty put key"),
        (Txn(success=[Put("k" * 4097, b"v")]), "4097 bytes of UTF-8, over 4096"),
        (Txn(success=[Put("\u00e9" * 2049, b"v")]), "4098 bytes"),
        (Txn(success=[Put("k", b"v" * (kvlimits.MAX_VALUE_BYTES + 1))]), "over 1048576"),
        (Txn(success=[Put("\ud800", b"v")]), "not valid Unicode"),
        (Txn(success=[Delete("", None)]), "empty delete key"),
        (Txn(success=[Delete("a", "b", prefix=True)]), "not both"),
        (Txn(failure=[Range("a", limit=2**32)]), "limit"),
        (Txn(failure=[Range("a", maxBytes=kvlimits.MAX_TXN_RANGE_BYTES + 1)]), "maxBytes"),
        (Txn(success=["put k v"]), "not a Put"),
        (Txn([Compare("k", "version", "==", 1)] * (kvlimits.MAX_TXN_COMPARES + 1)), "compares"),
        (Txn(success=[Put("k", b"")] * (kvlimits.MAX_TXN_OPS + 1)), "success operations"),
        (Txn(failure=[Put("k", b"")] * (kvlimits.MAX_TXN_OPS + 1)), "failure operations"),
        (Txn(success=[Put(f"k{i}", b"v" * kvlimits.MAX_VALUE_BYTES) for i in range(3)]),
         "bytes encoded, over"),
        ("not a txn", "not a Txn"),
    ],
)
def test_encoders_validate(txn, message):
    with pytest.raises(ValueError, match=message):
        kv.encodeTxn(txn)


def test_the_largest_allowed_transaction_encodes():
    big = b"v" * kvlimits.MAX_VALUE_BYTES
    data = kv.encodeTxn(Txn([Compare("k" * 4096, "value", "==", big)],
                            [Put("k" * 4096, big)]))
    assert len(data) <= kvlimits.MAX_TXN_BYTES


GOOD = kv.encodeTxn(Txn([Compare("k", "version", "==", 0)], [Put("k", b"v")],
                        [Range("k", "z", after="m")]))


@pytest.mark.parametrize(
    "data",
    [
        b"\x04",
        GOOD[:-1],  # truncated
        GOOD + b"x",  # trailing bytes
        GOOD[:7] + b"\x09" + GOOD[8:],  # compare target 9
        GOOD[:8] + b"\x09" + GOOD[9:],  # compare op 9
        b"\x04" + struct.pack(">HHH", 0, 1, 0) + b"\x07\x00\x00\x01k",  # op kind 7
        b"\x04" + struct.pack(">HHH", 0, 1, 0) + b"\x01\x02\x00\x01k\x00\x00\x00\x00",  # put flags
        b"\x04" + struct.pack(">HHH", 0, 1, 0) + b"\x02\x06\x00\x01k\x00\x01z",  # prefix + end
        b"\x04" + struct.pack(">HHH", 0, 1, 0) + b"\x02\x08\x00\x01k",  # count_only on delete
        b"\x04" + struct.pack(">HHH", 0, 1, 0) + b"\x02\x00\x00\x02\xff\xfe",  # not UTF-8
        b"\x04" + struct.pack(">HHH", 5, 0, 0),  # counts beyond the bytes
    ],
)
def test_malformed_transactions_raise_command_error_and_change_nothing(data):
    store = kv.KVStore()
    store.apply(1, kv.encodePut("k", b"old"))
    with pytest.raises(kv.CommandError):
        kvtxn.decodeTxn(data)
    with pytest.raises(kv.CommandError):
        store.apply(2, data)
    with pytest.raises(kv.CommandError):
        store.apply(3, kv.encodeSession("c", 1, data))
    assert store.data == {"k": b"old"} and store.sessions == {}
    assert len(store.history) == 1


def test_decoding_does_not_check_limits():
    """An entry encoded under larger limits still applies."""
    many = b"".join(
        b"\x01\x00" + struct.pack(">H", 1) + b"k" + struct.pack(">I", 0)
        for _ in range(kvlimits.MAX_TXN_OPS + 1)
    )
    data = b"\x04" + struct.pack(">HHH", 0, kvlimits.MAX_TXN_OPS + 1, 0) + many
    store = epoched()
    assert store.apply(2, data).succeeded
    assert store.getKeyValue("k").version == kvlimits.MAX_TXN_OPS + 1


# -- applying ---------------------------------------------------------------------


def seeded():
    store = epoched()
    store.apply(2, kv.encodePut("acct/a", b"100"))
    store.apply(3, kv.encodePut("acct/b", b"50"))
    store.apply(4, kv.encodePut("acct/a", b"90"))
    store.apply(5, kv.encodePut("other", b"x"))
    return store


@pytest.mark.parametrize(
    "compare,holds",
    [
        (Compare("acct/a", "value", "==", b"90"), True),
        (Compare("acct/a", "value", "!=", b"90"), False),
        (Compare("acct/a", "value", "<", b"91"), True),
        (Compare("acct/a", "value", ">", b"9"), True),
        (Compare("acct/a", "version", "==", 2), True),
        (Compare("acct/a", "create_revision", "==", 2), True),
        (Compare("acct/a", "mod_revision", "==", 4), True),
        (Compare("acct/a", "mod_revision", "<", 4), False),
        (Compare("acct/a", "mod_revision", ">", 3), True),
        (Compare("acct/a", "version", "!=", 2), False),
        # a missing key: version and revisions 0; every value compare fails
        (Compare("none", "version", "==", 0), True),
        (Compare("none", "create_revision", "==", 0), True),
        (Compare("none", "mod_revision", "<", 1), True),
        (Compare("none", "value", "==", b""), False),
        (Compare("none", "value", "!=", b"x"), False),
        (Compare("none", "value", "<", b"x"), False),
        (Compare("none", "value", ">", b""), False),
    ],
)
def test_compares(compare, holds):
    store = seeded()
    result = store.apply(6, kv.encodeTxn(Txn([compare], [Put("ran", b"s")], [Put("ran", b"f")])))
    assert result.succeeded is holds
    assert store.get("ran") == (b"s" if holds else b"f")


def test_a_transfer_applies_atomically_at_one_index():
    store = seeded()
    txn = Txn(
        [Compare("acct/a", "mod_revision", "==", 4), Compare("acct/b", "mod_revision", "==", 3)],
        [Put("acct/a", b"80", prevKv=True), Put("acct/b", b"60"), Range("acct/", prefix=True)],
        [Range("acct/", prefix=True)],
    )
    result = store.apply(8, kv.encodeTxn(txn))
    assert result == TxnResult(True, [
        PutResult(KeyValue("acct/a", b"90", 2, 4, 2)),
        PutResult(None),
        RangeResult([KeyValue("acct/a", b"80", 2, 8, 3), KeyValue("acct/b", b"60", 3, 8, 2)],
                    False, 2, 8),
    ])
    events = store.watchEvents(8, "acct/", prefix=True).events
    assert [(e.key, e.mod_revision) for e in events] == [("acct/a", 8), ("acct/b", 8)]
    # the same transaction again: the compares fail, the failure branch reads
    again = store.apply(9, kv.encodeTxn(txn))
    assert not again.succeeded and again.responses[0].kvs[0].value == b"80"
    assert store.appliedIndex == 9 and len(store.history) == 5  # no event at 9


def test_delete_ranges_count_and_return_previous():
    store = seeded()
    result = store.apply(6, kv.encodeDeleteRange("acct/", prefix=True, prevKv=True))
    assert result == TxnResult(True, [DeleteResult(2, [
        KeyValue("acct/a", b"90", 2, 4, 2), KeyValue("acct/b", b"50", 3, 3, 1)])])
    assert store.data == {"other": b"x"}
    assert [(e.type, e.key, e.mod_revision) for e in store.watchEvents(6, "", prefix=True).events] == [
        ("delete", "acct/a", 6), ("delete", "acct/b", 6)]
    assert store.apply(7, kv.encodeDeleteRange("acct/", prefix=True)) == TxnResult(
        True, [DeleteResult(0, None)])
    assert store.apply(8, kv.encodeDeleteRange("a", "p")) == TxnResult(
        True, [DeleteResult(1, None)])
    assert store.apply(9, kv.encodeDeleteRange("", kv.ALL_KEYS_END)) == TxnResult(
        True, [DeleteResult(0, None)])


def test_put_with_prev_kv():
    store = seeded()
    assert store.apply(6, kv.encodePutPrevKv("other", b"y")) == TxnResult(
        True, [PutResult(KeyValue("other", b"x", 5, 5, 1))])
    assert store.apply(7, kv.encodePutPrevKv("new", b"n")) == TxnResult(True, [PutResult(None)])
    assert store.getKeyValue("new") == KeyValue("new", b"n", 7, 7, 1)


def test_operations_see_the_earlier_ones():
    store = epoched()
    result = store.apply(2, kv.encodeTxn(Txn(success=[
        Put("k", b"1"), Put("k", b"2", prevKv=True), Range("k"), Delete("k", prevKv=True),
        Range("k", countOnly=True),
    ])))
    assert result.responses == [
        PutResult(None),
        PutResult(KeyValue("k", b"1", 2, 2, 1)),
        RangeResult([KeyValue("k", b"2", 2, 2, 2)], False, 1, 2),
        DeleteResult(1, [KeyValue("k", b"2", 2, 2, 2)]),
        RangeResult([], False, 0, 2),
    ]
    assert [(e.type, e.version) for e in store.watchEvents(2, "k").events] == [
        ("put", 1), ("put", 2), ("delete", 0)]


def test_a_range_in_a_transaction_keeps_to_its_byte_budget():
    store = epoched()
    for i in range(5):
        store.apply(i + 2, kv.encodePut(f"k{i}", b"x" * 99))
    result = store.apply(9, kv.encodeTxn(Txn(success=[Range("k", prefix=True, maxBytes=250)])))
    r = result.responses[0]
    assert [item.key for item in r.kvs] == ["k0", "k1"] and r.more and r.count == 5


def test_an_empty_transaction():
    store = epoched()
    assert store.apply(2, kv.encodeTxn(Txn())) == TxnResult(True, [])
    assert store.appliedIndex == 2 and len(store.history) == 0


# -- exactly-once -----------------------------------------------------------------


def stxn(seq, txn, cid="c"):
    return kv.encodeSession(cid, seq, kv.encodeTxn(txn))


def test_a_duplicate_transaction_answers_like_the_first_and_changes_nothing():
    store = seeded()
    txn = Txn([Compare("acct/a", "version", "==", 2)],
              [Put("acct/a", b"1", prevKv=True), Range("acct/", prefix=True)])
    first = store.apply(6, stxn(1, txn))
    assert first.result.succeeded and first.index == 6 and not first.duplicate
    state = store.range("", prefix=True)
    again = store.apply(7, stxn(1, txn))
    assert again == kv.Applied(first.result, 6, duplicate=True)
    assert store.range("", prefix=True).kvs == state.kvs
    assert len(store.history) == 5  # the duplicate made no event
    # and after a snapshot, too
    copy = restored(payload(store))
    assert copy.apply(8, stxn(1, txn)) == kv.Applied(first.result, 6, duplicate=True)
    assert copy.cachedResultBytes == store.cachedResultBytes > 0


def test_a_large_result_is_kept_reduced():
    store = epoched(resultBytesEach=1000)
    for i in range(20):
        store.apply(i + 2, kv.encodePut(f"k{i:02d}", b"v" * 100))
    txn = Txn(success=[Range("k", prefix=True), Delete("k0", prefix=True, prevKv=True),
                       Put("k10", b"n", prevKv=True)])
    first = store.apply(30, stxn(1, txn))
    assert first.result.complete and len(first.result.responses[0].kvs) == 20
    again = store.apply(31, stxn(1, txn))
    assert again.duplicate and again.index == 30
    assert again.result == TxnResult(True, [
        RangeResult([], False, 20, 30), DeleteResult(10, None), PutResult(None)],
        complete=False)
    assert store.cachedResultBytes == kvtxn.resultBytes(again.result) < 1000
    copy = restored(payload(store))
    assert copy.apply(32, stxn(1, txn)) == again


def test_result_bytes_are_bounded_by_evicting_sessions():
    store = epoched(maxResultBytes=5000)
    store.apply(2, kv.encodePut("k", b"v" * 1000))
    txn = Txn(success=[Range("k")])
    each = kvtxn.resultBytes(store.apply(3, stxn(1, txn, cid="c0")).result)
    assert each > 1000
    for i in range(1, 10):
        store.apply(3 + i, stxn(1, txn, cid=f"c{i}"))
        assert store.cachedResultBytes <= 5000
        assert store.cachedResultBytes == sum(
            kvtxn.resultBytes(r) for s in store.sessions.values() for r, _ in s.results.values())
    assert len(store.sessions) == 5000 // each
    assert list(store.sessions)[-1] == "c9"  # the least recently used went


def test_the_window_releases_result_bytes():
    store = epoched(window=2)
    store.apply(2, kv.encodePut("k", b"v" * 100))
    for seq in range(1, 6):
        store.apply(2 + seq, stxn(seq, Txn(success=[Range("k")])))
    assert sorted(store.sessions["c"].results) == [4, 5]
    assert store.cachedResultBytes == 2 * kvtxn.resultBytes(
        store.sessions["c"].results[5][0])
    assert isinstance(store.apply(9, stxn(3, Txn())), kv.SequenceTooOld)


@given(st.lists(st.builds(
    TxnResult, st.booleans(),
    st.lists(st.one_of(
        st.builds(PutResult, st.none() | st.builds(
            KeyValue, st.text(max_size=5), st.none() | st.binary(max_size=5),
            st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1))),
        st.builds(DeleteResult, st.integers(0, 2**64 - 1), st.none() | st.lists(st.builds(
            KeyValue, st.text(max_size=5), st.binary(max_size=5), st.integers(0, 9),
            st.integers(0, 9), st.integers(0, 9)), max_size=3)),
        st.builds(RangeResult, st.lists(st.builds(
            KeyValue, st.text(max_size=5), st.none() | st.binary(max_size=5), st.integers(0, 9),
            st.integers(0, 9), st.integers(0, 9)), max_size=3),
            st.booleans(), st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1)),
    ), max_size=4),
    st.booleans()), max_size=3))
def test_result_encoding_roundtrip(results):
    for result in results:
        assert kvtxn.decodeResult(kvtxn.encodeResult(result)) == result
        blob = kvtxn.encodeResult(result)
        for cut in (1, len(blob) // 2):
            if cut < len(blob):
                with pytest.raises(kv.CommandError):
                    kvtxn.decodeResult(blob[:-cut])
