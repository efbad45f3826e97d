"""
Tests for the client library's membership calls and leadership transfer
(L{twisted_raft.client.RaftKVClient.members}, C{addMember},
C{promoteMember}, C{removeMember}, C{transferLeader}): real AMP through
L{twisted.test.iosim} to fake nodes sharing one configuration; time is a
L{task.Clock}.
"""

import pytest
from twisted.internet.defer import Deferred, fail, succeed
from twisted.test import iosim

from twisted_raft.client import (
    ChangeInProgress,
    ClientAMP,
    Member,
    Membership,
    NotCaughtUp,
    NotProposed,
    OutcomeUnknown,
    RaftKVClient,
    TransferFailed,
)
from twisted_raft.raft import membership, messages
from twisted_raft.raft.membership import ChangeKind, ConfChange
from twisted_raft.rpc.commands import (
    AddLearner,
    InvalidArgument,
    MemberList,
    PromoteMember,
    RemoveMember,
    Status,
    TransferLeader,
    Unavailable,
)

from tests.client.test_client import FakeCluster, FakeServer
from tests.rpc.test_server_membership import followerAndLeader


class MemberServer(FakeServer):
    """
    A fake node that also serves the membership commands, from the
    cluster's shared configuration (C{cluster.members}: C{{id: (address,
    voter)}}), refusing changes that do not apply as the core would.  A
    node's C{onChange(name, nodeId, apply)}, C{onTransfer(nodeId)} and
    C{onMembers()} may take over (raise, return a Deferred, ...).
    """

    def _change(self, name, nodeId, apply):
        node = self.node
        node.calls.append((name, nodeId))
        if node.onChange is not None:
            result = node.onChange(name, nodeId, apply)
            if result is not None:
                return result
        return apply()

    @AddLearner.responder
    def addLearner(self, node_id, address, forwarded=None):
        c = self.node.cluster

        def apply():
            if node_id in c.members:
                raise InvalidArgument(f"node {node_id} is already a member")
            c.members[node_id] = (address, False)
            return {"revision": c.configChanged()}

        return self._change("add", node_id, apply)

    @PromoteMember.responder
    def promoteMember(self, node_id, forwarded=None):
        c = self.node.cluster

        def apply():
            address, voter = c.members.get(node_id, (None, None))
            if address is None:
                raise InvalidArgument(f"node {node_id} is not a member")
            if voter:
                raise InvalidArgument(f"node {node_id} is already a voter")
            c.members[node_id] = (address, True)
            return {"revision": c.configChanged()}

        return self._change("promote", node_id, apply)

    @RemoveMember.responder
    def removeMember(self, node_id, forwarded=None):
        c = self.node.cluster

        def apply():
            if c.members.pop(node_id, None) is None:
                raise InvalidArgument(f"node {node_id} is not a member")
            return {"revision": c.configChanged()}

        return self._change("remove", node_id, apply)

    @MemberList.responder
    def memberList(self, forwarded=None):
        node = self.node
        node.calls.append(("members",))
        if node.onMembers is not None:
            result = node.onMembers()
            if result is not None:
                return result
        c = node.cluster
        return {
            "revision": c.configRevision,
            "members": [
                {"node_id": i, "address": a, "voter": v} for i, (a, v) in sorted(c.members.items())
            ],
        }

    @TransferLeader.responder
    def transferLeader(self, node_id=None, forwarded=None):
        node = self.node
        node.calls.append(("transfer", node_id))
        if node.onTransfer is not None:
            result = node.onTransfer(node_id)
            if result is not None:
                return result
        c = node.cluster
        c.transferTo(node_id or min(i for i, (_, v) in c.members.items() if v and i != c.leader))
        return {"leader_id": c.leader}

    @Status.responder
    def status(self):
        answer = super().status()
        c = self.node.cluster
        answer["voter"] = c.members.get(self.node.nodeId, ("", False))[1]
        answer["config_revision"] = c.configRevision
        return answer


