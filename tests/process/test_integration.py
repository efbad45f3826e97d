"""
End to end: three real twistd processes on 127.0.0.1, talked to over raw AMP
(the public client contract).  Select or skip with ``-m integration`` /
``-m 'not integration'``.
"""

import os
import subprocess
import time

import pytest
import pytest_twisted
from twisted.internet import defer

from twisted_raft.rpc import commands
from twisted_raft.tools import launcher

from tests.process.support import Cluster, call, statuses, waitFor, waitForLeader, write

pytestmark = pytest.mark.integration


# -- the test ------------------------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_failover_catch_up_and_full_restart(cluster):
    c = cluster
    for i in c.ids:
        c.start(i)
    leader = yield waitForLeader(c)
    follower = next(i for i in c.ids if i != leader)

    acked = {}
    for n in range(6):
        via = leader if n % 2 else follower  # half go through forwarding
        key, value = f"k{n}", f"v{n}".encode()
        r = yield write(c, via, commands.Put, key=key, value=value)
        assert r["revision"] > 0
        acked[key] = value
    big = os.urandom(300 * 1024)  # several AMP chunks, forwarded
    yield write(c, follower, commands.Put, key="big", value=big)
    acked["big"] = big
    got = yield call(c.port(follower), commands.Get, key="big")
    assert got == {"found": True, "value": big}

    # -- kill the leader: a write gets through within a few seconds
    c.kill(leader)
    survivor = next(i for i in c.ids if i != leader)
    started = time.monotonic()
    yield write(c, survivor, commands.Put, deadline=6.0, key="after-failover", value=b"yes")
    elapsed = time.monotonic() - started
    assert elapsed < 6.0
    acked["after-failover"] = b"yes"
    newLeader = yield waitForLeader(c)
    assert newLeader != leader

    # -- restart the killed node from its data dir: it catches up
    yield write(c, survivor, commands.Put, key="latest", value=b"L")
    acked["latest"] = b"L"
    c.start(leader)

    @defer.inlineCallbacks
    def caughtUp():
        s = yield statuses(c)
        if leader not in s or len(s) < 3:
            return False
        target = max(st["commit_index"] for i, st in s.items() if i != leader)
        if s[leader]["last_applied"] < target:
            return False
        r = yield call(c.port(leader), commands.Get, key="latest", stale=True)
        return r == {"found": True, "value": b"L"}

    yield waitFor("the restarted node to catch up", caughtUp, 15, c)

    # -- kill everything, restart, and read back every acknowledged key
    c.killAll()

    # a node pointed at another node's data dir refuses to start
    wrong = subprocess.run(
        c.argv(2, dataId=1), cwd=str(c.base), env=c.env(), capture_output=True,
        text=True, timeout=30,
    )
    assert wrong.returncode != 0, wrong.stdout + wrong.stderr
    assert "refuses to start" in wrong.stdout + wrong.stderr

    for i in c.ids:
        c.start(i)
    leader = yield waitForLeader(c)
    for key, value in acked.items():
        via = c.ids[hash(key) % 3]

        @defer.inlineCallbacks
        def read(key=key, via=via):
            try:
                r = yield call(c.port(via), commands.Get, key=key)
            except commands.Unavailable:
                return None
            return r

        r = yield waitFor(f"a linearizable read of {key}", read, 10, c)
        assert r["found"] and r["value"] == value, key


def dirSize(path):
    """Bytes under C{path}; a file renamed or deleted meanwhile counts 0."""
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.path.getsize(os.path.join(root, name))
            except FileNotFoundError:
                pass  # snapshot.tmp renamed, a segment compacted away
    return total


@pytest_twisted.inlineCallbacks
def test_snapshots_bound_disk_and_catch_up_a_node_that_was_down(cluster):
    """
    With small thresholds, a long write run keeps each data dir small, and a
    node down for the whole run catches up through InstallSnapshot.
    """
    c = cluster
    small = ["--snapshot-entries", "300", "--segment-bytes", "32KiB"]
    for i in c.ids:
        c[i].argv += small
    for i in (1, 2):
        c.start(i)
    yield waitForLeader(c)
    value = b"x" * 200
    sizes = []
    for batch in range(20):
        yield defer.gatherResults([
            write(c, 1 + (n % 2), commands.Put, key=f"k{n % 50}", value=value)
            for n in range(batch * 150, (batch + 1) * 150)
        ])
        sizes.append(max(dirSize(c.base / f"n{i}") for i in (1, 2)))
    # 3,000 writes of ~250 bytes each would be ~750 KB of log; compaction keeps
    # the data dir to a snapshot (50 keys) plus a few small segments.
    assert max(sizes) < 300_000, sizes
    c.start(3)

    @defer.inlineCallbacks
    def caughtUp():
        s = yield statuses(c)
        return 3 in s and s[3]["last_applied"] >= 3000 and s[3]["last_applied"] == max(
            st["commit_index"] for st in s.values()
        )

    yield waitFor("node 3 to catch up", caughtUp, 30, c)
    snapshotLog = (c.base / "n3.log").read_text()
    assert "installs snapshot" in snapshotLog
    r = yield call(c.port(3), commands.Get, key="k49", stale=True)
    assert r["found"] and r["value"] == value


def filesUnder(path):
    """Every file under C{path} and its bytes."""
    out = {}
    for root, _, names in os.walk(path):
        for name in names:
            full = os.path.join(root, name)
            with open(full, "rb") as f:
                out[os.path.relpath(full, path)] = f.read()
    return out


@pytest_twisted.inlineCallbacks
def test_a_second_node_on_a_held_data_dir_exits_at_once(tmp_path):
    """
    A second node process on the data dir of a running node (on another
    listening port, so only the data dir is shared) exits with status 1 at
    once, naming the dir and the holder's pid; the dir is untouched and the
    first node keeps serving.
    """
    c = Cluster(tmp_path, n=1)
    try:
        c.start(1)
        yield waitForLeader(c)
        yield write(c, 1, commands.Put, key="k", value=b"before")

        # The leader's no-op, the put and the cluster's metadata epoch (which
        # a new cluster's first leader proposes once, on its own schedule):
        # once all three are applied, nothing more is written unasked.
        @defer.inlineCallbacks
        def settled():
            answers = yield statuses(c)
            return answers.get(1, {}).get("last_applied", 0) >= 3

        yield waitFor("the metadata epoch applied", settled, 10, c)
        dataDir = launcher.dataPath(str(c.base), 1)
        before = filesUnder(dataDir)
        assert before["lock"] == b"%d\n" % c[1].pid

        otherPort = launcher.freePorts(1)[0]
        argv = c.argv(1) + ["--listen", f"tcp:{otherPort}:interface=127.0.0.1"]
        started = time.monotonic()
        second = subprocess.run(argv, cwd=str(c.base), env=c.env(), capture_output=True,
                                text=True, timeout=60)
        elapsed = time.monotonic() - started
        output = second.stdout + second.stderr
        assert second.returncode == 1, output
        assert f"data dir {dataDir} is locked" in output, output
        assert f"another raftkv process (pid {c[1].pid}) holds it" in output, output
        assert "refuses to start" in output, output
        assert "listening on" not in output, output
        assert elapsed < 30, elapsed  # interpreter start-up; no waiting on the lock

        assert filesUnder(dataDir) == before
        assert c[1].running()
        r = yield write(c, 1, commands.Put, key="k", value=b"after")
        assert r["revision"] > 0
        got = yield call(c.port(1), commands.Get, key="k")
        assert got == {"found": True, "value": b"after"}
    finally:
        c.killAll()
