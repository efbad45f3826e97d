"""
The client library's ranges and transactions (L{RaftKVClient.range},
C{rangePages}, C{rangeAll}, C{txn}, C{put(prevKV=True)}, C{delete(end=,
prefix=)}) against real servers over in-memory AMP on a task.Clock.
"""

import pytest
from twisted.internet.defer import Deferred

from twisted_raft import kv, kvtxn
from twisted_raft.client import (
    ALL_KEYS_END,
    Compare,
    DeleteOp,
    DeleteResponse,
    DeleteResult,
    KeyValue,
    OutcomeUnknown,
    PutOp,
    PutResponse,
    PutResult,
    RangeOp,
    RangeResult,
    TxnResponse,
)
from twisted_raft.kvlimits import MAX_TXN_OPS, MAX_VALUE_BYTES
from twisted_raft.rpc import kvwire
from twisted_raft.rpc.commands import InvalidArgument, ValueTooLarge

from tests.kvsupport import Nodes


def seeded(n=3, keys=(), **kwargs):
    nodes = Nodes(n, **kwargs)
    for key in keys:
        nodes.write(kv.encodePut(key, key.encode() + b"!"))
    return nodes


def test_range_reads_a_page_with_its_metadata():
    nodes = seeded(keys=["a", "b", "c"])
    c = nodes.client
    # (index 1 is the metadata epoch)
    assert nodes.run(c.range("a", "c")) == RangeResult(
        [KeyValue("a", b"a!", 2, 2, 1), KeyValue("b", b"b!", 3, 3, 1)], False, 2, 4
    )
    assert [kv.key for kv in nodes.run(c.range("b", ALL_KEYS_END)).kvs] == ["b", "c"]
    assert nodes.run(c.range("", prefix=True, countOnly=True)) == RangeResult([], False, 3, 4)
    page = nodes.run(c.range("", prefix=True, limit=1, after="a", keysOnly=True))
    assert page == RangeResult([KeyValue("b", None, 3, 3, 1)], True, 2, 4)
    assert nodes.leader.reads == 4  # linearizable: ReadIndex at the leader


def test_a_stale_range_is_answered_by_the_node_asked():
    nodes = seeded(keys=["a"])
    nodes.nodes[2].store.data["a"] = b"old"
    nodes.client._preferred = nodes.addresses[2]
    assert nodes.run(nodes.client.range("a", stale=True)).kvs[0].value == b"old"
    assert nodes.leader.reads == 0


def test_range_pages_and_range_all_go_through_everything(monkeypatch):
    monkeypatch.setattr(kvwire, "RANGE_PAGE_KEYS", 4)
    nodes = seeded(keys=[f"k{i:02d}" for i in range(10)] + ["other"])
    c = nodes.client

    async def pages():
        return [page async for page in c.rangePages("k", prefix=True)]

    got = nodes.run(Deferred.fromCoroutine(pages()))
    assert [len(p.kvs) for p in got] == [4, 4, 2] and [p.more for p in got] == [True, True, False]
    everything = nodes.run(c.rangeAll("k", prefix=True))
    assert [kv.key for kv in everything.kvs] == [f"k{i:02d}" for i in range(10)]
    assert (everything.more, everything.count, everything.revision) == (False, 10, 12)
    limited = nodes.run(c.rangeAll("k", prefix=True, limit=6, after="k01", keysOnly=True))
    assert [kv.key for kv in limited.kvs] == [f"k{i:02d}" for i in range(2, 8)]
    assert limited.more and limited.count == 8 and limited.kvs[0].value is None
    empty = nodes.run(c.rangeAll("nothing", prefix=True))
    assert empty == RangeResult([], False, 0, 12)


def test_range_all_under_writes_sees_every_key_once_from_the_first_revision(monkeypatch):
    monkeypatch.setattr(kvwire, "RANGE_PAGE_KEYS", 3)
    nodes = seeded(keys=[f"k{i:02d}" for i in range(12)])
    c = nodes.client
    pages = c.rangePages("k", prefix=True)
    seen, revisions = [], []

    async def walk():
        async for page in pages:
            seen.extend(kv.key for kv in page.kvs)
            revisions.append(page.revision)
            # between two pages: a key behind, a key ahead, an update
            nodes.leader.propose(kv.encodePut(f"k{len(seen) - 2:02d}a", b"behind"))
            nodes.leader.propose(kv.encodePut(f"k{len(seen) + 1:02d}a", b"ahead"))
            nodes.leader.propose(kv.encodePut(f"k{len(seen) + 3:02d}", b"updated"))

    nodes.run(Deferred.fromCoroutine(walk()))
    assert len(seen) == len(set(seen)) and seen == sorted(seen)
    assert set(f"k{i:02d}" for i in range(12)) <= set(seen)
    assert revisions == sorted(revisions) and len(set(revisions)) == len(revisions)


def test_txn_builds_sends_and_decodes_a_transaction():
    nodes = seeded(keys=["a", "b"])
    c = nodes.client
    r = nodes.run(c.txn(
        compare=[Compare("a", "value", "==", b"a!"), Compare("b", "version", ">", 0)],
        success=[PutOp("a", b"1", prevKv=True), DeleteOp("b", prevKv=True), RangeOp("a")],
        failure=[PutOp("x", b"x")],
    ))
    assert r == TxnResponse(True, 4, [
        PutResult(KeyValue("a", b"a!", 2, 2, 1)),
        DeleteResult(1, [KeyValue("b", b"b!", 3, 3, 1)]),
        RangeResult([KeyValue("a", b"1", 2, 4, 2)], False, 1, 4),
    ], True)
    r = nodes.run(c.txn([Compare("b", "create_revision", "==", 3)], [], [RangeOp("b")]))
    assert (r.succeeded, r.responses) == (False, [RangeResult([], False, 0, 5)])


