"""
The multi-key linearizability checker (ranges and transactions): hand-made
histories that are not linearizable and must be caught, linearizable ones
that must pass, and the partition into components.
"""

import pytest

from twisted_raft.kvrecords import (
    DeleteResult,
    KeyValue,
    MetadataUnavailable,
    PutResult,
    RangeResult,
    TxnResult,
)
from twisted_raft.kvtxn import Compare, Delete, Put, Range, Txn
from twisted_raft.testing.multikey import KvOp, check, components, describe

KEYS = ("a/1", "a/2", "b")


def put(key, value, rev, s, e, client=1):
    return KvOp(client, "put", key, value=value, revision=rev, start=s, end=e)


def get(key, result, s, e, client=2):
    return KvOp(client, "get", key, result=result, start=s, end=e)


def rng(request, result, s, e, client=3):
    return KvOp(client, "range", request=request, revision=result.revision, result=result,
                start=s, end=e)


def txn(request, result, rev, s, e, client=4):
    return KvOp(client, "txn", request=request, result=result, revision=rev, start=s, end=e)


def kv(key, value, create, mod, version):
    return KeyValue(key, value, create, mod, version)


PREFIX = Range("a/", prefix=True)

# Two keys written together at revision 3 by one transaction.
BOTH = Txn(success=[Put("a/1", b"x"), Put("a/2", b"y")])
BOTH_DONE = TxnResult(True, [PutResult(), PutResult()])


def assertOk(ops, **kw):
    result = check(ops, keys=KEYS, **kw)
    assert result.ok and not result.timedOut, describe(result)


def assertCaught(ops, **kw):
    result = check(ops, keys=KEYS, **kw)
    assert not result.ok and not result.timedOut, "a violation was not caught"
    assert "NOT LINEARIZABLE" in describe(result)
    return result


def test_range_sees_a_whole_txn_or_none_of_it():
    before = RangeResult([], False, 0, 2)
    after = RangeResult([kv("a/1", b"x", 3, 3, 1), kv("a/2", b"y", 3, 3, 1)], False, 2, 3)
    assertOk([txn(BOTH, BOTH_DONE, 3, 0, 1), rng(PREFIX, after, 2, 3)], floor=1)
    assertOk([txn(BOTH, BOTH_DONE, 3, 0, 5), rng(PREFIX, before, 1, 2)], floor=1)


def test_range_seeing_half_a_txn_is_caught():
    half = RangeResult([kv("a/1", b"x", 3, 3, 1)], False, 1, 3)
    result = assertCaught([txn(BOTH, BOTH_DONE, 3, 0, 5), rng(PREFIX, half, 1, 2)], floor=1)
    assert "a/2" in result.key


def test_stale_range_read_is_caught():
    # The put returned before the range was invoked; the range does not see it.
    stale = RangeResult([], False, 0, 1)
    assertCaught([put("a/1", b"x", 2, 0, 1), rng(PREFIX, stale, 2, 3)])
    # Same answer but claiming a revision past the put: the values give it away.
    assertCaught([put("a/1", b"x", 2, 0, 1), rng(PREFIX, RangeResult([], False, 0, 2), 2, 3)])
    # Concurrent with the put: either order is fine.
    assertOk([put("a/1", b"x", 2, 0, 3), rng(PREFIX, stale, 1, 2)])


def test_revisions_must_follow_real_time():
    # Two ranges, the second invoked after the first returned, going back in revision.
    r5 = RangeResult([], False, 0, 5)
    r4 = RangeResult([], False, 0, 4)
    result = assertCaught([rng(PREFIX, r5, 0, 1), rng(PREFIX, r4, 2, 3)])
    assert "real time" in result.message


def test_txn_compare_judged_on_stale_metadata_is_caught():
    # a/1 was put at 2 then at 4; a txn at 6 compares mod_revision == 2 and
    # claims success: it judged on the metadata before the second put.
    ops = [put("a/1", b"x", 2, 0, 1), put("a/1", b"z", 4, 2, 3)]
    stale = Txn([Compare("a/1", "mod_revision", "==", 2)], [Put("b", b"moved")])
    assertCaught(ops + [txn(stale, TxnResult(True, [PutResult()]), 6, 4, 5)], floor=1)
    assertOk(ops + [txn(stale, TxnResult(False, []), 6, 4, 5)], floor=1)
    fresh = Txn([Compare("a/1", "mod_revision", "==", 4), Compare("a/1", "version", ">", 1)],
                [Put("b", b"moved")])
    assertOk(ops + [txn(fresh, TxnResult(True, [PutResult()]), 6, 4, 5)], floor=1)


