"""
Randomized, seeded fault injection on the consensus core
(L{twisted_raft.testing.invariants}): 3- and 5-node simulated clusters with a
random disk delay per node, partitions (isolation, random halves, one-way
cuts), heals, crashes and restarts of up to every node, client writes and
ReadIndex reads on whichever node claims leadership, with the Raft safety
invariants checked after every clock step and convergence checked at the end.

Every run is deterministic: a failing case is reproduced with
C{RandomRun(seed, size).run()} (C{trace=True} prints the fault schedule).
"""

import random

import pytest
from twisted.internet import defer, task

from twisted_raft import kv
from twisted_raft.raft.messages import (
    LEADER,
    AppendEntries,
    AppendEntriesResult,
    Entry,
    HardState,
    RequestVote,
    RequestVoteResult,
)
from twisted_raft.raft.messages import NotLeader
from twisted_raft.raft.conflog import ConfigurationLog
from twisted_raft.raft.node import RaftNode
from twisted_raft.raft.quorum import MajorityConfig
from twisted_raft.raft.snapshots import Snapshotter
from twisted_raft.storage.memory import MemoryStorage
from twisted_raft.testing.scripted import ScriptedTransport
from twisted_raft.testing.invariants import InvariantViolation, RandomRun

# 50 seeds x 2 sizes x 3 simulated seconds: about 5-10 s of wall time.
SEEDS = range(50)


@pytest.mark.parametrize("size", [3, 5])
@pytest.mark.parametrize("seed", SEEDS)
def test_random_faults_keep_raft_safe(seed, size):
    run = RandomRun(seed, size, duration=3.0, timers=True, stable=1.0).run()
    # The run did something: a leader was elected and writes committed.
    assert run.invariants.leaders and run.invariants.maxCommitted > 0


# Heavier chaos: crashes and partitions several times a second, slower disks.
CHAOS = dict(crash=3.0, restart=4.0, isolate=1.5, halves=1.5, oneway=2.0, heal=3.0)


@pytest.mark.parametrize("size", [3, 5])
@pytest.mark.parametrize("seed", range(1000, 1025))
def test_heavy_chaos_keeps_raft_safe(seed, size):
    RandomRun(seed, size, duration=3.0, rates=CHAOS, maxDiskDelay=0.02, timers=True).run()


# -- the checker itself must catch broken cores ------------------------------


# An unreliable network: drops, duplicates, and reordering through random latency.
LOSSY = dict(dropRate=0.05, duplicateRate=0.02, latency=(0.001, 0.02))


@pytest.mark.parametrize("size", [3, 5])
@pytest.mark.parametrize("seed", range(2000, 2050))
def test_lossy_network_keeps_raft_safe(seed, size):
    RandomRun(seed, size, duration=3.0, network=LOSSY, timers=True).run()


def _failures(seeds, sizes=(3, 5), **options):
    """Run seeds until the first invariant violation; 1 if one was found."""
    for seed in seeds:
        for size in sizes:
            try:
                RandomRun(seed, size, timers=False, network=LOSSY, **options).run()
            except InvariantViolation:
                return 1
    return 0


def test_checker_catches_double_vote(monkeypatch):
    """A node that forgets its vote within a term lets two leaders win it."""
    original = RaftNode.handleRequestVote

    def forgetful(self, request):
        if request.term == self.currentTerm:
            self.votedFor = 0
        return original(self, request)

    monkeypatch.setattr(RaftNode, "handleRequestVote", forgetful)
    assert _failures(range(60), sizes=(5,)) > 0


def test_checker_catches_unconfirmed_reads(monkeypatch):
    """Serving reads without a confirming heartbeat round gives stale reads."""
    original = RaftNode._serveReads

    def hasty(self):
        reads = self.reads
        reads.awaitingApply += [(self.commitIndex, d) for _, d in reads.awaitingRound]
        reads.awaitingRound = []
        original(self)

    monkeypatch.setattr(RaftNode, "_serveReads", hasty)
    assert _failures(range(20)) > 0


class LocalReads(RaftNode):
    """Deliberately broken: serves linearizable reads from local state at once."""

    def readIndex(self):
        if self.role != "leader":
            return defer.fail(NotLeader(self.leaderId))
        return defer.succeed(None)


def test_linearizability_check_catches_local_reads():
    """
    With the direct read checks off, the client-history linearizability check
    alone catches a node that answers reads without confirming leadership.
    """
    assert _failures(range(40), checkReads=False, nodeFactory=LocalReads) > 0


# -- bugs found by the randomized runs ----------------------------------------


