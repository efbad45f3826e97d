"""
C{raftkv bench} (C{python -m twisted_raft.bench}): a closed-loop load
generator for raftkv, and a side-by-side comparison with PySyncObj.

    python -m twisted_raft.bench [--cluster ADDRS | --data DIR]
        [--workload write|read|stale-read|mixed] [--read-ratio 0.5]
        [--concurrency 16 | --sweep 1,4,16,64] [--connections 4]
        [--value-size 100] [--keys 1000] [--warmup 2] [--duration 10]
        [--json FILE] [--plot FILE.png] [--compare pysyncobj] [--raw]

Without C{--cluster} it starts a local 3-node cluster of real node processes
(C{python -m twisted --log-format=text raftkv ...}, fsync on, the default) on
free 127.0.0.1 ports, with its data in a new temporary directory (removed
afterwards) or in C{--data DIR} (kept), and stops it at the end.

Load: C{--concurrency C} workers, each issuing one request at a time
(closed loop; callbacks, not coroutines, to keep the load generator cheap), spread round-robin over C{--connections K} L{RaftKVClient}s
(one AMP connection each to the leader), so each connection carries about
C/K requests in flight, pipelined (AMP tags every request; answers come back
in any order).  With C{--raw} the requests go as bare AMP commands over K
connections to the leader, without the client library (no retries, no
exactly-once session): that isolates the client library's cost.  Reads (of
keys written beforehand) are linearizable (C{get}) or, for C{stale-read},
answered from a node's local state.  A C{--warmup} period is discarded, then
every operation that completes within the C{--duration} window counts: its
latency (from its own start) goes into the percentiles, and ops/s is the
count divided by the window.  Failed operations count as errors (the client
library has already retried them until C{--timeout}).

C{--compare pysyncobj} then (the raftkv nodes stopped) measures a 3-node
PySyncObj 0.3.17 cluster with its authors' method for the same value size,
warmup and duration (see L{twisted_raft.pysyncobj_bench}) and prints the
ratio of raftkv's ops/s (the best of a sweep) to PySyncObj's.

Exit status: 0 the run completed (errors, if any, are in the report); 1 the
run failed (no leader, a node died, PySyncObj failed); 2 usage error.
"""

import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from twisted.internet import defer, task, threads
from twisted.python import usage
from twisted.python.failure import Failure

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

HOST = "127.0.0.1"
WORKLOADS = ("write", "read", "stale-read", "mixed")
MAX_VALUE = 1024 * 1024
SESSION_WINDOW = 1024
"""The server keeps the last 1,024 sequences of a client session: more
writes than that in flight on one client could be refused."""
STARTUP_TIMEOUT = 30.0


# -- options -----------------------------------------------------------------


