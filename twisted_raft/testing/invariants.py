"""
A randomized, seeded, deterministic fault-injection driver for the consensus
core, and the safety invariants it checks after every step.  (One module of
over 700 lines: the driver records exactly what the checks read -- proposals,
acknowledgements, reads, crashes -- and neither is used without the other.)

L{RandomRun} builds a L{SimCluster} with a random disk delay per node and,
on one seeded C{random.Random}, interleaves client proposals and ReadIndex
reads on whichever nodes claim leadership with partitions (isolation, random
halves, one-way cuts), heals, crashes (up to every node) and restarts, while
advancing the clock in random small steps.  L{Invariants} checks after every
step, raising L{InvariantViolation} with a description:

  - election safety: at most one leader per term over the whole run;
  - log matching: two logs that agree on (index, term) agree on the prefix;
  - committed entries never change or vanish, and each one is durably
    stored on a quorum of nodes' storage;
  - state machine safety: every node applies exactly the committed entries,
    in order;
  - commitIndex and lastApplied never decrease while a node is up;
  - an acknowledged proposal is committed at the index it was acknowledged
    with, and (at the end) is in every node's log there;
  - a successful read reflects everything committed before it was issued
    (so every acknowledged write, and every earlier read's state);
  - after healing and restarting everything, one leader and identical data;
    with C{stable}, the healed cluster then keeps its leader and term;
  - what the nodes log and would answer on C{/health} (L{EventChecks}):
    role changes chain, C{leaderChangesSeen} equals the C{leader_change}
    events logged, no leadership logged twice, and once converged every
    member that knows a leader is healthy;
  - internal (C{internal}): the index up to which a node counts its own log
    durable is really on its disk; CheckQuorum: no leader leads longer than
    an election timeout (plus a heartbeat) without hearing from a quorum; (C{timers}) a node has at most one live
    election timer, none while it leads.

With C{membership}, an operator (L{MembershipFaults}) also adds, promotes
and removes members and transfers leadership.  The configuration checks
(L{ConfigurationChecks}: one configuration committed per index, each
node's configuration the one its log says, no campaign by a node that may
not) run in every run; with membership changes, committed entries must be
durable on enough voters of the latest committed configuration to meet
every majority of them, clients send to no node whose removal is
committed, and at the end only the members must converge.

With C{kv}, clients also issue ranges and transactions (L{KvWorkload}), the
history is checked with the multi-key checker (L{multikey}), and watchers
must deliver every committed change of their prefix once, in order, at
every step (L{WatchChecks}).

Everything runs on a L{task.Clock}, so a seed reproduces a run exactly:
C{RandomRun(seed, size).run()}.

Why one module of about 830 lines (some 600 of code): the per-step check
of the core's state and the seeded run that drives it share the cluster's
state step by step; the configuration and event checks, the KV workload
and the linearizability checker are modules of their own.
"""

import gc
import random

from twisted.logger import globalLogPublisher

from twisted_raft import kv
from twisted_raft.kvtxn import decodeTxn
from twisted_raft.raft.messages import CONFIGURATION, LEADER, NotLeader
from twisted_raft.raft.node import RaftNode
from twisted_raft.testing import kvworkload, linearizability, multikey
from twisted_raft.testing.cluster import SimCluster
from twisted_raft.testing.configchecks import ConfigurationChecks
from twisted_raft.testing.eventchecks import EventChecks
from twisted_raft.testing.kvworkload import KvWorkload
from twisted_raft.testing.membershipfaults import MembershipFaults
from twisted_raft.testing.multikey import KvOp
from twisted_raft.testing.watchchecks import WatchChecks


class InvariantViolation(AssertionError):
    pass


HEALTH_EVERY = 0.05
"""Simulated seconds between two health checks of a converged cluster."""


RESTORED = "restored from a snapshot"


def entryAt(entries, index):
    """The entry at C{index} in a contiguous list starting anywhere, or None."""
    if not entries:
        return None
    position = index - entries[0].index
    return entries[position] if 0 <= position < len(entries) else None


