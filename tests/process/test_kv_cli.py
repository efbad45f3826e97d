"""
End to end: ranges, transactions and range deletes through the C{raftkv}
command against three real twistd processes on 127.0.0.1, sent to a
follower (which forwards them to the leader) and to every node.
"""

import base64
import json
import subprocess
import sys
import time

import pytest
import pytest_twisted

from tests.process.support import sleep, waitForLeader

pytestmark = pytest.mark.integration


def raftkv(c, *argv, via=None, stdin=None, timeout=15):
    """Run C{raftkv --cluster ... ARGV} (blocking: the nodes are other processes)."""
    cluster = ",".join(c.peers) if via is None else c.peers[via - 1]
    done = subprocess.run(
        [sys.executable, "-m", "twisted_raft.cli", "--cluster", cluster, *argv],
        cwd=str(c.base), env=c.env(), input=stdin, capture_output=True, timeout=timeout,
    )
    return done.returncode, done.stdout, done.stderr.decode("utf-8", "replace")


def ok(c, *argv, **kwargs):
    code, out, err = raftkv(c, *argv, **kwargs)
    assert code == 0, (argv, out, err, c.logs())
    return out


def b64(data):
    return base64.b64encode(data).decode("ascii")


@pytest_twisted.inlineCallbacks
def test_put_range_txn_and_del_through_the_command(cluster):
    c = cluster
    for i in c.ids:
        c.start(i)
    leader = yield waitForLeader(c)
    follower = next(i for i in c.ids if i != leader)

    revisions = {}
    for i in range(5):
        revisions[f"acct/{i}"] = int(ok(c, "put", f"acct/{i}", "100"))
    ok(c, "put", "other", "x")
    doc = json.loads(ok(c, "get", "acct/", "--prefix", "--json", via=follower))
    assert [kv["key"] for kv in doc["kvs"]] == [f"acct/{i}" for i in range(5)]
    assert all(kv["value"] == b64(b"100") and kv["version"] == 1 for kv in doc["kvs"])
    assert [kv["mod_revision"] for kv in doc["kvs"]] == [revisions[kv["key"]] for kv in doc["kvs"]]
    assert doc["more"] is False and doc["revision"] >= revisions["acct/4"]
    assert ok(c, "get", "acct/", "--prefix", "--keys-only", "--limit", "2") == b"acct/0\nacct/1\n"
    # stale: what the follower has applied, which catches up by itself
    deadline = time.monotonic() + 10
    while ok(c, "get", "acct/", "--prefix", "--count-only", "--stale", via=follower) != b"5\n":
        assert time.monotonic() < deadline, c.logs()
        yield sleep(0.1)

    # move 30 from acct/0 to acct/1 if neither changed since it was read
    transfer = {
        "compare": [
            {"key": "acct/0", "target": "mod_revision", "op": "==", "value": revisions["acct/0"]},
            {"key": "acct/1", "target": "mod_revision", "op": "==", "value": revisions["acct/1"]},
        ],
        "success": [
            {"put": {"key": "acct/0", "value": b64(b"70")}},
            {"put": {"key": "acct/1", "value": b64(b"130")}},
            {"get": {"key": "acct/", "prefix": True, "keys_only": True, "limit": 2}},
        ],
        "failure": [{"get": {"key": "acct/0"}}],
    }
    first = json.loads(ok(c, "txn", "--json", "-", via=follower,
                          stdin=json.dumps(transfer).encode()))
    assert first["succeeded"] is True
    assert first["responses"][:2] == [{"put": {}}, {"put": {}}]
    got = first["responses"][2]["get"]
    assert [kv["mod_revision"] for kv in got["kvs"]] == [first["revision"]] * 2
    again = json.loads(ok(c, "txn", "--json", "-", stdin=json.dumps(transfer).encode()))
    assert again["succeeded"] is False  # the revisions moved: the failure branch, exit 0
    assert again["responses"][0]["get"]["kvs"][0]["value"] == b64(b"70")
    assert ok(c, "get", "acct/1") == b"130"

    code, out, err = raftkv(c, "txn", "--json", "-", stdin=b'{"success": [{"put": {}}]}')
    assert code == 2 and "success[0].put: missing 'key'" in err, err

    assert ok(c, "del", "acct/3", "acct/9", via=follower) == b"2\n"
    assert ok(c, "del", "acct/", "--prefix") == b"3\n"
    assert ok(c, "get", "acct/", "--prefix", "--count-only") == b"0\n"
    code, out, err = raftkv(c, "get", "acct/0", "--json")
    assert code == 1 and json.loads(out)["kvs"] == [] and err == "not found\n"
    assert ok(c, "get", "other") == b"x"  # untouched