def parseSweep(text):
    """C{"1,4,16"} -> C{[1, 4, 16]}. @raise usage.UsageError."""
    try:
        values = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise usage.UsageError(f"--sweep: not a comma-separated list of integers: {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise usage.UsageError("--sweep: give one or more positive integers, e.g. 1,4,16,64")
    return values


class Options(usage.Options):
    synopsis = (
        "python -m twisted_raft.bench [--cluster ADDRS | --data DIR] "
        "[--workload write|read|stale-read|mixed] [--concurrency C | --sweep 1,4,16] "
        "[--connections K] [--value-size BYTES] [--duration S] [--warmup S] "
        "[--json FILE] [--plot FILE.png] [--compare pysyncobj]"
    )
    longdesc = (
        "Closed-loop load against raftkv: throughput and latency percentiles; "
        "optionally a sweep over concurrency, a plot, and a comparison with a "
        "3-node PySyncObj cluster measured on the same machine."
    )
    optParameters = [
        ["cluster", "c", None, "host:port,... of a running cluster (default: start a local 3-node one)."],
        ["data", "d", None, "Data directory of the local cluster (default: a temporary one, removed)."],
        ["nodes", "n", 3, "Nodes of the local cluster.", int],
        ["workload", "w", "write", "write | read | stale-read | mixed."],
        ["read-ratio", None, 0.5, "mixed: the fraction of operations that are (linearizable) reads.", float],
        ["concurrency", "C", 16, "Requests in flight (closed loop).", int],
        ["connections", "k", 4, "Client connections (at most --concurrency).", int],
        ["value-size", "s", 100, "Value size in bytes.", int],
        ["keys", None, 1000, "Number of distinct keys.", int],
        ["warmup", None, 2.0, "Seconds of load before the measured window.", float],
        ["duration", "D", 10.0, "Seconds of the measured window.", float],
        ["timeout", "t", 5.0, "Client timeout per operation (retries included), seconds.", float],
        ["sweep", None, None, "Comma-separated concurrencies to run one after another (e.g. 1,4,16,64)."],
        ["json", None, None, "Write the results as JSON to this file."],
        ["plot", None, None, "Draw throughput and p99 latency against concurrency into this PNG."],
        ["compare", None, None, "Also measure another system: 'pysyncobj'."],
        ["pysyncobj-mode", None, "max", "PySyncObj load: 'max' (window per process) or 'rate' (the authors' fixed rate)."],
        ["pysyncobj-window", None, 1000, "PySyncObj max mode: calls outstanding per process.", int],
        ["pysyncobj-rate", None, 20000, "PySyncObj rate mode: offered calls/s over all nodes.", int],
        ["seed", None, 1, "Seed of the key choices.", int],
    ]
    optFlags = [
        ["raw", None, "Bare AMP requests to the leader instead of RaftKVClient (no retries, no sessions)."],
        ["quiet", "q", "No progress lines."],
    ]

    def getSynopsis(self):
        return "Usage: " + self.synopsis

    def postOptions(self):
        if self["workload"] not in WORKLOADS:
            raise usage.UsageError(f"--workload must be one of {', '.join(WORKLOADS)}")
        if not 0.0 <= self["read-ratio"] <= 1.0:
            raise usage.UsageError("--read-ratio must be between 0 and 1")
        if self["sweep"] is not None:
            self["concurrencies"] = parseSweep(self["sweep"])
        else:
            self["concurrencies"] = [self["concurrency"]]
        for c in self["concurrencies"]:
            if not 1 <= c <= 100000:
                raise usage.UsageError("--concurrency must be 1..100000")
        if self["connections"] < 1:
            raise usage.UsageError("--connections must be at least 1")
        if max(self["concurrencies"]) > SESSION_WINDOW * self["connections"] and not self["raw"]:
            raise usage.UsageError(
                f"at most {SESSION_WINDOW} requests in flight per connection (a client "
                "session's window): raise --connections"
            )
        if not 0 <= self["value-size"] <= MAX_VALUE:
            raise usage.UsageError(f"--value-size must be 0..{MAX_VALUE}")
        if self["keys"] < 1:
            raise usage.UsageError("--keys must be at least 1")
        if not 0 <= self["warmup"] <= 3600:
            raise usage.UsageError("--warmup must be 0..3600 seconds")
        if not 0 < self["duration"] <= 3600:
            raise usage.UsageError("--duration must be more than 0 and at most 3600 seconds")
        if not self["timeout"] > 0:
            raise usage.UsageError("--timeout must be positive")
        if not 1 <= self["nodes"] <= 9:
            raise usage.UsageError("--nodes must be 1..9")
        if self["cluster"] is not None:
            from twisted_raft.client import parseAddresses

            if self["data"] is not None:
                raise usage.UsageError("--data is for the local cluster; not with --cluster")
            try:
                self["cluster"] = parseAddresses(self["cluster"])
            except ValueError as e:
                raise usage.UsageError(f"--cluster: {e}")
        if self["compare"] is not None:
            if self["compare"].lower() != "pysyncobj":
                raise usage.UsageError("--compare: only 'pysyncobj' is supported")
            self["compare"] = "pysyncobj"
            if self["workload"] != "write":
                raise usage.UsageError("--compare pysyncobj measures writes: use --workload write")
        if self["pysyncobj-mode"] not in ("max", "rate"):
            raise usage.UsageError("--pysyncobj-mode must be max or rate")
        if self["pysyncobj-window"] < 1 or self["pysyncobj-rate"] < 1:
            raise usage.UsageError("--pysyncobj-window and --pysyncobj-rate must be positive")
        if self["plot"] is not None:
            try:
                import matplotlib  # noqa: F401
            except ImportError:
                raise usage.UsageError(
                    "--plot needs matplotlib: pip install 'raftkv[bench]' (or pip install matplotlib)"
                ) from None


# -- statistics and output (pure) ----------------------------------------------------


def percentile(ordered, p):
    """
    The C{p}-th percentile (0 < p <= 100) of an ascending list, by the
    nearest-rank method: the smallest sample with at least p % of the
    samples at or below it.  C{None} for no samples.
    """
    if not ordered:
        return None
    rank = max(1, math.ceil(p / 100.0 * len(ordered) - 1e-9))
    return ordered[min(rank, len(ordered)) - 1]


def summarize(latencies, errors, duration):
    """
    The summary of one measured window.

    @param latencies: seconds, one per successful operation in the window.
    @return: a dict: C{ops}, C{errors}, C{ops_per_sec}, C{p50_ms},
        C{p99_ms}, C{p999_ms}, C{mean_ms}, C{max_ms} (latencies C{None}
        without samples).
    """
    ordered = sorted(latencies)

    def ms(x):
        return None if x is None else round(x * 1000.0, 3)

    return {
        "ops": len(ordered),
        "errors": errors,
        "ops_per_sec": round(len(ordered) / duration, 1) if duration > 0 else 0.0,
        "p50_ms": ms(percentile(ordered, 50)),
        "p99_ms": ms(percentile(ordered, 99)),
        "p999_ms": ms(percentile(ordered, 99.9)),
        "mean_ms": ms(sum(ordered) / len(ordered)) if ordered else None,
        "max_ms": ms(ordered[-1]) if ordered else None,
    }


TABLE_COLUMNS = [
    ("system", "system"), ("workload", "workload"), ("concurrency", "conc"),
    ("value_size", "value B"), ("ops_per_sec", "ops/s"), ("p50_ms", "p50 ms"),
    ("p99_ms", "p99 ms"), ("p999_ms", "p99.9 ms"), ("errors", "errors"),
]


def _cell(value):
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.1f}" if value >= 100 else f"{value:.2f}"
    return str(value)


