"""
The membership commands and leadership transfer at the node's AMP protocol
(L{twisted_raft.rpc.server}), over in-memory AMP with stub nodes: checked
arguments, the core's answers and refusals mapped to the contract's error
codes, and forwarding to the leader like writes.
"""

import pytest

from twisted_raft.raft import membership, messages
from twisted_raft.raft.membership import ChangeKind, ConfChange, Configuration, Member
from twisted_raft.rpc import commands
from twisted_raft.rpc.commands import (
    NOT_PROPOSED,
    ChangeInProgress,
    InvalidArgument,
    NodeDiskFull,
    NotCaughtUp,
    NotProposed,
    PermissionDenied,
    TransferFailed,
    Unavailable,
)

from tests.rpc.test_server import Harness
from tests.support import StubNode, failureOf, result

THREE = [
    {"node_id": 1, "address": "127.0.0.1:8001", "voter": True},
    {"node_id": 2, "address": "127.0.0.1:8002", "voter": True},
    {"node_id": 3, "address": "127.0.0.1:8003", "voter": True},
]


def stub(nodeId=1, **kwargs):
    """A L{StubNode} of the three voters in L{THREE}, whose transfers
    take effect at once."""
    node = StubNode(nodeId, **kwargs)
    node.configuration = Configuration(
        tuple(Member(m["node_id"], m["address"], m["voter"]) for m in THREE)
    )
    node.holdTransfers = False
    return node


def followerAndLeader():
    leader = stub(1)
    follower = stub(2, role=messages.FOLLOWER, leaderId=1)
    return Harness(follower, leader=leader), leader, follower


# -- at the leader -------------------------------------------------------------


def test_member_list_add_promote_remove_at_the_leader():
    node = stub()
    h = Harness(node)
    assert result(h.call(commands.MemberList)) == {"revision": 0, "members": THREE}
    # the address is kept exactly as given
    assert result(h.call(commands.AddLearner, node_id=4, address="Node-4.example:8004")) == {
        "revision": 1
    }
    assert [c for c, _ in node.changes] == [
        ConfChange(ChangeKind.ADD_LEARNER, 4, "Node-4.example:8004")
    ]
    r = result(h.call(commands.MemberList))
    assert r["revision"] == 1
    assert r["members"][3] == {"node_id": 4, "address": "Node-4.example:8004", "voter": False}
    assert result(h.call(commands.PromoteMember, node_id=4)) == {"revision": 2}
    assert result(h.call(commands.RemoveMember, node_id=2)) == {"revision": 3}
    r = result(h.call(commands.MemberList))
    assert r == {
        "revision": 3,
        "members": [
            THREE[0], THREE[2], {"node_id": 4, "address": "Node-4.example:8004", "voter": True},
        ],
    }
    assert [c for c, _ in node.changes][1:] == [
        ConfChange(ChangeKind.PROMOTE, 4), ConfChange(ChangeKind.REMOVE, 2),
    ]
    assert node.reads == 3  # every member list confirmed leadership first
    h.assertServes()


def test_a_change_is_answered_once_committed():
    node = stub()
    node.holdChanges = True
    h = Harness(node)
    d = h.call(commands.AddLearner, node_id=4, address="[::1]:8004")
    assert not d.called
    [(change, pending)] = node.changes
    node.commitChange(change, pending)
    h.pumps.flush()
    assert result(d) == {"revision": 1}
    assert node.configuration.member(4) == Member(4, "[::1]:8004", False)
    assert h.clock.getDelayedCalls() == []  # no deadline left behind


@pytest.mark.parametrize("error,expected,text", [
    (messages.CommitUnknown("deposed"), Unavailable, "outcome unknown: deposed"),
    (messages.StorageFailed("disk on fire"), Unavailable, "outcome unknown: storage failed"),
])
def test_a_proposed_change_that_fails_later_is_outcome_unknown(error, expected, text):
    node = stub()
    node.holdChanges = True
    h = Harness(node)
    d = h.call(commands.RemoveMember, node_id=3)
    node.changes[0][1].errback(error)
    h.pumps.flush()
    f = failureOf(d, expected)
    assert text in str(f.value) and not isinstance(f.value, NotProposed)


