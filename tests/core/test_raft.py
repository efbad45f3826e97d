"""
The consensus core, deterministically: whole clusters on one task.Clock over
the in-memory network (twisted_raft.testing), plus single nodes driven by
hand through a scripted transport.
"""

import random

import pytest
from twisted.internet import task

from twisted_raft import kv
from twisted_raft.raft.log import RaftLog
from twisted_raft.raft.messages import (
    LEADER,
    AppendEntries,
    AppendEntriesResult,
    Entry,
    HardState,
    NotLeader,
    CommitUnknown,
    RequestVote,
    RequestVoteResult,
)
from twisted_raft.raft.node import RaftNode
from twisted_raft.storage.memory import MemoryStorage
from twisted_raft.testing.scripted import ScriptedTransport
from twisted_raft.testing.cluster import SimCluster


def put(node, key, value=b"v"):
    results = []
    node.propose(kv.encodePut(key, value)).addBoth(results.append)
    return results


def settle(cluster, seconds=0.5):
    cluster.advance(seconds)


def assertLogsMatch(cluster, ids=None):
    """Every pair of nodes agrees on every committed entry (State Machine Safety)."""
    nodes = [cluster.nodes[i] for i in (ids or cluster.ids)]
    commit = min(n.commitIndex for n in nodes)
    for i in range(1, commit + 1):
        assert len({n.raftLog.entry(i) for n in nodes}) == 1, f"logs differ at {i}"


# -- the six scenarios of the system this replaces -------------------------


@pytest.mark.parametrize("size", [3, 5])
@pytest.mark.parametrize("seed", range(5))
def test_exactly_one_leader_elected(size, seed):
    cluster = SimCluster(size, seed=seed)
    leader = cluster.waitForLeader()
    settle(cluster, 2.0)
    leaders = cluster.leaders()
    assert leaders == [leader]
    assert {n.leaderId for n in cluster.nodes.values()} == {leader.nodeId}
    assert {n.currentTerm for n in cluster.nodes.values()} == {leader.currentTerm}


def test_entry_committed_on_all_nodes():
    cluster = SimCluster(3, seed=1)
    leader = cluster.waitForLeader()
    result = put(leader, "hello", b"world")
    settle(cluster)
    index, _ = result[0]
    for nodeId, node in cluster.nodes.items():
        assert node.commitIndex >= index
        assert node.lastApplied >= index
        assert cluster.machines[nodeId].get("hello") == b"world"
    assertLogsMatch(cluster)


def test_ten_concurrent_submitters_batched():
    cluster = SimCluster(3, seed=2)
    leader = cluster.waitForLeader()
    writesBefore = cluster.storages[leader.nodeId].writes
    results = []
    for submitter in range(10):
        for n in range(20):
            leader.propose(kv.encodePut(f"s{submitter}-{n}", b"%d" % n)).addBoth(results.append)
    settle(cluster)
    assert len(results) == 200
    indexes = [r[0] for r in results]
    assert sorted(indexes) == indexes and len(set(indexes)) == 200
    for machine in cluster.machines.values():
        assert len(machine.data) == 200
    # Proposed in one reactor turn: one append, not two hundred.
    assert cluster.storages[leader.nodeId].writes - writesBefore == 1
    assertLogsMatch(cluster)


def test_isolated_leader_replaced_and_writes_succeed():
    cluster = SimCluster(3, seed=3)
    old = cluster.waitForLeader()
    put(old, "before")
    settle(cluster)
    cluster.network.isolate(old.nodeId)
    lost = put(old, "lost")
    new = cluster.waitForLeader(exclude={old.nodeId})
    assert new.nodeId != old.nodeId and new.currentTerm > old.currentTerm
    done = put(new, "after")
    settle(cluster)
    assert done and done[0][0] > 0
    # CheckQuorum: the cut-off leader stopped claiming leadership, and its
    # write's outcome is reported unknown rather than success.
    assert old.role != LEADER
    assert lost and lost[0].check(CommitUnknown)
    cluster.network.heal()
    settle(cluster, 1.0)
    for machine in cluster.machines.values():
        assert machine.get("after") == b"v" and machine.get("lost") is None
    assertLogsMatch(cluster)