def formatTable(rows):
    """A text table of result dicts (missing fields show as C{-})."""
    table = [[title for _, title in TABLE_COLUMNS]]
    for row in rows:
        table.append([_cell(row.get(key)) for key, _ in TABLE_COLUMNS])
    widths = [max(len(r[i]) for r in table) for i in range(len(TABLE_COLUMNS))]
    lines = []
    for n, r in enumerate(table):
        cells = [c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))]
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines) + "\n"


def ratioLine(raftkv, other, name="PySyncObj"):
    """C{"raftkv/PySyncObj ops/s: 0.12 (1234 / 10000)"}, or C{None}."""
    a, b = raftkv.get("ops_per_sec"), other.get("ops_per_sec")
    if not b:
        return None
    return f"raftkv/{name} ops/s: {a / b:.3f} ({a:.0f} / {b:.0f})"


def report(config, results, comparison=None):
    """The JSON-able report of a whole invocation."""
    out = {"config": config, "results": results}
    if comparison is not None:
        out["pysyncobj"] = comparison
        best = max(results, key=lambda r: r["ops_per_sec"])
        if comparison.get("ops_per_sec"):
            out["ratio_ops_per_sec"] = round(best["ops_per_sec"] / comparison["ops_per_sec"], 4)
    return out


def plot(results, path):
    """Throughput and p99 latency against concurrency, into a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [r["concurrency"] for r in results]
    fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(6.4, 6.4))
    top.plot(xs, [r["ops_per_sec"] for r in results], marker="o")
    top.set_ylabel("ops/s")
    top.set_title(f"raftkv {results[0]['workload']}, {results[0]['value_size']} B values")
    top.grid(True, alpha=0.3)
    bottom.plot(xs, [r["p99_ms"] or 0 for r in results], marker="o", color="tab:red", label="p99")
    bottom.plot(xs, [r["p50_ms"] or 0 for r in results], marker=".", color="tab:gray", label="p50")
    bottom.set_ylabel("latency (ms)")
    bottom.set_xlabel("concurrency (requests in flight)")
    bottom.legend()
    bottom.grid(True, alpha=0.3)
    if len(xs) > 1 and max(xs) / min(xs) >= 8:
        bottom.set_xscale("log", base=2)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# -- the local cluster ------------------------------------------------------------


def _repoRoot():
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cpuSeconds(pid):
    """User + system CPU seconds of a process (Linux /proc), or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