class MemberCluster(FakeCluster):
    serverType = MemberServer

    def __init__(self, n=3, leader=1):
        super().__init__(n, leader)
        self.members = {i: (a, True) for i, a in enumerate(self.addresses, 1)}
        self.configRevision = 0
        for node in self.nodes:
            node.onChange = node.onTransfer = node.onMembers = None

    def configChanged(self):
        self.revision += 1
        self.configRevision = self.revision
        return self.revision

    def transferTo(self, nodeId):
        self.leader = nodeId
        self.term += 1

    def changes(self, nodeId=None):
        nodes = self.nodes if nodeId is None else [self.node(nodeId)]
        return [c for n in nodes for c in n.calls if c[0] in ("add", "promote", "remove")]

    def calls(self, name):
        return [c for n in self.nodes for c in n.calls if c[0] == name]


@pytest.fixture
def cluster():
    return MemberCluster()


def applyThenDrop(node, once=True):
    """An onChange that applies the change, then loses the answer with the
    connection (the first time only, with C{once})."""
    done = []

    def onChange(name, nodeId, apply):
        if once and done:
            return None
        done.append(name)
        apply()
        node.servers[-1].transport.loseConnection()
        return Deferred()

    return onChange


# -- the member list --------------------------------------------------------------


def test_members(cluster):
    client = cluster.client()
    cluster.members[4] = ("[::1]:8004", False)
    cluster.configRevision = 7
    current = cluster.run(client.members())
    assert isinstance(current, Membership)
    revision, members = current
    assert revision == 7
    assert members == (
        Member(1, "127.0.0.1:8001", True),
        Member(2, "127.0.0.1:8002", True),
        Member(3, "127.0.0.1:8003", True),
        Member(4, "[::1]:8004", False),
    )
    assert current.voters == (1, 2, 3) and current.learners == (4,)
    assert current.member(4).address == "[::1]:8004" and current.member(9) is None


def test_member_list_is_retried_while_a_change_is_in_progress(cluster):
    client = cluster.client()
    busy = [ChangeInProgress("the configuration at index 5 is not yet committed")] * 2

    def inProgress():
        if busy:
            raise busy.pop()

    cluster.node(1).onMembers = inProgress
    assert cluster.run(client.members()).revision == 0
    assert len(cluster.calls("members")) == 3


def test_status_has_voter_and_config_revision(cluster):
    client = cluster.client()
    cluster.members[2] = ("127.0.0.1:8002", False)
    cluster.configRevision = 9
    s = cluster.run(client.status("127.0.0.1:8002"))
    assert (s["voter"], s["config_revision"]) == (False, 9)
    s = cluster.run(client.status())
    assert (s["node_id"], s["voter"], s["config_revision"]) == (1, True, 9)


def test_status_of_a_node_without_membership_keys():
    """A node older than membership change leaves them out: still read."""
    old = FakeCluster()
    s = old.run(old.client().status("127.0.0.1:8002"))
    assert s["node_id"] == 2 and s["voter"] is None and s["config_revision"] is None


# -- adding, promoting, removing ---------------------------------------------------------


def test_add_member_adds_a_learner_then_promotes_it(cluster):
    client = cluster.client()
    assert cluster.run(client.addMember(4, "Node-4.example:8004")) == 2
    assert cluster.changes() == [("add", 4), ("promote", 4)]
    assert cluster.members[4] == ("Node-4.example:8004", True)  # kept as given


def test_add_member_as_a_learner_only(cluster):
    client = cluster.client()
    assert cluster.run(client.addMember(4, "127.0.0.1:8004", learner=True)) == 1
    assert cluster.changes() == [("add", 4)]
    assert cluster.members[4] == ("127.0.0.1:8004", False)