def test_partitioned_follower_catches_up():
    cluster = SimCluster(3, seed=4)
    leader = cluster.waitForLeader()
    follower = next(i for i in cluster.ids if i != leader.nodeId)
    cluster.network.isolate(follower)
    for n in range(100):
        put(leader, f"k{n}")
    settle(cluster)
    assert cluster.nodes[follower].lastApplied < leader.lastApplied
    cluster.network.heal()
    cluster.runUntil(lambda: cluster.nodes[follower].lastApplied == leader.lastApplied)
    assert cluster.machines[follower].data == cluster.machines[leader.nodeId].data
    assertLogsMatch(cluster)


def test_restart_restores_term_vote_and_log():
    cluster = SimCluster(3, seed=5)
    leader = cluster.waitForLeader()
    for n in range(10):
        put(leader, f"k{n}")
    settle(cluster)
    victim = next(i for i in cluster.ids if i != leader.nodeId)
    before = cluster.nodes[victim]
    term, vote, entries = before.currentTerm, before.votedFor, list(before.raftLog.slice(1, 100))
    cluster.crash(victim)
    restarted = cluster.restart(victim)
    assert restarted.currentTerm == term
    assert restarted.votedFor == vote
    assert restarted.raftLog.slice(1, 100) == entries
    cluster.runUntil(lambda: restarted.lastApplied == leader.lastApplied)
    assert cluster.machines[victim].get("k9") == b"v"


# -- safety scenarios --------------------------------------------------------


def manualNode(entries=(), term=0, vote=0, size=5, delay=0.0):
    clock = task.Clock()
    storage = MemoryStorage(clock, delay)
    storage.durableHardState = HardState(term, vote)
    storage.durableEntries = list(entries)
    transport = ScriptedTransport()
    node = RaftNode(1, range(1, size + 1), storage, transport, kv.KVStore(), clock,
                    rng=random.Random(0))
    node.start()
    return node, transport, clock, storage


def elect(node, transport, clock):
    clock.advance(1.0)
    for _ in range(2):  # the pre-vote round, then the real one
        for peerId, request, d in transport.take(RequestVote):
            d.callback(RequestVoteResult(request.term, True))
        clock.advance(0)
    assert node.role == LEADER


def test_figure8_old_term_entry_not_committed_by_counting():
    """
    §5.4.2: a leader of term 4 holding a term-2 entry on a majority must not
    commit it until an entry of its own term is on a majority too.
    """
    entries = [Entry(1, 1, kv.encodePut("a", b"1")), Entry(2, 2, kv.encodePut("b", b"2"))]
    node, transport, clock, _ = manualNode(entries, term=3)
    elect(node, transport, clock)
    assert node.currentTerm == 4 and node.raftLog.lastIndex == 3  # the no-op
    appends = {peerId: (req, d) for peerId, req, d in transport.take(AppendEntries)}
    # Peers 2 and 3 acknowledge up to index 2 only: index 2 sits on a
    # majority (1, 2, 3) but is of term 2.
    for peerId in (2, 3):
        appends[peerId][1].callback(AppendEntriesResult(4, True, matchIndex=2))
    clock.advance(0)
    assert node.commitIndex == 0
    assert node.stateMachine.get("b") is None
    transport.take(AppendEntries)
    # Once the term-4 no-op reaches a majority, everything before it commits.
    for peerId in (2, 3):
        node.replication.appendAnswered(AppendEntriesResult(4, True, matchIndex=3), peerId,
                                        AppendEntries(4, 1, 2, 2, [node.raftLog.entry(3)], 0),
                                        0, False)
    assert node.commitIndex == 3
    assert node.stateMachine.get("b") == b"2"


def test_figure8_in_simulation_committed_entries_survive():
    """Many leader changes with crashes: committed entries are never lost or changed."""
    for seed in range(5):
        cluster = SimCluster(5, seed=seed)
        rng = random.Random(seed)
        acknowledged = {}
        for round_ in range(8):
            leader = cluster.waitForLeader(timeout=20)
            results = put(leader, f"k{round_}", b"%d" % round_)
            cluster.advance(rng.uniform(0.0, 0.02))
            victim = leader.nodeId
            cluster.crash(victim)
            cluster.advance(rng.uniform(0.2, 0.6))
            cluster.restart(victim)
            cluster.advance(0.5)
            if results and isinstance(results[0], tuple):
                acknowledged[f"k{round_}"] = b"%d" % round_
        leader = cluster.waitForLeader(timeout=20)
        cluster.runUntil(lambda: all(n.lastApplied == leader.lastApplied
                                     for n in cluster.nodes.values()))
        for machine in cluster.machines.values():
            for key, value in acknowledged.items():
                assert machine.get(key) == value
        assertLogsMatch(cluster)


