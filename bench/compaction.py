"""
Log compaction benchmark: disk size, restart time and catch-up time, with and
without snapshots.

    python bench/compaction.py [--writes 1000000] [--keys 10000] [--value-size 100]
                               [--concurrency 64] [--out docs/compaction-results.json]

For each configuration (compaction on with the default thresholds, and off),
starts a 3-node cluster of real node processes on free 127.0.0.1 ports with
node 3 down for the whole run, writes --writes puts over --keys keys through
the client library with --concurrency requests in flight, then measures:

* the data-dir size of each node;
* the restart time of node 1 (SIGKILL, start again, until it has applied
  everything the cluster has committed);
* the catch-up time of node 3 (started for the first time after the run,
  until it has applied everything).
"""

import argparse
import json
import os
import tempfile
import time

import _checkout  # noqa: F401 (this checkout first on sys.path)
from twisted.internet import defer, task

from twisted_raft.client import RaftKVClient
from twisted_raft.tools import launcher


def du(path):
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            total += os.path.getsize(os.path.join(root, name))
    return total


def sleep(reactor, seconds):
    return task.deferLater(reactor, seconds, lambda: None)


async def waitApplied(client, reactor, address, target, deadline=600.0):
    """Seconds until the node at C{address} has applied C{target}."""
    start = time.monotonic()
    while time.monotonic() - start < deadline:
        try:
            status = await client.status(address)
            if status["last_applied"] >= target:
                return time.monotonic() - start
        except Exception:
            pass
        await sleep(reactor, 0.02)
    raise RuntimeError(f"{address} did not reach {target}")


async def commitIndex(client):
    rows = await client.clusterStatus()
    return max(s["commit_index"] for _, s in rows if s)


async def runOne(reactor, args, label, extra):
    root = tempfile.mkdtemp(prefix=f"raftkv-compaction-{label}-")
    cluster = launcher.Nodes(launcher.localAddresses(3), root, extra=extra)
    client = RaftKVClient(cluster.peers[:2], reactor, timeout=30.0)
    value = b"x" * args.value_size
    result = {"label": label, "flags": extra}
    try:
        cluster.start(1)
        cluster.start(2)
        await waitApplied(client, reactor, cluster.peers[0], 1, 30)
        done = [0]
        started = time.monotonic()

        async def writer(w):
            while done[0] < args.writes:
                n = done[0]
                done[0] += 1
                await client.put(f"key{n % args.keys}", value)


        def progress():
            rate = done[0] / max(time.monotonic() - started, 1e-9)
            print(f"\r  {label}: {done[0]}/{args.writes} writes, {rate:.0f}/s", end="", flush=True)

        ticker = task.LoopingCall(progress)
        ticker.start(5.0, now=False)
        await defer.gatherResults(
            [defer.ensureDeferred(writer(w)) for w in range(args.concurrency)],
            consumeErrors=True,
        )
        ticker.stop()
        elapsed = time.monotonic() - started
        print()
        result["writes_per_second"] = round(args.writes / elapsed)
        target = await commitIndex(client)
        await waitApplied(client, reactor, cluster.peers[1], target)
        result["data_dir_bytes"] = {f"n{i}": du(os.path.join(root, f"n{i}")) for i in (1, 2)}
        # Restart of node 1 from its data dir.
        cluster.kill(1)
        restartStart = time.monotonic()
        cluster.start(1)
        await waitApplied(client, reactor, cluster.peers[0], target)
        result["restart_seconds"] = round(time.monotonic() - restartStart, 3)
        # Catch-up of node 3, down for the whole run.
        catchStart = time.monotonic()
        cluster.start(3)
        await waitApplied(client, reactor, cluster.peers[2], target)
        result["catch_up_seconds"] = round(time.monotonic() - catchStart, 3)
        result["data_dir_bytes"]["n3"] = du(os.path.join(root, "n3"))
        result["commit_index"] = target
        print(f"  {label}: {json.dumps(result)}")
        return result
    finally:
        cluster.kill()
        await client.close()


async def run(reactor, args):
    configs = [
        ("compaction", ["--snapshot-entries", str(args.snapshot_entries)]),
        ("no-compaction", ["--snapshot-entries", "1000000000000", "--snapshot-bytes", "1000GiB"]),
    ]
    results = {"writes": args.writes, "keys": args.keys, "value_size": args.value_size,
               "concurrency": args.concurrency, "runs": []}
    for label, extra in configs:
        results["runs"].append(await runOne(reactor, args, label, extra))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)
        print(f"results written to {args.out}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--writes", type=int, default=1_000_000)
    parser.add_argument("--keys", type=int, default=10_000)
    parser.add_argument("--value-size", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--snapshot-entries", type=int, default=50_000)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    task.react(lambda reactor: defer.ensureDeferred(run(reactor, args)))


if __name__ == "__main__":
    main()
