"""
The configuration invariants of the randomized runs (thesis chapter 4),
checked by L{twisted_raft.testing.invariants.Invariants} after every step:

  - at most one configuration is committed per index, whether it comes
    from a configuration entry or from a snapshot's metadata, and a
    snapshot records the committed configuration in force at its last
    index (§7);
  - every node uses the configuration its own log says (thesis §4.1): its
    latest configuration entry, else its snapshot's, else the bootstrap one
    its data dir keeps (none for a node that joined);
  - a node that may not campaign -- a learner, a node waiting to be added,
    a removed node that knows its removal committed -- never becomes a
    candidate, nor raises its term by an election of its own.

Each answer is worked out from the logs, snapshots and storage, not from
the core's own bookkeeping (its L{ConfigurationLog}), which is what is
being checked.  It also keeps the committed configurations, which the
durability check, the clients and the operator read: the latest one, and
the members it dropped.
"""

from twisted_raft.raft.membership import EMPTY, Configuration, decodeMembers
from twisted_raft.raft.messages import CANDIDATE, CONFIGURATION


class ConfigurationChecks:
    """
    @ivar latest: the committed configuration of the highest index.
    @ivar removed: the members of a committed configuration that the latest
        one dropped (the operator never reuses an id, so they never return).
    """

    def __init__(self, cluster, fail):
        """
        @param fail: called with a description to report a violation (it raises).
        """
        self.cluster = cluster
        self.fail = fail
        self.bootstrap = Configuration.ofVoters(cluster.founders)
        self.committed = {0: self.bootstrap}  # index -> the configuration committed there
        self.latest = self.bootstrap
        self.everMembers = set(self.bootstrap.ids)
        self.removed = frozenset()
        self.expected = {}  # incarnation -> (its log's position, what its log says)
        self.snapshotsChecked = {}  # incarnation -> the snapshot meta last checked
        self.campaigns = {}  # incarnation -> (term, may it campaign) at the last check
        self.changed = {}  # incarnation -> (configuration, when it took effect)

    # -- committed configurations --------------------------------------------------

    def committedEntry(self, entry, nodeId):
        """A configuration entry was seen committed (on node C{nodeId})."""
        if entry.index not in self.committed:
            self.commit(decodeMembers(entry.data, entry.index), f"entry of node {nodeId}")

    def commit(self, configuration, source):
        """Record a committed configuration: at most one per index."""
        index = configuration.index
        known = self.committed.setdefault(index, configuration)
        if known != configuration:
            self.fail(
                f"two configurations committed at index {index}: {known} and "
                f"{configuration} ({source})"
            )
        if known is configuration:
            self.everMembers.update(configuration.ids)
            if index > self.latest.index:
                self.latest = configuration
            self.removed = frozenset(self.everMembers.difference(self.latest.ids))

    def at(self, index):
        """The committed configuration in force at log index C{index}."""
        return self.committed[max(i for i in self.committed if i <= index)]

    def checkSnapshot(self, node):
        """A snapshot records the committed configuration in force at its last index."""
        meta = node.snapshot
        if self.snapshotsChecked.get(node) is meta:
            return
        expected = self.at(meta.lastIndex)
        if meta.configuration != expected:
            self.fail(
                f"node {node.nodeId}'s snapshot at {meta.lastIndex} records configuration "
                f"{meta.configuration}, but {expected} was committed in force there"
            )
        self.snapshotsChecked[node] = meta

    # -- each node's configuration ----------------------------------------------------

    def fromLog(self, node):
        """
        The configuration C{node}'s log says it uses, and the one before
        that (or None): its latest configuration entries, then its
        snapshot's, then its bootstrap one.
        """
        raftLog = node.raftLog
        position = (raftLog.startIndex, raftLog.lastIndex, raftLog.lastTerm, node.snapshot)
        memo = self.expected.get(node)
        if memo is not None and memo[0] == position:
            return memo[1]
        found = []
        for entry in reversed(raftLog._entries):
            if entry.kind is CONFIGURATION:
                found.append(decodeMembers(entry.data, entry.index))
                if len(found) == 2:
                    break
        if len(found) < 2:
            if node.snapshot is not None:
                found.append(node.snapshot.configuration)
            else:
                stored = self.cluster.storages[node.nodeId].bootstrapConfiguration
                if stored is not None:
                    found.append(stored)
                elif node.nodeId in self.cluster.founders:
                    found.append(self.bootstrap)
                else:
                    found.append(EMPTY)
        says = (found[0], found[1] if len(found) > 1 else None)
        self.expected[node] = (position, says)
        return says

    def mayCampaign(self, node):
        """
        A voter campaigns; so does a node that its latest configuration
        removed, until it knows that configuration committed (thesis
        §4.2.2: it may be needed to commit it).  Learners, nodes waiting to
        be added and removed nodes that know it, never.
        """
        configuration, previous = self.fromLog(node)
        nodeId = node.nodeId
        if configuration.isVoter(nodeId):
            return True
        return (
            configuration.index > node.commitIndex
            and previous is not None
            and previous.isVoter(nodeId)
        )

    def checkNode(self, node):
        """The node uses the configuration its log says, and campaigns only if it may."""
        nodeId, configuration = node.nodeId, node.configuration
        says = self.fromLog(node)[0]
        if configuration != says:
            self.fail(f"node {nodeId} uses configuration {configuration}, but its log says {says}")
        changed = self.changed.get(node)
        if changed is None or changed[0] is not configuration:
            self.changed[node] = (configuration, self.cluster.clock.seconds())
        may = self.mayCampaign(node)
        term, mayBefore = self.campaigns.get(node, (node.currentTerm, may))
        if not may and node.role == CANDIDATE:
            self.fail(
                f"node {nodeId} campaigns (term {node.currentTerm}) in {configuration}, which "
                f"it may not (commit index {node.commitIndex})"
            )
        if node.currentTerm > term and node.votedFor == nodeId and not (may or mayBefore):
            self.fail(
                f"node {nodeId}, which may not campaign in {configuration} (commit index "
                f"{node.commitIndex}), started an election: its term went from {term} to "
                f"{node.currentTerm}"
            )
        self.campaigns[node] = (node.currentTerm, may)

    def since(self, node):
        """When C{node}'s configuration (as of the last check) took effect."""
        return self.changed[node][1]