def test_add_member_waits_for_the_learner_to_catch_up(cluster):
    client = cluster.client()
    behind = [3]

    def catchingUp(name, nodeId, apply):
        if name == "promote" and behind[0]:
            behind[0] -= 1
            raise NotCaughtUp(f"node 4 is {behind[0] + 1}000 entries behind")

    cluster.node(1).onChange = catchingUp
    start = cluster.clock.seconds()
    assert cluster.run(client.addMember(4, "127.0.0.1:8004", timeout=10)) == 2
    assert cluster.changes() == [("add", 4)] + [("promote", 4)] * 4
    # it paused between the promotions (0.05 + 0.1 + 0.2 s)
    assert cluster.clock.seconds() - start >= 0.35
    assert cluster.members[4] == ("127.0.0.1:8004", True)


def test_add_member_that_never_catches_up_stays_a_learner(cluster):
    client = cluster.client()

    def neverCaughtUp(name, nodeId, apply):
        if name == "promote":
            raise NotCaughtUp("node 4 is 50000 entries behind")

    cluster.node(1).onChange = neverCaughtUp
    start = cluster.clock.seconds()
    with pytest.raises(NotCaughtUp, match="node 4 did not catch up .* within 3s .*50000"
                                          ".*stays a learner"):
        cluster.run(client.addMember(4, "127.0.0.1:8004", timeout=3))
    assert 2 <= cluster.clock.seconds() - start <= 3.1
    assert cluster.members[4] == ("127.0.0.1:8004", False)
    promotions = cluster.changes().count(("promote", 4))
    assert 4 <= promotions <= 10  # polled, with growing pauses up to 1 s


def test_promote_and_remove(cluster):
    client = cluster.client()
    cluster.members[4] = ("127.0.0.1:8004", False)
    assert cluster.run(client.promoteMember(4)) == 1
    assert cluster.run(client.removeMember(2)) == 2
    assert sorted(cluster.members) == [1, 3, 4]
    assert cluster.changes() == [("promote", 4), ("remove", 2)]


def test_a_change_goes_to_the_leader(cluster):
    cluster.leader = 3
    client = cluster.client()
    cluster.run(client.removeMember(2))
    assert cluster.changes(3) == [("remove", 2)]


def test_change_in_progress_is_retried_with_the_same_leader(cluster):
    client = cluster.client()
    cluster.run(client.members())  # finds the leader
    statuses = len(cluster.calls("status"))
    busy = [2]

    def inProgress(name, nodeId, apply):
        if busy[0]:
            busy[0] -= 1
            raise ChangeInProgress("a change at index 3 is not yet committed")

    cluster.node(1).onChange = inProgress
    assert cluster.run(client.removeMember(3)) == 1
    assert cluster.changes(1) == [("remove", 3)] * 3
    assert len(cluster.calls("status")) == statuses  # no new leader search


def test_change_in_progress_until_the_timeout(cluster):
    client = cluster.client(timeout=1.0)

    def inProgress(name, nodeId, apply):
        raise ChangeInProgress("a change at index 3 is not yet committed")

    cluster.node(1).onChange = inProgress
    with pytest.raises(ChangeInProgress, match="still in progress after 1s.*index 3"):
        cluster.run(client.removeMember(3))
    assert 2 in cluster.members


def test_a_definite_refusal_is_not_second_guessed(cluster):
    """Refused on the first attempt: an error, the member list not read."""
    client = cluster.client()
    with pytest.raises(InvalidArgument, match="node 9 is not a member"):
        cluster.run(client.removeMember(9))
    with pytest.raises(InvalidArgument, match="already a voter"):
        cluster.run(client.promoteMember(2))
    assert cluster.calls("members") == []
    assert len(cluster.changes()) == 2  # not retried


@pytest.mark.parametrize("call", [
    lambda c: c.addMember(0, "h:1"),
    lambda c: c.addMember(2**63, "h:1"),
    lambda c: c.addMember(4, "nohost"),
    lambda c: c.addMember(4, "h:0"),
    lambda c: c.promoteMember(-1),
    lambda c: c.removeMember(0),
    lambda c: c.transferLeader(-2),
])
def test_bad_arguments_are_refused_before_anything_is_sent(cluster, call):
    client = cluster.client()
    with pytest.raises(InvalidArgument):
        cluster.run(call(client))
    assert cluster.connects == []


