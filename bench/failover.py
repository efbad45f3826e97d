"""
Failover and crash-durability measurement against real processes.

    python bench/failover.py [--writers 8] [--seconds 3]

Starts 3 real nodes (``python -m twisted raftkv``) on free 127.0.0.1 ports in
a temporary directory, runs concurrent writers (each a put of a fresh key),
SIGKILLs the leader, and reports how long writes stalled; restarts it and
waits for it to catch up; then SIGKILLs every node while writes are in
flight, restarts them all, and reads back every acknowledged write.
"""

import argparse
import sys
import tempfile
import time

import _checkout  # noqa: F401 (this checkout first on sys.path)
from twisted.internet import defer, task

from twisted_raft.client import RaftKVClient
from twisted_raft.tools import launcher


def sleep(reactor, seconds):
    return task.deferLater(reactor, seconds, lambda: None)


async def leaderOf(client, reactor, deadline=15.0):
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        for address, status in await client.clusterStatus():
            if status and status["role"] == "leader":
                return status["node_id"]
        await sleep(reactor, 0.05)
    raise RuntimeError("no leader")


async def run(reactor, args):
    root = tempfile.mkdtemp(prefix="raftkv-failover-")
    nodes = launcher.Nodes(launcher.localAddresses(3), root)
    client = RaftKVClient(nodes.peers, reactor, timeout=10.0)
    acked = {}
    stamps = []  # completion time of every acknowledged write
    state = {"stop": False, "n": 0}

    async def writer(w):
        while not state["stop"]:
            key = f"w{w}-{state['n']}"
            state["n"] += 1
            try:
                await client.put(key, key.encode())
            except Exception:
                continue
            acked[key] = key.encode()
            stamps.append(time.monotonic())

    try:
        nodes.start()
        leader = await leaderOf(client, reactor)
        writers = [defer.ensureDeferred(writer(w)) for w in range(args.writers)]
        await sleep(reactor, args.seconds)
        before = len(acked)
        killedAt = time.monotonic()
        nodes.kill(leader)
        while len(acked) == before:
            await sleep(reactor, 0.001)
        firstAfter = min(t for t in stamps if t > killedAt)
        await sleep(reactor, args.seconds)
        print(f"leader n{leader} SIGKILLed; first acknowledged write {firstAfter - killedAt:.3f} s later")
        nodes.start(leader)
        end = time.monotonic() + 30
        while time.monotonic() < end:
            rows = [s for _, s in await client.clusterStatus()]
            if all(rows) and rows[leader - 1]["last_applied"] >= min(r["commit_index"] for r in rows if r["node_id"] != leader):
                print(f"restarted n{leader} caught up: last_applied {rows[leader - 1]['last_applied']}")
                break
            await sleep(reactor, 0.05)
        await sleep(reactor, args.seconds)
        nodes.kill()
        state["stop"] = True
        ackedAtKill = len(acked)
        await defer.DeferredList(writers)
        nodes.start()
        await leaderOf(client, reactor)
        missing = 0
        for key, value in list(acked.items()):
            if await client.get(key) != value:
                missing += 1
        print(f"all nodes SIGKILLed with {args.writers} writers in flight: "
              f"{ackedAtKill} writes acknowledged, {ackedAtKill - missing} read back, {missing} lost")
        return 1 if missing else 0
    finally:
        state["stop"] = True
        nodes.kill()
        await client.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--writers", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    code = []
    task.react(lambda reactor: defer.ensureDeferred(run(reactor, args)).addCallback(code.append))
    sys.exit(code[0] if code else 1)


if __name__ == "__main__":
    main()
