"""
Throughput of the blocking and asyncio clients against the Deferred
client at the same concurrency, in the same run (issue 14).

    python bench/client_throughput.py [--rounds 3] [--duration 10] [--warmup 2]
        [--threads 64] [--tasks 256] [--workload write|read]
        [--value-size 10] [--keys 1000] [--json docs/results/clients-issue14.json]

One local 3-node cluster (real node processes, fsync on, free 127.0.0.1
ports, a temporary directory) serves every run.  Each run is a process of
its own holding one client, as a program would:

  - C{twisted C}: one L{RaftKVClient} and C coroutines, each
    C{await client.put(...)} in a loop, under C{task.react};
  - C{blocking C}: one L{BlockingClient} shared by C threads, each
    calling C{client.put(...)} in a loop;
  - C{asyncio C}: one L{AsyncioClient} and C tasks, each C{await
    client.put(...)} in a loop, under C{asyncio.run}.

With C = C{--threads} (twisted against blocking) and C = C{--tasks}
(twisted against asyncio).  C{put} writes C{--value-size} bytes to one of
C{--keys} keys (C{read}: a linearizable C{get} of one of them, written
first).  Every operation that completes in the C{--duration} window after
C{--warmup} counts.  Each round runs the four in turn (the order reversed
every other round, so drift falls on all); per kind, the median ops/s of
the rounds and the ratio to the Twisted client at its concurrency (the
issue's aim: at least 0.70).  Exit status 0, or 2 if a run failed.
"""

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import threading
import time

KINDS = ("twisted", "blocking", "asyncio")


class Window:
    """Counts what completes between C{warmup} and C{warmup + duration}."""

    def __init__(self, warmup, duration):
        self.start = time.monotonic() + warmup
        self.end = self.start + duration
        self.ops = self.errors = 0
        self.lock = threading.Lock()  # blocking: many threads count

    def done(self, ok):
        now = time.monotonic()
        if self.start <= now <= self.end:
            with self.lock:
                if ok:
                    self.ops += 1
                else:
                    self.errors += 1
        return now < self.end

    def result(self, args):
        return {"ops_per_sec": round(self.ops / args.duration, 1), "errors": self.errors}


def operation(args, worker):
    """C{(method name, args)} of each operation of worker C{worker}, for ever."""
    rng = random.Random(worker)
    value = b"x" * args.value_size
    while True:
        key = f"bench/{rng.randrange(args.keys):06d}"
        yield ("put", (key, value)) if args.workload == "write" else ("get", (key,))


async def awaitingWorker(client, args, window, worker):
    """One of the Twisted or asyncio run's coroutines: await each operation."""
    for name, call in operation(args, worker):
        try:
            await getattr(client, name)(*call)
            ok = True
        except Exception:
            ok = False
        if not window.done(ok):
            return


def runTwisted(args, addresses):
    from twisted.internet import defer
    from twisted.python.failure import Failure

    from twisted_raft.client import RaftKVClient

    async def main(reactor):
        client = RaftKVClient(addresses, reactor, timeout=30.0)
        window = Window(args.warmup, args.duration)

        await defer.gatherResults([defer.ensureDeferred(awaitingWorker(client, args, window, i))
                                   for i in range(args.concurrency)])
        await client.close()
        return window.result(args)

    from twisted.internet import reactor

    out = []  # not task.react: it exits the process when done
    d = defer.ensureDeferred(main(reactor))
    d.addBoth(out.append).addBoth(lambda _: reactor.stop())
    reactor.run()
    if isinstance(out[0], Failure):
        out[0].raiseException()
    return out[0]


def runBlocking(args, addresses):
    from twisted_raft.client import BlockingClient

    window = Window(args.warmup, args.duration)
    with BlockingClient(addresses, timeout=30.0) as client:

        def worker(i):
            for name, call in operation(args, i):
                try:
                    getattr(client, name)(*call)
                    ok = True
                except Exception:
                    ok = False
                if not window.done(ok):
                    return

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(args.concurrency)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    return window.result(args)


def runAsyncio(args, addresses):
    from twisted_raft.client import AsyncioClient

    async def main():
        window = Window(args.warmup, args.duration)
        async with AsyncioClient(addresses, timeout=30.0) as client:
            await asyncio.gather(*(awaitingWorker(client, args, window, i)
                                   for i in range(args.concurrency)))
        return window.result(args)

    return asyncio.run(main())