def test_wrong_types_fail_the_deferred(cluster):
    client = cluster.client()
    for call in (lambda: client.removeMember("4"), lambda: client.addMember(4, b"h:1"),
                 lambda: client.transferLeader(True)):
        with pytest.raises(TypeError):
            cluster.run(call())
    assert cluster.connects == []


# -- a change whose outcome is unknown ----------------------------------------------------


@pytest.mark.parametrize("sessions", [True, False])
def test_an_add_whose_answer_is_lost_is_resolved_by_the_member_list(cluster, sessions):
    """Applied, the answer lost: the retry is refused (already a member), and
    the member list shows the learner at that address: success."""
    client = cluster.client(sessions=sessions)
    cluster.node(1).onChange = applyThenDrop(cluster.node(1))
    assert cluster.run(client.addMember(4, "127.0.0.1:8004", learner=True)) == 1
    assert cluster.changes() == [("add", 4), ("add", 4)]
    assert len(cluster.calls("members")) >= 1
    assert cluster.members[4] == ("127.0.0.1:8004", False)


def test_a_change_lost_in_a_leader_change_is_resolved_at_the_new_leader(cluster):
    client = cluster.client()

    def appliedThenDeposed(name, nodeId, apply):
        apply()
        cluster.transferTo(2)
        raise Unavailable("outcome unknown: leadership lost")

    cluster.node(1).onChange = appliedThenDeposed
    assert cluster.run(client.removeMember(3)) == 1
    assert cluster.changes(1) == [("remove", 3)]
    assert cluster.changes(2) == [("remove", 3)]  # refused: not a member
    assert [c for c in cluster.node(2).calls if c == ("members",)]


def test_a_promotion_whose_answer_is_lost(cluster):
    client = cluster.client()
    cluster.members[4] = ("127.0.0.1:8004", False)
    cluster.node(1).onChange = applyThenDrop(cluster.node(1))
    assert cluster.run(client.promoteMember(4)) == 1
    assert cluster.members[4][1] is True


def test_a_lost_change_that_someone_else_contradicted_is_refused(cluster):
    """The answer lost and the change not applied; meanwhile another node 4
    was added elsewhere: the retry's refusal stands."""
    client = cluster.client()

    def lostAndRaced(name, nodeId, apply):
        cluster.node(1).onChange = None
        cluster.members[4] = ("10.9.9.9:8004", False)  # somebody else's add
        cluster.node(1).servers[-1].transport.loseConnection()
        return Deferred()

    cluster.node(1).onChange = lostAndRaced
    with pytest.raises(InvalidArgument, match="already a member"):
        cluster.run(client.addMember(4, "127.0.0.1:8004", learner=True))
    assert cluster.members[4] == ("10.9.9.9:8004", False)


def test_an_unknown_outcome_until_the_timeout_is_outcome_unknown(cluster):
    client = cluster.client(timeout=2.0)
    for node in cluster.nodes:
        node.onChange = lambda name, nodeId, apply: Deferred()
    with pytest.raises(OutcomeUnknown, match="outcome unknown: remove member 3"):
        cluster.run(client.removeMember(3))


def test_a_change_nobody_took_is_not_proposed(cluster):
    for node in cluster.nodes:
        node.down = True
    client = cluster.client(timeout=1.0)
    with pytest.raises(NotProposed, match="remove member 3 was not applied"):
        cluster.run(client.removeMember(3))


# -- resuming an add --------------------------------------------------------------------


def test_adding_a_learner_again_resumes_the_add(cluster):
    client = cluster.client()
    cluster.members[4] = ("127.0.0.1:8004", False)
    assert cluster.run(client.addMember(4, "127.0.0.1:8004")) == 1
    assert cluster.changes() == [("add", 4), ("promote", 4)]
    assert cluster.members[4] == ("127.0.0.1:8004", True)


