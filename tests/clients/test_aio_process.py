"""
L{AsyncioClient} against real nodes: three twistd processes for the whole
module (C{tests/clients}' C{cluster}, through the launcher).  Each test
runs its coroutine with C{asyncio.run} in a plain test function, beside
pytest-twisted's reactor, which the client never touches.  The leader's
kill comes last: it leaves the cluster with two nodes.
"""

import asyncio
import json
import subprocess
import sys
import textwrap

import pytest

from twisted_raft.client import (
    AsyncioClient,
    Compare,
    InvalidArgument,
    PutOp,
    RangeOp,
)
from twisted_raft.kvlimits import MAX_KEY_BYTES, MAX_VALUE_BYTES
from twisted_raft.rpc.commands import ValueTooLarge
from twisted_raft.tools import launcher

pytestmark = pytest.mark.integration


def run(cluster, body, **options):
    """Run C{body(client)} on a client of C{cluster} under C{asyncio.run}."""

    async def main():
        async with AsyncioClient(cluster.peers, timeout=options.pop("timeout", 10),
                                 **options) as client:
            return await body(client)

    return asyncio.run(main())


def test_keys(cluster):
    async def body(client):
        revision = await client.put("k/a", b"1")
        assert await client.get("k/a") == b"1"
        assert await client.get("k/a", stale=True) in (None, b"1")
        swapped, _ = await client.compareAndSet("k/a", b"0", b"2")
        assert not swapped
        swapped, revision = await client.compareAndSet("k/a", b"1", b"2")
        assert swapped and await client.get("k/a") == b"2"
        assert await client.delete("k/a") == (True, revision + 1)
        assert await client.get("k/a") is None
        assert await client.delete("k/a") == (False, revision + 2)
        prev = await client.put("k/b", b"x", prevKV=True)
        assert prev.prev_kv is None

    run(cluster, body)


def test_ranges_and_transactions(cluster):
    async def body(client):
        for i in range(5):
            await client.put(f"r/{i}", b"%d" % i)
        page = await client.range("r/", prefix=True, limit=2)
        assert [kv.key for kv in page.kvs] == ["r/0", "r/1"]
        assert page.more and page.count == 5
        pages = [p async for p in client.rangePages("r/", prefix=True, limit=0)]
        assert [kv.key for p in pages for kv in p.kvs] == [f"r/{i}" for i in range(5)]
        everything = await client.rangeAll("r/", prefix=True, keysOnly=True)
        assert len(everything.kvs) == 5 and everything.kvs[0].value in (b"", None)
        r = await client.txn(
            compare=[Compare("r/0", "value", "==", b"0")],
            success=[PutOp("r/0", b"changed"), RangeOp("r/", prefix=True, countOnly=True)],
            failure=[RangeOp("r/0")],
        )
        assert r.succeeded and r.responses[1].count == 5
        r = await client.txn(compare=[Compare("r/0", "value", "==", b"0")],
                             failure=[RangeOp("r/0")])
        assert not r.succeeded and r.responses[0].kvs[0].value == b"changed"
        deleted = await client.delete("r/", prefix=True)
        assert deleted.deleted == 5

    run(cluster, body)


def test_errors(cluster):
    async def body(client):
        with pytest.raises(ValueTooLarge):
            await client.put("big", b"x" * (MAX_VALUE_BYTES + 1))
        with pytest.raises(InvalidArgument):
            await client.put("k" * (MAX_KEY_BYTES + 1), b"")
        assert await client.get("big") is None

    run(cluster, body)


def test_status(cluster):
    async def body(client):
        status = await client.status()
        assert status["role"] == "leader"
        rows = await client.clusterStatus()
        assert [a for a, _ in rows] == cluster.peers
        membership = await client.members()
        assert [m.id for m in membership.members] == [1, 2, 3]

    run(cluster, body)


def _leader(cluster, client):
    async def find():
        status = await client.status()
        return status["node_id"]

    return find()


def test_a_cancelled_write_retried_is_applied_once(cluster):
    """
    A put sent to the leader while it is paused, cancelled before any
    answer, applied once the leader goes on; the caller's retry of the
    same put is the same write: the key's version stays 1 and the retry
    answers the first attempt's revision.
    """
    async def body(client):
        leader = await _leader(cluster, client)
        cluster[leader].pause()
        try:
            task = asyncio.create_task(client.put("once", b"v"))
            await asyncio.sleep(0.05)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        finally:
            cluster[leader].resume()
        async with AsyncioClient(cluster.peers, timeout=10) as other:
            for _ in range(100):
                page = await other.range("once")
                if page.kvs:
                    break
                await asyncio.sleep(0.05)
            else:
                pytest.fail("the cancelled put was never applied")
        first = page.kvs[0]
        assert await client.put("once", b"v") == first.mod_revision
        (kv,) = (await client.range("once")).kvs
        assert (kv.version, kv.mod_revision) == (1, first.mod_revision)
        # a new put of the same is a new write
        assert await client.put("once", b"v") > first.mod_revision
        assert (await client.range("once")).kvs[0].version == 2

    run(cluster, body)