def test_a_change_that_times_out_is_outcome_unknown():
    node = stub()
    node.holdChanges = True
    h = Harness(node)
    d = h.call(commands.PromoteMember, node_id=3)
    h.advance(h.factory.requestTimeout)
    f = failureOf(d, Unavailable)
    assert str(f.value).startswith("outcome unknown: promote member timed out")
    node.changes[0][1].callback((1, node.configuration))  # late: harmless
    h.assertServes()


@pytest.mark.parametrize("error,expected,code", [
    (membership.ChangeInProgress("change at 7 not committed"), ChangeInProgress,
     commands.CHANGE_IN_PROGRESS),
    (membership.NotCaughtUp("node 4 is 5000 entries behind"), NotCaughtUp,
     commands.NOT_CAUGHT_UP),
    (membership.InvalidChange("node 3 is the last voter"), InvalidArgument,
     commands.INVALID_ARGUMENT),
])
def test_the_cores_refusals_are_the_contracts_error_codes(error, expected, code):
    node = stub()
    node.changeError = error
    h = Harness(node)
    f = failureOf(h.call(commands.PromoteMember, node_id=4), expected)
    assert str(f.value) == str(error)
    assert commands.ERRORS[expected] == code
    h.assertServes()


def test_a_change_that_does_not_apply_is_invalid_argument():
    """The stub applies changes with the core's own ConfChange.applyTo."""
    h = Harness(stub())
    f = failureOf(h.call(commands.AddLearner, node_id=2, address="h:9"), InvalidArgument)
    assert "already a member" in str(f.value)
    f = failureOf(h.call(commands.PromoteMember, node_id=9), InvalidArgument)
    assert "not a member" in str(f.value)
    f = failureOf(h.call(commands.AddLearner, node_id=9, address="127.0.0.1:8002"),
                  InvalidArgument)
    assert "already node 2's" in str(f.value)


def test_a_full_disk_refuses_changes_but_not_transfers():
    """A change writes a configuration entry; a transfer writes nothing and
    is how an operator moves leadership off the full node."""
    node = stub()
    node.storage = type("FullStorage", (), {"diskFull": True})()
    h = Harness(node)
    f = failureOf(h.call(commands.AddLearner, node_id=4, address="h:4"), NodeDiskFull)
    assert str(f.value) == "not proposed: disk full on node 1"
    assert node.changes == []
    assert result(h.call(commands.TransferLeader, node_id=3)) == {"leader_id": 3}


# -- arguments checked before the core sees them -----------------------------------


@pytest.mark.parametrize("command,kwargs,text", [
    (commands.AddLearner, dict(node_id=0, address="h:1"), "node_id is out of range 1"),
    (commands.AddLearner, dict(node_id=-4, address="h:1"), "node_id is out of range 1"),
    (commands.AddLearner, dict(node_id=2**63, address="h:1"), "node_id is out of range 1"),
    (commands.AddLearner, dict(node_id=10**300, address="h:1"), "out of range"),
    (commands.AddLearner, dict(node_id=4, address=""), "needs an address"),
    (commands.AddLearner, dict(node_id=4, address="nohost"), "not HOST:PORT"),
    (commands.AddLearner, dict(node_id=4, address="h:0"), "not HOST:PORT"),
    (commands.AddLearner, dict(node_id=4, address="h:65536"), "not HOST:PORT"),
    (commands.AddLearner, dict(node_id=4, address="h :1"), "not HOST:PORT"),
    (commands.AddLearner, dict(node_id=4, address="h\n:1"), "not HOST:PORT"),
    (commands.AddLearner, dict(node_id=4, address="h" * 300 + ":1"), "not HOST:PORT"),
    (commands.PromoteMember, dict(node_id=0), "node_id is out of range 1"),
    (commands.RemoveMember, dict(node_id=-1), "node_id is out of range 1"),
    (commands.RemoveMember, dict(node_id=2**64), "node_id is out of range 1"),
    (commands.TransferLeader, dict(node_id=-1), "node_id is out of range 0"),
    (commands.TransferLeader, dict(node_id=2**63), "node_id is out of range 0"),
])
def test_bad_arguments_are_invalid_and_reach_nothing(command, kwargs, text):
    node = stub()
    h = Harness(node)
    f = failureOf(h.call(command, **kwargs), InvalidArgument)
    assert text in str(f.value)
    assert node.changes == [] and node.transfers == []
    h.assertServes()