def test_put_with_prev_kv_and_delete_of_a_range():
    nodes = seeded(keys=["a", "b", "c"])
    c = nodes.client
    assert nodes.run(c.put("a", b"2", prevKV=True)) == PutResponse(
        5, KeyValue("a", b"a!", 2, 2, 1), True
    )
    assert nodes.run(c.put("new", b"n", prevKV=True)) == PutResponse(6, None, True)
    assert nodes.run(c.delete("b", "new")) == DeleteResponse(2, 7, None, True)  # b, c
    assert nodes.run(c.delete("zzz", prefix=True)) == DeleteResponse(0, 8, None, True)
    assert nodes.run(c.delete("", prefix=True, prevKV=True)) == DeleteResponse(
        2, 9, [KeyValue("a", b"2", 2, 5, 2), KeyValue("new", b"n", 6, 6, 1)], True
    )
    assert nodes.run(c.delete("a")) == (False, 10)  # the old call, the old answer


def test_a_transaction_is_exactly_once_across_a_lost_answer():
    """
    The answer to a transaction is lost with its connection after the
    leader applied it; the client retries with the same session and gets
    the first answer, and the transaction was applied once.
    """
    nodes = seeded(keys=["n"])
    c = nodes.client
    nodes.run(c.range("n"))  # a warm connection to the leader
    nodes.leader.hold = True
    add = [Compare("n", "value", "==", b"n!")], [PutOp("n", b"n!+")], []
    d = c.txn(*add)
    nodes.flush()
    assert len(nodes.leader.held) == 1
    for proto in nodes.clients:
        proto.transport.loseConnection()
    nodes.flush()
    nodes.leader.hold = False
    index = nodes.leader.index = nodes.leader.index + 1
    held = nodes.leader.held.pop()
    held.callback((index, nodes.leader.store.apply(index, nodes.leader.proposed[-1])))
    r = nodes.run(d)
    assert r.succeeded and r.revision == index
    assert nodes.leader.store.get("n") == b"n!+"
    assert len(nodes.leader.proposed) == 4  # the epoch, the seed, the attempt, its retry
    assert nodes.leader.proposed[2] == nodes.leader.proposed[3]
    assert nodes.leader.store.getKeyValue("n").version == 2  # applied once


def test_a_transaction_whose_every_attempt_hangs_is_outcome_unknown():
    nodes = seeded(1, keys=["n"], timeout=2.0)
    nodes.leader.hold = True
    with pytest.raises(OutcomeUnknown):
        nodes.run(nodes.client.txn([], [PutOp("n", b"x")], []))


@pytest.mark.parametrize(
    "args, error",
    [
        (([], [PutOp("k", b"v")] * (MAX_TXN_OPS + 1), []), InvalidArgument),
        (([], [PutOp("k", b"v" * (MAX_VALUE_BYTES + 1))], []), ValueTooLarge),
        (([Compare("k", "colour", "==", 1)], [], []), InvalidArgument),
        (([], ["put k v"], []), InvalidArgument),
        (([], [PutOp("\udcff", b"v")], []), InvalidArgument),
    ],
)
def test_a_transaction_breaking_a_rule_fails_without_being_sent(args, error):
    nodes = seeded(1)
    c = nodes.client
    sequence = c.sequence
    with pytest.raises(error):
        nodes.run(c.txn(*args))
    assert nodes.leader.proposed == [kv.encodeMetadataEpoch()] and c.sequence == sequence


def test_range_arguments_are_checked_before_sending():
    nodes = seeded(1)
    c = nodes.client
    with pytest.raises(TypeError):
        nodes.run(c.range("a", limit="10"))
    with pytest.raises(InvalidArgument):
        nodes.run(c.range("a", after="\udcff"))
    with pytest.raises(InvalidArgument):  # the node's answer
        nodes.run(c.range("a", end="b", prefix=True))
    with pytest.raises(TypeError):
        c.rangePages("a", limit=None)
    assert nodes.leader.reads == 0


def test_a_malformed_answer_is_invalid_argument():
    nodes = seeded(1)
    answer = {"revision": 1, "more": False, "count": 1, "kvs": b"\x00\x00\x00\x01\x00"}
    with pytest.raises(InvalidArgument, match="malformed Range answer"):
        kvwire.rangeResult(answer)
    with pytest.raises(InvalidArgument, match="malformed Txn answer"):
        kvwire.txnResponse({"succeeded": True, "revision": 1, "responses": b"\x07"})
    del nodes


def test_the_txn_records_are_the_stores():
    """One definition of each record: the client's are the kv layer's."""
    assert (Compare, PutOp, DeleteOp, RangeOp) == (
        kvtxn.Compare, kvtxn.Put, kvtxn.Delete, kvtxn.Range,
    )


@pytest.mark.parametrize("sessions", [True, False])
def test_a_transaction_before_the_metadata_epoch_is_retried_until_it(sessions):
    """
    Before the cluster's metadata epoch every node refuses a transaction
    alike, changing nothing: UNAVAILABLE "not proposed", which the client
    retries (with a session or without: it is safe) until the epoch is in.
    """
    nodes = Nodes(1, epoch=False, sessions=sessions)
    d = nodes.client.put("a", b"1", prevKV=True)
    for _ in range(50):
        nodes.flush()
        nodes.clock.advance(0.01)
    assert not d.called and nodes.leader.store.get("a") is None
    refused = len(nodes.leader.proposed)
    assert refused >= 2  # tried, refused, tried again
    nodes.write(kv.encodeMetadataEpoch())
    assert nodes.run(d) == PutResponse(refused + 2, None, True)
    assert nodes.leader.store.get("a") == b"1"