def describeData(data):
    """A log entry's command, readable (a session's and a transaction's too)."""
    kind = data[:1]
    if kind == bytes([kv.SESSION]):
        client, sequence, inner = kv.decodeSession(data)
        return f"{client}#{sequence} {describeData(inner)}"
    if kind == bytes([kv.TXN]):
        return decodeTxn(data)
    return kv.decode(data)


class RecordingMachine:
    """Wraps a state machine, recording every (index, data) it applies."""

    def __init__(self, machine):
        self.machine = machine
        self.applied = []

    def apply(self, index, data):
        self.applied.append((index, data))
        return self.machine.apply(index, data)

    # Snapshots pass through; a restore is recorded so the order check
    # restarts after it (the state itself is checked against the log's
    # replay at the end of a run).
    def snapshotWriter(self):
        return self.machine.snapshotWriter()

    def snapshotDone(self):
        return self.machine.snapshotDone()

    def parseSnapshot(self, fileobj):
        return self.machine.parseSnapshot(fileobj)

    def restoreSnapshot(self, parsed):
        self.applied.append((RESTORED, None))
        return self.machine.restoreSnapshot(parsed)

    def get(self, key):
        return self.machine.get(key)

    @property
    def data(self):
        return self.machine.data


class RecordingCluster(SimCluster):
    """A SimCluster whose nodes apply through a L{RecordingMachine}."""

    def __init__(self, *args, **kwargs):
        self.incarnations = []
        super().__init__(*args, **kwargs)

    def boot(self, nodeId):
        node = super().boot(nodeId)
        node.stateMachine = RecordingMachine(node.stateMachine)
        self.incarnations.append(node)
        return node

    def up(self):
        return [i for i in self.ids if self.nodes[i].running]

    def down(self):
        return [i for i in self.ids if not self.nodes[i].running]


def replay(entries, key):
    """
    The value of C{key} after applying C{entries} (the data of the log's
    entries from index 1, C{b""} for a configuration entry) in order.
    """
    machine = kv.KVStore()
    for index, data in enumerate(entries, 1):
        if data:
            machine.apply(index, data)
    return machine.get(key)


