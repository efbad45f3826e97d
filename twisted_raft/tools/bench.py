"""
C{raftkv bench} (C{python -m twisted_raft.bench}): a closed-loop load
generator for raftkv, and a side-by-side comparison with PySyncObj.

    python -m twisted_raft.bench [--cluster ADDRS | --data DIR]
        [--workload write|read|stale-read|mixed] [--read-ratio 0.5]
        [--concurrency 16 | --sweep 1,4,16,64] [--connections 4]
        [--value-size 100] [--keys 1000] [--warmup 2] [--duration 10]
        [--json FILE] [--plot FILE.png] [--compare pysyncobj] [--raw] [--tls]

Without C{--cluster} it starts a local 3-node cluster of real node processes
(C{python -m twisted --log-format=text raftkv ...}, fsync on, the default) on
free 127.0.0.1 ports, with its data in a new temporary directory (removed
afterwards) or in C{--data DIR} (kept), and stops it at the end.  With
C{--tls} that cluster runs with mutual TLS (a throwaway CA in its data
directory, see L{twisted_raft.tools.launcher.LocalTLS}) and every client
connection, raw ones included, is TLS with a client certificate.

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
warmup and duration (see L{twisted_raft.tools.pysyncobj_bench}) and prints the
ratio of raftkv's ops/s (the best of a sweep) to PySyncObj's.

Exit status: 0 the run completed (errors, if any, are in the report); 1 the
run failed (no leader, a node died, PySyncObj failed); 2 usage error.
"""

import json
import os
import sys

from twisted.internet import defer, task, threads
from twisted.python import usage

from twisted_raft.tools import pysyncobj_bench
from twisted_raft.tools.command import ToolOptions, parseOptions
from twisted_raft.tools.benchreport import cell, formatTable, plot, ratioLine, report
from twisted_raft.tools.load import (
    SESSION_WINDOW,
    Load,
    LocalCluster,
    makeClients,
    prefill,
    waitForLeader,
)

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

WORKLOADS = ("write", "read", "stale-read", "mixed")
MAX_VALUE = 1024 * 1024


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


class Options(ToolOptions):
    synopsis = (
        "raftkv bench [--cluster ADDRS | --data DIR] "
        "[--workload write|read|stale-read|mixed] [--concurrency C | --sweep 1,4,16] "
        "[--connections K] [--value-size BYTES] [--duration S] [--warmup S] "
        "[--json FILE] [--plot FILE.png] [--compare pysyncobj] [--raw] [--tls]"
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
        ["raw", None, "Bare AMP requests to the leader instead of the raftkv client (no retries, no sessions)."],
        ["quiet", "q", "No progress lines."],
        ["tls", None, "Run the local cluster and every client connection with mutual TLS."],
    ]

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
            if self["tls"]:
                raise usage.UsageError("--tls starts a local TLS cluster; not with --cluster")
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
        pysyncobj_bench.killAll()

    def config(self):
        o = self.o
        keys = ["workload", "read-ratio", "connections", "value-size", "keys", "warmup",
                "duration", "timeout", "raw", "nodes", "tls"]
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
        tls = None
        try:
            if o["cluster"] is None:
                self.cluster = LocalCluster(o["nodes"], o["data"], tls=o["tls"])
                tls = self.cluster.clientTLS()
                self.cluster.start()
                addresses = self.cluster.addresses
                out(f"local cluster{' with mutual TLS' if tls else ''}: {','.join(addresses)} "
                    f"(data {self.cluster.root})")
            else:
                addresses = o["cluster"]
            await waitForLeader(self.reactor, addresses, self.cluster, tls=tls)
            for concurrency in o["concurrencies"]:
                connections = min(o["connections"], concurrency)
                clients = await makeClients(self.reactor, addresses, connections, o["timeout"],
                                            o["raw"], tls)
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
                    "system": "raftkv" + (" (raw)" if o["raw"] else "") + (" (tls)" if o["tls"] else ""),
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
                out(f"C={concurrency}: {summary['ops_per_sec']:.0f} ops/s, p50 {cell(summary['p50_ms'])} ms, "
                    f"p99 {cell(summary['p99_ms'])} ms, {summary['errors']} errors; "
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
        self.out(f"PySyncObj: 3 nodes, {o['pysyncobj-mode']} mode, {o['value-size']} B values, "
                 f"{o['warmup']:g}s warmup + {o['duration']:g}s")
        return await threads.deferToThread(
            pysyncobj_bench.runCluster, o["value-size"], o["duration"], o["warmup"], o["keys"],
            o["pysyncobj-mode"], o["pysyncobj-window"], o["pysyncobj-rate"], 3,
        )


def main(argv=None):
    """Run the tool; @return: the exit status."""
    options = parseOptions(Options(), argv)
    if options is None:
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
