"""
What serving C{--http} costs: /metrics scrape latency on a big node, and a
same-run A/B of write throughput with and without C{--http}.

    python bench/observability.py [--keys 1000000] [--scrapes 200]
        [--rounds 3] [--duration 10] [--warmup 2] [--concurrency 256]
        [--json docs/results/observability.json]

(a) Starts one node (a one-node cluster, so that loading is fast) with
C{--http}, writes C{--keys} keys of 10 B through the client library
(C{--load-concurrency} in flight), then times C{--scrapes} sequential
C{GET /metrics} (a new connection each, as a scraper would): median, p99
and max in ms, and the size of the page.

(b) Then, C{--rounds} times, alternating which goes first, starts a fresh
3-node cluster without C{--http} (A) and with it (B), and runs C{raftkv
bench} (10 B writes, C{--concurrency} in flight over 8 connections) against
it; while B is measured, every node's C{/metrics} is scraped once a second,
as Prometheus would, and node 1's C{/api/cluster} is fetched once a second,
as an open dashboard would (which keeps node 1 polling every member).
Reports each run's writes/s, the medians of A and B
and their ratio.

Everything runs on free 127.0.0.1 ports in a temporary directory; the JSON
goes to C{--json}.  Do not run it while other benchmarks share the machine.
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import _checkout  # noqa: F401 (this checkout first on sys.path)
from twisted.internet import defer, task, utils

from twisted_raft.client import RaftKVClient
from twisted_raft.tools import launcher


def sleep(reactor, seconds):
    return task.deferLater(reactor, seconds, lambda: None)


def startNodes(root, n, http):
    os.makedirs(root, exist_ok=True)
    ports = launcher.freePorts(2 * n)
    peers = [f"{launcher.HOST}:{p}" for p in ports[:n]]
    nodes = launcher.Nodes(peers, root, httpPorts=ports[n:] if http else None)
    nodes.start()
    return nodes


async def waitForLeader(client, reactor, deadline=20.0):
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        try:
            for _, status in await client.clusterStatus():
                if status and status["role"] == "leader":
                    return status["node_id"]
        except Exception:
            pass
        await sleep(reactor, 0.1)
    raise RuntimeError("no leader")


async def fetch(reactor, url):
    """C{(seconds, body)} of one GET on a new connection."""
    from twisted.web.client import Agent, HTTPConnectionPool, readBody

    pool = HTTPConnectionPool(reactor, persistent=False)
    started = time.perf_counter()
    response = await Agent(reactor, pool=pool).request(b"GET", url.encode())
    body = await readBody(response)
    elapsed = time.perf_counter() - started
    if response.code != 200:
        raise RuntimeError(f"GET {url}: {response.code}")
    return elapsed, body


def percentile(values, p):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


async def load(client, keys, concurrency):
    state = {"next": 0}

    async def worker():
        while state["next"] < keys:
            i = state["next"]
            state["next"] += 1
            await client.put(f"k{i:08d}", b"0123456789")

    await defer.gatherResults(
        [defer.ensureDeferred(worker()) for _ in range(concurrency)], consumeErrors=True
    )


async def scrapeLatency(reactor, args, root):
    nodes = startNodes(os.path.join(root, "scrape"), 1, http=True)
    client = RaftKVClient(nodes.peers, reactor, timeout=30.0)
    try:
        await waitForLeader(client, reactor)
        started = time.monotonic()
        await load(client, args.keys, args.load_concurrency)
        loaded = time.monotonic() - started
        print(f"(a) loaded {args.keys} keys in {loaded:.1f} s")
        url = f"http://127.0.0.1:{nodes.httpPorts[0]}/metrics"
        await fetch(reactor, url)  # the first one imports and warms up
        times = []
        size = 0
        for _ in range(args.scrapes):
            elapsed, body = await fetch(reactor, url)
            times.append(elapsed * 1000)
            size = len(body)
        result = {
            "keys": args.keys, "scrapes": args.scrapes, "load_seconds": round(loaded, 1),
            "median_ms": round(statistics.median(times), 3),
            "p99_ms": round(percentile(times, 99), 3), "max_ms": round(max(times), 3),
            "bytes": size,
        }
        print(f"(a) /metrics on a node with {args.keys} keys: median {result['median_ms']} ms,"
              f" p99 {result['p99_ms']} ms, max {result['max_ms']} ms ({size} bytes)")
        return result
    finally:
        await client.close()
        nodes.stop()


async def benchOnce(reactor, args, root, http):
    nodes = startNodes(root, 3, http=http)
    client = RaftKVClient(nodes.peers, reactor, timeout=10.0)
    scraping = {"on": http, "count": 0, "errors": 0}

    async def scraper():
        while scraping["on"]:
            # Prometheus scraping every node, and one open dashboard (which
            # makes its node poll every member's Status twice a second).
            urls = [f"http://127.0.0.1:{port}/metrics" for port in nodes.httpPorts]
            urls.append(f"http://127.0.0.1:{nodes.httpPorts[0]}/api/cluster")
            for url in urls:
                try:
                    await fetch(reactor, url)
                    scraping["count"] += 1
                except Exception:
                    scraping["errors"] += 1
            await sleep(reactor, 1.0)

    out = os.path.join(root, "bench.json")
    try:
        await waitForLeader(client, reactor)
        running = defer.ensureDeferred(scraper()) if http else None
        argv = ["-m", "twisted_raft.bench", "--cluster", ",".join(nodes.peers),
                "-C", str(args.concurrency), "-k", "8", "-s", "10",
                "-D", str(args.duration), "--warmup", str(args.warmup), "--quiet",
                "--json", out]
        output, err, code = await utils.getProcessOutputAndValue(
            sys.executable, argv, env=launcher.environment()
        )
        scraping["on"] = False
        if running is not None:
            await running
        if code != 0:
            raise RuntimeError(f"raftkv bench failed ({code}): {err.decode(errors='replace')}")
        with open(out) as f:
            row = json.load(f)["results"][0]
        return {"http": http, "ops_per_sec": row["ops_per_sec"], "p99_ms": row["p99_ms"],
                "scrapes": scraping["count"], "scrape_errors": scraping["errors"]}
    finally:
        scraping["on"] = False
        await client.close()
        nodes.stop()


async def abRuns(reactor, args, root):
    runs = []
    for r in range(args.rounds):
        order = (False, True) if r % 2 == 0 else (True, False)
        for http in order:
            run = await benchOnce(reactor, args, os.path.join(root, f"ab-{r}-{int(http)}"), http)
            run["round"] = r + 1
            runs.append(run)
            which = "B (--http, scraped 1/s, dashboard open)" if http else "A (no --http)"
            print(f"(b) round {r + 1} {which}:"
                  f" {run['ops_per_sec']:.0f} writes/s, p99 {run['p99_ms']} ms")
    a = statistics.median(x["ops_per_sec"] for x in runs if not x["http"])
    b = statistics.median(x["ops_per_sec"] for x in runs if x["http"])
    print(f"(b) medians: A {a:.0f}, B {b:.0f} writes/s; B/A {b / a:.3f}")
    return {"runs": runs, "median_a": a, "median_b": b, "ratio_b_over_a": round(b / a, 4)}


async def run(reactor, args):
    root = tempfile.mkdtemp(prefix="raftkv-observability-")
    report = {"config": {k: v for k, v in vars(args).items() if k != "json"},
              "cpus": os.cpu_count(), "python": sys.version.split()[0]}
    report["scrape"] = await scrapeLatency(reactor, args, root)
    if args.rounds:
        report["ab"] = await abRuns(reactor, args, root)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
        print(f"results written to {args.json}")
    return 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--load-concurrency", type=int, default=256)
    parser.add_argument("--scrapes", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--concurrency", type=int, default=256)
    parser.add_argument("--json", default="docs/results/observability.json")
    args = parser.parse_args()
    code = []
    task.react(lambda reactor: defer.ensureDeferred(run(reactor, args)).addCallback(code.append))
    sys.exit(code[0] if code else 1)


if __name__ == "__main__":
    main()
