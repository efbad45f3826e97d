"""
The simulation's observability checks (L{twisted_raft.testing.eventchecks}):
a correct core passes them in randomized runs, having been checked on many
events; cores that log role and leader changes wrongly, count them wrongly,
or would answer C{/health} wrongly once converged, are caught.
"""

import pytest
from twisted.logger import globalLogPublisher

from twisted_raft.raft.messages import CANDIDATE, FOLLOWER, LEADER
from twisted_raft.raft.node import RaftNode
from twisted_raft.testing.cluster import SimCluster
from twisted_raft.testing.eventchecks import EventChecks
from twisted_raft.testing.invariants import InvariantViolation, RandomRun


@pytest.mark.parametrize("seed", range(5))
def test_a_correct_core_passes_and_is_checked(seed):
    run = RandomRun(seed, 5, duration=3.0, timers=True, stable=0.5).run()
    events = run.invariants.events
    assert events.roleChanges >= 2 and events.leaderChanges >= 5
    # every member of the converged cluster, every 50 ms of the stable half second
    assert events.healthChecks >= 5 * 10


# -- broken cores -----------------------------------------------------------------------


class SilentCandidate(RaftNode):
    """Becomes a candidate without logging it."""

    def _setRole(self, role):
        if role == CANDIDATE:
            self.role = role
            return
        super()._setRole(role)


class CountsTwice(RaftNode):
    """Counts each new leadership twice (the metric would say so)."""

    def _setLeader(self, leaderId):
        before = self.leaderChangesSeen
        super()._setLeader(leaderId)
        if self.leaderChangesSeen != before:
            self.leaderChangesSeen += 1


class ForgetsItsLeader(RaftNode):
    """Logs (and counts) the leader it knows again at every AppendEntries."""

    def _setLeader(self, leaderId):
        if leaderId:
            self._leaderSeen = (0, 0)
        super()._setLeader(leaderId)


class NeverHearsAQuorum(RaftNode):
    """Its /health would call its leadership quorum-less."""

    def heardFromQuorum(self):
        return False


class NeverHearsTheLeader(RaftNode):
    """Its /health would say it never heard from its leader."""

    @property
    def lastLeaderContact(self):
        return None


@pytest.mark.parametrize("factory,message", [
    (SilentCandidate, "role_change"),
    (CountsTwice, r"counts \d+ leader changes \(raftkv_leader_changes_seen_total\) but logged"),
    (ForgetsItsLeader, r"logged leader_change to \d+ in term \d+ twice"),
    (NeverHearsAQuorum, "unhealthy after convergence: leader without a quorum"),
    (NeverHearsTheLeader, "unhealthy after convergence: no contact with leader"),
])
def test_broken_cores_are_caught(factory, message):
    with pytest.raises(InvariantViolation, match=message):
        RandomRun(3, 3, duration=1.0, timers=True, nodeFactory=factory).run()


# -- the checks on their own ----------------------------------------------------------------


def _event(node, name, **fields):
    return dict(fields, raftkv_event=name, log_source=node)


class Failed(Exception):
    pass


def _fail(message):
    raise Failed(message)


def _checks(cluster):
    checks = EventChecks(cluster, _fail)
    checks.start()
    return checks


def test_a_chain_starts_from_follower_and_ends_at_the_role():
    c = SimCluster(3)
    node = c.nodes[1]
    checks = _checks(c)
    checks.observe(_event(node, "role_change", **{"from": FOLLOWER, "to": CANDIDATE, "term": 1}))
    with pytest.raises(Failed, match="node 1 is follower in term 0, but its last role_change "
                                     "was to candidate"):
        checks.check()


@pytest.mark.parametrize("changes,message", [
    ([(CANDIDATE, LEADER, 1)], "from candidate to leader in term 1, but its last was to "
                               "follower"),
    ([(FOLLOWER, FOLLOWER, 1)], "from follower to itself"),
    ([(FOLLOWER, CANDIDATE, 2), (CANDIDATE, FOLLOWER, 1)], "in term 1 after one in term 2"),
])
def test_role_changes_that_do_not_chain(changes, message):
    c = SimCluster(3)
    checks = _checks(c)
    for old, new, term in changes:
        checks.observe(_event(c.nodes[2], "role_change", term=term, **{"from": old, "to": new}))
    with pytest.raises(Failed, match=message):
        checks.check()


