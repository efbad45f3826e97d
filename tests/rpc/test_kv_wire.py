"""
The KV model on the wire (L{twisted_raft.rpc.kvwire}): L{commands.Range},
L{commands.Txn}, and C{prev_kv}, C{end} and C{prefix} on Put and Delete,
served by a real L{NodeServerFactory} over in-memory AMP; hostile inputs
answered with the contract's errors, never a crash or a dropped link.
"""

import struct

import pytest
from twisted.protocols import amp

from twisted_raft import kv, kvtxn
from twisted_raft.kvlimits import MAX_KEY_BYTES, MAX_TXN_BYTES, MAX_TXN_OPS, MAX_VALUE_BYTES
from twisted_raft.kvrecords import DeleteResult, KeyValue, PutResult, RangeResult
from twisted_raft.kvtxn import Compare, Delete, Put, Range, Txn
from twisted_raft.raft import messages
from twisted_raft.rpc import boxguard, commands, kvwire
from twisted_raft.rpc.commands import InvalidArgument, NotProposed, ValueTooLarge

from tests.rpc.test_server import OLD_DELETE, Harness, followerAndLeader
from tests.support import StubNode, failureOf, result

MiB = 1024 * 1024


def seeded(n=0, store=None, **values):
    """
    A harness whose leader applied the metadata epoch (index 1, as a
    cluster's first leader proposes it: transactions apply only after it),
    then puts of C{k000..}, then C{values}.
    """
    h = Harness(StubNode(store=store))
    h.node.propose(kv.encodeMetadataEpoch())
    for i in range(n):
        h.node.propose(kv.encodePut(f"k{i:03d}", b"v%d" % i))
    for key, value in values.items():
        h.node.propose(kv.encodePut(key, value))
    return h


def rangeOf(h, **kwargs):
    return kvwire.rangeResult(result(h.call(commands.Range, **kwargs)))


def txn(h, t, **kwargs):
    return kvwire.txnResponse(result(h.call(commands.Txn, txn=kvwire.encodeTxn(t), **kwargs)))


# -- Range ----------------------------------------------------------------------


def test_range_of_a_key_a_prefix_and_an_interval():
    h = seeded(a=b"1", ab=b"2", b=b"3", c=b"4")
    assert rangeOf(h, key="a") == RangeResult([KeyValue("a", b"1", 2, 2, 1)], False, 1, 5)
    assert [kv.key for kv in rangeOf(h, key="a", prefix=True).kvs] == ["a", "ab"]
    assert [kv.key for kv in rangeOf(h, key="ab", end="c").kvs] == ["ab", "b"]
    assert [kv.key for kv in rangeOf(h, key="b", end="\0").kvs] == ["b", "c"]
    assert [kv.key for kv in rangeOf(h, key="", prefix=True).kvs] == ["a", "ab", "b", "c"]
    assert rangeOf(h, key="zz") == RangeResult([], False, 0, 5)
    assert h.node.reads == 6  # each through ReadIndex


def test_range_limit_after_keys_only_and_count_only():
    h = seeded(10)
    page = rangeOf(h, key="k", prefix=True, limit=3, after="k001")
    assert [kv.key for kv in page.kvs] == ["k002", "k003", "k004"]
    assert (page.more, page.count, page.revision) == (True, 8, 11)
    keys = rangeOf(h, key="k", prefix=True, keys_only=True)
    assert keys.kvs[0] == KeyValue("k000", None, 2, 2, 1) and not keys.more
    counted = rangeOf(h, key="k", prefix=True, count_only=True)
    assert counted == RangeResult([], False, 10, 11)


def test_a_page_is_bounded_in_keys_and_bytes_whatever_the_limit(monkeypatch):
    h = seeded(0, **{f"big{i}": b"x" * 300_000 for i in range(5)})
    for i in range(1500):
        h.node.propose(kv.encodePut(f"small{i:04d}", b""))
    page = rangeOf(h, key="small", prefix=True, limit=10**30)
    assert len(page.kvs) == kvwire.RANGE_PAGE_KEYS and page.more and page.count == 1500
    page = rangeOf(h, key="big", prefix=True)
    assert len(page.kvs) == 3 and page.more  # 4 x 300 KB would pass 1 MiB
    monkeypatch.setattr(kvwire, "RANGE_PAGE_BYTES", 10)
    page = rangeOf(h, key="big", prefix=True)
    assert len(page.kvs) == 1 and page.more  # one key over the budget comes alone


