"""
Watches, the node's side: L{twisted_raft.rpc.watches} behind a real
NodeProtocol, over in-memory AMP (L{iosim}) to a client connection whose
watch handlers the tests control; time is a L{task.Clock}.
"""

import io

import pytest
from twisted.protocols import amp
from twisted.test import iosim

from twisted_raft import kv
from twisted_raft.kvrecords import DELETE_EVENT, PUT_EVENT, Event
from twisted_raft.kvtxn import Delete, Put, Txn
from twisted_raft.raft import messages
from twisted_raft.rpc import commands
from twisted_raft.rpc.commands import Compacted, InvalidArgument, Unavailable
from twisted_raft.rpc.watches import WatchLimits
from twisted_raft.rpc.watchwire import decodeEvents, encodeEvents

from tests.kvsupport import Node
from tests.support import captured, failureOf, result

MiB = 1024 * 1024


def put(key, value, create, mod, version):
    return Event(PUT_EVENT, key, value, create, mod, version)


def deleted(key, mod):
    return Event(DELETE_EVENT, key, None, 0, mod, 0)


# -- the wire ------------------------------------------------------------------


def test_events_roundtrip_through_their_encoding():
    events = [
        put("k", b"", 1, 1, 1), put("\u00e9\u4e2d", bytes(range(256)) * 10, 3, 9, 4),
        deleted("k", 10),
    ]
    assert decodeEvents(encodeEvents(events)) == events
    assert decodeEvents(b"") == []


@pytest.mark.parametrize("data", [
    b"\x01", b"\x01\x00\x05ab", b"\x03\x00\x01k" + bytes(8),
    b"\x02\x00\x01k" + bytes(7), b"\x01\x00\x01k" + bytes(20) + b"\x00\x00\x00\x09x",
    b"\x02\x00\x02\xff\xfe" + bytes(8),
])
def test_malformed_events_raise_value_error(data):
    with pytest.raises(ValueError):
        decodeEvents(data)


def test_the_largest_call_fits_a_box_with_room_to_spare():
    from twisted_raft.rpc.boxguard import MAX_BOX_BYTES, MAX_BOX_KEYS

    limits = WatchLimits()
    box = commands.WatchEvents.makeArguments(
        {"watch_id": 2**63 - 1, "events": b"x" * limits.callBytes,
         "next_revision": 2**63 - 1, "revision_continues": True}, None,
    )
    size = sum(len(k) + len(v) for k, v in box.items())
    assert size * 1.5 < MAX_BOX_BYTES and len(box) * 1.5 < MAX_BOX_KEYS
    # and one event of the largest key and value fits one call
    event = put("\u00e9" * 2048, b"x" * MiB, 1, 1, 1)
    assert len(encodeEvents([event])) <= limits.callBytes


def test_compacted_travels_as_its_code_and_a_machine_readable_description():
    n = Node(store=kv.KVStore(historyEvents=4))
    for i in range(10):
        n.put(f"k{i}")
    raw = captured(n.client._sendBoxCommand(
        commands.Watch.commandName,
        amp.AmpBox(watch_id=b"1", key=b"k", start_revision=b"1"),
    ))
    n.flush()
    f = failureOf(raw, amp.RemoteAmpError)
    oldest = n.store.history.oldestRevision
    assert oldest > 1
    assert f.value.errorCode == b"COMPACTED"
    assert f.value.description == f"compact_revision={oldest}"
    # the client library's exception, decoded once, carries the number
    d, _ = n.watch("k", watchId=2, start=1)
    e = failureOf(d, Compacted).value
    assert e.compact_revision == e.compactRevision == oldest
    # from the oldest revision held, it works
    assert result(n.watch("k", watchId=3, start=oldest)[0])["start_revision"] == oldest


def test_a_malformed_compacted_description_is_not_a_compacted():
    assert isinstance(commands.compactedFromWire("compact_revision=12"), Compacted)
    for text in ("compact_revision=", "compact_revision=-1", "oops", "compact_revision=1x"):
        assert isinstance(commands.compactedFromWire(text), InvalidArgument)