class Invariants:
    def __init__(self, cluster, internal=True, timers=None, membership=False):
        """
        @param membership: the membership may change during the run, so a
            committed entry must be durable on enough voters of the latest
            committed configuration to meet each of its majorities (see
            L{checkDurable}), rather than on a majority of every node.
        """
        self.cluster = cluster
        self.internal = internal
        self.timers = internal if timers is None else timers
        self.membership = membership
        self.configurations = ConfigurationChecks(cluster, self.fail)
        self.events = EventChecks(cluster, self.fail)
        self.leaders = {}  # term -> leader id
        self.committed = {}  # index -> Entry, everything ever seen committed
        self.maxCommitted = 0
        self.progress = {}  # incarnation -> (commitIndex, lastApplied)
        self.appliedChecked = {}  # incarnation -> number of applied records checked
        self.durableChecked = 0  # committed indexes checked for quorum durability

    def fail(self, message):
        raise InvariantViolation(f"t={self.cluster.clock.seconds():.4f}: {message}")

    def check(self, full=False):
        c = self.cluster
        for nodeId in c.ids:
            node = c.nodes[nodeId]
            if not node.running:
                continue
            # Election safety.
            if node.role == LEADER:
                known = self.leaders.setdefault(node.currentTerm, nodeId)
                if known != nodeId:
                    self.fail(f"two leaders in term {node.currentTerm}: {known} and {nodeId}")
            self.configurations.checkNode(node)
            # Monotonic progress within one incarnation.
            before = self.progress.get(node, (0, 0))
            now = (node.commitIndex, node.lastApplied)
            if now[0] < before[0] or now[1] < before[1]:
                self.fail(f"node {nodeId} went back from (commit, applied)={before} to {now}")
            if node.lastApplied > node.commitIndex:
                self.fail(f"node {nodeId} applied {node.lastApplied} > commit {node.commitIndex}")
            if node.role == LEADER and self.internal:
                self.checkQuorumContact(node)
            if node.commitIndex > node.raftLog.lastIndex:
                self.fail(
                    f"node {nodeId} commit {node.commitIndex} beyond its log "
                    f"{node.raftLog.lastIndex}"
                )
            # Committed entries never change: newly committed ones join the
            # record, and (on a full check) all of them are re-verified.
            start = 1 if full else before[0] + 1
            start = max(start, node.raftLog.startIndex + 1)  # the rest is in a snapshot
            for index in range(start, node.commitIndex + 1):
                entry = node.raftLog.entry(index)
                known = self.committed.setdefault(index, entry)
                if known != entry:
                    self.fail(
                        f"committed entry {index} differs: {known} recorded, node {nodeId} "
                        f"has {entry}"
                    )
                if entry.kind is CONFIGURATION:
                    self.configurations.committedEntry(entry, nodeId)
            self.maxCommitted = max(self.maxCommitted, node.commitIndex)
            self.progress[node] = now
            # State machine safety: applied == committed, in order.
            applied = node.stateMachine.applied
            for n in range(self.appliedChecked.get(node, 0), len(applied)):
                index, data = applied[n]
                if index == RESTORED:
                    continue
                if index > node.lastApplied or self.committed[index].data != data:
                    self.fail(f"node {nodeId} applied {index}:{data!r}, not the committed entry")
                if n and applied[n - 1][0] != RESTORED and applied[n - 1][0] >= index:
                    self.fail(f"node {nodeId} applied {index} after {applied[n - 1][0]}")
            self.appliedChecked[node] = len(applied)
            # The index up to which the node counts its own log as durable
            # (towards a commit quorum when it leads) must be on its disk.
            counted = node._durableLastIndex if self.internal else 0
            disk = c.storages[nodeId].durableEntries
            snapshot = c.storages[nodeId].durableSnapshot
            covered = snapshot[0].lastIndex if snapshot else 0
            if counted > node.raftLog.startIndex and counted > covered and (
                counted > node.raftLog.lastIndex
                or entryAt(disk, counted) != node.raftLog.entry(counted)
            ):
                self.fail(
                    f"node {nodeId} counts its log durable up to {counted}, but its log ends "
                    f"at {node.raftLog.lastIndex} and its disk holds {entryAt(disk, counted)}"
                )
        if self.timers:
            self.checkTimers()
        self.events.check()
        # The committed record has no holes.
        if len(self.committed) != self.maxCommitted:
            self.fail("holes in the committed record")
        self.checkDurable(full)
        for nodeId in c.ids:
            node = c.nodes[nodeId]
            if node.running and node.snapshot is not None:
                self.configurations.checkSnapshot(node)
        if full:
            self.checkLogMatching()

    def checkDurable(self, full):
        """
        Every committed entry is durably stored on enough voters that every
        majority of them holds it: a majority of every node while the
        membership is fixed; with membership changes, at least half the
        voters of the latest committed configuration.  (Not a majority: while
        the leader uses an uncommitted configuration that adds a voter to an
        even number, or removes one, its commit quorum may hold only half of
        the committed configuration's voters.  Any majority of the committed
        configuration still meets them, so any leader it elects holds the
        entry -- which is what Leader Completeness needs.)
        """
        c = self.cluster
        if self.membership:
            voters = self.configurations.latest.voters
            need = (len(voters) + 1) // 2
        else:
            voters = c.ids
            need = len(voters) // 2 + 1
        start = 1 if full else self.durableChecked + 1
        if start <= self.maxCommitted:
            durable = [
                (c.storages[i].durableEntries, c.storages[i].durableSnapshot) for i in voters
            ]
            for index in range(start, self.maxCommitted + 1):
                entry = self.committed[index]
                holders = sum(
                    1
                    for entries, snapshot in durable
                    if entryAt(entries, index) == entry
                    or (snapshot is not None and snapshot[0].lastIndex >= index)
                )
                if holders < need:
                    self.fail(
                        f"committed entry {entry} durable on only {holders} of the voters "
                        f"{list(voters)}"
                    )
            self.durableChecked = self.maxCommitted

    def checkQuorumContact(self, leader):
        """
        CheckQuorum (thesis §6.2): a leader that has not heard from a quorum
        of the voters in its configuration (itself, if it is one, included)
        for an election timeout steps down at its next heartbeat, so no node
        leads longer than that without a quorum.  When its configuration
        changes, the new quorum is asked at the next heartbeat.
        """
        now = self.cluster.clock.seconds()
        config = leader.config
        since = self.configurations.since(leader)
        if now - since <= config.heartbeatInterval + 0.005:
            return
        progress = leader.replication.tracker.progress
        voters = leader.configuration.voters
        contacts = sorted(
            (
                now if v == leader.nodeId else progress[v].lastAck if v in progress else -1e9
                for v in voters
            ),
            reverse=True,
        )
        quorum = len(voters) // 2 + 1
        silent = now - contacts[quorum - 1]
        limit = config.electionTimeout[1] + config.heartbeatInterval + 0.005
        if silent > limit:
            self.fail(
                f"leader {leader.nodeId} (term {leader.currentTerm}) has not heard from a "
                f"quorum of {list(voters)} for {silent:.3f}s and still leads"
            )

    def checkTimers(self):
        """
        A node has at most one live election timer (none while it leads): a
        timer the node lost track of can neither be reset by heartbeats nor
        cancelled when it wins, so it fires a needless election later.
        """
        timers = {}
        for call in self.cluster.clock.getDelayedCalls():
            owner = getattr(call.func, "__self__", None)
            name = getattr(call.func, "__name__", "")
            if call.active() and name in ("_electionTimeout", "_startElection"):
                timers.setdefault(owner, []).append(call)
        for nodeId in self.cluster.ids:
            node = self.cluster.nodes[nodeId]
            if not node.running:
                continue
            mine = timers.get(node, [])
            # None while it leads, or may not campaign.
            may = self.configurations.mayCampaign(node)
            allowed = 0 if node.role == LEADER or not may else 1
            if len(mine) > allowed or (mine and mine[0] is not node._electionTimer):
                self.fail(
                    f"node {nodeId} ({node.role}, term {node.currentTerm}) has {len(mine)} live "
                    f"election timers, tracked one is {node._electionTimer}"
                )

    def checkLogMatching(self):
        logs = {i: self.cluster.nodes[i].raftLog for i in self.cluster.ids}
        logs.update(
            {f"{i}/disk": self.cluster.storages[i].durableEntries for i in self.cluster.ids}
        )
        entries = {k: (v._entries if hasattr(v, "_entries") else v) for k, v in logs.items()}
        keys = sorted(entries, key=str)
        for a in range(len(keys)):
            for b in range(a + 1, len(keys)):
                x, y = entries[keys[a]], entries[keys[b]]
                if not x or not y:
                    continue
                # Compare where both still hold entries (snapshots compact
                # the front); before that, both are committed and checked.
                low = max(x[0].index, y[0].index)
                high = min(x[-1].index, y[-1].index)
                if low > high:
                    continue
                xs = x[low - x[0].index : high - x[0].index + 1]
                ys = y[low - y[0].index : high - y[0].index + 1]
                # The highest index at which both hold the same term.
                top = len(xs)
                while top and xs[top - 1].term != ys[top - 1].term:
                    top -= 1
                if xs[:top] != ys[:top]:
                    first = next(i for i in range(top) if xs[i] != ys[i])
                    self.fail(
                        f"log matching: {keys[a]} and {keys[b]} agree on term at "
                        f"{low + top - 1} but differ at {low + first}: {xs[first]} vs {ys[first]}"
                    )