class LocalCluster:
    """N real node processes on free 127.0.0.1 ports (fsync on: the default)."""

    def __init__(self, nodes=3, data=None):
        from twisted_raft.cluster import freePorts, nodeArgv

        self.keep = data is not None
        if data is None:
            self.root = tempfile.mkdtemp(prefix="raftkv-bench-")
        else:
            os.makedirs(data, exist_ok=True)
            self.root = tempfile.mkdtemp(prefix="run-", dir=data)
        self.addresses = [f"{HOST}:{p}" for p in freePorts(nodes)]
        self.argvs = [nodeArgv(i, self.addresses, self.root) for i in range(1, nodes + 1)]
        self.procs = []

    def start(self):
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env["PYTHONPATH"] = os.pathsep.join(
            [_repoRoot()] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
        )
        for i, argv in enumerate(self.argvs, 1):
            with open(os.path.join(self.root, f"n{i}.log"), "ab") as log:
                self.procs.append(subprocess.Popen(
                    argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    cwd=self.root, env=env, start_new_session=True,
                ))

    def dead(self):
        """Descriptions of nodes that have exited."""
        return [f"n{i} exited with status {p.returncode}"
                for i, p in enumerate(self.procs, 1) if p.poll() is not None]

    def cpuSeconds(self):
        return [_cpuSeconds(p.pid) for p in self.procs]

    def stop(self):
        """SIGTERM, then SIGKILL what is left after 3 s; remove a temporary root."""
        for p in self.procs:
            if p.poll() is None:
                try:
                    p.terminate()
                except OSError:
                    pass
        end = time.monotonic() + 3.0
        for p in self.procs:
            try:
                p.wait(timeout=max(0.01, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except OSError:
                    pass
                p.wait()
        self.procs = []
        if not self.keep:
            shutil.rmtree(self.root, ignore_errors=True)


# -- clients ------------------------------------------------------------------------


class RawClient:
    """
    Bare AMP to one node (the leader): C{put}/C{get} as single commands, no
    retries, no session.  The same interface as the part of L{RaftKVClient}
    the bench uses.
    """

    def __init__(self, proto):
        self.proto = proto

    def put(self, key, value):
        from twisted_raft.rpc.commands import Put

        return self.proto.callRemote(Put, key=key, value=value)

    def get(self, key, stale=False):
        from twisted_raft.rpc.commands import Get

        if stale:
            return self.proto.callRemote(Get, key=key, stale=True)
        return self.proto.callRemote(Get, key=key)

    def close(self):
        if self.proto.transport is not None:
            self.proto.transport.loseConnection()
        return defer.succeed(None)


async def _leaderAddress(reactor, addresses, timeout):
    from twisted_raft.client import RaftKVClient

    probe = RaftKVClient(addresses, reactor, timeout=timeout)
    try:
        status = await probe.status()
        if status["role"].lower() == "leader":
            return status["address"]
        for address, s in await probe.clusterStatus():
            if s and s["role"].lower() == "leader":
                return address
        raise RuntimeError("no leader found")
    finally:
        await probe.close()


async def makeClients(reactor, addresses, count, timeout, raw):
    """C{count} clients, each with its own connection, all connected."""
    from twisted.internet.endpoints import clientFromString, connectProtocol

    from twisted_raft.client import ClientAMP, RaftKVClient, endpointString

    clients = []
    if raw:
        leader = await _leaderAddress(reactor, addresses, timeout)
        for _ in range(count):
            proto = await connectProtocol(
                clientFromString(reactor, endpointString(leader, 5.0)), ClientAMP()
            )
            clients.append(RawClient(proto))
    else:
        for _ in range(count):
            client = RaftKVClient(addresses, reactor, timeout=timeout)
            clients.append(client)
        # find the leader and connect every client before the clock starts
        await defer.gatherResults([defer.ensureDeferred(c.status()) for c in clients])
        await defer.gatherResults([c.put("bench-ready", b"") for c in clients])
    return clients


async def waitForLeader(reactor, addresses, cluster=None, deadline=STARTUP_TIMEOUT):
    """Wait until a write succeeds (so a leader exists and has a quorum)."""
    from twisted_raft.client import RaftKVClient

    end = time.monotonic() + deadline
    client = RaftKVClient(addresses, reactor, timeout=2.0, connectTimeout=1.0)
    try:
        while time.monotonic() < end:
            if cluster is not None and cluster.dead():
                raise RuntimeError("a node died: " + "; ".join(cluster.dead()))
            try:
                await client.put("bench-ready", b"")
                return
            except Exception:
                await task.deferLater(reactor, 0.2, lambda: None)
        raise RuntimeError(f"no leader within {deadline:.0f}s")
    finally:
        await client.close()


# -- the load -----------------------------------------------------------------------


def keyName(n):
    return f"bench-{n:08d}"


class Load:
    """
    One measured run: C{concurrency} closed-loop workers over C{clients}.

    @ivar latencies: seconds of every operation that completed successfully
        inside the window.
    """

    def __init__(self, reactor, clients, workload, concurrency, valueSize, keys,
                 warmup, duration, readRatio=0.5, seed=1, out=None, clock=time.perf_counter):
        self.reactor = reactor
        self.clients = clients
        self.workload = workload
        self.concurrency = concurrency
        self.keys = keys
        self.warmup = warmup
        self.duration = duration
        self.readRatio = readRatio
        self.rng = random.Random(seed)
        self.out = out
        self.clock = clock
        vr = random.Random(seed + 1)
        self.values = [vr.randbytes(valueSize) for _ in range(16)]
        self.latencies = []
        self.errors = 0
        self.errorSamples = []
        self.completed = 0
        self.windowErrors = 0

    def _op(self, client, n):
        key = keyName(self.rng.randrange(self.keys))
        w = self.workload
        if w == "write" or (w == "mixed" and self.rng.random() >= self.readRatio):
            return client.put(key, self.values[n & 15])
        if w == "stale-read":
            return client.get(key, stale=True)
        return client.get(key)

    def _issue(self, i, n):
        """
        Worker C{i}'s next operations, from operation number C{n}: written
        with callbacks rather than a coroutine, so that the load generator
        spends as little CPU per operation as it can (it shares the machine
        with the nodes).
        """
        try:
            self._issueSome(i, n)
        except Exception:
            # a bug here must end the run, not leave it waiting forever
            if not self._finished.called:
                self._finished.errback()

    def _issueSome(self, i, n):
        client = self.clients[i % len(self.clients)]
        clock = self.clock
        while True:
            t0 = clock()
            if t0 >= self.end:
                self._running -= 1
                if self._running == 0:
                    self._finished.callback(None)
                return
            d = self._op(client, n)
            if not d.called or d.paused:
                d.addCallbacks(self._succeeded, self._failed,
                               callbackArgs=(i, n, t0), errbackArgs=(i, n, t0))
                return
            # answered at once (a test's fake client): no recursion
            outcome = []
            d.addBoth(outcome.append)
            if isinstance(outcome[0], Failure):
                self._failed(outcome[0], i, n, t0)
                return
            self._record(t0)
            n += self.concurrency

    def _record(self, t0):
        t1 = self.clock()
        self.completed += 1
        if self.start <= t1 < self.end:
            self.latencies.append(t1 - t0)

    def _succeeded(self, result, i, n, t0):
        self._record(t0)
        self._issue(i, n + self.concurrency)

    def _failed(self, failure, i, n, t0):
        t1 = self.clock()
        self.errors += 1
        if self.start <= t1 < self.end:
            self.windowErrors += 1
        if len(self.errorSamples) < 5:
            e = failure.value
            self.errorSamples.append(f"{type(e).__name__}: {e}")
        # do not spin on a fast-failing connection
        self.reactor.callLater(0.01, self._issue, i, n)

    def _progress(self):
        now = self.clock()
        done = self.completed
        rate = (done - self._lastDone) / max(now - self._lastTime, 1e-9)
        self._lastDone, self._lastTime = done, now
        phase = "warmup" if now < self.start else "measure"
        inWindow = len(self.latencies)
        avg = inWindow / max(min(now, self.end) - self.start, 1e-9) if now > self.start else 0.0
        self.out(
            f"  [{now - self.t0:5.1f}s] {phase:7s} C={self.concurrency}: {rate:8.0f} ops/s now, "
            f"{avg:8.0f} ops/s in window so far, {self.errors} errors"
        )

    async def run(self):
        self.t0 = self.clock()
        self.start = self.t0 + self.warmup
        self.end = self.start + self.duration
        self._lastDone, self._lastTime = 0, self.t0
        ticker = None
        if self.out is not None:
            ticker = task.LoopingCall(self._progress)
            ticker.clock = self.reactor
            ticker.start(1.0, now=False)
        self._running = self.concurrency
        self._finished = defer.Deferred()
        try:
            for i in range(self.concurrency):
                self._issue(i, i)
            await self._finished
        finally:
            if ticker is not None and ticker.running:
                ticker.stop()
        return summarize(self.latencies, self.windowErrors, self.duration)


async def prefill(clients, keys, valueSize, concurrency=64):
    """Write every key once (for read workloads)."""
    value = random.Random(0).randbytes(valueSize)
    pending = iter(range(keys))

    async def filler(i):
        client = clients[i % len(clients)]
        for n in pending:
            await client.put(keyName(n), value)

    await defer.gatherResults(
        [defer.ensureDeferred(filler(i)) for i in range(min(concurrency, keys))],
        consumeErrors=True,
    )


# -- the whole run --------------------------------------------------------------------


class Bench:
    def __init__(self, reactor, options, out=None):
        self.reactor = reactor
        self.o = options
        self.out = out or (lambda line: print(line, flush=True))
        self.cluster = None

    def killAll(self):
        if self.cluster is not None:
            self.cluster.stop()
            self.cluster = None
        from twisted_raft import pysyncobj_bench

        pysyncobj_bench.killAll()

    def config(self):
        o = self.o
        keys = ["workload", "read-ratio", "connections", "value-size", "keys", "warmup",
                "duration", "timeout", "raw", "nodes"]
        config = {k.replace("-", "_"): o[k] for k in keys}
        config["concurrencies"] = o["concurrencies"]
        config["cluster"] = o["cluster"] or "local"
        config["python"] = sys.version.split()[0]
        config["cpus"] = os.cpu_count()
        return config

    async def run(self):
        o = self.o
        out = self.out
        results = []
        comparison = None
        try:
            if o["cluster"] is None:
                self.cluster = LocalCluster(o["nodes"], o["data"])
                self.cluster.start()
                addresses = self.cluster.addresses
                out(f"local cluster: {','.join(addresses)} (data {self.cluster.root})")
            else:
                addresses = o["cluster"]
            await waitForLeader(self.reactor, addresses, self.cluster)
            for concurrency in o["concurrencies"]:
                connections = min(o["connections"], concurrency)
                clients = await makeClients(self.reactor, addresses, connections, o["timeout"], o["raw"])
                try:
                    if o["workload"] != "write" and not results:
                        out(f"prefilling {o['keys']} keys of {o['value-size']} B")
                        await prefill(clients, o["keys"], o["value-size"])
                    load = Load(
                        self.reactor, clients, o["workload"], concurrency, o["value-size"],
                        o["keys"], o["warmup"], o["duration"], o["read-ratio"], o["seed"],
                        out=None if o["quiet"] else out,
                    )
                    cpu0 = (os.times(), self.cluster.cpuSeconds() if self.cluster else None)
                    summary = await load.run()
                    cpu1 = (os.times(), self.cluster.cpuSeconds() if self.cluster else None)
                finally:
                    for c in clients:
                        await c.close()
                elapsed = o["warmup"] + o["duration"]
                row = {
                    "system": "raftkv" + (" (raw)" if o["raw"] else ""),
                    "workload": o["workload"], "concurrency": concurrency,
                    "connections": connections, "value_size": o["value-size"], **summary,
                    "client_cpu_pct": round(
                        100 * ((cpu1[0].user + cpu1[0].system) - (cpu0[0].user + cpu0[0].system)) / elapsed, 1),
                }
                if cpu0[1] is not None and None not in cpu0[1] + cpu1[1]:
                    row["node_cpu_pct"] = [round(100 * (b - a) / elapsed, 1) for a, b in zip(cpu0[1], cpu1[1])]
                if load.errorSamples:
                    row["error_samples"] = load.errorSamples
                results.append(row)
                out(f"C={concurrency}: {summary['ops_per_sec']:.0f} ops/s, p50 {_cell(summary['p50_ms'])} ms, "
                    f"p99 {_cell(summary['p99_ms'])} ms, {summary['errors']} errors; "
                    f"client CPU {row['client_cpu_pct']}%, nodes {row.get('node_cpu_pct', '?')}%")
                if self.cluster is not None and self.cluster.dead():
                    raise RuntimeError("a node died: " + "; ".join(self.cluster.dead()))
            if self.cluster is not None:
                self.cluster.stop()
                self.cluster = None
            if o["compare"] == "pysyncobj":
                comparison = await self.comparePySyncObj()
        finally:
            self.killAll()
        out("")
        rows = list(results)
        if comparison is not None:
            rows.append({"system": "pysyncobj", "workload": "write",
                         "concurrency": f"{comparison['config']['window']}x{comparison['nodes']}"
                         if comparison["config"]["mode"] == "max" else "rate",
                         "value_size": o["value-size"], **comparison})
        out(formatTable(rows).rstrip("\n"))
        full = report(self.config(), results, comparison)
        if comparison is not None:
            best = max(results, key=lambda r: r["ops_per_sec"])
            line = ratioLine(best, comparison)
            if line:
                out(line)
        if o["json"]:
            with open(o["json"], "w") as f:
                json.dump(full, f, indent=2)
            out(f"results written to {o['json']}")
        if o["plot"]:
            plot(results, o["plot"])
            out(f"plot written to {o['plot']}")
        return full

    async def comparePySyncObj(self):
        o = self.o
        try:
            import pysyncobj  # noqa: F401
        except ImportError:
            raise RuntimeError(
                "PySyncObj is not installed: pip install 'raftkv[bench]' (or pysyncobj==0.3.17)"
            ) from None
        from twisted_raft import pysyncobj_bench

        self.out(f"PySyncObj: 3 nodes, {o['pysyncobj-mode']} mode, {o['value-size']} B values, "
                 f"{o['warmup']:g}s warmup + {o['duration']:g}s")
        return await threads.deferToThread(
            pysyncobj_bench.runCluster, o["value-size"], o["duration"], o["warmup"], o["keys"],
            o["pysyncobj-mode"], o["pysyncobj-window"], o["pysyncobj-rate"], 3,
        )


def main(argv=None):
    """Run the tool; @return: the exit status."""
    if argv is None:
        argv = sys.argv[1:]
    options = Options()
    try:
        options.parseOptions(argv)
    except usage.UsageError as e:
        print(f"{options.getSynopsis()}\n\nerror: {e}", file=sys.stderr)
        return EXIT_USAGE
    codes = []
    # The load generator must not be the bottleneck: the same young-generation
    # threshold as the nodes (see tuneGarbageCollector) for this process.
    from twisted_raft.service import tuneGarbageCollector

    tuneGarbageCollector()

    def run(reactor):
        bench = Bench(reactor, options)
        reactor.addSystemEventTrigger("before", "shutdown", bench.killAll)

        def failed(f):
            print(f"error: {f.getErrorMessage()}", file=sys.stderr)
            codes.append(EXIT_FAILED)

        d = defer.ensureDeferred(bench.run())
        d.addCallbacks(lambda _: codes.append(EXIT_OK), failed)
        return d

    try:
        task.react(run)
    except SystemExit:
        pass
    return codes[0] if codes else EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
