"""
The core's named log events: each change of a node's own role is one
C{role_change}, each new leader it knows one C{leader_change}, and an
election is logged once (L{twisted_raft.logs} documents the names).
"""

import pytest
from twisted.logger import globalLogPublisher

from twisted_raft.raft.messages import CANDIDATE, FOLLOWER, LEADER, AppendEntries, RequestVote
from twisted_raft.testing.cluster import SimCluster


@pytest.fixture
def events():
    """Every named event logged during the test, in order."""
    seen = []

    def observe(event):
        if event.get("raftkv_event"):
            seen.append(event)

    globalLogPublisher.addObserver(observe)
    yield seen
    globalLogPublisher.removeObserver(observe)


def named(events, name, nodeId, since=0):
    return [e for e in events[since:] if e["raftkv_event"] == name and e["nodeId"] == nodeId]


def roleChanges(events, nodeId, since=0):
    return [(e["from"], e["to"], e["term"]) for e in named(events, "role_change", nodeId, since)]


def leaderChanges(events, nodeId, since=0):
    return [(e["leader_id"], e["term"]) for e in named(events, "leader_change", nodeId, since)]


class RoleWatch:
    """
    Every role each live node of C{cluster} takes, seen by looking after
    each simulated millisecond: C{seen} is C{{nodeId: [(from, to, term),
    ...]}}, independent of the log.
    """

    def __init__(self, cluster):
        self.cluster = cluster
        self.seen = {i: [] for i in cluster.nodes}
        self.roles = {i: n.role for i, n in cluster.nodes.items()}

    def run(self, until, timeout=10.0):
        def check():
            for i, n in self.cluster.nodes.items():
                if n.running and n.role != self.roles[i]:
                    self.seen[i].append((self.roles[i], n.role, n.currentTerm))
                    self.roles[i] = n.role
            return until()

        self.cluster.runUntil(check, timeout)

    def runFor(self, seconds):
        end = self.cluster.clock.seconds() + seconds
        self.run(lambda: self.cluster.clock.seconds() >= end, seconds + 1)


def assertChain(changes, role):
    """C{changes} lead, one step at a time, from a follower to C{role}."""
    assert [f for f, _, _ in changes[:1]] in ([], [FOLLOWER])
    assert all(a[1] == b[0] for a, b in zip(changes, changes[1:]))
    assert all(f != t for f, t, _ in changes)
    assert (changes[-1][1] if changes else FOLLOWER) == role


def everyoneKnowsTheLeader(c, exclude=0):
    leader = c.leader()
    return leader is not None and leader.nodeId != exclude and all(
        n.leaderId == leader.nodeId for n in c.nodes.values() if n.running
    )


@pytest.mark.parametrize("seed", range(8))
def test_an_election_gives_each_node_exactly_its_events(events, seed):
    c = SimCluster(3, seed=seed)
    watch = RoleWatch(c)
    watch.run(lambda: everyoneKnowsTheLeader(c))
    watch.runFor(2.0)
    leader = c.leader()
    for i, node in c.nodes.items():
        assert roleChanges(events, i) == watch.seen[i]
        assertChain(roleChanges(events, i), node.role)
        # It knows the one leader, from one event.
        assert leaderChanges(events, i) == [(leader.nodeId, leader.currentTerm)]
    assert roleChanges(events, leader.nodeId)[-1] == (CANDIDATE, LEADER, leader.currentTerm)


def test_a_first_election_won_at_once_exactly(events):
    c = SimCluster(3, seed=3)  # node 2 times out first and wins term 1
    c.runUntil(lambda: everyoneKnowsTheLeader(c))
    c.advance(1.0)
    assert roleChanges(events, 2) == [(FOLLOWER, CANDIDATE, 1), (CANDIDATE, LEADER, 1)]
    assert roleChanges(events, 1) == roleChanges(events, 3) == []
    assert [e["term"] for e in named(events, "election_start", 2)] == [1]
    for i in (1, 2, 3):
        assert leaderChanges(events, i) == [(2, 1)]
    [became] = named(events, "role_change", 2)[-1:]
    assert became["log_format"] == "node {nodeId} became leader for term {term}"  # raftkv chaos reads it


