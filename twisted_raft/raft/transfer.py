"""
Leadership transfer, the leader's side (thesis §3.10): bring the target's
log up to date, send it TimeoutNow, hold new proposals meanwhile, and end
the transfer when a leader is known or an election timeout passes.

A L{LeadershipTransfers} is driven by its L{twisted_raft.raft.node.RaftNode}
the way L{twisted_raft.raft.replication.Replicator} is: it reads the
node's term, role, log and configuration, and reports back through the
node's C{_becomeFollower} (a newer term; a removed leader stepping down)
and C{_proposePending} (a failed transfer proposes what it held).  The
node tells it when a leader becomes known (L{end}), when leadership is
lost (L{releaseHeld}), at each heartbeat and each answer of the target
(L{push}).  The target's side, C{handleTimeoutNow}, is the node's: it
starts an election.
"""

from twisted.internet import defer

from twisted_raft.raft.membership import ChangeInProgress, InvalidChange
from twisted_raft.raft.messages import (
    DATA,
    LEADER,
    NotLeader,
    TimeoutNow,
    TransferFailed,
)


class _Transfer:
    """
    A transfer under way: its target, the deadline after which the leader
    gives up, whoever waits for the outcome, and the proposals held
    meanwhile.
    """

    __slots__ = ("target", "named", "deadline", "waiters", "held", "sent")

    def __init__(self, target, named, deadline, waiter):
        self.target = target
        self.named = named  # the caller chose the target (else: the most up to date)
        self.deadline = deadline
        self.waiters = [waiter]
        self.held = []  # (data, Deferred) proposed after a failure, else refused
        self.sent = False


class LeadershipTransfers:
    """
    The node's leadership transfer: at most one at a time.
    """

    def __init__(self, node):
        self.node = node
        self._current = None

    @property
    def active(self):
        """Whether a transfer is under way."""
        return self._current is not None

    @property
    def target(self):
        """The node leadership is being handed to, or C{None}."""
        return None if self._current is None else self._current.target

    @property
    def held(self):
        """How many proposals wait for the transfer's outcome."""
        return 0 if self._current is None else len(self._current.held)

    def start(self, targetId=0):
        """L{twisted_raft.raft.node.RaftNode.transferLeadership}."""
        node = self.node
        if node.role != LEADER or not node.running:
            return defer.fail(NotLeader(node.leaderId))
        if targetId == node.nodeId:
            return defer.succeed(node.nodeId)
        transfer = self._current
        if transfer is not None:
            if targetId in (0, transfer.target):
                d = defer.Deferred()
                transfer.waiters.append(d)
                return d
            return defer.fail(
                ChangeInProgress(f"leadership is being transferred to node {transfer.target}")
            )
        named = bool(targetId)
        if targetId:
            if not node.configuration.isVoter(targetId):
                return defer.fail(InvalidChange(f"node {targetId} is not a voter"))
        else:
            targetId = node._mostUpToDateVoter()
            if not targetId:
                return defer.fail(InvalidChange("there is no other voter to lead"))
        d = defer.Deferred()
        deadline = node.clock.callLater(node.config.electionTimeout[1], self._timedOut)
        self._current = _Transfer(targetId, named, deadline, d)
        node.logger.info(
            "leader {nodeId} transfers leadership to node {target} in term {term}",
            raftkv_event="transfer_start",
            nodeId=node.nodeId,
            target=targetId,
            term=node.currentTerm,
        )
        node._flush()
        self.push()
        return d

    def hold(self, data, d):
        """
        Hold a proposal while leadership moves: proposed here if the
        transfer fails, else refused, unproposed, for the new leader.

        @return: whether it was held (a transfer is under way).
        """
        if self._current is None:
            return False
        self._current.held.append((data, d))
        return True

    def push(self):
        """Catch the target up; once its log matches ours, send it TimeoutNow."""
        transfer, node = self._current, self.node
        if transfer is None or node.role != LEADER or transfer.sent:
            return
        progress = node.replication.tracker.progress.get(transfer.target)
        if progress is None:
            return
        if progress.matchIndex < node.raftLog.lastIndex:
            node.replication.replicate(transfer.target, progress)
            return
        transfer.sent = True
        self._sendTimeoutNow(transfer)

    def _sendTimeoutNow(self, transfer):
        node = self.node
        d = node.transport.timeoutNow(transfer.target, TimeoutNow(node.currentTerm, node.nodeId))
        d.addTimeout(node.config.requestTimeout, node.clock)
        d.addCallbacks(
            self._answered, self._failed, callbackArgs=(transfer,), errbackArgs=(transfer,),
        )

    def _answered(self, result, transfer):
        node = self.node
        if not node.running:
            return
        if result.term > node.currentTerm:
            node._becomeFollower(result.term, 0)
        elif not result.accepted:
            self._failed(None, transfer)
        elif node.role == LEADER and not node.configuration.isVoter(node.nodeId):
            # A leader that removed itself steps down as soon as its
            # successor is campaigning: nobody may tell it who won (it is
            # no longer anyone's member).
            node._becomeFollower(node.currentTerm, 0)

    def _failed(self, failure, transfer):
        # Sent again at the next heartbeat, until the deadline.
        if transfer is not None and transfer is self._current:
            transfer.sent = False

    def _timedOut(self):
        transfer, node = self._current, self.node
        transfer.deadline = None
        if node.role != LEADER:
            leader = node.leaderId
            if leader and leader != node.nodeId:
                self.end(None, leader)
            else:
                self.end(TransferFailed("no leader was elected within an election timeout"))
            return
        if not node.configuration.isVoter(node.nodeId):
            # Removed: it may not carry on; what waited was never proposed
            # (stepping down refuses it, L{releaseHeld}).
            node._becomeFollower(node.currentTerm, 0)
            self.end(TransferFailed(f"node {transfer.target} did not take over in time"))
            return
        self._current = None
        node.logger.info(
            "leader {nodeId}: node {target} did not take over in time; carrying on",
            raftkv_event="transfer_failed",
            nodeId=node.nodeId,
            target=transfer.target,
        )
        for data, d in transfer.held:
            node._proposePending(data, DATA, d)
        error = TransferFailed(f"node {transfer.target} did not become leader in time")
        for d in transfer.waiters:
            d.errback(error)

    def releaseHeld(self):
        """Leadership is lost: what waited for a transfer was never proposed."""
        transfer = self._current
        if transfer is not None:
            held, transfer.held = transfer.held, []
            for _, d in held:
                d.errback(NotLeader(self.node.leaderId, "leadership moved; not proposed"))

    def end(self, error, leaderId=0):
        """
        End the transfer, if one is under way: C{leaderId} leads now
        (C{error} C{None}), or it failed with C{error}.
        """
        transfer = self._current
        if transfer is None:
            return
        self._current = None
        if transfer.deadline is not None and transfer.deadline.active():
            transfer.deadline.cancel()
        if error is None and transfer.named and leaderId != transfer.target:
            # Leadership moved, but not where it was asked to go (the
            # target lost an election to another voter).
            error = TransferFailed(f"node {leaderId} was elected, not node {transfer.target}")
        for _, d in transfer.held:
            d.errback(NotLeader(leaderId, "leadership moved; not proposed"))
        for d in transfer.waiters:
            if error is None:
                d.callback(leaderId)
            else:
                d.errback(error)