# -- watching ------------------------------------------------------------------


def test_a_watch_from_now_gets_each_later_change_once_in_order():
    n = Node()
    n.put("a")
    d, h = n.watch("a")
    assert result(d) == {"created": True, "start_revision": 2}
    n.put("a", b"1")
    n.put("b", b"x")  # another key
    n.delete("a")
    n.put("a", b"2")
    n.flush()
    assert h.events == [
        put("a", b"1", 1, 2, 2), deleted("a", 4), put("a", b"2", 5, 5, 1),
    ]
    assert h.calls[-1][1] == 6  # next_revision: everything below was sent
    assert h.cancelled == []


def test_a_watch_from_a_past_revision_replays_the_history_first():
    n = Node()
    for i in range(5):
        n.put(f"p/{i}", str(i).encode())
    n.put("q", b"no")
    d, h = n.watch("p/", prefix=True, start=3)
    assert result(d)["start_revision"] == 3
    n.put("p/x", b"x")
    n.flush()
    assert [(e.key, e.mod_revision) for e in h.events] == [
        ("p/2", 3), ("p/3", 4), ("p/4", 5), ("p/x", 7),
    ]


def test_a_prefix_watch_sees_only_its_prefix_and_empty_prefix_sees_all():
    n = Node()
    _, pre = n.watch("ab", watchId=1, prefix=True)
    _, exact = n.watch("ab", watchId=2)
    _, every = n.watch("", watchId=3, prefix=True)
    for key in ("a", "ab", "abc", "abd/x", "b", "aa\uffff"):
        n.put(key)
    n.flush()
    assert [e.key for e in pre.events] == ["ab", "abc", "abd/x"]
    assert [e.key for e in exact.events] == ["ab"]
    assert [e.key for e in every.events] == ["a", "ab", "abc", "abd/x", "b", "aa\uffff"]


def test_a_transactions_events_come_in_one_call_even_over_the_batch_limit():
    n = Node(limits=WatchLimits(batchEvents=2))
    n.apply(kv.encodeMetadataEpoch())  # transactions apply only after it
    _, h = n.watch("t/", prefix=True)
    revision = n.apply(kv.encodeTxn(Txn(success=[Put(f"t/{i}", b"v") for i in range(5)])))
    n.apply(kv.encodeTxn(Txn(success=[Put("t/0", b"w"), Delete("t/", prefix=True)])))
    n.flush()
    assert [len(events) for events, _, _ in h.calls] == [5, 6]
    assert {e.mod_revision for e in h.calls[0][0]} == {revision}
    assert [e.type for e in h.calls[1][0]] == [PUT_EVENT] + [DELETE_EVENT] * 5


def test_exactly_once_across_many_small_batches_with_flow_control():
    n = Node(limits=WatchLimits(batchEvents=3, batchBytes=1))
    _, h = n.watch("k", prefix=True, start=1)
    h.hold = True
    expected = []
    for i in range(50):
        r = n.put(f"k{i % 7}", str(i).encode())
        expected.append((f"k{i % 7}", r))
        if i % 5 == 0:
            n.flush()
            # one call out at a time: nothing more until it is answered
            assert len(h.held) <= 1
            h.release()
    n.flush()
    while h.held:
        assert len(h.held) == 1
        h.release()
        n.flush()
    assert [(e.key, e.mod_revision) for e in h.events] == expected
    # batchBytes=1: one whole revision per call
    assert all(len(events) == 1 for events, _, _ in h.calls)


def test_a_revision_over_the_call_size_is_split_and_marked_continuing():
    n = Node(limits=WatchLimits(callBytes=3000))
    n.apply(kv.encodeMetadataEpoch())  # transactions apply only after it
    _, h = n.watch("big/", prefix=True)
    values = [bytes([i]) * 1000 for i in range(7)]
    revision = n.apply(kv.encodeTxn(Txn(success=[Put(f"big/{i}", v) for i, v in enumerate(values)])))
    after = n.put("big/after", b"a")
    n.flush()
    # the last part of the split revision and the next revision: one call
    assert [(len(events), nxt, more) for events, nxt, more in h.calls] == [
        (2, revision, True), (2, revision, True), (2, revision, True), (2, after + 1, False),
    ]
    assert [e.value for e in h.events[:7]] == values