def test_leader_in_minority_commits_nothing():
    cluster = SimCluster(5, seed=6)
    leader = cluster.waitForLeader()
    settle(cluster)
    others = [i for i in cluster.ids if i != leader.nodeId]
    minority = {leader.nodeId, others[0]}
    cluster.network.partition(minority, set(others[1:]))
    commit = leader.commitIndex
    results = put(leader, "minority")
    cluster.advance(0.2)  # less than an election timeout: still leader
    assert leader.role == LEADER
    assert leader.commitIndex == commit and not results
    assert cluster.nodes[others[0]].commitIndex <= commit
    cluster.advance(1.0)
    assert results and results[0].check(CommitUnknown)
    assert all(m.get("minority") is None for m in cluster.machines.values())


def test_shorter_log_cannot_win():
    # Without PreVote, so that the cut-off node really does raise its term.
    cluster = SimCluster(3, seed=7, preVote=False)
    leader = cluster.waitForLeader()
    laggard = next(i for i in cluster.ids if i != leader.nodeId)
    cluster.network.isolate(laggard)
    put(leader, "x")
    settle(cluster)
    # Let the laggard's term run up while cut off, then give it back its
    # links and take the leader away: only the other up-to-date node may win.
    cluster.advance(3.0)
    assert cluster.nodes[laggard].currentTerm > leader.currentTerm
    cluster.network.heal()
    cluster.crash(leader.nodeId)
    new = cluster.waitForLeader(timeout=20)
    assert new.nodeId not in (laggard, leader.nodeId)
    assert cluster.machines[new.nodeId].get("x") == b"v"


def test_prevote_rejoining_node_does_not_disrupt():
    """Thesis §9.6: a node back from a partition does not depose a healthy leader."""
    cluster = SimCluster(3, seed=15)
    leader = cluster.waitForLeader()
    loner = next(i for i in cluster.ids if i != leader.nodeId)
    cluster.network.isolate(loner)
    cluster.advance(5.0)
    # Its pre-votes went unanswered: it never raised its term.
    assert cluster.nodes[loner].currentTerm == leader.currentTerm
    cluster.network.heal()
    cluster.advance(2.0)
    assert cluster.leader() is leader and leader.role == LEADER
    assert {n.currentTerm for n in cluster.nodes.values()} == {leader.currentTerm}


def test_prevote_denied_while_leader_alive_and_changes_nothing():
    cluster = SimCluster(3, seed=16)
    leader = cluster.waitForLeader()
    follower = cluster.nodes[next(i for i in cluster.ids if i != leader.nodeId)]
    term = follower.currentTerm
    writes = cluster.storages[follower.nodeId].writes
    answers = []
    request = RequestVote(term + 1, 99, 1000, term, preVote=True)
    follower.handleRequestVote(request).addCallback(answers.append)
    leader.handleRequestVote(request).addCallback(answers.append)
    assert [a.voteGranted for a in answers] == [False, False]
    # Once the leader is gone for an election timeout, the pre-vote is
    # granted, still without touching term, vote or disk.
    cluster.crash(leader.nodeId)
    cluster.advance(0.31)
    answers = []
    follower.handleRequestVote(request).addCallback(answers.append)
    assert answers == [RequestVoteResult(term + 1, True)]
    assert follower.currentTerm == term and cluster.storages[follower.nodeId].writes == writes


def test_vote_ignored_within_leader_lease():
    cluster = SimCluster(3, seed=17)
    leader = cluster.waitForLeader()
    follower = cluster.nodes[next(i for i in cluster.ids if i != leader.nodeId)]
    answers = []
    term = follower.currentTerm
    follower.handleRequestVote(RequestVote(term + 5, 99, 1000, term)).addCallback(answers.append)
    assert answers == [RequestVoteResult(term, False)] and follower.currentTerm == term