def test_the_largest_range_answer_fits_a_box_with_room():
    key = "\u00e9" * (MAX_KEY_BYTES // 2)
    biggest = [KeyValue(key, b"v" * MAX_VALUE_BYTES, 2**63, 2**63, 2**63)]
    many = [KeyValue("k" * 1000, b"v" * 48, 2**63, 2**63, 2**63)] * kvwire.RANGE_PAGE_KEYS
    for kvs in (biggest, many):
        box = commands.Range.makeResponse(
            kvwire.rangeAnswer(RangeResult(kvs, True, 2**63, 2**63)), None
        )
        size = sum(len(k) + len(v) for k, v in box.items())
        assert 1.5 * size <= boxguard.MAX_BOX_BYTES and 5 * len(box) <= boxguard.MAX_BOX_KEYS


def test_the_largest_transaction_and_its_answer_fit_a_box_with_room():
    key = "\u00e9" * (MAX_KEY_BYTES // 2)
    request = commands.Txn.makeArguments(dict(
        txn=b"t" * MAX_TXN_BYTES, forwarded=True, client_id="c" * 128, sequence=2**64 - 1,
    ), None)
    kvs = [KeyValue(key, b"v" * (MAX_VALUE_BYTES // 2 - 5000), 2**63, 2**63, 2**63)] * 5
    result, encoded = kvwire.boundedResult(
        kvtxn.TxnResult(True, [RangeResult(kvs[:4], True, 5, 1), PutResult(kvs[0])])
    )
    assert not result.complete  # over the bound: reduced
    result, encoded = kvwire.boundedResult(
        kvtxn.TxnResult(True, [RangeResult(kvs[:4], True, 5, 1)])
    )
    assert result.complete and kvwire.ANSWER_KV_BYTES - 10_000 < len(encoded)
    answer = commands.Txn.makeResponse(
        dict(succeeded=True, revision=2**63, responses=encoded), None
    )
    deleted = commands.Delete.makeResponse(kvwire.deleteAnswer(1, kvtxn.TxnResult(
        True, [DeleteResult(4, kvs[:4])])), None)
    assert b"prev_kvs" in deleted
    for box in (request, answer, deleted):
        size = sum(len(k) + len(v) for k, v in box.items())
        assert 1.5 * size <= boxguard.MAX_BOX_BYTES and 5 * len(box) <= boxguard.MAX_BOX_KEYS


def test_a_value_over_64_KiB_travels_in_chunks():
    h = seeded(big=b"b" * (MAX_VALUE_BYTES))
    assert rangeOf(h, key="big").kvs[0].value == b"b" * MAX_VALUE_BYTES


def test_a_stale_range_reads_locally_without_read_index():
    h, leader, follower = followerAndLeader()
    leader.store.data["k"] = b"new"
    follower.store.data["k"] = b"old"
    assert rangeOf(h, key="k", stale=True).kvs[0].value == b"old"
    assert leader.reads == follower.reads == 0
    assert rangeOf(h, key="k").kvs[0].value == b"new"  # forwarded to the leader
    assert leader.reads == 1
    assert h.factory.readsAnswered == 2  # both counted where they were sent


def test_a_range_waits_for_its_read_index():
    node = StubNode()
    node.holdReads = True
    h = Harness(node)
    d = h.call(commands.Range, key="k")
    assert not d.called
    node.store.data["k"] = b"v"  # applied while the round ran
    node.heldReads[0].callback(None)
    h.pumps.flush()
    assert kvwire.rangeResult(result(d)).kvs[0].value == b"v"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(key=""), "empty range key"),
        (dict(key="a", end="b", prefix=True), "not both"),
        (dict(key="a", end=""), "empty range end"),
        (dict(key="k" * (MAX_KEY_BYTES + 1)), "over 4096"),
        (dict(key="a", end="k" * (MAX_KEY_BYTES + 1)), "over 4096"),
        (dict(key="a", after="k" * (MAX_KEY_BYTES + 1)), "over 4096"),
        (dict(key="a", limit=-1), "limit"),
    ],
)
def test_bad_ranges_are_invalid_argument_and_read_nothing(kwargs, message):
    h = seeded(a=b"1")
    f = failureOf(h.call(commands.Range, **kwargs), InvalidArgument)
    assert message in str(f.value)
    assert h.node.reads == 0
    h.assertServes()


@pytest.mark.parametrize(
    "box",
    [
        {b"key": b"\xff"},  # not UTF-8
        {b"key": b"a", b"limit": b"many"},
        {b"key": b"a", b"limit": b"9" * 5000},  # beyond what int() takes
        {b"key": b"a", b"prefix": b"yes"},
        {b"end": b"b"},  # no key
    ],
)
def test_malformed_range_boxes_are_invalid_argument(box):
    h = seeded(a=b"1")
    f = failureOf(h.raw(b"Range", box), amp.RemoteAmpError)
    assert f.value.errorCode == commands.INVALID_ARGUMENT
    assert h.node.reads == 0
    h.assertServes()


# -- paging under writes --------------------------------------------------------


def test_pages_under_concurrent_writes_are_each_consistent_and_see_every_key_once(monkeypatch):
    """
    A prefix paged through with C{after} while keys are written, deleted
    and created between pages: each page is the store at its revision
    (between its first key and its last), no key comes twice, and every key
    that existed from the first page to the last comes once.
    """
    monkeypatch.setattr(kvwire, "RANGE_PAGE_KEYS", 7)
    h = seeded(100)
    node = h.node
    states = {node.store.appliedIndex: dict(_state(node.store))}
    seen, after, page, step = [], None, None, 0
    while page is None or page.more:
        kwargs = dict(key="k", prefix=True)
        if after is not None:
            kwargs["after"] = after
        page = rangeOf(h, **kwargs)
        state = states[page.revision]
        lo, hi = after, page.kvs[-1].key
        expected = [
            kv for key, kv in sorted(state.items()) if (lo is None or key > lo) and key <= hi
        ]
        assert page.kvs == expected, page.revision
        seen += [kv.key for kv in page.kvs]
        after = hi
        step += 1
        # writes between pages: an update, a delete, a new key ahead and behind
        node.propose(kv.encodePut(f"k{(step * 13) % 100:03d}", b"u%d" % step))
        node.propose(kv.encodeDelete(f"k{(step * 29 + 5) % 100:03d}"))
        node.propose(kv.encodePut(f"k{(step * 17) % 100:03d}x", b"n"))
        states[node.store.appliedIndex] = dict(_state(node.store))
    assert len(seen) == len(set(seen)) and seen == sorted(seen)
    everywhere = set.intersection(*(set(s) for s in states.values()))
    assert everywhere <= set(seen) and len(everywhere) > 50


def _state(store):
    for k in store.data:
        yield k, store.getKeyValue(k)


# -- Txn --------------------------------------------------------------------------


def test_a_transaction_runs_one_branch_atomically():
    h = seeded(a=b"1", b=b"2")
    t = Txn(
        [Compare("a", "value", "==", b"1"), Compare("b", "mod_revision", "==", 3)],
        [Put("a", b"10", prevKv=True), Delete("b"), Range("", prefix=True)],
        [Put("failed", b"x")],
    )
    r = txn(h, t)
    assert (r.succeeded, r.revision, r.complete) == (True, 4, True)
    assert r.responses == [
        PutResult(KeyValue("a", b"1", 2, 2, 1)),
        DeleteResult(1, None),
        RangeResult([KeyValue("a", b"10", 2, 4, 2)], False, 1, 4),
    ]
    r = txn(h, t)  # the compares no longer hold
    assert (r.succeeded, r.revision, r.responses) == (False, 5, [PutResult(None)])
    assert h.node.store.get("failed") == b"x" and h.node.store.get("b") is None


def test_what_is_proposed_is_the_servers_own_encoding():
    h = seeded()
    t = Txn([], [Range("a", maxBytes=0)], [])
    raw = bytearray(kvtxn.encodeTxn(t))
    raw[-4:] = b"\0\0\0\0"  # max bytes 0: the encoder would never write it
    result(h.call(commands.Txn, txn=bytes(raw)))
    assert h.node.proposed[1:] == [kvtxn.encodeTxn(t)]
    assert kvtxn.decodeTxn(h.node.proposed[1]).success[0].maxBytes == kvtxn.MAX_TXN_RANGE_BYTES


def test_transactions_are_exactly_once_with_a_session():
    h = seeded(n=0, a=b"0")
    t = Txn([Compare("a", "version", "==", 1)], [Put("a", b"1")], [Put("lost", b"x")])
    first = txn(h, t, client_id="c", sequence=1)
    assert first.succeeded and first.revision == 3
    again = txn(h, t, client_id="c", sequence=1)  # a retry: changes nothing
    assert again == first
    assert h.node.store.get("lost") is None and h.node.store.getKeyValue("a").version == 2
    assert h.node.proposed[2:] == [kv.encodeSession("c", 1, kvtxn.encodeTxn(t))] * 2


def test_a_follower_forwards_transactions_and_the_new_writes():
    h, leader, follower = followerAndLeader()
    leader.propose(kv.encodeMetadataEpoch())
    t = Txn([], [Put("a", b"1"), Put("b", b"2")], [])
    r = txn(h, t, client_id="c", sequence=1)
    assert r.succeeded and leader.store.get("b") == b"2" and follower.proposed == []
    assert txn(h, t, client_id="c", sequence=1) == r
    prev = result(h.call(commands.Put, key="a", value=b"3", prev_kv=True))
    assert kvwire.putResponse(prev).prev_kv.value == b"1"
    gone = result(h.call(commands.Delete, key="", prefix=True, prev_kv=True))
    assert kvwire.deleteResponse(gone, True).prev_kvs == [
        KeyValue("a", b"3", 2, 4, 2), KeyValue("b", b"2", 2, 2, 1),
    ]
    assert leader.store.data == {}
    assert leader.proposed[1] == kv.encodeSession("c", 1, kvtxn.encodeTxn(t))


def _header(compares, success, failure):
    return struct.pack(">BHHH", kvtxn.TXN, compares, success, failure)


@pytest.mark.parametrize(
    "data, error, message",
    [
        (b"", InvalidArgument, "truncated"),
        (b"\x01\x00\x00\x00\x01k=v", InvalidArgument, "not a transaction"),
        (_header(0, 1, 0), InvalidArgument, "truncated"),
        (_header(0, 0, 0) + b"junk", InvalidArgument, "after the last operation"),
        (_header(1, 0, 0) + b"\x09\x01\x00\x01k" + b"\0" * 8, InvalidArgument, "target 9"),
        (_header(0, 1, 0) + b"\x07\x00\x00\x01k", InvalidArgument, "unknown operation 7"),
        (_header(0, 1, 0) + b"\x01\x00\x00\x02\xff\xfe" + b"\0" * 4, InvalidArgument, "UTF-8"),
        # counts refused from the header alone, before anything is decoded
        (_header(65535, 0, 0), InvalidArgument, "65535 compares"),
        (_header(0, MAX_TXN_OPS + 1, 0), InvalidArgument, "operations in a branch"),
        (_header(0, 0, 60000) + b"\0" * 100, InvalidArgument, "operations in a branch"),
        (b"\x04" + b"\0" * MAX_TXN_BYTES, ValueTooLarge, "over"),
    ],
)
def test_malformed_transactions_are_refused_before_anything_is_proposed(data, error, message):
    h = seeded(a=b"1")
    f = failureOf(h.call(commands.Txn, txn=data), error)
    assert message in str(f.value), f.value
    assert len(h.node.proposed) == 2  # the epoch and the seed's put only
    h.assertServes()


@pytest.mark.parametrize(
    "t, error, message, serverMessage",
    [
        (Txn([], [Put("k" * (MAX_KEY_BYTES + 1), b"v")], []), InvalidArgument, "over 4096", None),
        (Txn([], [Put("", b"v")], []), InvalidArgument, "empty put key", None),
        (Txn([], [Put("k", b"v" * (MAX_VALUE_BYTES + 1))], []), ValueTooLarge, "put value", None),
        (Txn([Compare("k", "value", "==", b"v" * (MAX_VALUE_BYTES + 1))], [], []),
         ValueTooLarge, "compare value", None),
        (Txn([], [Put("k", b"v" * MAX_VALUE_BYTES)] * 3, []), ValueTooLarge, "transaction is",
         None),
        (Txn([], [Delete("a", "b", prefix=True)], []), InvalidArgument, "not both",
         "operation flags 0x6"),
        (Txn([], [Range("a", maxBytes=2 * MiB)], []), InvalidArgument, "maxBytes", None),
    ],
)
def test_transactions_that_break_a_rule_are_refused_by_client_and_server(
    t, error, message, serverMessage,
):
    """The client's encoder refuses them, and so does the server when a
    hostile client encodes them itself (the layout, without the checks)."""
    with pytest.raises(error) as info:
        kvwire.encodeTxn(t)
    assert message in str(info.value)
    h = seeded()
    f = failureOf(h.call(commands.Txn, txn=_unchecked(t)), error)
    assert (serverMessage or message) in str(f.value), f.value
    assert h.node.proposed == [kv.encodeMetadataEpoch()]
    h.assertServes()


def _unchecked(t):
    """C{t} in the TXN layout without the encoder's checks (a hostile client)."""
    raw = bytearray(_header(len(t.compares), len(t.success), len(t.failure)))
    for c in t.compares:
        kb = c.key.encode("utf-8")
        if c.target == "value":
            operand = struct.pack(">I", len(c.value)) + c.value
        else:
            operand = struct.pack(">Q", c.value)
        raw += struct.pack(">BBH", kvtxn.TARGETS[c.target], kvtxn.OPERATORS[c.op], len(kb))
        raw += kb + operand
    for op in t.success + t.failure:
        kb = op.key.encode("utf-8")
        if isinstance(op, Put):
            raw += struct.pack(">BBH", kvtxn.OP_PUT, 0, len(kb)) + kb
            raw += struct.pack(">I", len(op.value)) + op.value
        elif isinstance(op, Delete):
            raw += struct.pack(">BBH", kvtxn.OP_DELETE, 0x06, len(kb)) + kb
            raw += struct.pack(">H", len(op.end)) + op.end.encode("utf-8")
        else:
            raw += struct.pack(">BBH", kvtxn.OP_RANGE, 0, len(kb)) + kb
            raw += struct.pack(">II", op.limit, op.maxBytes)
    return bytes(raw)


def test_an_answer_over_its_bound_carries_the_results_without_key_values(monkeypatch):
    monkeypatch.setattr(kvwire, "ANSWER_KV_BYTES", 200)
    h = seeded(20)
    t = Txn([], [Range("k", prefix=True), Put("k000", b"new", prevKv=True)], [])
    r = txn(h, t)
    assert not r.complete and r.succeeded and r.revision == 22
    assert r.responses == [RangeResult([], False, 20, 22), PutResult(None)]
    assert h.node.store.get("k000") == b"new"  # applied all the same
    gone = result(h.call(commands.Delete, key="k", prefix=True, prev_kv=True))
    assert gone["deleted_count"] == 20 and gone["prev_kvs"] is None
    assert kvwire.deleteResponse(gone, True) == kvwire.DeleteResponse(20, 23, None, False)


def test_a_retry_of_a_large_result_answers_without_key_values():
    h = seeded(store=kv.KVStore(resultBytesEach=100), a=b"x" * 200)
    put = dict(key="a", value=b"y", prev_kv=True, client_id="c", sequence=1)
    first = result(h.call(commands.Put, **put))
    assert kvwire.putResponse(first).prev_kv.value == b"x" * 200
    again = result(h.call(commands.Put, **put))
    assert kvwire.putResponse(again) == kvwire.PutResponse(3, None, False)


@pytest.mark.parametrize(
    "command, kwargs",
    [
        (commands.Txn, dict(txn=kvwire.encodeTxn(Txn([], [Put("a", b"1")], [])))),
        (commands.Put, dict(key="a", value=b"1", prev_kv=True, client_id="c", sequence=1)),
        (commands.Delete, dict(key="a", prefix=True)),
    ],
)
def test_a_transaction_before_the_metadata_epoch_is_refused_not_proposed(command, kwargs):
    """
    Until the cluster's metadata epoch every node refuses a transaction
    alike (L{kv.MetadataUnavailable}), changing nothing: UNAVAILABLE "not
    proposed", safe to retry anywhere.  Put with prev_kv and range deletes
    are transactions too; the old writes are not.
    """
    h = Harness(StubNode())
    f = failureOf(h.call(command, **kwargs), NotProposed)
    assert str(f.value).startswith("not proposed: transaction refused: the cluster is upgrading")
    assert result(h.call(commands.Put, key="a", value=b"0"))["revision"] == 2
    h.node.propose(kv.encodeMetadataEpoch())
    assert result(h.call(command, **kwargs))["revision"] == 4  # the retry applies
    h.assertServes()


# -- Put and Delete: the new arguments, the old answers ------------------------------


def test_put_with_prev_kv():
    h = seeded(a=b"1")
    r = result(h.call(commands.Put, key="a", value=b"2", prev_kv=True))
    assert kvwire.putResponse(r) == kvwire.PutResponse(3, KeyValue("a", b"1", 2, 2, 1), True)
    r = result(h.call(commands.Put, key="new", value=b"n", prev_kv=True))
    assert kvwire.putResponse(r) == kvwire.PutResponse(4, None, True)
    assert h.node.proposed[2] == kvtxn.encodePutPrevKv("a", b"2")


def test_delete_of_a_range_and_a_prefix():
    h = seeded(a=b"1", b=b"2", c=b"3", d=b"4")
    r = result(h.call(commands.Delete, key="b", end="d"))
    assert r == {"deleted": True, "revision": 6, "deleted_count": 2, "prev_kvs": None}
    r = result(h.call(commands.Delete, key="x", prefix=True))
    assert r == {"deleted": False, "revision": 7, "deleted_count": 0, "prev_kvs": None}
    r = result(h.call(commands.Delete, key="a", prev_kv=True))
    assert kvwire.deleteResponse(r, True) == kvwire.DeleteResponse(
        1, 8, [KeyValue("a", b"1", 2, 2, 1)], True
    )
    assert sorted(h.node.store.data) == ["d"]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(key="", end="b", prefix=True), "not both"),
        (dict(key="", end=""), "empty delete end"),
        (dict(key="", prev_kv=True), "empty delete key"),
        (dict(key="k" * (MAX_KEY_BYTES + 1), prefix=True), "over 4096"),
    ],
)
def test_bad_range_deletes_are_invalid_argument(kwargs, message):
    h = seeded(a=b"1")
    f = failureOf(h.call(commands.Delete, **kwargs), InvalidArgument)
    assert message in str(f.value)
    assert len(h.node.proposed) == 2  # the epoch and the seed's put
    h.assertServes()


