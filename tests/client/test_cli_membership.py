"""
Tests for C{raftkv member ...}, C{raftkv transfer-leader} and C{raftkv
status --json} (L{twisted_raft.cli}), against a fake client.
"""

import json

import pytest
from twisted.python import usage

from twisted_raft import cli
from twisted_raft.client import (
    ChangeInProgress,
    Member,
    Membership,
    NotCaughtUp,
    OutcomeUnknown,
    TransferFailed,
)
from twisted_raft.rpc.commands import InvalidArgument, Unavailable

from tests.client.test_cli import FakeClient, _status, run


class MemberClient(FakeClient):
    def members(self):
        return self._answer("members")

    def addMember(self, nodeId, address, learner=False, timeout=60.0):
        return self._answer("add", nodeId, address, learner, timeout)

    def promoteMember(self, nodeId, timeout=60.0):
        return self._answer("promote", nodeId, timeout)

    def removeMember(self, nodeId):
        return self._answer("remove", nodeId)

    def transferLeader(self, nodeId=0):
        return self._answer("transfer", nodeId)


CURRENT = Membership(7, (
    Member(1, "127.0.0.1:8001", True),
    Member(2, "127.0.0.1:8002", True),
    Member(4, "[::1]:8004", False),
    Member(5, "", True),  # a member the cluster was started without an address for
))


# -- parsing -----------------------------------------------------------------------


def test_member_add_options():
    sub = cli.parseArgs(["member", "add", "4", "Node-4.example:8004"]).subOptions
    assert sub.subCommand == "add"
    opts = sub.subOptions
    assert (opts["id"], opts["address"], opts["learner"], opts["json"]) == (
        4, "Node-4.example:8004", 0, 0)
    assert opts["catch-up-timeout"] == 60.0
    opts = cli.parseArgs(["member", "add", "4", "[::1]:8004", "--json", "--learner",
                          "--catch-up-timeout", "5"]).subOptions.subOptions
    assert (opts["address"], opts["learner"], opts["json"], opts["catch-up-timeout"]) == (
        "[::1]:8004", 1, 1, 5.0)


def test_transfer_leader_options():
    assert cli.parseArgs(["transfer-leader"]).subOptions["id"] == 0
    sub = cli.parseArgs(["transfer-leader", "3", "--json"]).subOptions
    assert (sub["id"], sub["json"]) == (3, 1)


@pytest.mark.parametrize("argv", [
    ["member"],
    ["member", "frob"],
    ["member", "add", "4"],
    ["member", "add", "x", "h:1"],
    ["member", "add", "0", "h:1"],
    ["member", "add", "-1", "h:1"],
    ["member", "add", str(2**63), "h:1"],
    ["member", "add", "4", "nohost"],
    ["member", "add", "4", "h:0"],
    ["member", "add", "4", "h:1", "--catch-up-timeout", "0"],
    ["member", "add", "4", "h:1", "extra"],
    ["member", "promote"],
    ["member", "remove", "2", "3"],
    ["member", "list", "x"],
    ["transfer-leader", "x"],
    ["transfer-leader", "1", "2"],
    ["status", "extra"],
])
def test_bad_member_usage(argv):
    with pytest.raises(usage.UsageError):
        cli.parseArgs(argv)


def test_bad_member_usage_exits_2_with_the_subcommands_usage(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["member", "add", "4"])
    assert info.value.code == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert "raftkv [options] member add ID HOST:PORT" in err and "error:" in err


# -- running -------------------------------------------------------------------------


def test_member_list():
    code, out, err = run(["member", "list"], MemberClient(members=CURRENT))
    assert (code, err) == (0, "")
    assert out.decode().splitlines() == [
        "revision 7",
        "ID  ADDRESS         ROLE",
        "1   127.0.0.1:8001  voter",
        "2   127.0.0.1:8002  voter",
        "4   [::1]:8004      learner",
        "5   -               voter",
    ]