def child(args):
    addresses = args.cluster.split(",")
    run = {"twisted": runTwisted, "blocking": runBlocking, "asyncio": runAsyncio}[args.child]
    cpu = time.process_time()
    result = run(args, addresses)
    result["client_cpu_seconds"] = round(time.process_time() - cpu, 2)
    print(json.dumps(result))


def parseArgs(argv=None):
    parser = argparse.ArgumentParser(
        description=" ".join(__doc__.split("\n\n")[0].split()),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds before measuring")
    parser.add_argument("--threads", type=int, default=64, help="the blocking client's threads")
    parser.add_argument("--tasks", type=int, default=256, help="the asyncio client's tasks")
    parser.add_argument("--workload", choices=("write", "read"), default="write")
    parser.add_argument("--value-size", type=int, default=10, help="bytes per value")
    parser.add_argument("--keys", type=int, default=1000, help="distinct keys")
    parser.add_argument("--json", default=None, metavar="PATH", help="write the results here")
    # one run, in a process of its own (what the parent starts)
    parser.add_argument("--child", choices=KINDS, help=argparse.SUPPRESS)
    parser.add_argument("--cluster", help=argparse.SUPPRESS)
    parser.add_argument("--concurrency", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.threads < 1 or args.tasks < 1 or args.keys < 1:
        parser.error("--rounds, --threads, --tasks and --keys must be at least 1")
    return args


def runOnce(args, kind, concurrency, addresses, env):
    argv = [sys.executable, os.path.abspath(__file__), "--child", kind, "--cluster",
            ",".join(addresses), "--concurrency", str(concurrency),
            "--duration", str(args.duration), "--warmup", str(args.warmup),
            "--workload", args.workload, "--value-size", str(args.value_size),
            "--keys", str(args.keys)]
    done = subprocess.run(argv, env=env, capture_output=True, text=True,
                          timeout=args.warmup + args.duration + 120)
    if done.returncode != 0:
        raise RuntimeError(f"{kind} {concurrency} failed: {done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def prefill(addresses, args):
    """Write every key once (reads find them), with a blocking client."""
    from twisted_raft.client import BlockingClient

    with BlockingClient(addresses, timeout=60.0) as client:
        for k in range(args.keys):
            client.put(f"bench/{k:06d}", b"x" * args.value_size)


def main(argv=None):
    args = parseArgs(argv)
    if args.child:
        return child(args)
    import _checkout  # noqa: F401 (this checkout first on sys.path)
    import _kvbench

    from twisted_raft.tools import launcher

    cluster = _kvbench.Cluster(3, "raftkv-client-throughput-")
    env = launcher.environment()
    pairs = [("twisted", args.threads), ("blocking", args.threads),
             ("twisted", args.tasks), ("asyncio", args.tasks)]
    runs = []
    try:
        cluster.start()
        prefill(cluster.peers, args)  # the client retries until a leader serves
        for r in range(args.rounds):
            for kind, concurrency in (pairs if r % 2 == 0 else pairs[::-1]):
                row = {"round": r + 1, "client": kind, "concurrency": concurrency,
                       **runOnce(args, kind, concurrency, cluster.peers, env)}
                runs.append(row)
                print(f"round {r + 1} {kind} x{concurrency}: {row['ops_per_sec']:.0f} ops/s,"
                      f" {row['errors']} errors, client CPU {row['client_cpu_seconds']} s",
                      flush=True)
    except (RuntimeError, subprocess.TimeoutExpired) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        cluster.stop()
        cluster.remove()
    medians = {}
    for kind, concurrency in pairs:
        rows = [r for r in runs if r["client"] == kind and r["concurrency"] == concurrency]
        medians[f"{kind} x{concurrency}"] = statistics.median(r["ops_per_sec"] for r in rows)
    ratios = {
        f"blocking x{args.threads}": round(
            medians[f"blocking x{args.threads}"] / medians[f"twisted x{args.threads}"], 3),
        f"asyncio x{args.tasks}": round(
            medians[f"asyncio x{args.tasks}"] / medians[f"twisted x{args.tasks}"], 3),
    }
    for name, ratio in ratios.items():
        print(f"{name}: {ratio:.3f} of the Twisted client at the same concurrency")
    if args.json:
        report = {"config": {k: v for k, v in vars(args).items()
                             if k not in ("json", "child", "cluster", "concurrency")},
                  "cpus": os.cpu_count(), "python": sys.version.split()[0],
                  "runs": runs, "median_ops_per_sec": medians, "ratio_to_twisted": ratios}
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
        print(f"results written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
