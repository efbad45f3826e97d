"""
Watches, the client library's side (L{twisted_raft.watchclient}): a
L{RaftKVClient} talking real AMP (L{iosim}) to real node protocols
(L{NodeServerFactory}) over their own stores, on one L{task.Clock}; and a
whole simulated Raft cluster (L{SimCluster}) for resuming across a killed
node.
"""

import io

import pytest
from twisted.python.failure import Failure

from twisted_raft import kv
from twisted_raft.client import Compacted, RaftKVClient
from twisted_raft.kvrecords import PUT_EVENT
from twisted_raft.kvtxn import Put, Txn
from twisted_raft.rpc import commands
from twisted_raft.rpc.commands import InvalidArgument, Unavailable
from twisted_raft.rpc.watches import WatchLimits

from tests.kvsupport import Followers, SimNodes, Sink


def outcome(d):
    box = []
    d.addBoth(box.append)
    return box[0] if box else None


# -- watching ------------------------------------------------------------------


def test_a_watch_delivers_events_and_ends_when_cancelled():
    nodes = Followers()
    nodes.put("a", b"0")
    client = nodes.newClient()
    sink = Sink()
    w = client.watch("a", onEvents=sink)
    nodes.flush()
    assert outcome(w.whenStarted()) == 2 and w.address == nodes.addresses[0]
    nodes.put("a", b"1")
    nodes.put("b", b"x")
    nodes.apply(kv.encodeDelete("a"))
    nodes.flush()
    assert [(e.type, e.key, e.value, e.mod_revision) for e in sink.events] == [
        ("put", "a", b"1", 2), ("delete", "a", None, 4),
    ]
    assert w.nextRevision == 5
    d = w.cancel()
    nodes.flush()
    assert outcome(d) is None and outcome(w.done) is None
    assert nodes.factories[0].watches.count == 0
    nodes.put("a", b"2")
    nodes.flush()
    assert len(sink.events) == 2


def test_a_prefix_watch_from_a_revision_replays_then_follows():
    nodes = Followers()
    for i in range(4):
        nodes.put(f"p/{i}")
    client = nodes.newClient()
    sink = Sink()
    w = client.watch("p/", prefix=True, startRevision=2, onEvents=sink)
    nodes.put("p/x")
    nodes.put("q")
    nodes.flush()
    assert [(e.key, e.mod_revision) for e in sink.events] == [
        ("p/1", 2), ("p/2", 3), ("p/3", 4), ("p/x", 5),
    ]
    assert outcome(w.whenStarted()) == 2


def test_a_transaction_is_one_batch_even_when_split_over_calls():
    nodes = Followers()
    for f in nodes.factories:
        f.watches.limits = WatchLimits(callBytes=2500)
    nodes.apply(kv.encodeMetadataEpoch())  # transactions apply only after it
    client = nodes.newClient()
    sink = Sink()
    client.watch("t/", prefix=True, onEvents=sink)
    nodes.flush()
    values = [bytes([65 + i]) * 1000 for i in range(6)]
    revision = nodes.apply(kv.encodeTxn(Txn(success=[Put(f"t/{i}", v) for i, v in enumerate(values)])))
    nodes.flush()
    assert len(sink.batches) == 1
    assert [e.value for e in sink.batches[0]] == values
    assert {e.mod_revision for e in sink.batches[0]} == {revision}


def test_on_events_returning_a_deferred_holds_the_next_batch():
    nodes = Followers()
    client = nodes.newClient()
    sink = Sink()
    sink.hold = True
    client.watch("k", onEvents=sink)
    nodes.flush()
    nodes.put("k")
    nodes.flush()
    nodes.put("k")
    nodes.put("k")
    nodes.flush()
    assert len(sink.batches) == 1 and len(sink.held) == 1
    sink.release()
    nodes.flush()
    assert sink.revisions() == [1, 2, 3] and len(sink.batches) == 2


def test_what_on_events_raises_ends_the_watch_with_it():
    nodes = Followers()
    client = nodes.newClient()
    sink = Sink()
    sink.error = ZeroDivisionError("boom")
    w = client.watch("k", onEvents=sink)
    nodes.flush()
    nodes.put("k")
    nodes.flush()
    f = outcome(w.done)
    assert isinstance(f, Failure) and f.check(ZeroDivisionError)
    assert nodes.factories[0].watches.count == 0
    nodes.put("k")
    nodes.flush()
    assert len(sink.batches) == 1


def test_bad_arguments_fail_at_once():
    client = Followers().newClient()
    with pytest.raises(InvalidArgument, match="empty key"):
        client.watch("", onEvents=print)
    with pytest.raises(InvalidArgument, match="out of range"):
        client.watch("k", startRevision=0, onEvents=print)
    with pytest.raises(TypeError):
        client.watch("k")
    with pytest.raises(InvalidArgument, match="not UTF-8"):
        client.watch("\udcff", onEvents=print)
    # "" with prefix: every key
    assert client.watch("", prefix=True, onEvents=print).key == ""