class RandomRun:
    """
    One seeded run.  C{duration} simulated seconds of chaos, then heal and
    restart everything and check convergence.
    """

    KEYS = ("a", "b", "c", "d")

    FAULTS = {
        "partition": ("isolate", "halves", "oneway", "heal"),
        "crash": ("crash", "restart"),
    }

    def __init__(self, seed, size=3, duration=3.0, maxDiskDelay=0.005, rates=None, trace=False,
                 internal=True, timers=None, stable=0.0, network=None, faults=None,
                 checkReads=True, nodeFactory=RaftNode, nodeOptions=None, membership=None,
                 kv=False):
        """
        @param network: L{Network} options (C{dropRate}, C{duplicateRate},
            C{latency} range) for an unreliable network.
        @param faults: the fault kinds to inject, a subset of L{FAULTS}'
            keys; all by default.
        @param checkReads: also check each read directly against the commit
            floor (the linearizability check of the client history runs
            regardless).
        @param membership: inject membership faults too (L{MembershipFaults}:
            C{True}, or a dict of its keyword arguments such as C{rates});
            off by default, which keeps every seed's run as it was.
        @param kv: the KV API too (L{KvWorkload}: ranges, transactions,
            range deletes; the cluster proposes its metadata epoch; the
            history is checked by L{multikey}) and watchers checked for
            completeness at every step (L{WatchChecks}); off by default,
            which keeps every seed's run as it was.
        """
        self.seed = seed
        self.size = size
        self.duration = duration
        self.rng = random.Random(f"raft-{seed}-{size}")
        self.cluster = RecordingCluster(
            size, seed=self.rng.random(), network=network, nodeFactory=nodeFactory,
            metadataEpoch=bool(kv), **(nodeOptions or {}),
        )
        for i in self.cluster.ids:
            self.cluster.storages[i].delay = self.rng.uniform(0, maxDiskDelay)
        self.invariants = Invariants(self.cluster, internal, timers, membership=bool(membership))
        self.membership = None
        if membership:
            # A stream of its own, so the other faults are drawn as without it.
            rng = random.Random(f"raft-{seed}-{size}-membership")
            options = dict(membership) if isinstance(membership, dict) else {}
            self.membership = MembershipFaults(self, rng, maxDiskDelay=maxDiskDelay, **options)
        self.rates = dict(
            propose=40.0, read=20.0, isolate=0.6, halves=0.6, oneway=0.8, heal=1.2,
            crash=0.8, restart=1.2,
        )
        self.rates.update(rates or {})
        if faults is not None:
            for kind, actions in self.FAULTS.items():
                if kind not in faults:
                    for action in actions:
                        self.rates[action] = 0.0
        self.checkReads = checkReads
        self.history = []  # linearizability.Op, one per client operation
        self.trace = trace
        self.stable = stable
        self.events = []
        self.proposals = []  # dicts
        self.acked = []
        self.reads = []
        self.errors = []
        self.counter = 0
        self.keys = self.KEYS
        self.kv = self.watches = None
        if kv:
            # Streams of their own, as the membership faults'.
            self.keys = kvworkload.KEYS
            self.kv = KvWorkload(self, random.Random(f"raft-{seed}-{size}-kv"))
            self.watches = WatchChecks(self, random.Random(f"raft-{seed}-{size}-watch"))

    # -- helpers -------------------------------------------------------------

    def note(self, what):
        self.events.append(f"{self.cluster.clock.seconds():.4f} {what}")
        if self.trace:
            print(self.events[-1])

    def claimedLeaders(self):
        return [n for n in self.cluster.nodes.values() if n.running and n.role == LEADER]

    def clientLeaders(self):
        """
        The nodes clients send to: those claiming leadership, except a node
        whose removal is committed (clients learn the members; a leader that
        removed itself serves until then, thesis §4.2.2).
        """
        removed = self.invariants.configurations.removed
        return [n for n in self.claimedLeaders() if n.nodeId not in removed]

    def serviceLeader(self):
        """The leader an operator reaches: the client's, of the highest term, or None."""
        leaders = self.clientLeaders()
        return max(leaders, key=lambda n: n.currentTerm) if leaders else None

    def step(self, dt):
        self.cluster.clock.advance(dt)
        self.invariants.check()
        if self.watches is not None:
            self.watches.poll()

    # -- actions -------------------------------------------------------------

    def propose(self):
        leaders = self.clientLeaders()
        if not leaders:
            return
        node = self.rng.choice(leaders)
        key = self.rng.choice(self.keys)
        self.counter += 1
        value = b"%d" % self.counter
        r = self.rng.random()
        now = self.cluster.clock.seconds()
        Op = linearizability.Op if self.kv is None else KvOp
        if r < 0.6:
            data = kv.encodePut(key, value)
            op = Op(self.counter, "put", key, value=value, start=now)
        elif r < 0.75:
            data = kv.encodeDelete(key)
            op = Op(self.counter, "delete", key, start=now)
        else:
            expected = self.rng.choice([None, node.stateMachine.get(key), b"%d" % self.rng.randint(1, self.counter)])
            data = kv.encodeCompareAndSet(key, expected, value)
            op = Op(self.counter, "cas", key, value=value, expected=expected, start=now)
        if self.kv is not None:
            data = self.kv.wrap(data)
        self.submit(node, data, op)

    def submit(self, node, data, op):
        """Propose C{data} on C{node}: the client op C{op}, recorded in the history."""
        self.history.append(op)
        proposal = dict(node=node.nodeId, term=node.currentTerm, data=data, key=op.key,
                        result=None, issued=self.cluster.clock.seconds(), op=op)
        self.proposals.append(proposal)
        self.note(f"propose on {node.nodeId} term {node.currentTerm}: {describeData(data)}")

        def done(result):
            proposal["result"] = result
            index, op.result = result
            if self.kv is not None:
                op.revision = index
                if type(op.result) is kv.Applied:
                    op.result = op.result.result
                elif isinstance(op.result, kv.SequenceTooOld):
                    self.history.remove(op)  # refused: no effect
                self.kv.answered(op)
            op.end = self.cluster.clock.seconds()
            proposal["index"] = index
            self.acked.append(proposal)
            committed = self.invariants.committed.get(index)
            # The leader applied it just now, so it is in the record only
            # after the next check; compare against the node's log.
            entry = node.raftLog.entry(index) if index > node.raftLog.startIndex else committed
            if entry.data != data or entry.term != proposal["term"]:
                self.errors.append(f"acked proposal {proposal} but log has {entry}")
            if committed is not None and committed != entry:
                self.errors.append(f"acked proposal {proposal} but committed {committed}")
            if node.commitIndex < index:
                self.errors.append(f"acked proposal {proposal} above commit {node.commitIndex}")

        def failed(f):
            proposal["result"] = f.value
            if f.check(NotLeader):
                self.history.remove(op)  # definitely not applied

        node.propose(data).addCallbacks(done, failed)

    def read(self):
        leaders = self.clientLeaders()
        if not leaders:
            return
        node = self.rng.choice(leaders)
        key = self.rng.choice(self.keys)
        # Everything committed (anywhere) before the read is issued, hence
        # every acknowledged write and every completed read's state.
        floor = self.invariants.maxCommitted
        observed = max([r["observed"] for r in self.reads if "observed" in r] + [0])
        floor = max(floor, observed)
        read = dict(node=node.nodeId, key=key, floor=floor, issued=self.cluster.clock.seconds())
        self.reads.append(read)
        self.counter += 1
        Op = linearizability.Op if self.kv is None else KvOp
        op = Op(self.counter, "get", key, start=read["issued"])

        def done(_):
            read["observed"] = node.lastApplied
            value = node.stateMachine.get(key)
            read["value"] = value
            op.end, op.result = self.cluster.clock.seconds(), value
            self.history.append(op)
            if not self.checkReads:
                return
            if node.lastApplied < read["floor"]:
                self.errors.append(
                    f"stale read on {node.nodeId}: applied {node.lastApplied} < floor {floor} "
                    f"(issued at {read['issued']:.4f})"
                )
            # The value is the committed state at lastApplied.
            history = [self.committedData(node, i) for i in range(1, node.lastApplied + 1)]
            if replay(history, key) != value:
                self.errors.append(f"read on {node.nodeId} of {key}: {value!r} not the log state")

        node.readIndex().addCallbacks(done, lambda f: None)

    def committedData(self, node, index):
        """The data of committed entry C{index} (C{b""} for a configuration entry)."""
        known = self.invariants.committed.get(index)
        entry = known if known is not None else node.raftLog.entry(index)
        return entry.data if entry.kind is not CONFIGURATION else b""

    def isolate(self):
        victim = self.rng.choice(self.cluster.ids)
        self.note(f"isolate {victim}")
        self.cluster.network.isolate(victim)

    def halves(self):
        ids = list(self.cluster.ids)
        self.rng.shuffle(ids)
        cut = self.rng.randint(1, len(ids) - 1)
        self.note(f"partition {ids[:cut]} | {ids[cut:]}")
        self.cluster.network.partition(set(ids[:cut]), set(ids[cut:]))

    def oneway(self):
        a, b = self.rng.sample(self.cluster.ids, 2)
        self.note(f"cut {a} -> {b}")
        self.cluster.network.cut.add((a, b))

    def heal(self):
        self.note("heal")
        self.cluster.network.heal()

    def crash(self):
        up = self.cluster.up()
        if not up:
            return
        # Prefer leaders a little: that is where the interesting cases are.
        leaders = [n.nodeId for n in self.claimedLeaders()]
        victim = self.rng.choice(leaders if leaders and self.rng.random() < 0.5 else up)
        self.note(f"crash {victim}")
        self.cluster.crash(victim)

    def restart(self):
        down = self.cluster.down()
        if not down:
            return
        nodeId = self.rng.choice(down)
        self.note(f"restart {nodeId}")
        self.cluster.restart(nodeId)

    # -- the run -------------------------------------------------------------

    def run(self):
        errors = []

        def observe(event):
            if event.get("log_failure") is not None or event.get("isError"):
                errors.append(event)

        events = self.invariants.events
        events.start()
        globalLogPublisher.addObserver(observe)
        globalLogPublisher.addObserver(events.observe)
        try:
            self._run()
            gc.collect()  # surface unhandled errors in Deferreds
        finally:
            globalLogPublisher.removeObserver(events.observe)
            globalLogPublisher.removeObserver(observe)
        if errors:
            raise InvariantViolation(f"logged errors: {[e.get('log_failure') or e for e in errors]}")
        return self

    def _run(self):
        c = self.cluster
        actions = list(self.rates.items())
        end = c.clock.seconds() + self.duration
        while c.clock.seconds() < end:
            dt = self.rng.uniform(0.0005, 0.004)
            for name, rate in actions:
                if self.rng.random() < rate * dt:
                    getattr(self, name)()
            if self.membership is not None:
                self.membership.tick(dt)
            if self.kv is not None:
                self.kv.tick(dt)
            self.step(dt)
            if self.errors:
                raise InvariantViolation(self.errors[0])
        self.invariants.check(full=True)
        self.finish()

    def finish(self):
        c = self.cluster
        if self.membership is not None:
            self.membership.stop()
        self.note("final heal, restart all")
        c.network.heal()
        for nodeId in c.down():
            c.restart(nodeId)

        def members(leader):
            # Who must converge: the members (every node, if the membership
            # never changed).  A removed node, or one never added, need not.
            return [c.nodes[i] for i in leader.configuration.ids]

        def converged():
            if self.membership is not None and not self.membership.settled():
                return False  # a transfer or change still under way
            leaders = self.claimedLeaders()
            if len(leaders) != 1:
                return False
            leader = leaders[0]
            if leader.raftLog.term(leader.commitIndex) != leader.currentTerm:
                return False
            configuration = leader.configuration
            if configuration.index > leader.commitIndex or not configuration.isVoter(leader.nodeId):
                return False
            return all(
                n.lastApplied == leader.commitIndex and n.raftLog.lastIndex == leader.raftLog.lastIndex
                and n.currentTerm == leader.currentTerm
                for n in members(leader)
            )

        deadline = c.clock.seconds() + 30.0
        while not converged():
            if c.clock.seconds() > deadline:
                raise InvariantViolation(
                    "no convergence within 30 s after healing: "
                    + str([c.nodes[i].status() for i in c.ids])
                )
            self.step(0.002)
            if self.errors:
                raise InvariantViolation(self.errors[0])
        self.invariants.check(full=True)
        leader = self.claimedLeaders()[0]
        self.invariants.events.checkHealthy(members(leader))
        data = c.machines[leader.nodeId].data
        for nodeId in leader.configuration.ids:
            if c.machines[nodeId].data != data:
                raise InvariantViolation(f"node {nodeId} data differs from leader {leader.nodeId}")
            log = c.nodes[nodeId].raftLog
            for p in self.acked:
                if p["index"] <= log.startIndex:
                    # In this node's snapshot: it must be the committed entry.
                    entry = self.invariants.committed.get(p["index"])
                else:
                    entry = log.entry(p["index"]) if p["index"] <= log.lastIndex else None
                if entry is None or entry.data != p["data"] or entry.term != p["term"]:
                    raise InvariantViolation(f"acked {p} missing on node {nodeId}: {entry}")
        # A healthy cluster keeps its leader: for C{stable} seconds no term
        # change, and every node knows the leader at every step.
        end = c.clock.seconds() + self.stable
        term = leader.currentTerm
        healthChecked = c.clock.seconds()
        while c.clock.seconds() < end:
            self.step(0.002)
            for n in members(leader):
                if n.currentTerm != term or n.leaderId != leader.nodeId:
                    raise InvariantViolation(
                        f"t={c.clock.seconds():.4f}: healthy cluster unstable: node {n.nodeId} "
                        f"has term {n.currentTerm}, leader {n.leaderId} (was {term}, "
                        f"{leader.nodeId})"
                    )
            # /health's answer moves with heartbeats and timeouts (tens of
            # ms), not per step: asking every 50 ms costs 1 % of a run,
            # every step 5 %.
            if c.clock.seconds() - healthChecked >= HEALTH_EVERY or c.clock.seconds() >= end:
                self.invariants.events.checkHealthy(members(leader))
                healthChecked = c.clock.seconds()
        # The KV state is the replay of the committed log.
        committed = self.invariants.committed
        history = [
            committed[i].data if committed[i].kind is not CONFIGURATION else b""
            for i in range(1, leader.commitIndex + 1)
        ]
        for key in self.keys:
            if replay(history, key) != data.get(key):
                raise InvariantViolation(f"key {key} is not the replay of the log")
        if self.watches is not None:
            self.watches.finish(leader.commitIndex)
        self.checkHistory()

    def checkHistory(self):
        """The clients' history must be linearizable (Wing & Gong / Lowe)."""
        if self.kv is not None:
            return self.checkKvHistory()
        result = linearizability.check(self.history, timeLimit=60.0)
        if not result.ok and not result.timedOut:
            raise InvariantViolation(
                "client history is not linearizable:\n" + linearizability.describe(result)
            )

    def checkKvHistory(self):
        """
        With the KV workload: a write whose outcome the client never
        learnt took effect at the index where the committed log has it
        (each entry is unique: a session sequence), or never; then the
        multi-key check (L{multikey}).
        """
        committed = self.invariants.committed
        at = {e.data: i for i, e in committed.items() if e.kind is not CONFIGURATION}
        floor = next((i for i in sorted(at.values())
                      if committed[i].data == kv.encodeMetadataEpoch()), 0)
        for p in self.proposals:
            op = p["op"]
            if op.end is None and op in self.history:
                index = at.get(p["data"])
                if index is None:
                    self.history.remove(op)  # never committed: no effect
                else:
                    op.revision = index
        result = multikey.check(self.history, keys=self.keys, floor=floor, timeLimit=60.0)
        if not result.ok and not result.timedOut:
            raise InvariantViolation(
                "client history is not linearizable:\n" + multikey.describe(result)
            )

    def report(self, limit=40):
        """The last events and messages before now, merged in time order."""
        lines = list(self.events[-limit:]) + list(self.cluster.network.trace)[-limit:]
        lines.sort(key=lambda line: float(line.split(" ", 1)[0]))
        return "\n".join(lines[-limit:])
