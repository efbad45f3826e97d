"""
C{python -m twisted_raft.chaos}: fault injection against real node processes,
with a linearizability check of everything the clients saw.

    python -m twisted_raft.chaos [--nodes 3] [--seconds 60] [--seed 1]
        [--clients 4] [--keys 3] [--faults partition,kill,pause]
        [--data DIR] [--history FILE] [--tls]
    python -m twisted_raft.chaos --check-history FILE   # re-check a saved history

What it does:

  - Starts N real nodes (C{python -m twisted --log-format=text raftkv ...})
    on 127.0.0.1, each logging to C{DATA/n<i>.log}.  Every peer link goes
    through a L{LinkProxy} in this process: node i's C{--peers} entry j is a
    proxy forwarding to node j's real port, so each directed link i->j can be
    cut (existing connections aborted, new ones aborted at once).
  - Runs C concurrent clients (each its own L{RaftKVClient}, talking to the
    nodes' real ports) doing random get / put / compareAndSet / delete on a
    few keys, and records every operation with C{time.monotonic()} stamps.
  - Injects faults one at a time on a schedule drawn from C{--seed}, with a
    healing gap between them: isolate the leader, random majority/minority
    halves, a bridge (two halves that both reach one node), SIGKILL a node
    (sometimes the leader) then restart it from its data dir, SIGSTOP a node
    then SIGCONT it.
  - With C{--tls}, nodes and clients use mutual TLS (a throwaway CA in
    C{DATA/tls}, see L{twisted_raft.tools.launcher.LocalTLS}); the proxies
    forward the encrypted bytes unchanged.
  - Afterwards heals everything, lets the cluster settle and checks
    (1) linearizability of the whole history, (2) convergence: every node
    has applied the same log and answers the same stale reads, equal to a
    final linearizable read, (3) availability per 1 s window and the time to
    the first success after each fault.

Exit status: 0 all good; 1 linearizability violation, divergence or no
convergence; 2 usage error; 3 inconclusive (the cluster never elected a
leader, or the check ran out of time).

The fault schedule is L{twisted_raft.tools.faults}, the history's format
and measures L{twisted_raft.tools.history}, the node processes
L{twisted_raft.tools.launcher}.  What is left here is one module on
purpose: the run (L{Chaos}: set-up, clients, injection, settling and the
verdict) is one object whose steps all read and write the same run's state.
"""

import json
import os
import random
import shutil
import sys
import tempfile
import time

from twisted.internet import defer, task
from twisted.python import usage

from twisted_raft.testing import linearizability
from twisted_raft.testing.linearizability import Op
from twisted_raft.testing.proxy import LinkProxy
from twisted_raft.tools import launcher
from twisted_raft.tools.command import ToolOptions, parseOptions
from twisted_raft.tools.faults import cutLinks, makeSchedule, parseFaults, planPartition
from twisted_raft.tools.history import (
    WINDOW,
    availability,
    firstSuccessAfter,
    opFromJSON,
    opToJSON,
)
from twisted_raft.tools.launcher import HOST

EXIT_OK = 0
EXIT_VIOLATION = 1
EXIT_USAGE = 2
EXIT_INCONCLUSIVE = 3

CHECK_TIME_LIMIT = 120.0


# -- options -----------------------------------------------------------------