def test_closing_the_client_ends_its_watches():
    nodes = Followers()
    client = nodes.newClient()
    w = client.watch("k", onEvents=Sink())
    nodes.flush()
    client.close()
    nodes.runFor(1.0)
    f = outcome(w.done)
    assert isinstance(f, Failure) and f.check(Unavailable)


# -- resuming ------------------------------------------------------------------


def test_a_lost_node_is_left_for_the_next_without_loss_or_repeat():
    nodes = Followers()
    client = nodes.newClient()
    sink = Sink()
    w = client.watch("k", prefix=True, onEvents=sink)
    nodes.flush()
    for i in range(5):
        nodes.put(f"k{i}")
    nodes.flush()
    nodes.kill(0)
    for i in range(5):
        nodes.put(f"k{i}")
    nodes.runFor(1.0)
    assert w.address == nodes.addresses[1] and w.resumes == 1
    assert sink.revisions() == list(range(1, 11))


def test_resuming_waits_for_the_delivery_under_way():
    nodes = Followers()
    client = nodes.newClient()
    sink = Sink()
    sink.hold = True
    w = client.watch("k", onEvents=sink)
    nodes.flush()
    nodes.put("k")
    nodes.flush()
    nodes.put("k")
    nodes.kill(0)
    nodes.runFor(1.0)
    # the first batch is still being handled: nothing else meanwhile
    assert sink.revisions() == [1] and w.address is None
    sink.release()
    nodes.runFor(1.0)
    assert sink.revisions() == [1, 2] and w.address == nodes.addresses[1]


def test_a_resumed_watch_on_a_lagging_follower_waits_for_it():
    nodes = Followers()
    nodes.behind.add(1)
    client = nodes.newClient()
    sink = Sink()
    w = client.watch("k", onEvents=sink)
    nodes.flush()
    for _ in range(3):
        nodes.put("k")
    nodes.flush()
    nodes.kill(0)
    nodes.put("k")
    nodes.runFor(1.0)
    assert w.address == nodes.addresses[1] and sink.revisions() == [1, 2, 3]
    nodes.catchUp(1)
    nodes.flush()
    assert sink.revisions() == [1, 2, 3, 4]


def test_a_progress_note_moves_where_a_quiet_watch_resumes():
    nodes = Followers(historyEvents=8)
    client = nodes.newClient()
    sink = Sink()
    w = client.watch("quiet", onEvents=sink)
    nodes.flush()
    assert w.nextRevision == 1
    for _ in range(12):
        nodes.put("busy")
    nodes.runFor(WatchLimits().progressInterval + 0.1)
    assert w.nextRevision == 13
    # from its start every other node would say COMPACTED: not from here
    assert nodes.stores[1].history.oldestRevision > 1
    nodes.kill(0)
    nodes.put("quiet")
    nodes.runFor(1.0)
    assert not w.done.called
    assert w.address == nodes.addresses[1] and sink.revisions() == [13]


def test_compacted_on_one_node_resumes_on_another_that_holds_it():
    nodes = Followers()
    # node 1 restarted from a snapshot: its history starts after it
    for i in range(10):
        nodes.put("k")
    fresh = kv.KVStore()
    write = nodes.stores[1].snapshotWriter()
    out = io.BytesIO()
    write(out)
    nodes.stores[1].snapshotDone()
    fresh.restoreSnapshot(fresh.parseSnapshot(io.BytesIO(out.getvalue())))
    nodes.stores[0] = fresh
    nodes.factories[0].stateMachine = fresh
    nodes.factories[0].watches.store = fresh
    client = nodes.newClient()
    sink = Sink()
    w = client.watch("k", startRevision=3, onEvents=sink)
    nodes.flush()
    assert w.address == nodes.addresses[1]
    assert sink.revisions() == list(range(3, 11))


def test_compacted_everywhere_fails_with_the_oldest_revision_held():
    nodes = Followers(historyEvents=4)
    for i in range(20):
        nodes.put("k")
    client = nodes.newClient()
    w = client.watch("k", startRevision=2, onEvents=Sink())
    nodes.runFor(1.0)
    f = outcome(w.done)
    assert isinstance(f, Failure) and f.check(Compacted)
    assert f.value.compact_revision == min(s.history.oldestRevision for s in nodes.stores)
    assert outcome(w.whenStarted()).check(Compacted)


def test_a_watch_that_falls_behind_everywhere_fails_compacted():
    nodes = Followers(historyEvents=8)
    client = nodes.newClient()
    sink = Sink()
    sink.hold = True
    w = client.watch("k", onEvents=sink)
    nodes.flush()
    nodes.put("k")
    nodes.flush()
    for _ in range(40):
        nodes.put("k")
    sink.release()
    nodes.runFor(1.0)
    f = outcome(w.done)
    assert isinstance(f, Failure) and f.check(Compacted)
    assert sink.revisions() == [1]


def test_all_nodes_down_then_back_the_watch_goes_on():
    nodes = Followers(n=2)
    client = nodes.newClient()
    sink = Sink()
    w = client.watch("k", onEvents=sink)
    nodes.flush()
    nodes.put("k")
    nodes.flush()
    nodes.kill(0)
    nodes.kill(1)
    nodes.runFor(3.0)
    assert not w.done.called and w.address is None
    nodes.down.discard(1)
    nodes.catchUp(1)
    nodes.put("k")
    nodes.runFor(2.0)
    assert sink.revisions() == [1, 2] and w.address == nodes.addresses[1]


