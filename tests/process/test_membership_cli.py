"""
End to end: the C{raftkv} command's membership side against three real
twistd processes on 127.0.0.1: C{status --json}, the member commands and
C{transfer-leader}.
"""

import json
import subprocess
import sys

import pytest
import pytest_twisted


from tests.process.support import waitForLeader

pytestmark = pytest.mark.integration

def raftkv(c, *argv, timeout=10):
    """Run C{raftkv --cluster ... ARGV} (blocking: the nodes are other processes)."""
    done = subprocess.run(
        [sys.executable, "-m", "twisted_raft.cli", "--cluster", ",".join(c.peers), *argv],
        cwd=str(c.base), env=c.env(), capture_output=True, text=True, timeout=timeout,
    )
    return done.returncode, done.stdout, done.stderr


def raftkvJSON(c, *argv):
    code, out, err = raftkv(c, *argv, "--json")
    assert code == 0, out + err + c.logs()
    return json.loads(out)


@pytest_twisted.inlineCallbacks
def test_status_json_shows_voter_and_config_revision(cluster):
    c = cluster
    for i in c.ids:
        c.start(i)
    leader = yield waitForLeader(c)
    nodes = raftkvJSON(c, "status")["nodes"]
    assert [n["address"] for n in nodes] == c.peers
    assert [n["node_id"] for n in nodes] == [1, 2, 3]
    assert all(n["up"] and n["voter"] is True for n in nodes), nodes
    assert all(n["config_revision"] == 0 for n in nodes), nodes  # the bootstrap one
    assert [n["role"] for n in nodes].count("leader") == 1
    assert nodes[leader - 1]["role"] == "leader"
    code, out, err = raftkv(c, "status")
    assert code == 0 and out.splitlines()[0].split()[-4:] == ["VOTER", "CONFIG", "PID", "UPTIME"], (
        out + err
    )


@pytest_twisted.inlineCallbacks
def test_member_list_transfer_and_remove(cluster):
    c = cluster
    for i in c.ids:
        c.start(i)
    leader = yield waitForLeader(c)
    listed = raftkvJSON(c, "member", "list")
    assert listed["revision"] == 0
    assert [(m["id"], m["voter"]) for m in listed["members"]] == [(1, True), (2, True), (3, True)]

    target = next(i for i in c.ids if i != leader)
    assert raftkvJSON(c, "transfer-leader", str(target)) == {"leader_id": target}
    assert (yield waitForLeader(c)) == target

    removed = next(i for i in c.ids if i != target)
    revision = raftkvJSON(c, "member", "remove", str(removed))["revision"]
    assert revision > 0
    listed = raftkvJSON(c, "member", "list")
    assert listed["revision"] == revision
    assert sorted(m["id"] for m in listed["members"]) == sorted(set(c.ids) - {removed})
    # a stranger cannot be removed: INVALID_ARGUMENT, exit 5
    code, out, err = raftkv(c, "member", "remove", str(removed))
    assert code == 5 and "INVALID_ARGUMENT" in err, out + err