class Options(ToolOptions):
    synopsis = (
        "python -m twisted_raft.chaos [--nodes 3] [--seconds 60] [--seed 1] "
        "[--clients 4] [--keys 3] [--faults partition,kill,pause] [--data DIR] "
        "[--history FILE] [--tls]"
    )
    longdesc = (
        "Run real raftkv nodes behind controllable TCP proxies, inject faults "
        "(partitions, SIGKILL, SIGSTOP) on a seeded schedule while concurrent "
        "clients read and write, then check the history for linearizability and "
        "the nodes for convergence.  Fault names: partition (= isolate, halves, "
        "bridge), kill, pause, or any of isolate, halves, bridge."
    )
    optParameters = [
        ["nodes", "n", 3, "Number of nodes.", int],
        ["seconds", "s", 60.0, "Seconds of load (faults are injected during it).", float],
        ["seed", None, 1, "Seed of the fault schedule and the clients' choices.", int],
        ["clients", "c", 4, "Concurrent clients.", int],
        ["keys", "k", 3, "Number of keys the clients use.", int],
        ["faults", "f", "partition,kill,pause", "Comma-separated fault kinds to inject (or 'none')."],
        ["data", "d", None, "Directory for node data and logs (default: a new temporary one)."],
        ["history", None, None, "Write the history (ops and faults) as JSON lines to this file."],
        ["election-timeout", None, None, "Passed to every node as --election-timeout (ms)."],
        ["op-timeout", None, 3.0, "Client timeout per operation, seconds.", float],
        ["snapshot-entries", None, 1000,
         "Passed to every node (small, so snapshots, compaction and InstallSnapshot"
         " happen under faults).", int],
    ]
    optFlags = [
        ["quiet", "q", "No progress lines."],
        ["no-sessions", None,
         "Clients without exactly-once sessions (RaftKVClient(sessions=False)): more "
         "writes end with an unknown outcome."],
        ["tls", None, "Nodes and clients with mutual TLS (a throwaway CA in the data directory)."],
    ]

    def postOptions(self):
        if not 1 <= self["nodes"] <= 9:
            raise usage.UsageError("--nodes must be 1..9")
        if not self["seconds"] > 0:
            raise usage.UsageError("--seconds must be positive")
        if not 1 <= self["clients"] <= 64:
            raise usage.UsageError("--clients must be 1..64")
        if not 1 <= self["keys"] <= 100:
            raise usage.UsageError("--keys must be 1..100")
        if not self["op-timeout"] > 0:
            raise usage.UsageError("--op-timeout must be positive")
        self["faultKinds"] = parseFaults(self["faults"], self["nodes"])


# -- client errors ---------------------------------------------------------------------


def _isDefinitelyNotApplied(exc):
    from twisted_raft.rpc.commands import InvalidArgument, NotProposed, ValueTooLarge

    return isinstance(exc, (InvalidArgument, ValueTooLarge, NotProposed))


# -- the run --------------------------------------------------------------------------


def _sleep(reactor, seconds):
    return task.deferLater(reactor, seconds, lambda: None)


def _fmt(seconds):
    return "-" if seconds is None else f"{seconds:.2f}s"


