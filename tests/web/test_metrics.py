"""
/metrics: the names, types and labels of the issue's contract, the values
read from a node driven on a task.Clock, and each recording hook (WAL fsync,
snapshot save, peer round trip and failure, client request).
"""

import pytest_twisted
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import defer

from twisted_raft import kv
from twisted_raft.raft import messages
from twisted_raft.raft.messages import Entry, SnapshotMeta
from twisted_raft.rpc import commands
from twisted_raft.rpc.commands import InvalidArgument, Unavailable
from twisted_raft.testing.cluster import SimCluster
from twisted_raft.web.metrics import NAMES, Buckets, NodeMetrics

from tests.rpc.test_peers import SilentNode, pumpAll, setup
from tests.rpc.test_server import Harness
from tests.storage.support import opened
from tests.support import StubNode, failureOf, result

CONTRACT = {
    "raftkv_has_leader": ("gauge", ()),
    "raftkv_is_leader": ("gauge", ()),
    "raftkv_is_learner": ("gauge", ()),
    "raftkv_leader_changes_seen_total": ("counter", ()),
    "raftkv_term": ("gauge", ()),
    "raftkv_commit_index": ("gauge", ()),
    "raftkv_applied_index": ("gauge", ()),
    "raftkv_proposals_committed_total": ("counter", ()),
    "raftkv_proposals_failed_total": ("counter", ()),
    "raftkv_proposals_pending": ("gauge", ()),
    "raftkv_wal_fsync_duration_seconds": ("histogram", ()),
    "raftkv_snapshot_save_duration_seconds": ("histogram", ()),
    "raftkv_peer_round_trip_time_seconds": ("histogram", ("peer",)),
    "raftkv_peer_sent_failures_total": ("counter", ("peer",)),
    "raftkv_client_requests_total": ("counter", ("command", "code")),
    "raftkv_client_request_duration_seconds": ("histogram", ("command",)),
    "raftkv_watches": ("gauge", ()),
    "raftkv_watches_ended_total": ("counter", ("code",)),
}


def scrape(metrics):
    """{family name as exposed: family}, and {sample name: [sample]}."""
    text = metrics.render().decode("utf-8")
    families = {f.name: f for f in text_string_to_metric_families(text)}
    samples = {}
    for f in families.values():
        for s in f.samples:
            samples.setdefault(s.name, []).append(s)
    return families, samples


def value(samples, name, **labels):
    found = [s.value for s in samples.get(name, []) if s.labels == labels]
    assert len(found) == 1, (name, labels, samples.get(name))
    return found[0]


def familyName(name):
    # The parser names a counter family without its _total.
    return name[: -len("_total")] if name.endswith("_total") else name


def test_every_name_of_the_contract_has_its_type_and_help():
    for name, (kind, _) in CONTRACT.items():
        assert NAMES[name][0] == kind
    for name, (kind, doc) in NAMES.items():
        assert name.startswith("raftkv_") and doc


def test_buckets_are_cumulative_with_le_inclusive():
    b = Buckets((0.1, 1.0))
    for v in (0.05, 0.1, 0.5, 2.0):
        b.observe(v)
    assert b.cumulative() == [("0.1", 2), ("1.0", 3), ("+Inf", 4)]
    assert b.sum == 0.05 + 0.1 + 0.5 + 2.0