def test_old_requests_get_exactly_the_old_answer_boxes():
    """Without the new arguments, Put and Delete answer the very boxes they
    answered before (no new keys): an old client sees no change."""
    h = seeded(a=b"1")
    for command, kwargs, keys in [
        (commands.Put, dict(key="a", value=b"2"), {b"revision"}),
        (commands.Delete, dict(key="a"), {b"deleted", b"revision"}),
        (commands.Delete, dict(key="a", prefix=False), {b"deleted", b"revision"}),
        (commands.Put, dict(key="a", value=b"3", prev_kv=False), {b"revision"}),
    ]:
        box = result(h.raw(command.commandName, command.makeArguments(kwargs, None)))
        assert set(box) - {amp.ANSWER} == keys, (command, kwargs, box)
    assert result(h.call(commands.Delete, key="a")) == {
        "deleted": True, "revision": 7, **OLD_DELETE,
    }
    assert h.node.proposed[2:] == [
        kv.encodePut("a", b"2"), kv.encodeDelete("a"), kv.encodeDelete("a"),
        kv.encodePut("a", b"3"), kv.encodeDelete("a"),
    ]


def test_a_forwarded_range_needs_a_peer_connection():
    h = Harness(StubNode(nodeId=2, role=messages.FOLLOWER, leaderId=1))
    failureOf(h.call(commands.Range, key="a", forwarded=True), commands.PermissionDenied)
    failureOf(h.call(commands.Txn, txn=kvwire.encodeTxn(Txn()), forwarded=True),
              commands.PermissionDenied)
    h.assertServes()


def test_each_new_command_is_counted_for_metrics():
    h = seeded(a=b"1")
    seen = []
    h.factory.onClientRequest = lambda name, code, seconds: seen.append((name, code))
    h.call(commands.Range, key="a")
    h.call(commands.Range, key="")
    h.call(commands.Txn, txn=kvwire.encodeTxn(Txn()))
    h.call(commands.Txn, txn=b"junk")
    assert seen == [
        ("Range", "OK"), ("Range", "INVALID_ARGUMENT"), ("Txn", "OK"), ("Txn", "INVALID_ARGUMENT"),
    ]
