"""
Does throughput hold as the log grows?  Write until C{--writes} writes are
acknowledged, then for one more C{--window}, and compare the throughput of
that last window with the first one.

    python bench/sustained.py [--writes 1000000] [--window 60]
        [--concurrency 256] [--connections 4] [--value-size 10] [--keys 100000]
        [--out docs/sustained-results.json]

A local 3-node cluster (real node processes, default flags: fsync on,
snapshots every 50,000 entries) is driven by the same closed loop as
C{raftkv bench} (L{twisted_raft.tools.load.Load}) (the client library, exactly-once sessions, C{--concurrency}
writes in flight over C{--connections} connections).  Every acknowledged write
is counted in the second it was acknowledged; the result has that timeline
(per 10 s), the first window's rate, the rate in the window that starts at
the C{--writes}-th acknowledgement, and their ratio (the target of issue 5:
at least 0.9 after 1,000,000 writes).
"""

import argparse
import collections
import json
import os
import time

import _checkout  # noqa: F401 (this checkout first on sys.path)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument("--writes", type=int, default=1_000_000)
    p.add_argument("--window", type=float, default=60.0)
    p.add_argument("--concurrency", type=int, default=256)
    p.add_argument("--connections", type=int, default=4)
    p.add_argument("--value-size", type=int, default=10)
    p.add_argument("--keys", type=int, default=100_000)
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)

    from twisted.internet import defer, task

    from twisted_raft.tools import load
    from twisted_raft.service import tuneGarbageCollector

    tuneGarbageCollector()

    async def run(reactor):
        cluster = load.LocalCluster(3)
        cluster.start()
        try:
            await load.waitForLeader(reactor, cluster.addresses, cluster)
            clients = await load.makeClients(
                reactor, cluster.addresses, a.connections, 10.0, False)
            values = [os.urandom(a.value_size) for _ in range(16)]
            seconds = collections.Counter()
            state = {"done": 0, "errors": 0, "mark": None, "stop": None}
            t0 = time.monotonic()

            async def worker(i):
                client = clients[i % len(clients)]
                n = i
                while state["stop"] is None or time.monotonic() < state["stop"]:
                    try:
                        await client.put(load.keyName(n % a.keys), values[n & 15])
                    except Exception:
                        state["errors"] += 1
                        continue
                    now = time.monotonic()
                    seconds[int(now - t0)] += 1
                    state["done"] += 1
                    if state["done"] == a.writes:
                        state["mark"] = now - t0
                        state["stop"] = now + a.window
                    n += a.concurrency

            def progress():
                print(f"  [{time.monotonic() - t0:5.0f}s] {state['done']:,} writes, "
                      f"{state['errors']} errors", flush=True)

            ticker = task.LoopingCall(progress)
            ticker.start(10.0, now=False)
            try:
                await defer.gatherResults(
                    [defer.ensureDeferred(worker(i)) for i in range(a.concurrency)],
                    consumeErrors=True)
            finally:
                ticker.stop()
            for c in clients:
                await c.close()
            if cluster.dead():
                raise RuntimeError("a node died: " + "; ".join(cluster.dead()))
            w = int(a.window)
            first = sum(seconds[s] for s in range(w)) / w
            m = int(state["mark"]) + 1  # whole seconds after the mark
            last = sum(seconds[s] for s in range(m, m + w - 1)) / (w - 1)
            timeline = [sum(seconds[s] for s in range(t, t + 10)) / 10
                        for t in range(0, max(seconds) + 1, 10)]
            result = {
                "writes": a.writes, "window_s": a.window, "concurrency": a.concurrency,
                "connections": a.connections, "value_size": a.value_size, "keys": a.keys,
                "first_window_ops_per_sec": round(first, 1),
                "mark_s": round(state["mark"], 1),
                "after_mark_ops_per_sec": round(last, 1),
                "ratio": round(last / first, 3),
                "errors": state["errors"],
                "timeline_per_10s": [round(x, 1) for x in timeline],
                "data_dir_bytes": [sum(os.path.getsize(os.path.join(d, f))
                                       for d, _, fs in os.walk(os.path.join(cluster.root, f"n{i}"))
                                       for f in fs) for i in (1, 2, 3)],
            }
        finally:
            cluster.stop()
        print(f"first {a.window:g}s: {first:,.0f} writes/s; {a.window:g}s after write "
              f"{a.writes:,} (at {state['mark']:.0f}s): {last:,.0f} writes/s; "
              f"ratio {result['ratio']:.3f}; {state['errors']} errors")
        print("per 10 s: " + " ".join(f"{x:,.0f}" for x in timeline))
        if a.out:
            with open(a.out, "w") as f:
                json.dump(result, f, indent=2)
            print(f"written to {a.out}")

    task.react(lambda reactor: defer.ensureDeferred(run(reactor)))


if __name__ == "__main__":
    main()