def test_lost_range_delete_is_caught():
    wipe = Txn(success=[Delete("a/", prefix=True, prevKv=True)])
    gone = TxnResult(True, [DeleteResult(2, [kv("a/1", b"x", 2, 2, 1), kv("a/2", b"y", 3, 3, 1)])])
    ops = [put("a/1", b"x", 2, 0, 1), put("a/2", b"y", 3, 0, 1), txn(wipe, gone, 4, 2, 3)]
    assertOk(ops + [rng(PREFIX, RangeResult([], False, 0, 5), 4, 5)], floor=1)
    survivor = RangeResult([kv("a/2", b"y", 3, 3, 1)], False, 1, 5)
    assertCaught(ops + [rng(PREFIX, survivor, 4, 5)], floor=1)
    # A get after the delete that still sees a key, too.
    assertCaught(ops + [get("a/1", b"x", 4, 5)], floor=1)


def test_txn_before_the_floor_is_refused():
    t = Txn([Compare("b", "version", "==", 0)], [Put("b", b"v")])
    assertOk([txn(t, MetadataUnavailable(), 2, 0, 1)], floor=3)
    assertCaught([txn(t, TxnResult(True, [PutResult()]), 2, 0, 1)], floor=3)
    assertCaught([txn(t, MetadataUnavailable(), 4, 0, 1)], floor=3)


def test_metadata_floor_lifts_old_keys():
    # b written at 2, floor at 3: it reads as (3, 3, 1); a put at 5 makes version 2.
    ops = [put("b", b"1", 2, 0, 1), put("b", b"2", 5, 2, 3)]
    prev = PutResult(kv("b", b"2", 3, 5, 2))
    t = Txn(success=[Put("b", b"3", prevKv=True), Range("b")])
    ok = TxnResult(True, [prev, RangeResult([kv("b", b"3", 3, 6, 3)], False, 1, 6)])
    assertOk(ops + [txn(t, ok, 6, 4, 5)], floor=3)
    raw = TxnResult(True, [PutResult(kv("b", b"2", 2, 5, 2)),
                           RangeResult([kv("b", b"3", 2, 6, 3)], False, 1, 6)])
    assertCaught(ops + [txn(t, raw, 6, 4, 5)], floor=3)


def test_range_limit_more_and_count():
    ops = [put("a/1", b"x", 2, 0, 1), put("a/2", b"y", 3, 0, 1)]
    page = RangeResult([kv("a/1", b"x", 2, 2, 1)], True, 2, 3)
    assertOk(ops + [rng(Range("a/", prefix=True, limit=1), page, 2, 3)])
    wrong = RangeResult([kv("a/1", b"x", 2, 2, 1)], False, 2, 3)
    assertCaught(ops + [rng(Range("a/", prefix=True, limit=1), wrong, 2, 3)])
    rest = RangeResult([kv("a/2", b"y", 3, 3, 1)], False, 1, 3)
    assertOk(ops + [rng(Range("a/", prefix=True, after="a/1"), rest, 2, 3)])


def test_unknown_outcome_write_with_its_revision():
    # The client never heard back, but the log has it at 2: a later range must see it.
    lost = KvOp(1, "put", "a/1", value=b"x", revision=2, start=0, end=None)
    seen = RangeResult([kv("a/1", b"x", 2, 2, 1)], False, 1, 2)
    assertOk([lost, rng(PREFIX, seen, 1, 2)])
    assertCaught([lost, rng(PREFIX, RangeResult([], False, 0, 2), 1, 2)])


def test_single_key_ops_mixed_in():
    t = Txn([Compare("a/1", "value", "==", b"x")], [Delete("a/1")], [Put("b", b"no")])
    ops = [
        put("a/1", b"x", 2, 0, 1),
        KvOp(2, "cas", "a/1", value=b"y", expected=b"x", result=True, revision=3,
             start=2, end=3),
        txn(t, TxnResult(False, [PutResult()]), 4, 4, 5),
        get("b", b"no", 6, 7),
        KvOp(2, "delete", "b", result=True, revision=5, start=8, end=9),
    ]
    assertOk(ops, floor=1)
    ops[1].result = False
    assertCaught(ops, floor=1)


def test_components_join_ops_that_share_keys():
    ops = [put("a/1", b"x", 2, 0, 1), put("b", b"y", 3, 0, 1), put("c", b"z", 4, 0, 1)]
    assert sorted(ks for ks, _ in components(ops)) == [["a/1"], ["b"], ["c"]]
    ops.append(rng(Range("a/1", "c"), RangeResult([], False, 0, 1), 5, 6))
    parts = components(ops)
    assert sorted(ks for ks, _ in parts) == [["a/1", "b"], ["c"]]
    assert sum(len(group) for _, group in parts) == len(ops)


def test_a_write_needs_a_revision():
    with pytest.raises(ValueError, match="revision"):
        check([KvOp(1, "put", "a/1", value=b"x", start=0, end=1)])