def test_vote_denied_to_shorter_log():
    node, transport, clock, _ = manualNode([Entry(1, 1), Entry(2, 2)], term=2)
    answer = []
    node.handleRequestVote(RequestVote(3, 2, 5, 1)).addCallback(answer.append)
    assert answer == [RequestVoteResult(3, False)]
    answer = []
    node.handleRequestVote(RequestVote(3, 3, 2, 2)).addCallback(answer.append)
    assert answer == [RequestVoteResult(3, True)]


def test_conflicting_suffix_truncated_durably():
    # The follower holds two uncommitted entries of a deposed leader (term 2).
    entries = [Entry(1, 1, b""), Entry(2, 2, kv.encodePut("x", b"old")), Entry(3, 2, b"")]
    node, transport, clock, storage = manualNode(entries, term=2)
    new = [Entry(2, 3, kv.encodePut("x", b"new"))]
    answer = []
    node.handleAppendEntries(AppendEntries(3, 2, 1, 1, new, 2)).addCallback(answer.append)
    assert answer == [AppendEntriesResult(3, True, matchIndex=2)]
    assert storage.durableEntries == [entries[0], new[0]]
    assert node.stateMachine.get("x") == b"new"


def test_mismatch_answers_with_conflict_term():
    entries = [Entry(1, 1)] + [Entry(i, 2) for i in range(2, 50)]
    node, *_ = manualNode(entries, term=2)
    answer = []
    node.handleAppendEntries(AppendEntries(3, 2, 40, 3, [], 0)).addCallback(answer.append)
    assert answer == [AppendEntriesResult(3, False, conflictIndex=2, conflictTerm=2)]
    answer = []
    node.handleAppendEntries(AppendEntries(3, 2, 80, 3, [], 0)).addCallback(answer.append)
    assert answer == [AppendEntriesResult(3, False, conflictIndex=50, conflictTerm=0)]


def test_leader_skips_back_a_term_per_round_trip():
    """A follower with 300 stale entries of one term is repaired in a few round trips."""
    cluster = SimCluster(3, seed=8)
    leader = cluster.waitForLeader()
    cluster.network.isolate(leader.nodeId)
    for n in range(300):
        put(leader, f"stale{n}")  # never committed
    cluster.advance(0.1)
    new = cluster.waitForLeader(exclude={leader.nodeId})
    put(new, "fresh")
    settle(cluster)
    rejected = []
    original = leader.handleAppendEntries

    def counting(request):
        def note(result):
            if not result.success:
                rejected.append(result)
            return result

        return original(request).addCallback(note)

    leader.handleAppendEntries = counting
    cluster.network.heal()
    cluster.runUntil(lambda: leader.lastApplied == new.lastApplied and leader.role != LEADER)
    assert len(rejected) <= 3
    assert cluster.machines[leader.nodeId].get("stale0") is None
    assert cluster.machines[leader.nodeId].get("fresh") == b"v"


# -- durability ordering -------------------------------------------------------


def test_vote_answered_only_when_durable():
    node, transport, clock, storage = manualNode(term=1, delay=0.05)
    answer = []
    node.handleRequestVote(RequestVote(2, 2, 0, 0)).addCallback(answer.append)
    clock.advance(0.04)
    assert answer == []
    clock.advance(0.02)
    assert answer == [RequestVoteResult(2, True)]
    assert storage.durableHardState == HardState(2, 2)


def test_append_acknowledged_only_when_durable():
    node, transport, clock, storage = manualNode(term=1, delay=0.05)
    answer = []
    request = AppendEntries(1, 2, 0, 0, [Entry(1, 1, b"")], 0)
    node.handleAppendEntries(request).addCallback(answer.append)
    # A heartbeat arriving meanwhile must not acknowledge the entry early.
    beat = []
    node.handleAppendEntries(AppendEntries(1, 2, 1, 1, [], 0)).addCallback(beat.append)
    clock.advance(0.04)
    assert answer == [] and beat == []
    clock.advance(0.02)
    assert answer == [AppendEntriesResult(1, True, matchIndex=1)]
    assert beat == [AppendEntriesResult(1, True, matchIndex=1)]