@pytest.mark.parametrize("seed", range(8))
def test_a_leaders_crash_gives_each_survivor_one_leader_change(events, seed):
    c = SimCluster(3, seed=seed)
    old = c.waitForLeader()
    c.advance(0.5)
    since = len(events)
    c.crash(old.nodeId)
    survivors = [i for i in c.ids if i != old.nodeId]
    watch = RoleWatch(c)
    watch.run(lambda: everyoneKnowsTheLeader(c, exclude=old.nodeId))
    watch.runFor(2.0)  # and nothing more happens in a healthy cluster
    new = c.leader()
    for i in survivors:
        assert leaderChanges(events, i, since) == [(new.nodeId, new.currentTerm)]
        assert roleChanges(events, i, since) == watch.seen[i]
        assertChain(roleChanges(events, i, since), c.nodes[i].role)
    assert roleChanges(events, new.nodeId, since)[-1] == (CANDIDATE, LEADER, new.currentTerm)
    # Nothing from the crashed node after its crash.
    assert not [e for e in events[since:] if e.get("nodeId") == old.nodeId]


@pytest.mark.parametrize("seed", range(4))
def test_each_election_is_logged_once(events, seed):
    # Lossy links: some elections fail and candidates try again.
    c = SimCluster(5, seed=seed, network={"dropRate": 0.3})
    c.waitForLeader(timeout=30)
    elections = 0
    for i, node in c.nodes.items():
        became = [t for _, to, t in roleChanges(events, i) if to == CANDIDATE]
        started = [e["term"] for e in named(events, "election_start", i)]
        # every candidacy starts with one election; a candidate that times
        # out starts another without changing role
        assert set(became) <= set(started)
        assert len(started) == len(set(started))
        elections += len(started)
    assert elections >= 1
    assert len([e for e in events if e["raftkv_event"] == "election_start"]) == elections


def test_a_higher_term_changes_no_role_of_a_follower(events):
    c = SimCluster(3, seed=2)
    leader = c.waitForLeader()
    follower = next(n for n in c.nodes.values() if n is not leader)
    since = len(events)
    term = follower.currentTerm + 5
    # A transfer's vote request overrides the leader lease.
    follower.handleRequestVote(RequestVote(term, leader.nodeId, 0, 0, transfer=True))
    assert follower.role == FOLLOWER and follower.leaderId == 0
    assert roleChanges(events, follower.nodeId, since) == []
    assert [e["new"] for e in named(events, "term_change", follower.nodeId, since)] == [term]
    # Losing the leader is no leader_change.
    assert leaderChanges(events, follower.nodeId, since) == []


def test_the_same_leader_in_a_later_term_is_a_new_leadership(events):
    c = SimCluster(3, seed=2)
    leader = c.waitForLeader()
    follower = next(n for n in c.nodes.values() if n is not leader)
    term = follower.currentTerm
    since = len(events)
    heartbeat = AppendEntries(term, leader.nodeId, 0, 0, [], 0)
    follower.handleAppendEntries(heartbeat)  # the leader it knows: nothing new
    assert leaderChanges(events, follower.nodeId, since) == []
    # Re-elected while this follower heard nothing of it (it was cut off):
    follower.handleAppendEntries(AppendEntries(term + 2, leader.nodeId, 0, 0, [], 0))
    follower.handleAppendEntries(AppendEntries(term + 2, leader.nodeId, 0, 0, [], 0))
    assert follower.leaderId == leader.nodeId
    assert leaderChanges(events, follower.nodeId, since) == [(leader.nodeId, term + 2)]
    assert roleChanges(events, follower.nodeId, since) == []
