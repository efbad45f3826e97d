"""
Membership change with real node processes on 127.0.0.1: a node started with
--join is added by `raftkv cluster add`'s path (LocalCluster), one is removed
and stopped, and a SIGTERM of the leader hands leadership over.
"""

import random
import socket
import time

import pytest
import pytest_twisted
from twisted_raft.client import RaftKVClient
from twisted_raft.tools import launcher
from twisted_raft.tools.cluster import LocalCluster

pytestmark = pytest.mark.integration


def _consecutiveFreePorts(n):
    """A base port whose next C{n} ports are free now."""
    for _ in range(50):
        base = random.randint(20000, 60000 - n)
        socks = []
        try:
            for port in range(base, base + n):
                s = socket.socket()
                socks.append(s)
                s.bind((launcher.HOST, port))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    pytest.skip("no free port range")


def _reactor():
    from twisted.internet import reactor

    return reactor


async def _sleep(seconds):
    from twisted.internet.task import deferLater

    await deferLater(_reactor(), seconds, lambda: None)


async def _leader(client, deadline=20.0):
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        rows = await client.clusterStatus()
        leaders = [s["node_id"] for _, s in rows if s and s["role"] == "leader"]
        if len(leaders) == 1:
            return leaders[0]
        await _sleep(0.1)
    pytest.fail("no leader")


@pytest_twisted.ensureDeferred
async def test_add_a_node_remove_one_and_hand_over_on_sigterm(tmp_path):
    reactor = _reactor()
    base = _consecutiveFreePorts(5)
    echoed = []
    c = LocalCluster(reactor, nodes=3, basePort=base, dataDir=str(tmp_path / "data"),
                     echo=echoed.append)
    c.start()
    client = RaftKVClient([c.address(i) for i in (1, 2, 3)], reactor=reactor, timeout=20)
    try:
        await _leader(client)
        await client.put("before", b"1")
        nodeId, address, revision = await c.addNode()
        assert (nodeId, address) == (4, c.address(4)) and revision > 0
        assert await client.put("after-add", b"2") > revision

        # the leader stops with SIGTERM: leadership is handed over, and the
        # log says so
        leader = await _leader(client)
        proc = next(p for p in c.processes if p.nodeId == leader)
        started = time.monotonic()
        proc.signal("TERM")
        await proc.whenEnded()
        log = open(c.logPath(leader), encoding="utf-8", errors="replace").read()
        assert "handed leadership to node" in log, log[-3000:]
        others = RaftKVClient([c.address(i) for i in (1, 2, 3, 4) if i != leader],
                              reactor=reactor, timeout=20)
        try:
            newLeader = await _leader(others, deadline=5.0)
            assert newLeader != leader
            assert time.monotonic() - started < 5.0
            await others.put("after-sigterm", b"3")
            # remove a node that is still running (not the new leader)
            gone = next(i for i in (1, 2, 3, 4) if i not in (leader, newLeader))
            assert await c.removeNode(gone) > 0
            assert gone in c.removed and gone not in c.running()
            assert await others.get("before") == b"1"
        finally:
            await others.close()
    finally:
        await client.close()
        await c.stop(grace=5.0)