def test_leader_counts_itself_only_when_durable():
    """With one follower reachable, commit needs the leader's own fsync."""
    cluster = SimCluster(3, seed=9)
    leader = cluster.waitForLeader()
    settle(cluster)
    cut = [i for i in cluster.ids if i != leader.nodeId][0]
    cluster.network.isolate(cut)
    cluster.storages[leader.nodeId].delay = 0.1
    results = put(leader, "slow")
    cluster.advance(0.05)
    # The follower has it durably, the leader not yet: not committed.
    assert results == []
    cluster.advance(0.1)
    assert results and isinstance(results[0], tuple)


# -- reads ---------------------------------------------------------------------


def test_read_index_sees_completed_writes():
    cluster = SimCluster(3, seed=10)
    leader = cluster.waitForLeader()
    put(leader, "k", b"1")
    settle(cluster)
    read = []
    leader.readIndex().addBoth(read.append)
    settle(cluster, 0.05)
    assert read == [None]
    assert cluster.machines[leader.nodeId].get("k") == b"1"


def test_no_stale_read_from_partitioned_old_leader():
    cluster = SimCluster(3, seed=11)
    old = cluster.waitForLeader()
    put(old, "k", b"old")
    settle(cluster)
    cluster.network.isolate(old.nodeId)
    new = cluster.waitForLeader(exclude={old.nodeId})
    put(new, "k", b"new")
    settle(cluster)
    read = []
    if old.role == LEADER:
        old.readIndex().addBoth(read.append)
    cluster.advance(2.0)
    # The old leader never confirms leadership, so it never serves the read.
    assert all(not (r is None) for r in read)
    assert old.role != LEADER
    rejected = []
    old.readIndex().addErrback(lambda f: rejected.append(f.check(NotLeader)))
    assert rejected == [NotLeader]


def test_reads_in_one_turn_share_a_round():
    cluster = SimCluster(3, seed=12)
    leader = cluster.waitForLeader()
    settle(cluster)
    before = cluster.network.delivered
    reads = []
    for _ in range(50):
        leader.readIndex().addBoth(reads.append)
    settle(cluster, 0.01)
    assert reads == [None] * 50
    assert cluster.network.delivered - before <= 4  # one round: two peers, maybe a heartbeat


def test_follower_refuses_proposals_and_reads():
    cluster = SimCluster(3, seed=13)
    leader = cluster.waitForLeader()
    follower = cluster.nodes[next(i for i in cluster.ids if i != leader.nodeId)]
    failures = []
    follower.propose(b"x").addErrback(failures.append)
    follower.readIndex().addErrback(failures.append)
    assert [f.value.leaderId for f in failures] == [leader.nodeId, leader.nodeId]


def test_single_node_cluster():
    cluster = SimCluster(1, seed=14)
    leader = cluster.waitForLeader()
    results = put(leader, "solo")
    settle(cluster, 0.01)
    assert results and results[0][0] == 2
    read = []
    leader.readIndex().addBoth(read.append)
    settle(cluster, 0.01)
    assert read == [None]


def test_raft_log_term_lookups():
    log = RaftLog([Entry(1, 1), Entry(2, 1), Entry(3, 3), Entry(4, 3), Entry(5, 4)])
    assert log.firstIndexOfTerm(3) == 3 and log.lastIndexOfTerm(3) == 4
    assert log.firstIndexOfTerm(2) == 0 and log.lastIndexOfTerm(2) == 0
    assert log.term(0) == 0 and log.term(6) == 0
    assert log.isUpToDate(1, 5) and not log.isUpToDate(4, 4) and log.isUpToDate(5, 4)


def test_a_down_follower_refusing_connections_does_not_spin_the_leader():
    """
    A call to a down peer fails at once (connection refused); the leader must
    retry at its next heartbeat, not in a tight loop (this once hung real nodes).
    """
    cluster = SimCluster(3, seed=18)
    leader = cluster.waitForLeader()
    down = next(i for i in cluster.ids if i != leader.nodeId)
    cluster.crash(down)
    calls = []
    original = cluster.network.call

    def counting(src, dst, method, request):
        if dst == down:
            calls.append(cluster.clock.seconds())
            if len(calls) > 100:
                raise AssertionError("the leader is spinning on a down follower")
        return original(src, dst, method, request)

    cluster.network.call = counting
    results = put(leader, "k")
    cluster.advance(0.5)
    assert results and isinstance(results[0], tuple)
    # About one attempt per heartbeat (80 ms) in half a second.
    assert len(calls) <= 10