def test_cancelled_tasks_leave_nothing_behind(cluster):
    """
    Tasks cancelled mid-request (a hundred reads and writes, cut off
    after a millisecond) leave no request outstanding once the answers
    are in, and the client goes on working.
    """
    async def body(client):
        await client.put("c/ready", b"")

        async def one(i):
            try:
                await asyncio.wait_for(
                    client.put(f"c/{i}", b"x") if i % 2 else client.get(f"c/{i}"), 0.001)
            except asyncio.TimeoutError:
                return "cancelled"
            return "done"

        outcomes = await asyncio.gather(*(one(i) for i in range(100)))
        assert "cancelled" in outcomes
        assert await client.put("c/after", b"y") > 0
        assert await client.get("c/after") == b"y"
        protocols = list(client._client._pool.protocols.values())
        for _ in range(200):
            if not any(p._outstandingRequests for p in protocols):
                break
            await asyncio.sleep(0.01)
        assert [p._outstandingRequests for p in protocols] == [{}] * len(protocols)
        assert client._client._sleeps == set()

    run(cluster, body)


def test_watch(cluster):
    """
    A watch from a past revision and then live, through C{async with} and
    C{async for}, nothing lost or repeated; leaving the block cancels it.
    """
    async def body(client):
        start = await client.put("w/1", b"a")
        await client.put("w/2", b"b")
        await client.delete("w/1")
        async with client.watch("w/", prefix=True, startRevision=start) as events:
            assert events.startRevision == start
            await client.put("w/3", b"c")
            got = []
            async for e in events:
                got.append((e.type, e.key, e.value))
                if len(got) == 4:
                    break
        assert got == [("put", "w/1", b"a"), ("put", "w/2", b"b"), ("delete", "w/1", None),
                       ("put", "w/3", b"c")]
        assert [e async for e in events] == []
        # the node no longer has it: a new watch on the connection works
        async with client.watch("w/3") as events:
            await client.put("w/3", b"d")
            assert (await events.__anext__()).value == b"d"

    run(cluster, body)


PROGRAM = """
import asyncio, json, sys, threading

from twisted_raft.client import AsyncioClient


async def main(addresses):
    async with AsyncioClient(addresses, timeout=10) as client:
        revision = await client.put("program", b"1")
        value = await client.get("program")
        async with client.watch("program", startRevision=revision) as events:
            event = await events.__anext__()
        threads = threading.active_count()
    return {"value": value.decode(), "event": event.key, "threads": threads}


out = asyncio.run(main(sys.argv[1].split(",")))
out["reactor imported"] = "twisted.internet.reactor" in sys.modules
out["store imported"] = "twisted_raft.kv" in sys.modules
out["threads after"] = threading.active_count()
print(json.dumps(out))
"""


def test_a_program_of_its_own(cluster):
    """
    A plain asyncio program: no global reactor ever imported, nor the
    store, and no thread but the main one (the addresses are IP
    addresses: nothing to resolve).
    """
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(PROGRAM), ",".join(cluster.peers)],
        capture_output=True, text=True, timeout=60, env=launcher.environment(),
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {
        "value": "1", "event": "program", "threads": 1,
        "reactor imported": False, "store imported": False, "threads after": 1,
    }


def test_host_names_resolve_on_the_loop(cluster):
    async def body(client):
        await client.put("by-name", b"1")
        return await client.get("by-name")

    port = cluster.port(1)
    assert asyncio.run(_withClient(f"localhost:{port}", body)) == b"1"


async def _withClient(addresses, body):
    async with AsyncioClient(addresses, timeout=10) as client:
        return await body(client)


def test_writes_go_on_across_the_leaders_kill(cluster):
    """
    Writes from many tasks while the leader is killed: every one
    succeeds, applied exactly once (each key's version is 1).
    """
    async def body(client):
        leader = await _leader(cluster, client)

        async def writer(w):
            for i in range(20):
                await client.put(f"kill/{w}/{i}", b"x")

        tasks = [asyncio.create_task(writer(w)) for w in range(10)]
        await asyncio.sleep(0.2)
        cluster.kill(leader)
        await asyncio.gather(*tasks)
        everything = await client.rangeAll("kill/", prefix=True)
        assert len(everything.kvs) == 200
        assert {kv.version for kv in everything.kvs} == {1}
        assert (await _leader(cluster, client)) != leader

    run(cluster, body, timeout=20)