def test_cancel_while_between_nodes_ends_at_once():
    nodes = Followers(n=2)
    client = nodes.newClient()
    w = client.watch("k", onEvents=Sink())
    nodes.flush()
    nodes.kill(0)
    nodes.kill(1)
    nodes.runFor(1.0)
    d = w.cancel()
    nodes.flush()
    assert outcome(d) is None


# -- a whole simulated cluster: a killed node, every event exactly once --------


def test_a_watcher_on_a_killed_node_gets_every_committed_event_once():
    nodes = SimNodes()
    nodes.cluster.waitForLeader()
    leaderId = nodes.cluster.leader().nodeId
    # watch on a follower, then kill it mid-stream
    follower = next(i for i in nodes.cluster.ids if i != leaderId)
    client = nodes.newClient()
    client._preferred = nodes.addresses[follower - 1]
    sink = Sink()
    w = client.watch("w/", prefix=True, onEvents=sink)
    nodes.runFor(0.05)
    assert w.address == nodes.addresses[follower - 1]
    for i in range(60):
        nodes.propose(kv.encodePut(f"w/{i % 5}", str(i).encode()))
        if i % 3 == 0:
            nodes.propose(kv.encodeTxn(Txn(success=[Put("w/t1", b"a"), Put("w/t2", b"b")])))
        nodes.propose(kv.encodePut("other", b"x"))
        nodes.runFor(0.01)
        if i == 30:
            nodes.kill(follower - 1)
    nodes.runFor(2.0)
    assert w.resumes >= 1 and w.address != nodes.addresses[follower - 1]
    survivor = nodes.cluster.machines[leaderId]
    expected = survivor.watchEvents(1, "w/", prefix=True).events
    assert len(expected) > 80
    assert sink.events == expected
    # a transaction's two events always in the same batch
    for batch in sink.batches:
        revisions = [e.mod_revision for e in batch]
        for r in set(revisions):
            txn = [e for e in expected if e.mod_revision == r]
            assert [e for e in batch if e.mod_revision == r] == txn
    assert all(e.type == PUT_EVENT for e in sink.events)


def test_a_follower_that_installs_a_snapshot_sends_its_watch_elsewhere():
    nodes = SimNodes(snapshotEntries=20, snapshotKeep=5)
    nodes.cluster.waitForLeader()
    leaderId = nodes.cluster.leader().nodeId
    follower = next(i for i in nodes.cluster.ids if i != leaderId)
    client = nodes.newClient()
    client._preferred = nodes.addresses[follower - 1]
    sink = Sink()
    w = client.watch("s/", prefix=True, onEvents=sink)
    nodes.runFor(0.05)
    nodes.propose(kv.encodePut("s/first", b"1"))
    nodes.runFor(0.1)
    assert w.address == nodes.addresses[follower - 1] and len(sink.events) == 1
    # cut off, the follower misses enough for the leader to send a snapshot
    nodes.cluster.network.isolate(follower)
    for i in range(60):
        nodes.propose(kv.encodePut(f"s/{i}", b"x"))
        nodes.runFor(0.005)
    nodes.cluster.network.heal()
    machine = nodes.cluster.machines[follower]
    nodes.runFor(2.0)
    assert machine.history.oldestRevision > 3  # it restored a snapshot
    # its watch was cancelled as COMPACTED, and resumed on a node holding the history
    assert w.resumes == 1 and w.address != nodes.addresses[follower - 1]
    expected = nodes.cluster.machines[leaderId].watchEvents(1, "s/", prefix=True).events
    assert len(expected) == 61 and sink.events == expected


def test_cancel_from_inside_on_events():
    nodes = Followers()
    client = nodes.newClient()
    got = []

    def firstOnly(events):
        got.extend(events)
        w.cancel()

    w = client.watch("k", onEvents=firstOnly)
    nodes.flush()
    for _ in range(3):
        nodes.put("k")
        nodes.flush()
    assert [e.mod_revision for e in got] == [1] and outcome(w.done) is None
    assert nodes.factories[0].watches.count == 0


def test_a_watch_follows_the_clients_new_addresses():
    # Members changed: the client was told (setAddresses), and so are the
    # watches already open, which resume only on the nodes listed now.
    nodes = Followers()
    client = RaftKVClient(nodes.addresses[:2], reactor=nodes.clock, connect=nodes.connect,
                          timeout=2.0)
    sink = Sink()
    w = client.watch("k", prefix=True, onEvents=sink)
    nodes.flush()
    nodes.put("k1")
    nodes.flush()
    assert w.address == nodes.addresses[0] and sink.revisions() == [1]
    client.setAddresses(nodes.addresses[1:])
    nodes.kill(1)  # the node it would have tried next is gone too
    nodes.kill(0)
    nodes.put("k2")
    nodes.runFor(2.0)
    assert w.address == nodes.addresses[2] and sink.revisions() == [1, 2]
