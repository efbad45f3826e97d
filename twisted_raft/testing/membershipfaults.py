"""
Membership faults for the randomized runs (L{twisted_raft.testing.invariants}):
an operator who, at random moments between the run's crashes, partitions and
lost messages, starts a node and adds it as a learner, promotes a learner,
removes a follower, removes the leader, and transfers leadership (to a named
voter, or to the most up-to-date one).

Each change goes to whichever node leads at the time and is retried the way
an operator's tool retries it (C{raftkv member ...}): on L{ChangeInProgress}
(another change, or the leader's first commit of its term, is pending),
L{NotCaughtUp} (the learner is still behind), L{NotLeader} and
L{CommitUnknown} (leadership moved; the next attempt finds out whether the
change went through), until it commits, is refused as L{InvalidChange}
(already made, or no longer sensible), or C{patience} simulated seconds pass.
Transfers are not retried: every outcome of one is legitimate.

The operator keeps the cluster able to make progress: at most C{maxMembers}
members, never a removal of the last voter, at most C{maxJoins} nodes started
over a run, and the id of a removed node is never used again (a node that
was never added is offered again instead of starting another one).  It reads
the cluster the way a client would (the leader it can see, the committed
configuration), never the core's internals.

All choices come from C{rng}, a stream of the seed's own: turning these
faults on or off leaves the draws of the run's other faults unchanged.
"""

from collections import Counter

from twisted_raft.raft.membership import (
    ChangeInProgress,
    ChangeKind,
    ConfChange,
    InvalidChange,
    NotCaughtUp,
)
from twisted_raft.raft.messages import CommitUnknown, NotLeader, TransferFailed

ADD, PROMOTE, REMOVE = ChangeKind.ADD_LEARNER, ChangeKind.PROMOTE, ChangeKind.REMOVE

# Answers after which the operator tries the same change again shortly.
RETRYABLE = (ChangeInProgress, NotCaughtUp, NotLeader, CommitUnknown)


def address(nodeId):
    """The address the operator gives node C{nodeId} (unique, as members' must be)."""
    return f"127.0.0.1:{9000 + nodeId}"