def test_leader_changes_twice_or_backwards():
    c = SimCluster(3)
    checks = _checks(c)
    checks.observe(_event(c.nodes[1], "leader_change", leader_id=2, term=3))
    checks.observe(_event(c.nodes[1], "leader_change", leader_id=2, term=3))
    with pytest.raises(Failed, match="node 1 logged leader_change to 2 in term 3 twice"):
        checks.check()
    checks = _checks(c)
    checks.observe(_event(c.nodes[1], "leader_change", leader_id=2, term=3))
    checks.observe(_event(c.nodes[1], "leader_change", leader_id=3, term=2))
    with pytest.raises(Failed, match="in term 2 after one in term 3"):
        checks.check()


def test_a_count_without_its_event():
    c = SimCluster(3)
    checks = _checks(c)
    c.nodes[3].leaderChangesSeen += 1
    with pytest.raises(Failed, match="node 3 counts 1 leader changes"):
        checks.check()


def _watched(checks, until, alter=None):
    """Run C{until} with C{checks} taking the cluster's events (through
    C{alter}, if given, to lie about them)."""
    def observer(event):
        checks.observe(alter(event) if alter else event)

    globalLogPublisher.addObserver(observer)
    try:
        until()
    finally:
        globalLogPublisher.removeObserver(observer)


def test_the_known_leader_is_the_last_logged():
    c = SimCluster(3)
    checks = _checks(c)

    def olderTerm(event):
        # a follower's leader_change names the term before the real one
        if (event.get("raftkv_event") == "leader_change"
                and event["leader_id"] != event["log_source"].nodeId):
            return dict(event, term=event["term"] - 1)
        return event

    _watched(checks, c.waitForLeader, olderTerm)
    with pytest.raises(Failed, match=r"node \d knows leader \d in term (\d+), but its last "
                                     r"leader_change was \(\d, \d+\)"):
        checks.check()


def test_a_correct_cluster_passes_watched_from_its_start():
    c = SimCluster(3)
    checks = _checks(c)
    _watched(checks, c.waitForLeader)
    checks.check()
    assert checks.roleChanges >= 2 and checks.leaderChanges == 3


def test_a_cluster_already_running_is_watched_from_where_it_is():
    c = SimCluster(3)
    old = c.waitForLeader()
    checks = _checks(c)  # every node has a role and counted a leader already
    checks.check()
    c.crash(old.nodeId)  # a new election, watched
    _watched(checks, lambda: c.waitForLeader(exclude=(old.nodeId,)))
    checks.check()
    assert checks.leaderChanges >= 2


def test_events_of_another_cluster_are_not_this_ones():
    c, other = SimCluster(3), SimCluster(3)
    checks = _checks(c)
    checks.observe(_event(other.nodes[1], "role_change", term=1,
                          **{"from": LEADER, "to": LEADER}))
    checks.observe(_event(object(), "leader_change", leader_id=1, term=1))
    checks.observe({"raftkv_event": "election_start", "log_source": c.nodes[1]})
    checks.check()
    assert checks.roleChanges == checks.leaderChanges == 0


def test_health_after_convergence():
    c = SimCluster(3)
    leader = c.waitForLeader()
    c.advance(0.2)
    checks = _checks(c)
    checks.checkHealthy(c.nodes.values())
    assert checks.healthChecks == 3
    # a follower that has not heard its leader for longer than an election timeout
    follower = next(n for n in c.nodes.values() if n is not leader)
    c.network.isolate(follower.nodeId)
    c.clock.advance(c.config.electionTimeout[1] + 0.01)
    with pytest.raises(Failed, match=f"node {follower.nodeId} .* is unhealthy after "
                                     "convergence: no contact with leader"):
        checks.checkHealthy([follower])