class Chaos:
    def __init__(self, reactor, options, out=None):
        self.reactor = reactor
        self.o = options
        self.out = out or (lambda line: print(line, flush=True))
        self.n = options["nodes"]
        self.seed = options["seed"]
        self.keys = [f"k{i}" for i in range(options["keys"])]
        self.nodes = {}
        self.proxies = {}
        self.ops = []
        self.counts = {"ok": 0, "unknown": 0, "failed": 0, "failed-read": 0}
        self.stopClients = False
        self.currentFault = None
        self.leader = 0
        self.faults = []
        self.events = []  # (monotonic, text)
        self.tmp = None
        self.tls = None  # the run's launcher.LocalTLS with --tls
        self.clientTLS = None  # the clients' TLSCredentials with --tls

    def log(self, text):
        self.out(text)

    # -- setup ------------------------------------------------------------

    @defer.inlineCallbacks
    def setUp(self):
        if self.o["data"]:
            self.root = os.path.abspath(self.o["data"])
            os.makedirs(self.root, exist_ok=True)
        else:
            self.root = self.tmp = tempfile.mkdtemp(prefix="raftkv-chaos-")
        ids = range(1, self.n + 1)
        # proxies first (they hold their ports), then the nodes' real ports
        realPorts = {}
        for i in ids:
            for j in ids:
                if i != j:
                    p = LinkProxy(self.reactor, 0, name=f"{i}->{j}")
                    yield p.start()
                    self.proxies[(i, j)] = p
        for i, port in zip(ids, launcher.freePorts(self.n)):
            realPorts[i] = port
        for (i, j), p in self.proxies.items():
            p.targetPort = realPorts[j]
        self.addresses = [f"{HOST}:{realPorts[i]}" for i in ids]
        if self.o["tls"]:
            self.tls = launcher.LocalTLS(os.path.join(self.root, launcher.TLS_DIR), self.n)
            self.clientTLS = self.tls.credentials()
        env = launcher.environment()
        token = f"chaos-{self.seed}-{os.getpid()}"
        for i in ids:
            peers = [
                f"{HOST}:{realPorts[i]}" if j == i else f"{HOST}:{self.proxies[(i, j)].port}"
                for j in ids
            ]
            extra = [
                "--listen", f"tcp:{realPorts[i]}:interface={HOST}", "--cluster-token", token,
                "--snapshot-entries", str(self.o["snapshot-entries"]), "--segment-bytes", "256KiB",
            ]
            argv = launcher.nodeArgv(i, peers, self.root, self.o["election-timeout"], extra,
                                     tls=self.tls)
            self.nodes[i] = launcher.SpawnedNode(
                self.reactor, i, argv, os.path.join(self.root, f"n{i}.log"), self.root, env
            )
        for node in self.nodes.values():
            node.start()

    def killAll(self):
        """SIGCONT then SIGKILL every node; stop the proxies (synchronous part)."""
        waits = []
        for node in self.nodes.values():
            try:
                waits.append(node.kill())
            except Exception:
                waits.append(defer.fail())
        for p in self.proxies.values():
            try:
                p.stop()
            except Exception:
                pass
        return defer.DeferredList(waits, consumeErrors=True)

    # -- cluster queries --------------------------------------------------

    def statusClient(self):
        from twisted_raft.client import RaftKVClient

        return RaftKVClient(self.addresses, self.reactor, timeout=1.0, connectTimeout=0.5,
                            tls=self.clientTLS)

    @defer.inlineCallbacks
    def findLeader(self, client):
        """The node id of the leader with the highest term, or 0."""
        rows = yield client.clusterStatus()
        best = None
        for _, s in rows:
            if s and s["role"].lower() == "leader" and (best is None or s["term"] > best["term"]):
                best = s
        return best["node_id"] if best else 0

    @defer.inlineCallbacks
    def waitForLeader(self, client, patience):
        end = time.monotonic() + patience
        while time.monotonic() < end:
            leader = yield self.findLeader(client)
            if leader:
                return leader
            yield _sleep(self.reactor, 0.2)
        return 0

    # -- clients ----------------------------------------------------------

    @defer.inlineCallbacks
    def clientLoop(self, cid):
        from twisted_raft.client import RaftKVClient

        kwargs = {}
        if self.o["no-sessions"]:
            import inspect

            if "sessions" in inspect.signature(RaftKVClient).parameters:
                kwargs["sessions"] = False
        client = RaftKVClient(
            self.addresses, self.reactor, timeout=self.o["op-timeout"], connectTimeout=1.0,
            tls=self.clientTLS, **kwargs,
        )
        rng = random.Random(f"chaos-client-{self.seed}-{cid}")
        seen = {}
        counter = 0
        try:
            while not self.stopClients:
                key = rng.choice(self.keys)
                r = rng.random()
                if r < 0.4:
                    op = Op(client=cid, kind="get", key=key)
                elif r < 0.65:
                    counter += 1
                    op = Op(client=cid, kind="put", key=key, value=f"c{cid}-{counter}".encode())
                elif r < 0.9:
                    counter += 1
                    op = Op(client=cid, kind="cas", key=key, value=f"c{cid}-{counter}".encode(),
                            expected=seen.get(key))
                else:
                    op = Op(client=cid, kind="delete", key=key)
                op.start = time.monotonic()
                try:
                    if op.kind == "get":
                        result = yield client.get(key)
                    elif op.kind == "put":
                        yield client.put(key, op.value)
                        result = None
                    elif op.kind == "cas":
                        result, _ = yield client.compareAndSet(key, op.expected, op.value)
                    else:
                        result, _ = yield client.delete(key)
                except Exception as e:
                    if op.kind == "get":
                        self.counts["failed-read"] += 1
                    elif _isDefinitelyNotApplied(e):
                        self.counts["failed"] += 1
                    else:
                        op.end = None
                        self.ops.append(op)
                        self.counts["unknown"] += 1
                    self.lastError = f"{type(e).__name__}: {e}"[:200]
                    yield _sleep(self.reactor, 0.05 + 0.1 * rng.random())
                    continue
                op.end = time.monotonic()
                op.result = result
                self.ops.append(op)
                self.counts["ok"] += 1
                if op.kind == "get":
                    seen[key] = result
                elif op.kind == "put" or (op.kind == "cas" and result):
                    seen[key] = op.value
                elif op.kind == "delete":
                    seen[key] = None
        finally:
            yield client.close()

    # -- faults ------------------------------------------------------------

    @defer.inlineCallbacks
    def inject(self, fault, statusClient):
        leader = yield self.findLeader(statusClient)
        self.leader = leader or self.leader
        fault.injected = time.monotonic()
        if fault.kind in ("isolate", "halves", "bridge"):
            groups, bridge = planPartition(fault, self.n, leader)
            fault.blocked = cutLinks(groups, bridge)
            for link in fault.blocked:
                self.proxies[link].block()
            parts = " | ".join("{" + ",".join(f"n{m}" for m in g) + "}" for g in groups)
            fault.description = f"{fault.kind} {parts}" + (f" bridge n{bridge}" if bridge else "")
        else:
            if fault.leader and leader:
                target = leader
            else:
                target = fault.order[0]
            fault.node = target
            node = self.nodes[target]
            if fault.kind == "kill":
                yield node.kill()
                fault.description = f"SIGKILL n{target}"
            else:
                node.pause()
                fault.description = f"SIGSTOP n{target}"
        if (fault.node is not None and fault.node == leader) or (fault.kind == "isolate" and leader):
            fault.description += " (leader)"
        elif fault.kind != "isolate" and leader:
            fault.description += f" (leader n{leader})"
        self.currentFault = fault
        self.log(f"[chaos] {self.elapsed():6.1f}s fault #{fault.index}: {fault.description} for {fault.duration:g}s")

    def heal(self, fault=None):
        """Undo C{fault} (or everything)."""
        for p in self.proxies.values():
            p.unblock()
        for node in self.nodes.values():
            node.resume()
            if not node.running:
                node.start()
        if fault is not None:
            fault.healed = time.monotonic()
            self.log(f"[chaos] {self.elapsed():6.1f}s healed #{fault.index}")
        self.currentFault = None

    @defer.inlineCallbacks
    def faultLoop(self, statusClient):
        for fault in self.faults:
            delay = self.loadStart + fault.at - time.monotonic()
            if delay > 0:
                yield _sleep(self.reactor, delay)
            if self.stopClients:
                return
            yield self.inject(fault, statusClient)
            yield _sleep(self.reactor, fault.duration)
            self.heal(fault)

    # -- progress -----------------------------------------------------------

    def elapsed(self):
        return time.monotonic() - self.loadStart

    @defer.inlineCallbacks
    def progress(self, statusClient):
        leader = yield self.findLeader(statusClient)
        if leader:
            self.leader = leader
        c = self.counts
        fault = self.currentFault.description if self.currentFault else "none"
        self.log(
            f"[chaos] {self.elapsed():6.1f}s ops ok={c['ok']} unknown={c['unknown']} "
            f"failed={c['failed'] + c['failed-read']} fault={fault} "
            f"leader={'n%d' % leader if leader else '?'}"
        )

    # -- after the run -----------------------------------------------------------

    @defer.inlineCallbacks
    def settle(self, statusClient, patience=30.0):
        """
        Wait until every node answers and all have the same last_applied,
        equal to their commit index.  @return: (ok, rows)
        """
        end = time.monotonic() + patience
        rows = []
        while time.monotonic() < end:
            rows = yield statusClient.clusterStatus()
            states = [s for _, s in rows]
            if all(states):
                applied = {s["last_applied"] for s in states}
                commits = {s["commit_index"] for s in states}
                if len(applied) == 1 and applied == commits:
                    return True, rows
            yield _sleep(self.reactor, 0.25)
        return False, rows

    @defer.inlineCallbacks
    def finalReads(self):
        """A linearizable read of every key (recorded as ops of client -1)."""
        from twisted_raft.client import RaftKVClient

        client = RaftKVClient(self.addresses, self.reactor, timeout=5.0, connectTimeout=1.0,
                              tls=self.clientTLS)
        values = {}
        try:
            for key in self.keys:
                for attempt in range(5):
                    op = Op(client=-1, kind="get", key=key, start=time.monotonic())
                    try:
                        value = yield client.get(key)
                    except Exception as e:
                        self.log(f"[chaos] final read of {key} failed: {e}")
                        yield _sleep(self.reactor, 0.5)
                        continue
                    op.end = time.monotonic()
                    op.result = value
                    self.ops.append(op)
                    values[key] = value
                    break
        finally:
            yield client.close()
        return values

    @defer.inlineCallbacks
    def staleReads(self):
        """{node: {key: value}} read with stale=True from each node alone."""
        from twisted_raft.client import RaftKVClient

        result = {}
        for i in sorted(self.nodes):
            client = RaftKVClient([self.addresses[i - 1]], self.reactor, timeout=3.0,
                                  connectTimeout=1.0, tls=self.clientTLS)
            try:
                result[i] = {}
                for key in self.keys:
                    try:
                        result[i][key] = yield client.get(key, stale=True)
                    except Exception as e:
                        result[i][key] = f"<error: {e}>"
            finally:
                yield client.close()
        return result

    # -- main ---------------------------------------------------------------

    @defer.inlineCallbacks
    def run(self):
        o = self.o
        self.faults = makeSchedule(self.seed, o["seconds"], self.n, o["faultKinds"])
        self.log(
            f"[chaos] seed {self.seed}: {self.n} nodes, {o['clients']} clients, "
            f"{len(self.keys)} keys, {o['seconds']:g}s, faults: "
            f"{', '.join(o['faultKinds']) or 'none'} ({len(self.faults)} scheduled)"
        )
        statusClient = None
        try:
            yield self.setUp()
            self.log(f"[chaos] nodes {', '.join(self.addresses)}; data and logs in {self.root}")
            statusClient = self.statusClient()
            leader = yield self.waitForLeader(statusClient, 30.0)
            if not leader:
                self.log("[chaos] no leader elected within 30s; giving up")
                self.tail()
                return EXIT_INCONCLUSIVE
            self.leader = leader
            self.log(f"[chaos] leader is n{leader}; starting {o['clients']} clients")
            self.loadStart = time.monotonic()
            clients = [self.clientLoop(c) for c in range(o["clients"])]
            faults = self.faultLoop(statusClient)
            faults.addErrback(self._faultLoopFailed)
            ticker = task.LoopingCall(lambda: self.progress(statusClient).addErrback(lambda f: None))
            if not o["quiet"]:
                ticker.start(5.0, now=False)
            yield _sleep(self.reactor, o["seconds"])
            self.stopClients = True
            if ticker.running:
                ticker.stop()
            yield defer.DeferredList(clients, consumeErrors=True)
            for c in clients:
                c.addErrback(lambda f: self.log(f"[chaos] client crashed: {f.getTraceback()}"))
            yield faults
            self.loadEnd = time.monotonic()
            # heal, restart, settle
            self.heal()
            self.log(f"[chaos] {self.elapsed():6.1f}s load stopped; healed everything, settling")
            leader = yield self.waitForLeader(statusClient, 30.0)
            settled, rows = yield self.settle(statusClient)
            self.final = yield self.finalReads()
            if settled:
                settled, rows = yield self.settle(statusClient, 10.0)
            self.settled = settled
            self.statusRows = rows
            self.stale = yield self.staleReads()
        finally:
            if statusClient is not None:
                yield statusClient.close()
            yield self.killAll()
        return self.report()

    def _faultLoopFailed(self, failure):
        self.log(f"[chaos] fault injection failed: {failure.getTraceback()}")

    def tail(self, lines=5):
        for i, node in sorted(self.nodes.items()):
            try:
                with open(node.logPath, "rb") as f:
                    text = f.read().decode("utf-8", "replace").splitlines()[-lines:]
            except OSError:
                continue
            for line in text:
                self.log(f"  [n{i}] {line}")

    # -- the verdicts --------------------------------------------------------------

    def writeHistory(self, path):
        t0 = self.loadStart
        with open(path, "w") as f:
            f.write(json.dumps({"type": "run", "seed": self.seed, "nodes": self.n,
                                "argv": self.replayCommand()}) + "\n")
            for fault in self.faults:
                if fault.injected is None:
                    continue
                f.write(json.dumps({
                    "type": "fault", "index": fault.index, "kind": fault.kind,
                    "description": fault.description,
                    "injected": round(fault.injected - t0, 6),
                    "healed": None if fault.healed is None else round(fault.healed - t0, 6),
                }) + "\n")
            for op in sorted(self.ops, key=lambda op: op.start):
                f.write(json.dumps(opToJSON(op, t0)) + "\n")

    def replayCommand(self):
        o = self.o
        parts = [
            "python -m twisted_raft.chaos", f"--nodes {self.n}", f"--seconds {o['seconds']:g}",
            f"--seed {self.seed}", f"--clients {o['clients']}", f"--keys {len(self.keys)}",
            f"--faults {','.join(o['faultKinds']) or 'none'}",
        ]
        if o["election-timeout"]:
            parts.append(f"--election-timeout {o['election-timeout']}")
        if o["no-sessions"]:
            parts.append("--no-sessions")
        if o["tls"]:
            parts.append("--tls")
        if o["op-timeout"] != 3.0:
            parts.append(f"--op-timeout {o['op-timeout']:g}")
        return " ".join(parts)

    def report(self):
        out = self.log
        t0 = self.loadStart
        ops = self.ops
        injected = [f for f in self.faults if f.injected is not None]
        if self.o["history"]:
            self.writeHistory(self.o["history"])
        out("")
        out("=" * 72)
        out(f"chaos summary (seed {self.seed}, {self.n} nodes, {self.o['clients']} clients, "
            f"{len(self.keys)} keys, {self.loadEnd - t0:.1f}s of load)")
        byKind = {}
        for op in ops:
            if op.client < 0:
                continue
            k = byKind.setdefault(op.kind, [0, 0])
            k[0 if op.end is not None else 1] += 1
        c = self.counts
        out(f"ops: {c['ok']} ok, {c['unknown']} outcome unknown, {c['failed']} writes failed "
            f"(not applied), {c['failed-read']} reads failed")
        out("  " + ", ".join(f"{k}: {v[0]} ok/{v[1]} unknown" for k, v in sorted(byKind.items())))
        out(f"faults injected: {len(injected)}")
        for f in injected:
            first = firstSuccessAfter(ops, f.injected)
            firstW = firstSuccessAfter(ops, f.injected, writesOnly=True)
            healed = "-" if f.healed is None else f"{f.healed - t0:5.1f}s"
            out(f"  #{f.index:<2} {f.injected - t0:5.1f}s-{healed}  {f.description:<40} "
                f"first ok op {_fmt(first)}, first ok write {_fmt(firstW)}")
        for i, node in sorted(self.nodes.items()):
            for when, how in node.unexpectedExits:
                out(f"  !! n{i} {how} unexpectedly at {when - t0:.1f}s (see {node.logPath})")
        # availability
        successes = sorted(op.end for op in ops if op.end is not None and op.client >= 0)
        av = availability(successes, t0, self.loadEnd, injected)
        def pct(entry):
            ok, n, frac = entry
            return f"{ok}/{n} ({frac:.0%})" if n else "-"
        out(f"availability ({WINDOW:g}s windows with >=1 successful op): overall {pct(av['all'])}, "
            f"during faults {pct(av['faulty'])}, healthy {pct(av['healthy'])}")
        recov = [firstSuccessAfter(ops, f.injected, writesOnly=True) for f in injected]
        recov = [r for r in recov if r is not None]
        if recov:
            recov.sort()
            out(f"time to first successful write after injection: median {recov[len(recov) // 2]:.2f}s, "
                f"max {recov[-1]:.2f}s")
        # convergence
        exit = EXIT_OK
        crashed = [i for i, node in self.nodes.items() if node.unexpectedExits]
        if crashed:
            # A node that dies on its own (a fatal error, e.g. its storage
            # failing) is a bug to find, even if the others carried on.
            out(f"node exits: FAILED: {', '.join(f'n{i}' for i in sorted(crashed))} exited"
                " without being killed")
            exit = EXIT_VIOLATION
        divergent = []
        for key in self.keys:
            final = self.final.get(key, "<no final read>")
            values = {i: self.stale[i].get(key) for i in self.stale}
            if any(v != final for v in values.values()):
                divergent.append((key, final, values))
        applied = [s["last_applied"] if s else None for _, s in self.statusRows]
        if not self.settled:
            out(f"convergence: FAILED: nodes did not settle (last_applied per node: {applied})")
            exit = EXIT_VIOLATION
        elif divergent:
            out(f"convergence: DIVERGED (last_applied {applied[0]} on every node)")
            for key, final, values in divergent:
                out(f"  {key}: final read {final!r}; stale reads " +
                    ", ".join(f"n{i}={v!r}" for i, v in sorted(values.items())))
            exit = EXIT_VIOLATION
        else:
            out(f"convergence: ok (every node applied {applied[0]}; stale reads of "
                f"{len(self.keys)} keys equal on every node and to a final linearizable read)")
        # linearizability
        out(f"checking linearizability of {len(ops)} ops...")
        started = time.monotonic()
        verdict, text = self.check(ops)
        took = time.monotonic() - started
        if verdict is True:
            out(f"linearizability: linearizable ({len(ops)} ops, checked in {took:.1f}s)")
        elif verdict is None:
            out(f"linearizability: UNKNOWN: the check timed out after {took:.1f}s")
            if exit == EXIT_OK:
                exit = EXIT_INCONCLUSIVE
        else:
            out("linearizability: NOT LINEARIZABLE")
            out(text)
            exit = EXIT_VIOLATION
        if exit != EXIT_OK:
            out(f"seed: {self.seed}")
            out(f"replay: {self.replayCommand()}")
            out(f"node logs kept in {self.root}")
            if self.o["history"]:
                out(f"history: {self.o['history']}")
        out(f"result: {'OK' if exit == EXIT_OK else 'FAILED' if exit == EXIT_VIOLATION else 'INCONCLUSIVE'}")
        out("=" * 72)
        if exit == EXIT_OK and self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
        return exit

    def check(self, ops):
        """@return: (True | False | None for timed out, description)."""
        result = linearizability.check(list(ops), timeLimit=CHECK_TIME_LIMIT)
        if result.ok:
            return True, ""
        if result.timedOut:
            return None, linearizability.describe(result)
        return False, linearizability.describe(result)