class MembershipFaults:
    """
    @ivar stats: how often each thing happened: C{add}, C{promote},
        C{remove}, C{remove-leader} (changes committed), C{transfer} and
        C{transfer-failed}, C{gave-up} (changes abandoned at the deadline).
    """

    # Per simulated second, like RandomRun's other rates.
    RATES = dict(join=1.0, promote=2.0, remove=0.6, removeLeader=0.4, transfer=0.8)

    def __init__(self, run, rng, rates=None, maxMembers=None, maxJoins=None,
                 patience=3.0, retryDelay=0.05, maxDiskDelay=0.005):
        """
        @param run: the L{RandomRun} whose cluster, leader view, notes and
            error list this operator uses.
        @param maxMembers: the most members (voters and learners) a
            configuration may reach; the run's size plus two by default.
        @param maxJoins: how many nodes may be started over the run; the
            run's size plus one by default.
        """
        self.run = run
        self.cluster = run.cluster
        self.clock = run.cluster.clock
        self.rng = rng
        self.rates = dict(self.RATES)
        self.rates.update(rates or {})
        size = len(self.cluster.founders)
        self.maxMembers = size + 2 if maxMembers is None else maxMembers
        self.maxJoins = size + 1 if maxJoins is None else maxJoins
        self.patience = patience
        self.retryDelay = retryDelay
        self.maxDiskDelay = maxDiskDelay
        self.nextId = max(self.cluster.ids) + 1
        self.joined = []  # ids of nodes started by join(), in order
        self.busy = set()  # node ids a change is under way for
        self.transfers = 0  # leadership transfers not yet settled
        self.stats = Counter()
        self.stopped = False

    # -- what the operator sees ------------------------------------------------

    def leader(self):
        return self.run.serviceLeader()

    def configuration(self):
        """The leader's configuration (the latest, committed or not), or None."""
        leader = self.leader()
        return leader.configuration if leader is not None else None

    # -- the run's hooks -----------------------------------------------------

    def tick(self, dt):
        """Maybe start some membership faults in the next C{dt} seconds."""
        if self.stopped:
            return
        for name, rate in self.rates.items():
            if self.rng.random() < rate * dt:
                getattr(self, name)()

    def stop(self):
        """No new faults and no more retries (changes already proposed go on)."""
        self.stopped = True

    def settled(self):
        """Has every change and transfer come to an end (so the cluster may settle)?"""
        return not self.busy and not self.transfers

    # -- the faults ----------------------------------------------------------

    def join(self):
        configuration = self.configuration()
        if configuration is None or len(configuration) >= self.maxMembers:
            return
        removed = self.run.invariants.configurations.removed
        waiting = [
            i for i in self.joined
            if i not in configuration and i not in removed and i not in self.busy
        ]
        if waiting:
            nodeId = self.rng.choice(waiting)
        elif len(self.joined) < self.maxJoins:
            nodeId = self.nextId
            self.nextId += 1
            self.joined.append(nodeId)
            self.cluster.join(nodeId)
            self.cluster.storages[nodeId].delay = self.rng.uniform(0, self.maxDiskDelay)
            self.run.note(f"start node {nodeId} (--join)")
        else:
            return
        self.change(ADD, nodeId, "add")

    def promote(self):
        configuration = self.configuration()
        if configuration is None:
            return
        learners = [i for i in configuration.learners if i not in self.busy]
        if learners:
            self.change(PROMOTE, self.rng.choice(learners), "promote")

    def remove(self):
        leader = self.leader()
        if leader is None:
            return
        others = [i for i in leader.configuration.ids if i != leader.nodeId and i not in self.busy]
        if others:
            self.change(REMOVE, self.rng.choice(others), "remove")

    def removeLeader(self):
        leader = self.leader()
        if leader is None or leader.nodeId in self.busy:
            return
        if leader.configuration.voters in ((), (leader.nodeId,)):
            return  # the last voter stays
        self.change(REMOVE, leader.nodeId, "remove-leader")

    def transfer(self):
        leader = self.leader()
        if leader is None:
            return
        others = [i for i in leader.configuration.voters if i != leader.nodeId]
        target = self.rng.choice(others) if others and self.rng.random() < 0.6 else 0
        term = leader.currentTerm
        self.run.note(f"transfer leadership from {leader.nodeId} (term {term}) to {target or 'any'}")

        def done(newLeader):
            self.transfers -= 1
            self.stats["transfer"] += 1
            self.run.note(f"transfer from {leader.nodeId} (term {term}): node {newLeader} leads")

        def failed(f):
            self.transfers -= 1
            if f.check(TransferFailed, NotLeader, InvalidChange, ChangeInProgress):
                self.stats["transfer-failed"] += 1
                self.run.note(f"transfer from {leader.nodeId} (term {term}) failed: {f.value!r}")
            else:
                self.run.errors.append(f"transfer failed unexpectedly: {f.getTraceback()}")

        self.transfers += 1
        leader.transferLeadership(target).addCallbacks(done, failed)

    # -- one change, retried -------------------------------------------------

    def change(self, kind, nodeId, what):
        """Propose C{kind} of C{nodeId} at the leader, retrying until it is settled."""
        change = ConfChange(kind, nodeId, address(nodeId) if kind is ADD else "")
        deadline = self.clock.seconds() + self.patience
        self.busy.add(nodeId)
        self.run.note(f"operator: {what} node {nodeId}")

        def attempt():
            if self.stopped or self.clock.seconds() > deadline:
                self.stats["gave-up"] += 1
                self.run.note(f"operator: gave up {what} node {nodeId}")
                self.busy.discard(nodeId)
                return
            leader = self.leader()
            if leader is None:
                self.clock.callLater(self.retryDelay, attempt)
                return
            leader.changeMembership(change).addCallbacks(committed, failed)

        def committed(result):
            index, configuration = result
            self.stats[what] += 1
            self.busy.discard(nodeId)
            self.run.note(
                f"operator: {what} node {nodeId} committed at {index}: voters "
                f"{list(configuration.voters)}, learners {list(configuration.learners)}"
            )

        def failed(f):
            if f.check(*RETRYABLE):
                self.clock.callLater(self.retryDelay, attempt)
            elif f.check(InvalidChange):
                # Made by an earlier attempt whose outcome was unknown, or
                # no longer sensible (the learner was removed meanwhile).
                self.busy.discard(nodeId)
                self.run.note(f"operator: {what} node {nodeId} refused: {f.value}")
            else:
                self.busy.discard(nodeId)
                self.run.errors.append(f"{what} node {nodeId} failed unexpectedly: {f.getTraceback()}")

        attempt()