def test_ids_at_their_limits_are_accepted():
    node = stub()
    h = Harness(node)
    top = membership.MAX_NODE_ID
    assert result(h.call(commands.AddLearner, node_id=top, address="h:65535"))["revision"] == 1
    assert result(h.call(commands.RemoveMember, node_id=top))["revision"] == 2


def test_a_malformed_box_is_invalid_argument():
    node = stub()
    h = Harness(node)
    for box in (
        {b"address": b"h:1"},  # no node_id
        {b"node_id": b"four", b"address": b"h:1"},
        {b"node_id": b"4", b"address": b"\xff:1"},  # not UTF-8
    ):
        f = failureOf(h.raw(b"AddLearner", box))
        assert f.value.errorCode == commands.INVALID_ARGUMENT
    assert node.changes == []
    h.assertServes()


# -- leadership transfer --------------------------------------------------------------


def test_transfer_to_a_voter_or_the_most_up_to_date_one():
    node = stub()
    h = Harness(node)
    assert result(h.call(commands.TransferLeader, node_id=3)) == {"leader_id": 3}
    node.becomeLeader()
    assert result(h.call(commands.TransferLeader)) == {"leader_id": 2}
    node.becomeLeader()
    assert result(h.call(commands.TransferLeader, node_id=0)) == {"leader_id": 2}
    assert [t for t, _ in node.transfers] == [3, 0, 0]


def test_transfer_answered_when_the_new_leader_is_known_or_failed():
    node = stub()
    node.holdTransfers = True
    h = Harness(node)
    d = h.call(commands.TransferLeader, node_id=2)
    assert not d.called
    node.transfers[0][1].callback(2)
    h.pumps.flush()
    assert result(d) == {"leader_id": 2}
    d = h.call(commands.TransferLeader, node_id=3)
    node.transfers[1][1].errback(messages.TransferFailed("node 3 was not elected in 1.0s"))
    h.pumps.flush()
    f = failureOf(d, TransferFailed)
    assert str(f.value) == "node 3 was not elected in 1.0s"


def test_a_transfer_refused_or_timed_out():
    node = stub()
    node.transferError = membership.InvalidChange("node 9 is not a voter")
    h = Harness(node)
    f = failureOf(h.call(commands.TransferLeader, node_id=9), InvalidArgument)
    assert str(f.value) == "node 9 is not a voter"
    node.transferError = None
    node.holdTransfers = True
    d = h.call(commands.TransferLeader)
    h.advance(h.factory.requestTimeout)
    # leadership may have moved: not "not proposed"
    f = failureOf(d, Unavailable)
    assert str(f.value).startswith("outcome unknown: transfer leader timed out")


# -- the member list is the leader's committed configuration ------------------------


def test_member_list_waits_for_the_read_round():
    node = stub()
    node.holdReads = True
    h = Harness(node)
    d = h.call(commands.MemberList)
    assert not d.called and node.reads == 1
    node.heldReads[0].callback(None)
    h.pumps.flush()
    assert result(d)["members"] == THREE


def test_member_list_of_a_configuration_not_yet_committed_is_change_in_progress():
    node = stub()
    # appended at index 5 (in effect at once, thesis §4.1), committed up to 4
    node.configuration = Configuration((Member(1, "h:1"), Member(4, "h:4", False)), 5)
    node.index = 4
    h = Harness(node)
    f = failureOf(h.call(commands.MemberList), ChangeInProgress)
    assert "index 5 is not yet committed" in str(f.value)
    node.index = 5
    assert result(h.call(commands.MemberList)) == {
        "revision": 5,
        "members": [
            {"node_id": 1, "address": "h:1", "voter": True},
            {"node_id": 4, "address": "h:4", "voter": False},
        ],
    }


def test_member_list_at_a_deposed_leader_is_not_proposed():
    node = stub()
    node.readError = messages.NotLeader(0)
    h = Harness(node)
    result(h.authenticate(asNode=2))
    f = failureOf(h.call(commands.MemberList, forwarded=True), NotProposed)
    assert str(f.value).startswith(NOT_PROPOSED)


# -- forwarding ----------------------------------------------------------------------