def test_leader_counts_only_durable_entries_after_truncation():
    clock = task.Clock()
    storage = MemoryStorage(clock, 0.05)
    storage.durableHardState = HardState(1, 0)
    storage.durableEntries = [Entry(1, 1, b"")]
    transport = ScriptedTransport()
    node = RaftNode(1, [1, 2, 3], storage, transport, kv.KVStore(), clock, rng=random.Random(0))
    node.start()
    put = kv.encodePut
    # Leader 2 (term 1) sends entries 2-3; the write is under way...
    node.handleAppendEntries(
        AppendEntries(1, 2, 1, 1, [Entry(2, 1, put("x", b"1")), Entry(3, 1, put("y", b"1"))], 1)
    )
    clock.advance(0.01)
    # ...when leader 3 (term 2) replaces them with its own entry 2.
    node.handleAppendEntries(AppendEntries(2, 3, 1, 1, [Entry(2, 2, put("z", b"2"))], 1))
    clock.advance(0.1)
    assert [e.term for e in storage.durableEntries] == [1, 2]
    # Node 1 then wins term 3 and appends its no-op at index 3 (disk write
    # under way for 50 ms).
    clock.advance(1.0)
    for _ in range(10):  # the pre-vote, then (once our vote is durable) the vote
        for _, request, d in transport.take(RequestVote):
            d.callback(RequestVoteResult(request.term, True))
        clock.advance(0)
        if node.role == LEADER:
            break
        clock.advance(0.01)
    assert node.role == LEADER and node.raftLog.lastIndex == 3
    # Only peer 2 acknowledges index 3; peer 3 is silent.
    for peerId, request, d in transport.take(AppendEntries):
        if peerId == 2:
            match = request.prevLogIndex + len(request.entries)
            d.callback(AppendEntriesResult(request.term, True, matchIndex=match))
    clock.advance(0)
    # Index 3 is durable on peer 2 alone: it must not be committed yet.  (It
    # is: the leader counts itself durable up to 3, a leftover of the term-1
    # write of entries 2-3 that completed after they were truncated.)
    assert len(storage.durableEntries) == 2
    assert node.commitIndex < 3


def test_follower_with_heartbeats_never_starts_prevote():
    clock = task.Clock()
    transport = ScriptedTransport()
    node = RaftNode(1, [1, 2, 3], MemoryStorage(), transport, kv.KVStore(), clock,
                    rng=random.Random(0))
    node.start()
    clock.advance(0.6)  # election timeout: a pre-vote round
    preVotes = transport.take(RequestVote)
    assert preVotes and all(request.preVote for _, request, _ in preVotes)
    _, request, d = preVotes[0]
    d.callback(RequestVoteResult(request.term, True))  # a quorum: the real election
    assert node.role == "candidate" and node.currentTerm == 1
    transport.take(RequestVote)
    # Node 2 wins term 1; node 1 follows it and hears a heartbeat every 80 ms.
    forgot = []
    for _ in range(60):
        node.handleAppendEntries(AppendEntries(1, 2, 0, 0, [], 0))
        for _ in range(8):
            clock.advance(0.01)
            if node.leaderId != 2:
                forgot.append(clock.seconds())
    assert transport.take(RequestVote) == []
    assert forgot == []


def test_no_orphaned_election_timers():
    RandomRun(0, 3, duration=1.0, timers=True).run()


def test_healthy_cluster_keeps_its_leader():
    RandomRun(15, 5, duration=3.0, timers=False, stable=2.0).run()


def test_seed_258_size_5_heavy_chaos():
    RandomRun(258, 5, duration=3.0, rates=CHAOS, maxDiskDelay=0.02, timers=False).run()


def test_checker_catches_a_leader_without_checkquorum(monkeypatch):
    """Without CheckQuorum a cut-off leader keeps leading: the check must notice."""
    monkeypatch.setattr(RaftNode, "_checkQuorum", lambda self: True)
    assert _failures(range(20)) > 0


# -- membership faults: the checks must catch broken membership cores ---------------


def _membershipFailures(seeds, sizes=(3, 5), **options):
    """Like L{_failures}, with membership faults and frequent snapshots."""
    nodeOptions = dict(snapshotEntries=20, snapshotKeep=3, snapshotChunk=256)
    for seed in seeds:
        for size in sizes:
            try:
                RandomRun(seed, size, network=LOSSY, membership=True, stable=1.0,
                          nodeOptions=nodeOptions, **options).run()
            except InvariantViolation:
                return 1
    return 0


@pytest.mark.parametrize("timers", [True, False])
def test_checker_catches_a_learner_that_campaigns(monkeypatch, timers):
    """
    A node that campaigns whatever its configuration: learners, newcomers,
    the removed.  Its election timer gives it away at once; without that
    check, its elections do (most stop at PreVote, so it takes longer).
    """
    monkeypatch.setattr(RaftNode, "_mayCampaign", lambda self: True)
    assert _membershipFailures(range(1 if timers else 22), sizes=(3,), timers=timers) > 0


def test_checker_catches_learners_counted_in_quorums(monkeypatch):
    original = RaftNode._useConfiguration

    def everyoneVotes(self, configuration):
        original(self, configuration)
        self.voters = MajorityConfig(configuration.ids)

    monkeypatch.setattr(RaftNode, "_useConfiguration", everyoneVotes)
    assert _membershipFailures(range(20)) > 0


def test_checker_catches_a_configuration_kept_after_truncation(monkeypatch):
    monkeypatch.setattr(ConfigurationLog, "truncateFrom", lambda self, index: False)
    assert _membershipFailures(range(25)) > 0


def test_checker_catches_a_snapshot_of_the_wrong_configuration(monkeypatch):
    """A snapshot that records the latest configuration, committed or not."""
    original, at = Snapshotter.maybeTake, ConfigurationLog.at

    def careless(self):
        monkeypatch.setattr(ConfigurationLog, "at", lambda configs, index: configs.latest)
        try:
            original(self)
        finally:
            monkeypatch.setattr(ConfigurationLog, "at", at)

    monkeypatch.setattr(Snapshotter, "maybeTake", careless)
    assert _membershipFailures(range(10)) > 0


def test_checker_catches_nodes_that_refuse_every_non_member(monkeypatch):
    """Refusing callers outside the latest configuration leaves nodes behind for ever."""
    def strict(self, peerId):
        configuration = self.configuration
        return not configuration.members or peerId in configuration or peerId == self.leaderId

    monkeypatch.setattr(RaftNode, "acceptsPeer", strict)
    assert _membershipFailures(range(40), sizes=(3,)) > 0
