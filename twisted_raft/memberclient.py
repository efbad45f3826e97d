"""
The client's membership changes and leadership transfers:
L{MembershipRequests}, mixed into L{twisted_raft.client.RaftKVClient}
(C{members}, C{addMember}, C{promoteMember}, C{removeMember},
C{transferLeader}), operations on the same path as writes with their own
rules for an unknown outcome (L{MembershipRequests._change},
L{MembershipRequests._transfer}); and L{Membership}, what C{members}
answers.
"""

from typing import NamedTuple, Optional, Tuple

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from twisted_raft.clientpath import (
    Operation,
    OutcomeUnknown,
    describe,
    deferredErrors,
    errorMessage,
    revisionOf,
)
from twisted_raft.raft.membership import (
    MAX_NODE_ID,
    Configuration,
    InvalidChange,
    Member,
    checkAddress,
)
from twisted_raft.rpc.commands import (
    AddLearner,
    InvalidArgument,
    MemberList,
    NotCaughtUp,
    NotProposed,
    PromoteMember,
    RemoveMember,
    TransferLeader,
    Unavailable,
)


CATCH_UP_TIMEOUT = 60.0
"""Seconds L{RaftKVClient.addMember} and L{RaftKVClient.promoteMember} wait,
by default, for a learner to catch up before promoting it."""


class Membership(NamedTuple):
    """
    The cluster's members, as committed by the leader: C{revision} is the
    log index of their configuration entry (0: the configuration the cluster
    was started with) and C{members} every L{Member} (C{id}, C{address},
    C{voter}), by id.  It unpacks as C{(revision, members)}.
    """

    revision: int
    members: Tuple[Member, ...]

    @property
    def configuration(self):
        """The same members as a L{Configuration} (voters, learners, lookups)."""
        return Configuration(self.members, self.revision)

    def member(self, nodeId) -> Optional[Member]:
        """The member with id C{nodeId}, or C{None}."""
        return self.configuration.member(nodeId)

    @property
    def voters(self):
        """The voters' ids, in order."""
        return self.configuration.voters

    @property
    def learners(self):
        """The learners' ids, in order."""
        return self.configuration.learners


def _membership(r):
    members = (Member(m["node_id"], m["address"], m["voter"]) for m in r["members"])
    return Membership(r["revision"], tuple(sorted(members, key=lambda m: m.id)))


def _leaderId(r):
    return r["leader_id"]


def _checkNodeId(nodeId):
    if isinstance(nodeId, bool) or not isinstance(nodeId, int):
        raise TypeError(f"node id must be int, not {type(nodeId).__name__}")
    if not 1 <= nodeId <= MAX_NODE_ID:
        raise InvalidArgument(f"node id {nodeId} is out of range 1 to 2**63 - 1")
    return nodeId


def _isVoter(nodeId):
    """What promoting C{nodeId} wants of a L{Membership}."""

    def wants(current):
        m = current.member(nodeId)
        return m is not None and m.voter

    return wants