def test_adding_a_voter_again_at_its_address_is_done(cluster):
    client = cluster.client()
    cluster.configRevision = 5
    assert cluster.run(client.addMember(2, "127.0.0.1:8002")) == 5
    assert cluster.changes() == [("add", 2)]
    # as a learner, it is not what was asked: refused
    with pytest.raises(InvalidArgument, match="already a member"):
        cluster.run(client.addMember(2, "127.0.0.1:8002", learner=True))


def test_adding_a_member_at_another_address_is_refused(cluster):
    client = cluster.client()
    with pytest.raises(InvalidArgument, match="already a member"):
        cluster.run(client.addMember(2, "127.0.0.1:9999"))
    assert cluster.changes() == [("add", 2)]


def test_close_while_waiting_for_the_learner(cluster):
    client = cluster.client()

    def neverCaughtUp(name, nodeId, apply):
        if name == "promote":
            raise NotCaughtUp("behind")

    cluster.node(1).onChange = neverCaughtUp
    d = client.addMember(4, "127.0.0.1:8004")
    for _ in range(20):
        cluster.flush()
        cluster.clock.advance(0.05)
    assert not d.called
    client.close()
    with pytest.raises(Unavailable, match="closed"):
        cluster.run(d)


# -- leadership transfer ------------------------------------------------------------------


def test_transfer_leader(cluster):
    client = cluster.client()
    assert cluster.run(client.transferLeader(3)) == 3
    assert cluster.leader == 3
    assert cluster.calls("transfer") == [("transfer", 3)]
    # to the most up-to-date voter: the fake picks the lowest other id
    assert cluster.run(client.transferLeader()) == 1
    assert cluster.calls("transfer")[-1] == ("transfer", 0)
    # sent to node 3, the leader since the first transfer
    assert [c for c in cluster.node(3).calls if c[0] == "transfer"] == [("transfer", 0)]


def test_transfer_to_the_leader_is_done_at_once(cluster):
    client = cluster.client()
    assert cluster.run(client.transferLeader(1)) == 1
    assert cluster.calls("transfer") == []


def test_a_failed_transfer_is_not_retried(cluster):
    client = cluster.client()

    def failed(nodeId):
        raise TransferFailed("node 3 was not elected within 1.0s")

    cluster.node(1).onTransfer = failed
    with pytest.raises(TransferFailed, match="not elected"):
        cluster.run(client.transferLeader(3))
    assert cluster.calls("transfer") == [("transfer", 3)]
    assert cluster.leader == 1


def test_a_refused_transfer(cluster):
    client = cluster.client()

    def refused(nodeId):
        raise InvalidArgument(f"node {nodeId} is not a voter")

    cluster.node(1).onTransfer = refused
    with pytest.raises(InvalidArgument, match="node 9 is not a voter"):
        cluster.run(client.transferLeader(9))
    assert cluster.calls("transfer") == [("transfer", 9)]


@pytest.mark.parametrize("target", [0, 2])
def test_a_transfer_whose_answer_is_lost_is_not_repeated_once_leadership_moved(cluster, target):
    """Repeating a transfer to 'the most up-to-date voter' would move
    leadership twice: the client asks who leads instead."""
    client = cluster.client()

    def movedThenLost(nodeId):
        cluster.transferTo(nodeId or 2)
        cluster.node(1).servers[-1].transport.loseConnection()
        return Deferred()

    cluster.node(1).onTransfer = movedThenLost
    assert cluster.run(client.transferLeader(target)) == 2
    assert cluster.calls("transfer") == [("transfer", target)]
    assert cluster.leader == 2


def test_a_transfer_whose_answer_is_lost_before_it_started_is_tried_again(cluster):
    client = cluster.client()
    lost = []

    def lostBeforeStarting(nodeId):
        if not lost:
            lost.append(nodeId)
            cluster.node(1).servers[-1].transport.loseConnection()
            return Deferred()

    cluster.node(1).onTransfer = lostBeforeStarting
    assert cluster.run(client.transferLeader()) == 2
    assert cluster.calls("transfer") == [("transfer", 0), ("transfer", 0)]