def test_a_driven_cluster_exposes_the_contract():
    cluster = SimCluster(3, seed=1)
    leader = cluster.waitForLeader()
    follower = next(n for n in cluster.nodes.values() if n is not leader)
    done = []
    for i in range(5):
        leader.propose(kv.encodePut(f"k{i}", b"v")).addBoth(done.append)
    cluster.runUntil(lambda: len(done) == 5 and follower.lastApplied == leader.commitIndex)

    lm, fm = NodeMetrics(leader), NodeMetrics(follower)
    lm.roundTrip(follower.nodeId, 0.002)
    lm.sendFailed(follower.nodeId)
    lm.clientRequest("Put", "OK", 0.003)
    lm.clientRequest("Put", "UNAVAILABLE", 0.5)
    families, samples = scrape(lm)
    for name, (kind, labels) in CONTRACT.items():
        family = families[familyName(name)]
        assert family.type == kind, name
        for s in family.samples:
            assert set(s.labels) - {"le"} == set(labels), (name, s)
    assert "process_start_time_seconds" in families
    # No node id or address in any name: every name is of the table or process_*.
    ours = {familyName(n) for n in NAMES}
    for name in families:
        # (prometheus_client adds a _created gauge to its own histograms.)
        assert name.startswith("process_") or name.removesuffix("_created") in ours

    assert value(samples, "raftkv_is_leader") == 1
    assert value(samples, "raftkv_has_leader") == 1
    assert value(samples, "raftkv_is_learner") == 0
    assert value(samples, "raftkv_term") == leader.currentTerm
    assert value(samples, "raftkv_commit_index") == leader.commitIndex
    assert value(samples, "raftkv_applied_index") == leader.lastApplied
    assert value(samples, "raftkv_last_log_index") == leader.raftLog.lastIndex
    assert value(samples, "raftkv_leader_changes_seen_total") == 1
    assert value(samples, "raftkv_proposals_committed_total") == 5
    assert value(samples, "raftkv_proposals_failed_total") == 0
    assert value(samples, "raftkv_proposals_pending") == 0
    assert value(samples, "raftkv_members") == 3
    assert value(samples, "raftkv_voters") == 3
    peer = str(follower.nodeId)
    assert value(samples, "raftkv_peer_match_index", peer=peer) == leader.commitIndex
    assert value(samples, "raftkv_peer_round_trip_time_seconds_count", peer=peer) == 1
    assert value(samples, "raftkv_peer_round_trip_time_seconds_bucket", peer=peer,
                 le="0.0025") == 1
    assert value(samples, "raftkv_peer_round_trip_time_seconds_bucket", peer=peer,
                 le="0.001") == 0
    assert value(samples, "raftkv_peer_sent_failures_total", peer=peer) == 1
    assert value(samples, "raftkv_client_requests_total", command="Put", code="OK") == 1
    assert value(samples, "raftkv_client_requests_total", command="Put",
                 code="UNAVAILABLE") == 1
    assert value(samples, "raftkv_client_request_duration_seconds_count", command="Put") == 2

    _, samples = scrape(fm)
    assert value(samples, "raftkv_is_leader") == 0
    assert value(samples, "raftkv_has_leader") == 1
    assert value(samples, "raftkv_proposals_committed_total") == 0
    assert value(samples, "raftkv_applied_index") == follower.lastApplied
    assert "raftkv_peer_match_index" not in samples  # a follower tracks no peers


def test_leader_changes_and_failed_proposals_are_counted():
    cluster = SimCluster(3, seed=2)
    leader = cluster.waitForLeader()
    survivors = [n for n in cluster.nodes.values() if n is not leader]
    before = {n.nodeId: n.leaderChangesSeen for n in survivors}
    # Proposed, never committed: the leader is cut off, then steps down.
    cluster.network.isolate(leader.nodeId)
    outcome = []
    leader.propose(kv.encodePut("lost", b"v")).addBoth(outcome.append)
    assert leader.proposalsPending == 1
    cluster.waitForLeader(exclude=(leader.nodeId,))
    cluster.runUntil(lambda: leader.role != messages.LEADER)
    assert leader.proposalsFailed == 1 and leader.proposalsPending == 0
    for n in survivors:
        assert n.leaderChangesSeen == before[n.nodeId] + 1


def test_a_learner_says_so():
    node = StubNode(nodeId=4, role=messages.FOLLOWER, leaderId=1)
    node.configuration = node.configuration.ofVoters([1, 2, 3])
    from twisted_raft.raft.membership import Member

    node.configuration = node.configuration.withMember(Member(4, "h:4", voter=False))
    node.status = lambda: messages.Status(4, messages.FOLLOWER, 3, 1, 9, 9, 9, voter=False)
    node.leaderChangesSeen = node.proposalsCommitted = node.proposalsFailed = 0
    node.proposalsPending = 0
    node.snapshot = None
    _, samples = scrape(NodeMetrics(node, processCollector=False))
    assert value(samples, "raftkv_is_learner") == 1
    assert value(samples, "raftkv_voters") == 3
    assert value(samples, "raftkv_members") == 4