def test_a_watch_that_falls_behind_is_cancelled_with_compacted():
    n = Node(store=kv.KVStore(historyEvents=8))
    _, h = n.watch("k", start=1)
    n.put("k")
    n.flush()
    h.hold = True
    n.put("k")
    n.flush()
    assert len(h.held) == 1
    for i in range(20):
        n.put("other")
    h.release()
    n.flush()
    oldest = n.store.history.oldestRevision
    assert h.cancelled == [("COMPACTED", oldest, "the watch fell behind: revision 3 is no longer held")]
    assert n.hub.count == 0
    n.put("k")
    n.flush()
    assert len(h.calls) == 2


def test_an_idle_watch_is_not_compacted_by_changes_to_other_keys():
    n = Node(store=kv.KVStore(historyEvents=8))
    _, h = n.watch("quiet")
    for i in range(100):
        n.put("busy")
    n.flush()
    n.put("quiet", b"!")
    n.flush()
    assert h.cancelled == [] and [e.value for e in h.events] == [b"!"]


def test_only_the_idle_watches_an_entry_concerns_are_woken(monkeypatch):
    n = Node()
    handlers = [n.watch(f"key{i}", watchId=i)[1] for i in range(100)]
    _, busy = n.watch("hot", watchId=1000)
    busy.hold = True
    n.put("hot")
    n.flush()
    reads = []
    original = n.store.watchEvents

    def counting(fromRevision, key, *args, **kwargs):
        reads.append(key)
        return original(fromRevision, key, *args, **kwargs)

    monkeypatch.setattr(n.store, "watchEvents", counting)
    for _ in range(10):
        n.put("hot")  # the busy watch: nothing read for it per entry
    n.put("key7")
    n.flush()
    # one read of each entry's events for the idle index, and the woken
    # watch's own two (its event; then nothing more: idle again)
    assert sorted(reads) == [""] * 11 + ["key7", "key7"]
    assert [len(h.calls) for h in handlers] == [0] * 7 + [1] + [0] * 92


def test_progress_notes_tell_an_idle_watch_where_to_resume():
    n = Node()
    _, h = n.watch("quiet")
    for _ in range(3):
        n.put("other")
    n.clock.advance(WatchLimits().progressInterval)
    n.flush()
    assert h.calls == [([], 4, False)]
    # nothing moved since: no note
    n.clock.advance(WatchLimits().progressInterval)
    n.flush()
    assert len(h.calls) == 1
    n.put("quiet")
    n.flush()
    assert h.calls[-1][1] == 5 and [e.mod_revision for e in h.events] == [4]


def test_a_start_beyond_the_applied_revision_waits_for_it():
    n = Node()
    d, h = n.watch("k", start=3)
    assert result(d)["start_revision"] == 3
    n.put("k")
    n.put("k")
    n.flush()
    assert h.calls == []
    n.put("k")
    n.flush()
    assert [e.mod_revision for e in h.events] == [3]


def test_a_follower_serves_watches_from_its_own_state():
    n = Node(role=messages.FOLLOWER)
    d, h = n.watch("k")
    assert result(d)["start_revision"] == 1
    n.put("k")  # applied as the follower applies committed entries
    n.flush()
    assert [e.mod_revision for e in h.events] == [1]


# -- limits, bad requests, hostile clients -------------------------------------


@pytest.mark.parametrize("kwargs,message", [
    (dict(watch_id=-1, key="k"), "watch_id is out of range"),
    (dict(watch_id=2**63, key="k"), "watch_id is out of range"),
    (dict(watch_id=1, key=""), "empty key"),
    (dict(watch_id=1, key="k" * 4097), "over 4096"),
    (dict(watch_id=1, key="k", start_revision=0), "start_revision is out of range"),
    (dict(watch_id=1, key="k", start_revision=2**63), "start_revision is out of range"),
])
def test_bad_watches_are_invalid_argument_and_the_link_survives(kwargs, message):
    n = Node()
    f = failureOf(n.call(commands.Watch, **kwargs), InvalidArgument)
    assert message in str(f.value)
    assert n.hub.count == 0
    assert result(n.call(commands.Status))["node_id"] == 1