class MembershipRequests:
    """
    Mixed into L{twisted_raft.client.RaftKVClient}: membership changes and
    leadership transfers, sent down its operation path
    (L{twisted_raft.clientpath.OperationPath}); a transfer asks its
    C{status} who leads.
    """

    catchUpPollDelay = 1.0
    """The longest pause between two promotions of a learner not yet caught up."""

    @deferredErrors
    def members(self):
        """
        The cluster's members: the leader's configuration, once committed.

        @return: Deferred[L{Membership}] (unpacks as C{(revision, members)}).
        """
        return self._operation(
            "member list", MemberList, {}, write=False, extract=_membership,
        )

    @deferredErrors
    def addMember(self, nodeId, address, learner=False, timeout=CATCH_UP_TIMEOUT):
        """
        Add node C{nodeId}, reached at C{address} (C{"HOST:PORT"}, kept as
        given), as a learner; then, unless C{learner}, wait for it to catch
        up with the leader's log and promote it to voter (retried while the
        leader answers NOT_CAUGHT_UP, for at most C{timeout} seconds).

        Adding a node that is already a learner at that address resumes an
        add that was interrupted (it is promoted, unless C{learner}); one
        already a voter at that address (without C{learner}) is done.

        @return: Deferred[int], the revision of the last change made.
        @raise NotCaughtUp: the learner did not catch up within C{timeout};
            it stays a learner (L{promoteMember} it later).
        """
        nodeId = _checkNodeId(nodeId)
        if not isinstance(address, str):
            raise TypeError(f"address must be str, not {type(address).__name__}")
        try:
            checkAddress(address)
        except InvalidChange as e:
            raise InvalidArgument(str(e)) from None
        self._checkOpen()
        return Deferred.fromCoroutine(self._addMember(nodeId, address, learner, timeout))

    @deferredErrors
    def promoteMember(self, nodeId, timeout=CATCH_UP_TIMEOUT):
        """
        Make the learner C{nodeId} a voter, once it has caught up with the
        leader's log (retried while the leader answers NOT_CAUGHT_UP, for at
        most C{timeout} seconds).

        @return: Deferred[int], the change's revision.
        @raise NotCaughtUp: it did not catch up within C{timeout}.
        """
        nodeId = _checkNodeId(nodeId)
        self._checkOpen()
        deadline = self._reactor.seconds() + timeout
        return Deferred.fromCoroutine(self._promote(nodeId, deadline, timeout))

    @deferredErrors
    def removeMember(self, nodeId):
        """
        Remove member C{nodeId}, voter or learner.

        @return: Deferred[int], the change's revision.
        """
        nodeId = _checkNodeId(nodeId)
        self._checkOpen()
        return Deferred.fromCoroutine(self._change(
            f"remove member {nodeId}", RemoveMember, {"node_id": nodeId},
            lambda current: current.member(nodeId) is None,
        ))

    @deferredErrors
    def transferLeader(self, nodeId=0):
        """
        Hand leadership to voter C{nodeId} (0: the most up-to-date voter, as
        the leader sees it).  A C{nodeId} that already leads is done at once.

        @return: Deferred[int], the new leader's id.
        @raise TransferFailed: no new leader was elected within an election
            timeout; the old one carries on.
        """
        if nodeId != 0:
            nodeId = _checkNodeId(nodeId)
        self._checkOpen()
        return Deferred.fromCoroutine(self._transfer(nodeId))

    async def _change(self, what, command, kwargs, wants):
        """
        The membership change C{command(**kwargs)}, retried like a write
        with a session, whatever went wrong, until C{self.timeout}: a repeat
        of a change that was applied is refused (a member added twice, a
        voter promoted twice, a stranger removed), never applied twice.

        The rule for a change whose outcome is unknown: if the leader
        refuses a repeat as INVALID_ARGUMENT after an earlier attempt may
        have been applied, the member list is read; if it holds what the
        change wants (C{wants(membership)}), the change succeeded and its
        revision is the list's (that of the latest change since, if any);
        else the refusal stands.

        @return: the change's revision.
        """
        op = Operation(
            what, command, kwargs, True, revisionOf, False, self._reactor.seconds(), resend=True,
        )
        try:
            return await self._run(op)
        except InvalidArgument:
            if not op.maybeApplied:
                raise
            refused = Failure()
        try:
            current = await self.members()
        except Exception as e:
            raise OutcomeUnknown(
                f"outcome unknown: {what}: refused ({refused.getErrorMessage()}) after "
                f"an attempt that may have been applied, and the member list "
                f"could not be read: {describe(e)}"
            ) from None
        if wants(current):
            return current.revision
        refused.raiseException()

    async def _addMember(self, nodeId, address, learner, timeout):
        deadline = self._reactor.seconds() + timeout

        def atAddress(current):
            m = current.member(nodeId)
            return m is not None and m.address == address

        try:
            revision = await self._change(
                f"add learner {nodeId} at {address}", AddLearner,
                {"node_id": nodeId, "address": address}, atAddress,
            )
        except InvalidArgument:
            # Already a member: maybe of an add that was interrupted.
            refused = Failure()
            try:
                current = await self.members()
            except Exception:
                refused.raiseException()
            m = current.member(nodeId)
            if m is None or m.address != address or (m.voter and learner):
                refused.raiseException()
            if m.voter or learner:
                return current.revision
        if learner:
            return revision
        return await self._promote(nodeId, deadline, timeout)

    async def _promote(self, nodeId, deadline, timeout):
        """Promote learner C{nodeId}, retried while it is not caught up
        until C{deadline}."""
        tries = 0
        while True:
            try:
                return await self._change(
                    f"promote member {nodeId}", PromoteMember, {"node_id": nodeId},
                    _isVoter(nodeId),
                )
            except NotCaughtUp as e:
                tries += 1
                delay = min(self.catchUpPollDelay, self.retryInitialDelay * 2 ** (tries - 1))
                if self._reactor.seconds() + delay > deadline:
                    raise NotCaughtUp(
                        f"node {nodeId} did not catch up with the leader's log within "
                        f"{timeout:g}s ({errorMessage(e)}); it stays a learner: promote it "
                        "once it has caught up"
                    ) from None
                await self._pause(delay, f"promote member {nodeId}")

    async def _transfer(self, nodeId):
        """
        L{transferLeader}.  A transfer is not idempotent (a repeat of one to
        the most up-to-date voter would move leadership again), so an
        attempt that may have started one is not simply repeated: the
        leader is asked for first, and if leadership moved as wanted, that
        is the answer.
        """
        what = f"transfer leader to node {nodeId}" if nodeId else "transfer leader"
        start = self._reactor.seconds()
        before = (await self.status())["leader_id"]
        if nodeId and before == nodeId:
            return nodeId

        def moved(leaderId):
            return leaderId != before and leaderId > 0 and (not nodeId or leaderId == nodeId)

        uncertain = None  # the failure of an attempt that may have started one
        while True:
            op = Operation(
                what, TransferLeader, {"node_id": nodeId}, True, _leaderId, False, start,
                resend=False,
            )
            try:
                return self._leaderMoved(await self._run(op))
            except NotProposed:
                if uncertain is not None:
                    uncertain.raiseException()
                raise
            except (OutcomeUnknown, InvalidArgument):
                # leadership may have moved (by this attempt, an earlier one,
                # or an election): look
                failure = Failure()
            try:
                leaderId = (await self.status())["leader_id"]
            except Unavailable:
                failure.raiseException()
            if moved(leaderId):
                return self._leaderMoved(leaderId)
            if failure.check(InvalidArgument):
                failure.raiseException()
            uncertain = failure
            if self._reactor.seconds() - start >= self.timeout:
                failure.raiseException()
            await self._pause(self.retryInitialDelay, what)

    def _leaderMoved(self, leaderId):
        """Node C{leaderId} leads now: send there (if its address is known;
        else look for it).  @return: C{leaderId}."""
        self._preferred = None
        for address, n in self._nodeIds.items():
            if n == leaderId:
                self._preferred = address
        return leaderId
