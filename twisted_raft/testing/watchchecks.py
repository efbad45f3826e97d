"""
Watch completeness in the randomized runs (L{RandomRun} with C{kv}).

Watchers on prefixes read each node's event history through the store's
C{watchEvents} (the node's watch layer, L{twisted_raft.rpc.watches}, is a
cursor over the same call, driven by AMP calls this in-process run does
not have) and keep their place with the client library's resume rule
(L{twisted_raft.watchclient.resumeAfter}): a watcher whose node crashed,
restarted, is no member (removed, or not yet added), or refuses its
revision as compacted (a snapshot installed over it) moves on round the
nodes from the revision it has delivered up to.  It fails over to a re-read (starting again at the oldest
revision the nodes hold) only when every node up refuses, as the client's
L{Watcher} ends with COMPACTED only then.

After every step, each watcher polls its node, and what it delivered must
be exactly the committed log's changes of its prefix: each once, in
revision order, none skipped below where it resumes.  The expected
changes come from replaying the committed log (the entries the invariants
record) on a reference store, one entry at a time; at the end of the run,
every watcher must have delivered all of them.  Violations raise through
the run's C{fail}.
"""

from collections import Counter

from twisted_raft import kv
from twisted_raft.kvrecords import Compacted
from twisted_raft.raft.messages import CONFIGURATION
from twisted_raft.watchclient import resumeAfter

PREFIXES = ("a/", "", "b")


class _Watcher:
    def __init__(self, prefix):
        self.prefix = prefix
        self.nextRevision = 1  # from the start: every change is expected
        self.node = None  # the incarnation it reads from
        self.turn = 0  # round-robin over the nodes, as Watcher goes round its addresses
        self.delivered = 0  # how many of the expected events


class WatchChecks:
    """
    @ivar stats: C{events} delivered, C{resumes} on another node,
        C{compacted} refusals, C{reread} (every node refused).
    """

    def __init__(self, run, rng, prefixes=PREFIXES, fail=None):
        self.run = run
        self.cluster = run.cluster
        self.rng = rng
        self.fail = fail or run.invariants.fail
        self.reference = kv.KVStore()
        self.replayed = 0
        self.expected = {p: [] for p in prefixes}
        self.watchers = [_Watcher(p) for p in prefixes]
        self.stats = Counter()

    def _replay(self):
        """Apply the newly committed entries to the reference store."""
        committed = self.run.invariants.committed
        ref = self.reference
        while self.replayed + 1 in committed:
            index = self.replayed + 1
            entry = committed[index]
            self.replayed = index
            if entry.kind is CONFIGURATION or not entry.data:
                continue
            ref.apply(index, entry.data)
            for event in ref.watchEvents(index, "", prefix=True).events:
                for prefix, expected in self.expected.items():
                    if event.key.startswith(prefix):
                        expected.append(event)

    def _usable(self, nodeId):
        """A node a client would watch on: up, and a member (of the
        latest committed configuration), as the client learns them."""
        node = self.cluster.nodes.get(nodeId)
        members = self.run.invariants.configurations.latest.ids
        return node is not None and node.running and nodeId in members

    def _move(self, w):
        """Resume C{w} on the next node that serves its revision, if any."""
        ids = self.cluster.ids
        refusals = []
        for _ in range(len(ids)):
            nodeId = ids[w.turn % len(ids)]
            w.turn += 1
            if not self._usable(nodeId):
                continue
            store = self.cluster.machines[nodeId]
            oldest = store.history.oldestRevision
            if w.nextRevision < oldest:
                refusals.append(oldest)
                self.stats["compacted"] += 1
                continue
            if w.node is not None:
                self.stats["resumes"] += 1
            w.node = self.cluster.nodes[nodeId]
            return
        w.node = None
        if refusals:
            # Every node up refused: the client re-reads with a range and
            # watches on from the oldest revision held.
            self.stats["reread"] += 1
            start = min(refusals)
            expected = self.expected[w.prefix]
            while w.delivered < len(expected) and expected[w.delivered].mod_revision < start:
                w.delivered += 1
            w.nextRevision = start

    def poll(self):
        """One step: replay what committed, then let every watcher read."""
        self._replay()
        for w in self.watchers:
            self._poll(w)

    def _poll(self, w, maxEvents=None):
        node = w.node
        if (node is None or not self._usable(node.nodeId)
                or self.cluster.nodes[node.nodeId] is not node):  # crashed, restarted, removed
            self._move(w)
            node = w.node
            if node is None:
                return False
        store = self.cluster.machines[node.nodeId]
        if store.appliedIndex < w.nextRevision:
            return False  # nothing new: the read would answer no events, the same revision
        if maxEvents is None:
            maxEvents = self.rng.choice((0, 1, 3))
        try:
            batch = store.watchEvents(w.nextRevision, w.prefix, prefix=True, maxEvents=maxEvents)
        except Compacted:
            # A snapshot installed over it (or a history trimmed below it).
            self.stats["compacted"] += 1
            w.node = None
            return False
        fresh, w.nextRevision = resumeAfter(w.nextRevision, batch.events, batch.next_revision)
        expected = self.expected[w.prefix]
        for event in fresh:
            want = expected[w.delivered] if w.delivered < len(expected) else None
            if event == want:
                w.delivered += 1
                continue
            where = f"watcher on {w.prefix!r} (node {node.nodeId})"
            if w.delivered and event.mod_revision <= expected[w.delivered - 1].mod_revision:
                self.fail(f"{where} got {event} again (delivered already)")
            if want is None:
                self.fail(f"{where} got {event}, a change the committed log does not have")
            self.fail(f"{where} got {event} out of order or after a skipped one; the next "
                      f"committed change of the prefix is {want}")
        self.stats["events"] += len(fresh)
        if w.delivered < len(expected) and expected[w.delivered].mod_revision < w.nextRevision:
            self.fail(f"watcher on {w.prefix!r} (node {node.nodeId}) resumes from revision "
                      f"{w.nextRevision} but never got {expected[w.delivered]}")
        return bool(fresh)

    def finish(self, revision):
        """At the end: every watcher delivers every change up to C{revision}."""
        self._replay()
        for w in self.watchers:
            for _ in range(3 * len(self.cluster.ids) + 3):
                if w.nextRevision > revision:
                    break
                self._poll(w, maxEvents=0)
            expected = self.expected[w.prefix]
            if w.delivered != len(expected):
                self.fail(f"watcher on {w.prefix!r} delivered {w.delivered} of the "
                          f"{len(expected)} committed changes of its prefix (up to revision "
                          f"{revision}; it is at {w.nextRevision})")