def test_a_follower_forwards_every_membership_command():
    h, leader, follower = followerAndLeader()
    assert result(h.call(commands.AddLearner, node_id=4, address="10.0.0.4:8004")) == {
        "revision": 1
    }
    assert result(h.call(commands.PromoteMember, node_id=4)) == {"revision": 2}
    assert result(h.call(commands.RemoveMember, node_id=3)) == {"revision": 3}
    r = result(h.call(commands.MemberList))
    assert r["revision"] == 3
    assert [m["node_id"] for m in r["members"]] == [1, 2, 4]
    assert r["members"][2] == {"node_id": 4, "address": "10.0.0.4:8004", "voter": True}
    assert result(h.call(commands.TransferLeader, node_id=2)) == {"leader_id": 2}
    assert [c for c, _ in leader.changes] == [
        ConfChange(ChangeKind.ADD_LEARNER, 4, "10.0.0.4:8004"),
        ConfChange(ChangeKind.PROMOTE, 4),
        ConfChange(ChangeKind.REMOVE, 3),
    ]
    assert leader.transfers[0][0] == 2 and leader.reads == 1
    assert follower.changes == [] and follower.transfers == [] and follower.reads == 0


def test_a_follower_forwards_a_transfer_to_the_most_up_to_date_voter():
    h, leader, follower = followerAndLeader()
    assert result(h.call(commands.TransferLeader)) == {"leader_id": 2}
    assert leader.transfers[0][0] == 0


@pytest.mark.parametrize("error,expected", [
    (membership.ChangeInProgress("busy"), ChangeInProgress),
    (membership.NotCaughtUp("behind"), NotCaughtUp),
    (membership.InvalidChange("no"), InvalidArgument),
    (messages.CommitUnknown("deposed"), Unavailable),
])
def test_a_follower_relays_the_leaders_refusal_by_type(error, expected):
    h, leader, follower = followerAndLeader()
    leader.changeError = error
    f = failureOf(h.call(commands.PromoteMember, node_id=4), expected)
    assert str(error) in str(f.value)
    assert len(leader.changes) == 1  # relayed, not retried
    h.assertServes()


def test_a_follower_relays_a_failed_transfer():
    h, leader, follower = followerAndLeader()
    leader.transferError = messages.TransferFailed("no new leader in time")
    f = failureOf(h.call(commands.TransferLeader, node_id=3), TransferFailed)
    assert str(f.value) == "no new leader in time"


def test_a_change_at_a_deposed_leader_goes_to_the_new_one():
    h, leader, node = followerAndLeader()
    node.role, node.leaderId = messages.LEADER, 2
    node.holdChanges = True
    d = h.call(commands.RemoveMember, node_id=3)
    assert not d.called
    node.role, node.leaderId = messages.FOLLOWER, 1
    node.changes[0][1].errback(messages.NotLeader(1))  # nothing was proposed
    h.pumps.flush()
    assert result(d) == {"revision": 1}
    assert [c for c, _ in leader.changes] == [ConfChange(ChangeKind.REMOVE, 3)]


def test_forwarded_commands_need_an_authenticated_peer():
    node = stub()  # a leader: it would serve them
    h = Harness(node)
    for command, args in [
        (commands.MemberList, {}),
        (commands.AddLearner, dict(node_id=4, address="h:4")),
        (commands.PromoteMember, dict(node_id=4)),
        (commands.RemoveMember, dict(node_id=3)),
        (commands.TransferLeader, dict(node_id=3)),
    ]:
        failureOf(h.call(command, forwarded=True, **args), PermissionDenied)
    assert node.changes == [] and node.transfers == [] and node.reads == 0
    h.assertServes()


def test_a_forwarded_command_at_a_follower_is_not_forwarded_again():
    node = stub(nodeId=3, role=messages.FOLLOWER, leaderId=1)
    h = Harness(node)  # no peers at all: forwarding would crash
    result(h.authenticate(asNode=2))
    for command, args in [
        (commands.MemberList, {}),
        (commands.AddLearner, dict(node_id=4, address="h:4")),
        (commands.PromoteMember, dict(node_id=4)),
        (commands.RemoveMember, dict(node_id=2)),
        (commands.TransferLeader, {}),
    ]:
        f = failureOf(h.call(command, forwarded=True, **args), NotProposed)
        assert str(f.value).startswith(NOT_PROPOSED)
    assert node.changes == [] and node.transfers == []
    h.assertServes()