# -- the hooks -----------------------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_wal_fsync_and_snapshot_save_are_observed(tmp_path):
    storage, _ = yield opened(str(tmp_path / "n1"))
    fsyncs, saves = [], []
    storage.onFsync = fsyncs.append
    storage.onSnapshotSave = saves.append
    try:
        yield storage.append([Entry(1, 1, b"a"), Entry(2, 1, b"b")])
        assert len(fsyncs) == 1 and fsyncs[0] >= 0
        yield storage.saveSnapshot(SnapshotMeta(2, 1, (1,)), lambda f: f.write(b"state"))
        assert len(saves) == 1 and saves[0] >= 0
    finally:
        yield storage.close()


def test_peer_round_trips_and_failures_are_observed():
    clock, node, endpoint, transport = setup()
    trips, failures = [], []
    transport.onRoundTrip = lambda peer, s: trips.append((peer, s))
    transport.onSendFailure = failures.append
    d = transport.appendEntries(2, messages.AppendEntries(4, 1, 0, 0, [], 0))
    clock.advance(0.004)
    pumpAll(endpoint)
    result(d)
    assert trips == [(2, 0.004)] and failures == []
    # Not connected: fails at once, counted as a failure of that peer.
    endpoint.refuse = True
    endpoint.pumps[0].serverIO.loseConnection()
    pumpAll(endpoint)
    failureOf(transport.requestVote(2, messages.RequestVote(4, 1, 0, 0)), Exception)
    assert failures == [2] and len(trips) == 1


def test_a_peer_timing_out_counts_as_a_failure():
    silent = SilentNode(nodeId=2, role=messages.FOLLOWER, leaderId=0)
    clock, node, endpoint, transport = setup(node=silent)
    failures = []
    transport.onSendFailure = failures.append
    d = transport.appendEntries(2, messages.AppendEntries(4, 1, 0, 0, [], 0))
    pumpAll(endpoint)
    clock.advance(0.3)
    failureOf(d, defer.TimeoutError)
    assert failures == [2]


def test_client_requests_are_counted_by_command_and_wire_code():
    h = Harness(StubNode())
    seen = []
    h.factory.onClientRequest = lambda *a: seen.append(a)
    assert result(h.call(commands.Put, key="k", value=b"v"))["revision"] == 1
    failureOf(h.call(commands.Put, key="", value=b"v"), InvalidArgument)
    h.node.proposeError = messages.StorageFailed("disk gone")
    failureOf(h.call(commands.Delete, key="k"), Unavailable)
    result(h.call(commands.Get, key="k", stale=True))
    result(h.call(commands.Status))
    assert [(c, code) for c, code, _ in seen] == [
        ("Put", "OK"), ("Put", "INVALID_ARGUMENT"), ("Delete", "UNAVAILABLE"),
        ("Get", "OK"), ("Status", "OK"),
    ]
    assert all(s >= 0 for _, _, s in seen)


def test_client_request_duration_is_from_arrival_to_answer():
    node = StubNode()
    node.hold = True
    h = Harness(node)
    seen = []
    h.factory.onClientRequest = lambda *a: seen.append(a)
    d = h.call(commands.Put, key="k", value=b"v")
    h.advance(0.25)
    assert seen == []  # not answered yet
    node.held.pop().callback((1, node.store.apply(1, kv.encodePut("k", b"v"))))
    h.pumps.flush()
    assert result(d)["revision"] == 1
    assert seen == [("Put", "OK", 0.25)]


def test_without_a_hook_nothing_is_recorded_and_requests_are_served():
    h = Harness(StubNode())
    assert h.factory.onClientRequest is None
    assert result(h.call(commands.Put, key="k", value=b"v"))["revision"] == 1
    failureOf(h.call(commands.Put, key="", value=b"v"), InvalidArgument)