def test_a_watch_id_in_use_on_the_connection_is_refused():
    n = Node()
    result(n.watch("a", watchId=5)[0])
    f = failureOf(n.watch("b", watchId=5)[0], InvalidArgument)
    assert "watch_id 5 is in use" in str(f.value)
    # another connection may use it
    client, _, pump = n.open()
    assert result(n.watch("b", watchId=5, client=client, pump=pump)[0])["created"]


def test_watch_limits_per_connection_and_per_node():
    n = Node(limits=WatchLimits(perConnection=3, perNode=5))
    for i in range(3):
        result(n.watch("k", watchId=i)[0])
    f = failureOf(n.watch("k", watchId=3)[0], InvalidArgument)
    assert "too many watches on this connection (the limit is 3)" in str(f.value)
    client, _, pump = n.open()
    for i in range(2):
        result(n.watch("k", watchId=i, client=client, pump=pump)[0])
    f = failureOf(n.watch("k", watchId=2, client=client, pump=pump)[0], Unavailable)
    assert "too many watches on this node (the limit is 5)" in str(f.value)
    # a cancelled one makes room
    assert result(n.call(commands.CancelWatch, watch_id=0)) == {"cancelled": True}
    result(n.watch("k", watchId=2, client=client, pump=pump)[0])


def test_a_client_that_never_answers_holds_one_call_per_watch_then_is_closed():
    limits = WatchLimits(connectionBytes=10_000, answerTimeout=30.0)
    n = Node(limits=limits)
    handlers = [n.watch("k", watchId=i, start=1)[1] for i in range(20)]
    for h in handlers:
        h.hold = True
    for _ in range(50):
        n.put("k", b"x" * 1000)
        n.flush()
    # each watch: at most one call out; the connection: its budget plus one call
    assert all(len(h.held) <= 1 for h in handlers)
    assert n.hub.inflightBytes <= limits.connectionBytes + 1100
    waiting = sum(1 for h in handlers if not h.held)
    assert waiting > 0
    assert not n.client.lost
    n.clock.advance(limits.answerTimeout)
    n.flush()
    assert n.client.lost and n.hub.count == 0 and n.hub.inflightBytes == 0


def test_the_node_byte_budget_holds_watches_of_every_connection():
    limits = WatchLimits(nodeBytes=5_000)
    n = Node(limits=limits)
    others = [n.open() for _ in range(4)]
    handlers = []
    for client, _, pump in others:
        _, h = n.watch("k", start=1, client=client, pump=pump)
        h.hold = True
        handlers.append((h, pump))
    n.put("k", b"x" * 3000)
    for _, pump in handlers:
        n.flush(pump)
    for _, pump in handlers:
        n.flush(pump)
    sent = [h for h, _ in handlers if h.held]
    assert len(sent) == 2 and n.hub.inflightBytes <= limits.nodeBytes + 3100
    for h, pump in handlers:
        h.release()
        n.flush(pump)
    for h, pump in handlers:
        h.release()
        n.flush(pump)
    assert all(len(h.events) == 1 for h, _ in handlers)


def test_an_error_answer_ends_the_watch_at_the_node():
    n = Node()
    _, h = n.watch("k")
    h.error = InvalidArgument("not mine")
    n.put("k")
    n.flush()
    assert len(h.calls) == 1 and n.hub.count == 0
    n.put("k")
    n.flush()
    assert len(h.calls) == 1


def test_events_for_a_watch_the_client_forgot_end_it():
    n = Node()
    _, h = n.watch("k")
    n.client.removeWatchHandler(1, h)
    n.put("k")
    n.flush()
    assert h.calls == [] and n.hub.count == 0


