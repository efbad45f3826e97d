"""
Real nodes with C{--log-format json}: every line of their output parses, and
after the leader's SIGKILL each survivor logs exactly one C{leader_change}
and one C{role_change} per change of its own role.
"""

import datetime
import json
import time

import pytest_twisted

from twisted_raft.tools import launcher

from tests.process.support import Cluster, statuses, waitFor, waitForLeader

REQUIRED = ("time", "level", "node_id", "event", "message")


def records(c, i):
    """Node C{i}'s log as parsed JSON objects; fails on any line that is not one."""
    out = []
    text = (c.base / f"n{i}.log").read_text()
    assert text.endswith("\n")
    for n, line in enumerate(text.splitlines(), 1):
        try:
            record = json.loads(line)
        except ValueError:
            raise AssertionError(f"n{i}.log line {n} is not JSON: {line!r}")
        assert isinstance(record, dict), line
        missing = [k for k in REQUIRED if k not in record]
        assert not missing, f"n{i}.log line {n} lacks {missing}: {line!r}"
        assert record["node_id"] == i
        out.append(record)
    return out


def seconds(record):
    when = datetime.datetime.strptime(record["time"], "%Y-%m-%dT%H:%M:%S.%fZ")
    return when.replace(tzinfo=datetime.timezone.utc).timestamp()


@pytest_twisted.inlineCallbacks
def test_json_logs_through_a_leaders_crash(tmp_path):
    c = Cluster(tmp_path, extra=["--log-format", "json"])
    try:
        c.start()
        old = yield waitForLeader(c)
        killedAt = time.time()
        c.kill(old)
        new = yield waitForLeader(c)
        survivors = [i for i in c.ids if i != old]

        def settled():
            d = statuses(c)
            d.addCallback(lambda s: len(s) == 2 and all(
                st["leader_id"] == new for st in s.values()))
            return d

        yield waitFor("both survivors to follow the new leader", settled, 10, c)
        final = yield statuses(c)
    finally:
        c.killAll()

    for i in c.ids:
        lines = records(c, i)
        events = {r["event"] for r in lines}
        # twistd's own start-up lines are JSON too, and so is the launcher's
        assert any("starting up" in r["message"] for r in lines), i
        assert lines[0]["event"] == launcher.START_EVENT, lines[0]
        assert {"node_starting", "node_started", "log"} <= events, i
    for i in survivors:
        after = [r for r in records(c, i) if seconds(r) >= killedAt - 0.001]
        leaders = [(r["leader_id"], r["term"]) for r in after if r["event"] == "leader_change"]
        assert leaders == [(new, final[i]["term"])], (i, leaders)
        roles = [(r["from"], r["to"], r["term"]) for r in after if r["event"] == "role_change"]
        # One line per change: each starts where the last ended (a line
        # twice would start where it ended), from a follower, to the role
        # the node has now.
        assert all(f != t for f, t, _ in roles), roles
        assert all(a[1] == b[0] for a, b in zip(roles, roles[1:])), roles
        assert [f for f, _, _ in roles[:1]] in ([], ["follower"]), roles
        assert (roles[-1][1] if roles else "follower") == final[i]["role"], (roles, final[i])
    assert ("candidate", "leader", final[new]["term"]) in [
        (r["from"], r["to"], r["term"]) for r in records(c, new) if r["event"] == "role_change"
    ]