def test_a_transfer_with_no_answer_until_the_timeout_is_outcome_unknown(cluster):
    client = cluster.client(timeout=2.0)
    cluster.node(1).onTransfer = lambda nodeId: Deferred()
    with pytest.raises(OutcomeUnknown, match="outcome unknown: transfer leader to node 3"):
        cluster.run(client.transferLeader(3))
    assert cluster.leader == 1


# -- the client against the node's own protocol -----------------------------------------
#
# The fakes above answer like the contract says; here the client talks to
# NodeProtocol itself (a follower that forwards to its leader, stub cores
# behind both), so the two sides are checked against each other: schemas,
# error codes, forwarding.


class NodeRig:
    """A client whose only address is node 2, a follower of node 1."""

    def __init__(self):
        self.harness, self.leader, self.follower = followerAndLeader()
        self.clock = self.harness.clock

    def connect(self, address):
        server = self.harness.factory.buildProtocol(None)
        client = ClientAMP()
        self.harness.pumps.add(iosim.connect(
            server, iosim.makeFakeServer(server), client, iosim.makeFakeClient(client),
            greet=False, clock=self.clock,
        ))
        return succeed(client)

    def client(self, **kwargs):
        return RaftKVClient(["127.0.0.1:8002"], reactor=self.clock, connect=self.connect, **kwargs)

    def run(self, d, limit=30.0):
        results = []
        d.addBoth(results.append)
        start = self.clock.seconds()
        while not results:
            self.harness.pumps.flush()
            if results:
                break
            assert self.clock.seconds() - start < limit, "operation never finished"
            self.clock.advance(0.01)
        result = results[0]
        if hasattr(result, "raiseException"):
            result.raiseException()
        return result


def test_membership_through_a_follower_end_to_end():
    rig = NodeRig()
    client = rig.client()
    assert rig.run(client.addMember(4, "Node-4.example:8004")) == 2
    assert [c for c, _ in rig.leader.changes] == [
        ConfChange(ChangeKind.ADD_LEARNER, 4, "Node-4.example:8004"),
        ConfChange(ChangeKind.PROMOTE, 4),
    ]
    current = rig.run(client.members())
    assert current.revision == 2
    assert current.member(4) == Member(4, "Node-4.example:8004", True)
    assert rig.run(client.removeMember(3)) == 3
    assert rig.leader.configuration.ids == (1, 2, 4)
    status = rig.run(client.status("127.0.0.1:8002"))
    assert (status["voter"], status["config_revision"]) == (True, 0)  # the follower's own
    assert rig.run(client.transferLeader(2)) == 2
    assert rig.leader.transfers[0][0] == 2
    assert rig.follower.changes == [] and rig.follower.transfers == []


def test_the_leaders_refusals_reach_the_client_by_type_through_a_follower():
    rig = NodeRig()
    client = rig.client(timeout=2.0)
    refusals = [membership.ChangeInProgress("a change at 3 is not yet committed")] * 2

    def changeMembership(change, original=rig.leader.changeMembership):
        if refusals:
            return fail(refusals.pop())
        return original(change)

    rig.leader.changeMembership = changeMembership
    assert rig.run(client.removeMember(3)) == 1  # CHANGE_IN_PROGRESS retried
    rig.leader.changeError = membership.NotCaughtUp("node 4 is 5000 entries behind")
    rig.leader.configuration = rig.leader.configuration.withMember(Member(4, "h:4", False))
    with pytest.raises(NotCaughtUp, match="node 4 did not catch up .*5000 entries behind"):
        rig.run(client.promoteMember(4, timeout=1.0))
    rig.leader.changeError = membership.InvalidChange("node 9 is not a member")
    with pytest.raises(InvalidArgument, match="node 9 is not a member"):
        rig.run(client.removeMember(9))
    rig.leader.transferError = messages.TransferFailed("node 3 was not elected in time")
    with pytest.raises(TransferFailed, match="not elected in time"):
        rig.run(client.transferLeader(3))