# -- entry point ---------------------------------------------------------------------


def checkHistoryFile(path, out=print):
    """Re-check a history written by C{--history}. @return: exit status."""
    ops = []
    with open(path) as f:
        for line in f:
            d = json.loads(line)
            if d.get("type") == "op":
                ops.append(opFromJSON(d))
    result = linearizability.check(ops, timeLimit=CHECK_TIME_LIMIT)
    out(f"{len(ops)} ops: " + ("linearizable" if result.ok else linearizability.describe(result)))
    if result.ok:
        return EXIT_OK
    return EXIT_INCONCLUSIVE if result.timedOut else EXIT_VIOLATION


def main(argv=None):
    """Run the tool; @return: the exit status."""
    if argv is None:
        argv = sys.argv[1:]
    if len(argv) == 2 and argv[0] == "--check-history":
        return checkHistoryFile(argv[1])
    options = parseOptions(Options(), argv)
    if options is None:
        return EXIT_USAGE
    codes = []

    def run(reactor):
        chaos = Chaos(reactor, options)
        # Ctrl-C / SIGTERM / any exit: never leave a node behind.
        def onShutdown():
            if not codes:
                chaos.log("[chaos] interrupted: killing every node")
            return chaos.killAll()

        reactor.addSystemEventTrigger("before", "shutdown", onShutdown)
        d = chaos.run()
        d.addCallback(codes.append)
        return d

    try:
        task.react(run)
    except SystemExit as e:
        if codes:
            return codes[0]
        return e.code if isinstance(e.code, int) and e.code else EXIT_INCONCLUSIVE
    return codes[0] if codes else EXIT_INCONCLUSIVE


if __name__ == "__main__":
    sys.exit(main())
