"""
The observability checks of the randomized runs (issue 12), checked by
L{twisted_raft.testing.invariants.Invariants} after every step: what each
simulated node logs as C{role_change} and C{leader_change} -- the events a
C{--log-format json} log and C{raftkv chaos} read -- and what C{/health}
would answer.

  - per incarnation, the C{role_change} events chain: the first from
    C{follower} (every node starts as one), each C{from} the last C{to},
    never to the same role, terms never going down; the last C{to} is the
    role the node has;
  - a node's C{leaderChangesSeen} (C{raftkv_leader_changes_seen_total}) is
    the number of C{leader_change} events it logged; no C{(leader_id,
    term)} is logged twice; a node that knows a leader logged that leader
    in its current term last;
  - once the cluster has converged (L{checkHealthy}), every member that
    knows a leader is healthy by the rule of C{/health}
    (L{twisted_raft.web.health.nodeHealth}, pure: no web server is made).

The events are taken from the global log publisher (L{observe}, added for
the run by L{twisted_raft.testing.invariants.RandomRun}): the core only
logs, it knows nothing of these checks.  An event belongs to the node that
logged it (its C{log_source}), one incarnation of a node id each time it
restarts.
"""

from twisted_raft.raft.messages import FOLLOWER
from twisted_raft.raft.node import RaftNode
from twisted_raft.web.health import nodeHealth

ROLE_CHANGE = "role_change"
LEADER_CHANGE = "leader_change"


class _Incarnation:
    """What one node object has logged, as far as it has been checked."""

    __slots__ = ("pending", "role", "roleTerm", "leaders", "lastLeader", "leaderTerm",
                 "baseline", "changes")

    def __init__(self, role=FOLLOWER, baseline=0):
        self.pending = []  # events not checked yet
        self.role = role  # the last role_change's "to"
        self.roleTerm = 0
        self.leaders = set()  # (leader_id, term) logged
        self.lastLeader = None
        self.leaderTerm = 0
        self.baseline = baseline  # leaderChangesSeen before its events were watched
        self.changes = 0  # leader_change events checked


class EventChecks:
    """
    @ivar roleChanges: C{role_change} events checked, in all.
    @ivar leaderChanges: C{leader_change} events checked, in all.
    @ivar healthChecks: nodes found healthy by L{checkHealthy}.
    """

    def __init__(self, cluster, fail):
        """
        @param fail: called with a description to report a violation (it raises).
        """
        self.cluster = cluster
        self.fail = fail
        self._nodes = {}  # node object -> _Incarnation
        self._dirty = []  # incarnations with events not checked yet
        self.roleChanges = 0
        self.leaderChanges = 0
        self.healthChecks = 0

    def start(self):
        """
        Start watching (before adding L{observe}): a node already running
        has whatever role and count it has now as its starting point.
        """
        for node in self.cluster.nodes.values():
            self._nodes[node] = _Incarnation(node.role, node.leaderChangesSeen)

    def observe(self, event):
        """A log observer: keep this cluster's nodes' role and leader events."""
        name = event.get("raftkv_event")
        if name != ROLE_CHANGE and name != LEADER_CHANGE:
            return
        node = event.get("log_source")
        # Every node of this cluster runs on its clock (and only those).
        if not isinstance(node, RaftNode) or node.clock is not self.cluster.clock:
            return
        seen = self._nodes.get(node)
        if seen is None:
            seen = self._nodes[node] = _Incarnation()
        if not seen.pending:
            self._dirty.append((node, seen))
        seen.pending.append(event)

    def check(self):
        """After a step: every new event, then every running node's state."""
        dirty, self._dirty = self._dirty, []
        for node, seen in dirty:
            self._events(node, seen)
        for nodeId in self.cluster.ids:
            node = self.cluster.nodes[nodeId]
            if node.running:
                self._state(node, self._nodes.get(node) or self._fresh(node))

    def _fresh(self, node):
        seen = self._nodes[node] = _Incarnation()
        return seen

    def _events(self, node, seen):
        events, seen.pending = seen.pending, []
        who = f"node {node.nodeId}"
        for e in events:
            if e["raftkv_event"] == ROLE_CHANGE:
                self.roleChanges += 1
                old, new, term = e["from"], e["to"], e["term"]
                if old != seen.role:
                    self.fail(f"{who} logged role_change from {old} to {new} in term {term},"
                              f" but its last was to {seen.role}")
                if old == new:
                    self.fail(f"{who} logged role_change from {old} to itself in term {term}")
                if term < seen.roleTerm:
                    self.fail(f"{who} logged role_change in term {term} after one in term"
                              f" {seen.roleTerm}")
                seen.role, seen.roleTerm = new, term
            else:
                self.leaderChanges += 1
                pair = (e["leader_id"], e["term"])
                if pair in seen.leaders:
                    self.fail(f"{who} logged leader_change to {pair[0]} in term {pair[1]} twice")
                if pair[1] < seen.leaderTerm:
                    self.fail(f"{who} logged leader_change in term {pair[1]} after one in term"
                              f" {seen.leaderTerm}")
                seen.leaders.add(pair)
                seen.lastLeader, seen.leaderTerm = pair, pair[1]
                seen.changes += 1

    def _state(self, node, seen):
        who = f"node {node.nodeId}"
        if node.role != seen.role:
            self.fail(f"{who} is {node.role} in term {node.currentTerm}, but its last"
                      f" role_change was to {seen.role}")
        counted = node.leaderChangesSeen - seen.baseline
        if counted != seen.changes:
            self.fail(f"{who} counts {node.leaderChangesSeen} leader changes"
                      f" (raftkv_leader_changes_seen_total) but logged {seen.changes}"
                      + (f" since {seen.baseline}" if seen.baseline else ""))
        if node.leaderId and seen.changes and seen.lastLeader != (node.leaderId, node.currentTerm):
            self.fail(f"{who} knows leader {node.leaderId} in term {node.currentTerm}, but its"
                      f" last leader_change was {seen.lastLeader}")

    def checkHealthy(self, nodes):
        """
        The cluster has converged: each of C{nodes} (the members) that knows
        a leader must be healthy by C{/health}'s rule.
        """
        for node in nodes:
            if not node.running or not node.leaderId:
                continue
            healthy, fields = nodeHealth(node)
            if not healthy:
                self.fail(f"node {node.nodeId} ({node.role}, leader {node.leaderId}) is"
                          f" unhealthy after convergence: {fields['reason']}")
            self.healthChecks += 1