def test_cancel_watch_stops_the_events():
    n = Node()
    _, h = n.watch("k")
    n.put("k")
    n.flush()
    assert result(n.call(commands.CancelWatch, watch_id=1)) == {"cancelled": True}
    assert result(n.call(commands.CancelWatch, watch_id=1)) == {"cancelled": False}
    assert result(n.call(commands.CancelWatch, watch_id=99)) == {"cancelled": False}
    n.put("k")
    n.flush()
    assert len(h.calls) == 1 and n.hub.count == 0 and not n.hub._idle


def test_cancelling_a_watch_with_a_call_out_sends_nothing_more():
    n = Node()
    _, h = n.watch("k")
    h.hold = True
    n.put("k")
    n.flush()
    assert result(n.call(commands.CancelWatch, watch_id=1)) == {"cancelled": True}
    n.put("k")
    h.release()
    n.flush()
    assert len(h.calls) == 1


def test_watches_end_with_their_connection():
    n = Node()
    _, idle = n.watch("a", watchId=1)
    _, busy = n.watch("b", watchId=2, prefix=True)
    busy.hold = True
    n.put("b")
    n.flush()
    assert n.hub.count == 2
    n.client.transport.loseConnection()
    n.flush()
    assert n.hub.count == 0 and not n.hub._idle and n.hub.inflightBytes == 0
    assert not n.hub._byKey and not n.hub._byPrefix and not n.hub._prefixLengths
    n.put("a")
    n.put("b")
    n.flush()
    assert idle.calls == [] and len(busy.calls) == 1


# -- snapshots -----------------------------------------------------------------


def _snapshotOf(store):
    write = store.snapshotWriter()
    out = io.BytesIO()
    write(out)
    store.snapshotDone()
    return out.getvalue()


def test_installing_a_snapshot_compacts_the_watches_it_jumps_over():
    leader = kv.KVStore()
    n = Node()
    _, behind = n.watch("k", watchId=1)
    _, busy = n.watch("", watchId=2, prefix=True)
    _, later = n.watch("k", watchId=3, start=40)
    n.put("k")
    n.flush()
    busy.hold = True
    n.put("k")
    n.flush()
    for i in range(1, 31):
        leader.apply(i, kv.encodePut("k", str(i).encode()))
    data = _snapshotOf(leader)
    n.store.restoreSnapshot(n.store.parseSnapshot(io.BytesIO(data)))
    n.flush()
    expected = ("COMPACTED", 31, "the node installed a snapshot at revision 30")
    assert behind.cancelled == [expected] and busy.cancelled == [expected]
    assert later.cancelled == [] and n.hub.count == 1
    # the watch starting after the snapshot goes on
    n.index = 30
    for _ in range(10):
        n.put("k")
    n.flush()
    assert [e.mod_revision for e in later.events] == [40]


def test_a_connection_that_cannot_send_any_more_drops_its_watches():
    n = Node()
    _, idle = n.watch("a", watchId=1)
    _, ready = n.watch("b", watchId=2)
    for _ in range(3):
        n.put("x")
    n.server.transport = None  # gone, before connectionLost says so
    n.put("b")
    n.clock.advance(WatchLimits().progressInterval)
    n.clock.advance(0)
    assert n.hub.count == 0 and not n.hub._idle


def test_a_one_mib_value_travels_in_chunks():
    n = Node()
    _, h = n.watch("big")
    value = bytes(range(256)) * 4096  # 1 MiB
    n.put("big", value)
    n.flush()
    assert [e.value for e in h.events] == [value]


def test_twisteds_own_call_path_decodes_compacted_too():
    n = Node(store=kv.KVStore(historyEvents=4))
    for i in range(10):
        n.put("k")
    client, _, pump = iosim.connectedServerAndClient(
        lambda: n.factory.buildProtocol(None), amp.AMP, clock=n.clock
    )
    d = captured(client.callRemote(commands.Watch, watch_id=1, key="k", start_revision=1))
    n.flush(pump)
    assert failureOf(d, Compacted).value.compact_revision == n.store.history.oldestRevision