def test_member_list_json():
    code, out, err = run(["member", "list", "--json"], MemberClient(members=CURRENT))
    assert code == 0
    assert json.loads(out) == {
        "revision": 7,
        "members": [
            {"id": 1, "address": "127.0.0.1:8001", "voter": True},
            {"id": 2, "address": "127.0.0.1:8002", "voter": True},
            {"id": 4, "address": "[::1]:8004", "voter": False},
            {"id": 5, "address": "", "voter": True},
        ],
    }


@pytest.mark.parametrize("argv,call", [
    (["member", "add", "4", "Node-4:8004"], ("add", 4, "Node-4:8004", False, 60.0)),
    (["member", "add", "4", "h:8004", "--learner", "--catch-up-timeout", "9"],
     ("add", 4, "h:8004", True, 9.0)),
    (["member", "promote", "4"], ("promote", 4, 60.0)),
    (["member", "remove", "2"], ("remove", 2)),
])
def test_member_changes_print_the_revision(argv, call):
    client = MemberClient(add=12, promote=12, remove=12)
    assert run(argv, client) == (0, b"12\n", "")
    assert client.calls == [call]
    client = MemberClient(add=12, promote=12, remove=12)
    code, out, err = run(argv + ["--json"], client)
    assert (code, json.loads(out), err) == (0, {"revision": 12}, "")


def test_transfer_leader():
    client = MemberClient(transfer=3)
    assert run(["transfer-leader"], client) == (0, b"3\n", "")
    assert run(["transfer-leader", "3", "--json"], client) == (0, b'{"leader_id": 3}\n', "")
    assert client.calls == [("transfer", 0), ("transfer", 3)]


@pytest.mark.parametrize("error,code,line", [
    (ChangeInProgress("remove member 3: a membership change was still in progress"),
     8, "error: CHANGE_IN_PROGRESS: remove member 3: a membership change was still in progress"),
    (NotCaughtUp("node 4 did not catch up"), 9, "error: NOT_CAUGHT_UP: node 4 did not catch up"),
    (TransferFailed("not elected"), 10, "error: TRANSFER_FAILED: not elected"),
    (InvalidArgument("node 9 is not a member"), 5,
     "error: INVALID_ARGUMENT: node 9 is not a member"),
    (OutcomeUnknown("outcome unknown: remove member 3"), 4,
     "error: UNAVAILABLE: outcome unknown: remove member 3"),
    (Unavailable("not proposed: no leader"), 3, "error: UNAVAILABLE: not proposed: no leader"),
])
def test_member_errors_exit_with_their_code(error, code, line):
    for argv in (["member", "remove", "3"], ["member", "add", "4", "h:1"],
                 ["member", "promote", "4"], ["member", "list"], ["transfer-leader", "2"]):
        client = MemberClient(remove=error, add=error, promote=error, members=error,
                              transfer=error)
        assert run(argv, client) == (code, b"", line + "\n")
        assert cli.EXIT_CODES[code]


def test_status_json():
    rows = [
        ("127.0.0.1:8001", dict(_status(1, "leader"), address="127.0.0.1:8001")),
        ("127.0.0.1:8002", None),
    ]
    code, out, err = run(["status", "--json"], MemberClient(status=rows))
    assert (code, err) == (0, "")
    assert json.loads(out) == {"nodes": [
        {
            "address": "127.0.0.1:8001", "up": True, "node_id": 1, "role": "leader",
            "term": 7, "leader_id": 1, "commit_index": 120, "last_applied": 119,
            "last_log_index": 121, "voter": True, "config_revision": 4,
        },
        {"address": "127.0.0.1:8002", "up": False},
    ]}
    code, out, err = run(["status", "--json"], MemberClient(status=[("127.0.0.1:8001", None)]))
    assert code == cli.EXIT_UNAVAILABLE and json.loads(out)["nodes"][0]["up"] is False
