"""
C{python -m twisted_raft.chaos}: fault injection against real node processes,
with a linearizability check of everything the clients saw.

    python -m twisted_raft.chaos [--nodes 3] [--seconds 60] [--seed 1]
        [--clients 4] [--keys 3] [--faults partition,kill,pause]
        [--data DIR] [--history FILE] [--json FILE] [--tls]
        [--membership [--changes add,remove,remove-leader,transfer] [--no-strikes]]
        [--workload kv|bank]
    python -m twisted_raft.chaos --check-history FILE   # re-check a saved history

What it does:

  - Starts N real nodes (C{python -m twisted --log-format=text raftkv ...
    --log-format json --http tcp:PORT:interface=127.0.0.1}) on 127.0.0.1,
    each logging one JSON object per line to C{DATA/n<i>.log} and serving
    C{/metrics} and C{/health} on a port of its own.  Every peer link goes
    through a L{LinkProxy} in this process: node i's C{--peers} entry j is a
    proxy forwarding to node j's real port, so each directed link i->j can be
    cut (existing connections aborted, new ones aborted at once).
  - Runs C concurrent clients (each its own L{RaftKVClient}, talking to the
    nodes' real ports) doing random get / put / compareAndSet / delete on a
    few keys, and records every operation with C{time.monotonic()} stamps.
    With C{--workload bank}, the clients move amounts between accounts in
    transactions instead (L{twisted_raft.tools.bank}), and every read of
    the accounts must show the same total.
  - Watches the workload's keys (their prefix) from the start through the
    client library's L{Watcher}, which resumes on another node when its
    node dies (L{twisted_raft.tools.watchrun}); at the end every event must
    have been delivered once, in order, with no gap, as the acknowledged
    writes, the per-key versions, a final read and the nodes' committed
    logs (read offline, L{twisted_raft.tools.eventlog}) say
    (L{twisted_raft.tools.watchcheck}).
  - Injects faults one at a time on a schedule drawn from C{--seed}, with a
    healing gap between them: isolate the leader, random majority/minority
    halves, a bridge (two halves that both reach one node), SIGKILL a node
    (sometimes the leader) then restart it from its data dir, SIGSTOP a node
    then SIGCONT it.
  - With C{--tls}, nodes and clients use mutual TLS (a throwaway CA in
    C{DATA/tls}, see L{twisted_raft.tools.launcher.LocalTLS}); the proxies
    forward the encrypted bytes unchanged.
  - With C{--membership}, also changes the cluster's members on a schedule
    of its own, beside the faults (L{twisted_raft.tools.memberchanges}):
    fresh nodes started with C{--join}, added as learners and promoted,
    followers and leaders removed (then stopped), leadership transferred;
    a third of them with the leader killed or paused just after it got the
    request.
    Every node that may ever run has a proxy for every link from the start
    (a node's C{--peers} names them), so partitions cut added nodes too; the
    clients' address lists follow the members.
  - Throughout, polls every node's C{Status} and the member list, and
    afterwards reads the nodes' logs (L{twisted_raft.tools.watch}); scrapes
    every running node's C{/metrics} and C{/health} about once a second
    (L{twisted_raft.tools.scrape}: each node in a loop of its own with a
    short timeout, never waiting on the fault loop nor it on them).
  - Afterwards heals everything, lets the cluster settle and checks
    (1) linearizability of the whole history, (2) convergence: every member
    has applied the same log, uses the same configuration (the one the
    member list gives) and answers the same stale reads, equal to a final
    linearizable read, (3) at most one leader per term and at most one
    configuration per log index, from what the nodes said, (4) availability
    per 1 s window and the time to the first success after each fault,
    (5) observability (L{twisted_raft.tools.observe}): every C{/health}
    answer 200 or 503 with a JSON C{healthy} that matches, every
    C{/metrics} answer parsed with every metric name, no counter or term
    going down within one node process, every log line a JSON object whose
    C{role_change} events chain and whose C{leader_change} events never
    repeat within one process, and at the end every member healthy with
    exactly one C{raftkv_is_leader} within 15 s (the C{observability:}
    lines, and C{observability} in C{--json}), (6) watch completeness
    (C{watch:}, C{watch} in C{--json}), and with C{--workload bank} (7) the
    total at every read of the accounts (C{bank:}, C{bank} in C{--json}).

Exit status: 0 all good; 1 linearizability violation, divergence, no
convergence, two leaders in a term, two configurations at an index, a
node that exited on its own, an observability violation, an event the
watcher missed, got twice or out of order, or a bank total that changed;
2 usage error; 3 inconclusive (the cluster never elected a leader, the
check ran out of time, the watcher fell behind every node's history
(COMPACTED), or this tool failed).

The fault schedule is L{twisted_raft.tools.faults}, the history's format
and measures L{twisted_raft.tools.history}, the node processes
L{twisted_raft.tools.launcher}, the membership changes
L{twisted_raft.tools.memberchanges}, the leader and configuration checks
L{twisted_raft.tools.watch}, the scraper L{twisted_raft.tools.scrape},
the observability checks L{twisted_raft.tools.observe}, the watcher and
its checks L{twisted_raft.tools.watchrun}, L{twisted_raft.tools.watchcheck}
and L{twisted_raft.tools.eventlog}, and the bank workload
L{twisted_raft.tools.bank}.  What is left here is one module on purpose: the run (L{Chaos}: set-up, clients,
injection, settling and the verdict) is one object whose steps all read
and write the same run's state.

Why one module of over 1,000 lines: it is the run itself -- starting and
wiring the processes and proxies, the fault loop, the clients, and the end
checks that read all of them -- and each of those reads the others' state.
What stands alone already lives apart: the fault schedule
(L{twisted_raft.tools.faults}), membership changes
(L{twisted_raft.tools.memberchanges}), the polling of leaders and
configurations (L{twisted_raft.tools.watch}), the scraping and its checks
(L{twisted_raft.tools.scrape}, L{twisted_raft.tools.observe}), the
watcher and its checks, the bank workload and the history
(L{twisted_raft.tools.history}).

Why one module of about 1,000 lines (some 750 of code, the rest this
manual): the L{Chaos} run's set-up, clients, faults, progress and settling
act on one run's state; its verdicts are L{twisted_raft.tools.chaosverdicts},
and every piece that stands alone is in a module of its own (above).
"""

import json
import os
import random
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
from twisted_raft.tools.bank import PREFIX as BANK_PREFIX
from twisted_raft.tools.bank import Bank
from twisted_raft.tools.eventlog import readWindow
from twisted_raft.tools.faults import (
    CHANGE_KINDS,
    cutLinks,
    makeChanges,
    makeSchedule,
    orderAmong,
    parseChanges,
    parseFaults,
    planPartition,
    plannedAdds,
)
from twisted_raft.tools.chaosverdicts import (
    CHECK_TIME_LIMIT,
    EXIT_INCONCLUSIVE,
    EXIT_OK,
    EXIT_USAGE,
    EXIT_VIOLATION,
    ChaosVerdicts,
)
from twisted_raft.tools.history import opFromJSON
from twisted_raft.tools.launcher import HOST
from twisted_raft.tools.memberchanges import STEP_TIMEOUT, MemberChanges
from twisted_raft.tools.observe import (
    FINAL_PATIENCE,
    HEALTH,
    METRICS,
    Observability,
    finalProblems,
    sampleValue,
)
from twisted_raft.tools.scrape import Scraper
from twisted_raft.tools.watch import Watch
from twisted_raft.tools.watchrun import WatchRun

SPARE_IDS = 2
"""Fresh node ids beyond the planned adds: an add that fails uses its id up."""

WORKLOADS = ("kv", "bank")
MAX_BANK_CLIENTS = 256
KV_PREFIX = "k"
"""The prefix of the kv workload's keys (C{k0}, C{k1}, ...): what the watcher watches."""


# -- options -----------------------------------------------------------------


class Options(ToolOptions):
    synopsis = (
        "raftkv chaos [--nodes 3] [--seconds 60] [--seed 1] "
        "[--clients 4] [--keys 3] [--faults partition,kill,pause] [--data DIR] "
        "[--history FILE] [--json FILE] [--tls] [--membership [--changes KINDS] [--no-strikes]] "
        "[--workload kv|bank]"
    )
    longdesc = (
        "Run real raftkv nodes behind controllable TCP proxies, inject faults "
        "(partitions, SIGKILL, SIGSTOP) on a seeded schedule while concurrent "
        "clients read and write, then check the history for linearizability, "
        "the nodes for convergence, and their metrics, health answers and JSON "
        "logs throughout.  Fault names: partition (= isolate, halves, "
        "bridge), kill, pause, or any of isolate, halves, bridge.  --membership "
        "also adds, promotes and removes nodes and transfers leadership meanwhile.  "
        "A watcher of the workload's keys checks that every change is delivered once, "
        "in order.  --workload bank: transfers between accounts in transactions, "
        "the total audited at every read."
    )
    optParameters = [
        ["nodes", "n", 3, "Number of nodes.", int],
        ["seconds", "s", 60.0, "Seconds of load (faults are injected during it).", float],
        ["seed", None, 1, "Seed of the fault schedule and the clients' choices.", int],
        ["clients", "c", 4, "Concurrent clients (1..64; with --workload bank 1..256).", int],
        ["keys", "k", None,
         "Number of keys the clients use (default 3; with --workload bank, the accounts:"
         " default 10).", int],
        ["workload", "w", "kv",
         "kv: get, put, compare-and-set and delete, checked for linearizability; bank:"
         " transactions moving amounts between accounts, the total audited."],
        ["faults", "f", "partition,kill,pause", "Comma-separated fault kinds to inject (or 'none')."],
        ["data", "d", None, "Directory for node data and logs (default: a new temporary one)."],
        ["history", None, None,
         "Write the history (ops, faults and membership changes) as JSON lines to this file."],
        ["json", None, None, "Write the run's figures and verdicts as one JSON object to this file."],
        ["changes", None, ",".join(CHANGE_KINDS),
         "With --membership: the membership changes to make (add, remove, remove-leader,"
         " transfer)."],
        ["election-timeout", None, None, "Passed to every node as --election-timeout (ms)."],
        ["op-timeout", None, 3.0, "Client timeout per operation, seconds.", float],
        ["snapshot-entries", None, 1000,
         "Passed to every node (small, so snapshots, compaction and snapshot"
         " transfers happen under faults).", int],
    ]
    optFlags = [
        ["quiet", "q", "No progress lines."],
        ["no-sessions", None,
         "Clients without exactly-once sessions: more writes end with an unknown outcome."],
        ["tls", None, "Nodes and clients with mutual TLS (a throwaway CA in the data directory)."],
        ["membership", "m",
         "Change the members meanwhile: add fresh nodes (learner, catch-up, promote), remove"
         " followers and the leader, transfer leadership (needs --nodes 3 or more)."],
        ["no-strikes", None,
         "With --membership: no crashes in the middle of changes (SIGKILL or SIGSTOP of the"
         " leader just after it got one; by default a third of the changes)."],
    ]

    def postOptions(self):
        if not 1 <= self["nodes"] <= 9:
            raise usage.UsageError("--nodes must be 1..9")
        if not self["seconds"] > 0:
            raise usage.UsageError("--seconds must be positive")
        if self["workload"] not in WORKLOADS:
            raise usage.UsageError(f"--workload must be one of {', '.join(WORKLOADS)}")
        bank = self["workload"] == "bank"
        if not 1 <= self["clients"] <= (MAX_BANK_CLIENTS if bank else 64):
            raise usage.UsageError(
                f"--clients must be 1..{MAX_BANK_CLIENTS if bank else 64}")
        if self["keys"] is None:
            self["keys"] = 10 if bank else 3
        if not (2 if bank else 1) <= self["keys"] <= 100:
            raise usage.UsageError(f"--keys must be {2 if bank else 1}..100")
        if not self["op-timeout"] > 0:
            raise usage.UsageError("--op-timeout must be positive")
        self["faultKinds"] = parseFaults(self["faults"], self["nodes"])
        self["changeKinds"] = []
        if self["membership"]:
            if self["nodes"] < 3:
                raise usage.UsageError("--membership needs --nodes 3 or more")
            self["changeKinds"] = parseChanges(self["changes"])


# -- client errors ---------------------------------------------------------------------


def _isDefinitelyNotApplied(exc):
    from twisted_raft.rpc.commands import InvalidArgument, NotProposed, ValueTooLarge

    return isinstance(exc, (InvalidArgument, ValueTooLarge, NotProposed))


# -- the run --------------------------------------------------------------------------


def _sleep(reactor, seconds):
    return task.deferLater(reactor, seconds, lambda: None)




class Chaos(ChaosVerdicts):
    def __init__(self, reactor, options, out=None):
        self.reactor = reactor
        self.o = options
        self.out = out or (lambda line: print(line, flush=True))
        self.n = options["nodes"]
        self.seed = options["seed"]
        self.bank = None
        if options["workload"] == "bank":
            self.bank = Bank(self, options["keys"])
            self.keys = self.bank.keys
            self.prefix = BANK_PREFIX
        else:
            self.keys = [f"{KV_PREFIX}{i}" for i in range(options["keys"])]
            self.prefix = KV_PREFIX
        self.watchRun = None  # the watcher of the workload's keys
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
        self.initialIds = list(range(1, self.n + 1))
        self.allIds = list(self.initialIds)  # and the fresh ids for nodes to add
        self.realPorts = {}  # id -> the port the node listens on
        self.httpPorts = {}  # id -> the port of its --http side
        self.logOffsets = {}  # id -> where this run's part of its log starts
        self.clients = set()  # open clients whose addresses follow the members
        self.changes = []
        self.membership = None  # the MemberChanges with --membership
        self.watch = None
        self.scraper = None  # scrapes /metrics and /health from the first leader on
        self.observability = Observability()
        self.finalMembers = None
        self.settled = False
        self.statusRows = []
        self.toolErrors = []  # this tool's own failures: the run proves less

    def log(self, text):
        self.out(text)

    # -- nodes and members --------------------------------------------------

    def address(self, nodeId):
        return f"{HOST}:{self.realPorts[nodeId]}"

    def memberIds(self):
        """The members' ids as last known (the initial nodes without
        --membership), those whose process is stopped for good left out."""
        if self.membership is None:
            return list(self.initialIds)
        retired = self.membership.retired
        return sorted(i for i in self.membership.members if i not in retired)

    @property
    def addresses(self):
        """The members' addresses: where the clients send requests."""
        return [self.address(i) for i in self.memberIds()]

    def membersChanged(self):
        """The members changed: every client follows."""
        addresses = self.addresses
        for client in self.clients:
            client.setAddresses(addresses)

    def acknowledged(self, kind, key, value, revision):
        """A write answered with its revision: for the watch check
        (L{twisted_raft.tools.watchcheck.WatchCheck.acknowledged})."""
        if self.watchRun is not None:
            self.watchRun.acknowledged(kind, key, value, revision)

    def newClient(self, addresses=None, **kwargs):
        """A RaftKVClient (on the members, following them unless
        C{addresses} is given); L{closeClient} it."""
        from twisted_raft.client import RaftKVClient

        client = RaftKVClient(addresses or self.addresses, self.reactor, tls=self.clientTLS,
                              **kwargs)
        if addresses is None:
            self.clients.add(client)
        return client

    def closeClient(self, client):
        self.clients.discard(client)
        return client.close()

    def memberClient(self):
        """A client for membership requests, on the members
        (L{closeClient} it)."""
        return self.newClient(timeout=STEP_TIMEOUT, connectTimeout=1.0)

    # -- setup ------------------------------------------------------------

    @defer.inlineCallbacks
    def setUp(self):
        if self.o["data"]:
            self.root = os.path.abspath(self.o["data"])
            os.makedirs(self.root, exist_ok=True)
        else:
            self.root = self.tmp = tempfile.mkdtemp(prefix="raftkv-chaos-")
        ids = self.allIds
        # proxies first (they hold their ports), then the nodes' real ports;
        # a node yet to be added gets its port when it starts
        for i in ids:
            for j in ids:
                if i != j:
                    p = LinkProxy(self.reactor, 0, name=f"{i}->{j}")
                    yield p.start()
                    self.proxies[(i, j)] = p
        ports = launcher.freePorts(2 * self.n)
        for n, i in enumerate(self.initialIds):
            self.realPorts[i], self.httpPorts[i] = ports[2 * n], ports[2 * n + 1]
        for (i, j), p in self.proxies.items():
            p.targetPort = self.realPorts.get(j, 0)
        if self.o["tls"]:
            self.tls = launcher.LocalTLS(os.path.join(self.root, launcher.TLS_DIR), len(ids))
            self.clientTLS = self.tls.credentials()
        self.env = launcher.environment()
        self.token = f"chaos-{self.seed}-{os.getpid()}"
        for i in self.initialIds:
            if self.membership is None:
                argv = self.nodeArgv(i)
            else:
                # --peers bootstraps the cluster from the initial nodes alone
                argv = self.nodeArgv(i, self.initialIds)
            self.spawn(i, argv)
        if self.membership is not None:
            yield self.rebootstrap()

    def nodeArgv(self, nodeId, ids=None, join=False):
        """
        Node C{nodeId}'s command line: its C{--peers} entry for every other
        node is the proxy of that link.  Without C{ids}, positional peers of
        the initial nodes (as before membership change); with C{ids}, an
        C{ID=HOST:PORT} entry for each (C{--peers} bootstraps a new cluster
        only: after that, entries only say how to reach a member, so they
        may name nodes that are not, or not yet, members).
        """
        def peer(j):
            return self.address(nodeId) if j == nodeId else f"{HOST}:{self.proxies[(nodeId, j)].port}"

        peers = [peer(j) for j in self.initialIds] if ids is None else {j: peer(j) for j in ids}
        extra = [
            "--listen", f"tcp:{self.realPorts[nodeId]}:interface={HOST}",
            "--cluster-token", self.token,
            "--snapshot-entries", str(self.o["snapshot-entries"]), "--segment-bytes", "256KiB",
            "--log-format", "json",
        ]
        return launcher.nodeArgv(nodeId, peers, self.root, self.o["election-timeout"], extra,
                                 tls=self.tls, join=join,
                                 http=launcher.httpEndpoint(self.httpPorts[nodeId]))

    def spawn(self, nodeId, argv):
        logPath = os.path.join(self.root, f"n{nodeId}.log")
        try:
            self.logOffsets[nodeId] = os.path.getsize(logPath)
        except OSError:
            self.logOffsets[nodeId] = 0
        node = self.nodes[nodeId] = launcher.SpawnedNode(
            self.reactor, nodeId, argv, logPath, self.root, self.env
        )
        node.start()
        return node

    @defer.inlineCallbacks
    def rebootstrap(self, patience=30.0):
        """
        Once every initial node has stored its bootstrap configuration,
        restart it with a C{--peers} entry (its proxy) for every node that
        may join, so that links to nodes added later go through proxies too.
        """
        from twisted_raft.storage.files import BOOTSTRAP_FILE

        paths = [os.path.join(launcher.dataPath(self.root, i), BOOTSTRAP_FILE)
                 for i in self.initialIds]
        end = time.monotonic() + patience
        while not all(os.path.exists(p) for p in paths):
            if time.monotonic() > end:
                raise RuntimeError(f"the nodes stored no bootstrap configuration in {patience:g}s")
            yield _sleep(self.reactor, 0.1)
        yield defer.DeferredList([self.nodes[i].kill() for i in self.initialIds])
        for i in self.initialIds:
            node = self.nodes[i]
            node.argv = self.nodeArgv(i, self.allIds)
            node.start()

    @defer.inlineCallbacks
    def startJoiner(self, nodeId, patience=20.0):
        """
        Start node C{nodeId} with C{--join} and wait until it answers.
        @return: Deferred[its address].
        """
        port, self.httpPorts[nodeId] = launcher.freePorts(2)
        self.realPorts[nodeId] = port
        for (i, j), p in self.proxies.items():
            if j == nodeId:
                p.targetPort = port
        node = self.spawn(nodeId, self.nodeArgv(nodeId, self.allIds, join=True))
        address = self.address(nodeId)
        client = self.newClient([address], timeout=1.0, connectTimeout=0.5)
        end = time.monotonic() + patience
        try:
            while True:
                if not node.running:
                    raise RuntimeError(f"it exited at start (see {node.logPath})")
                try:
                    yield client.status(address)
                    return address
                except Exception:
                    if time.monotonic() > end:
                        raise RuntimeError(f"it did not answer within {patience:g}s")
                yield _sleep(self.reactor, 0.2)
        finally:
            yield client.close()

    def retire(self, nodeId):
        """Stop node C{nodeId}'s process (SIGTERM) for good. @return: Deferred."""
        node = self.nodes.get(nodeId)
        return defer.succeed(None) if node is None else node.terminate()

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
        return self.newClient(timeout=1.0, connectTimeout=0.5)

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
        kwargs = {}
        if self.o["no-sessions"]:
            kwargs["sessions"] = False
        client = self.newClient(timeout=self.o["op-timeout"], connectTimeout=1.0, **kwargs)
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
                        revision = yield client.put(key, op.value)
                        result = None
                        self.acknowledged("put", key, op.value, revision)
                    elif op.kind == "cas":
                        result, revision = yield client.compareAndSet(key, op.expected, op.value)
                        self.acknowledged("put" if result else "none", key, op.value, revision)
                    else:
                        result, revision = yield client.delete(key)
                        self.acknowledged("delete" if result else "none", key, None, revision)
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
            yield self.closeClient(client)

    # -- faults ------------------------------------------------------------

    @defer.inlineCallbacks
    def inject(self, fault, statusClient):
        leader = yield self.findLeader(statusClient)
        self.leader = leader or self.leader
        fault.injected = time.monotonic()
        members = self.memberIds()
        if fault.kind in ("isolate", "halves", "bridge"):
            groups, bridge = planPartition(fault, self.n, leader, members)
            fault.blocked = cutLinks(groups, bridge)
            for link in fault.blocked:
                self.proxies[link].block()
            parts = " | ".join("{" + ",".join(f"n{m}" for m in g) + "}" for g in groups)
            fault.description = f"{fault.kind} {parts}" + (f" bridge n{bridge}" if bridge else "")
        else:
            if fault.leader and leader:
                target = leader
            else:
                target = orderAmong(fault, members)[0]
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
        retired = self.membership.retired if self.membership is not None else ()
        for nodeId, node in self.nodes.items():
            if nodeId in retired:
                continue  # stopped for good; SIGTERM'd, so never paused
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
        watched = ""
        if self.watchRun is not None and self.watchRun.check is not None:
            watched = f" watched={len(self.watchRun.check.events)}"
        self.log(
            f"[chaos] {self.elapsed():6.1f}s ops ok={c['ok']} unknown={c['unknown']} "
            f"failed={c['failed'] + c['failed-read']}{watched} fault={fault} "
            f"leader={'n%d' % leader if leader else '?'}"
        )

    # -- after the run -----------------------------------------------------------

    @defer.inlineCallbacks
    def settle(self, statusClient, patience=30.0):
        """
        Wait until every member answers and all have the same last_applied,
        equal to their commit index, and use the same configuration.
        @return: (ok, rows)
        """
        end = time.monotonic() + patience
        rows = []
        while time.monotonic() < end:
            rows = yield statusClient.clusterStatus()
            states = [s for _, s in rows]
            if all(states):
                applied = {s["last_applied"] for s in states}
                commits = {s["commit_index"] for s in states}
                configurations = {s["config_revision"] for s in states}
                if len(applied) == 1 and applied == commits and len(configurations) == 1:
                    return True, rows
            yield _sleep(self.reactor, 0.25)
        return False, rows

    @defer.inlineCallbacks
    def finalReads(self):
        """A linearizable read of every key (recorded as ops of client -1)."""
        client = self.newClient(timeout=5.0, connectTimeout=1.0)
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
            yield self.closeClient(client)
        return values

    @defer.inlineCallbacks
    def staleReads(self):
        """{node: {key: value}} read with stale=True from each member alone."""
        result = {}
        for i in self.memberIds():
            client = self.newClient([self.address(i)], timeout=3.0, connectTimeout=1.0)
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
        if o["membership"]:
            self.changes = makeChanges(self.seed, o["seconds"], self.n, o["changeKinds"],
                                       strikes=not o["no-strikes"])
            fresh = list(range(self.n + 1, self.n + 1 + plannedAdds(self.changes) + SPARE_IDS))
            self.allIds = self.initialIds + fresh
            self.membership = MemberChanges(self, self.changes, fresh)
        self.log(
            f"[chaos] seed {self.seed}: {self.n} nodes, {o['clients']} clients, "
            f"{len(self.keys)} keys, {o['seconds']:g}s, faults: "
            f"{', '.join(o['faultKinds']) or 'none'} ({len(self.faults)} scheduled)"
            + (f"; membership changes: {', '.join(o['changeKinds'])} ({len(self.changes)} "
               "scheduled)" if self.membership is not None else "")
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
            self.startWatch(statusClient)
            if self.bank is not None:
                yield self.bank.setUp()
            self.watchRun = WatchRun(
                self.reactor, lambda: self.newClient(timeout=5.0, connectTimeout=1.0),
                self.closeClient, self.prefix, self.log,
            )
            yield self.watchRun.start()
            self.log(f"[chaos] leader is n{leader}; watching {self.prefix!r} from revision "
                     f"{self.watchRun.check.startRevision}; starting {o['clients']} "
                     f"{o['workload']} clients")
            self.loadStart = self.observability.t0 = time.monotonic()
            loop = self.clientLoop if self.bank is None else self.bank.clientLoop
            clients = [loop(c) for c in range(o["clients"])]
            faults = self.faultLoop(statusClient)
            faults.addErrback(self._faultLoopFailed)
            changes = defer.succeed(None)
            if self.membership is not None:
                changes = self.membership.loop()
                changes.addErrback(self._changeLoopFailed)
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
            yield changes
            self.loadEnd = time.monotonic()
            # heal, restart, settle
            self.heal()
            self.log(f"[chaos] {self.elapsed():6.1f}s load stopped; healed everything, settling")
            leader = yield self.waitForLeader(statusClient, 30.0)
            if self.membership is not None:
                # the members as the cluster has them: the ones to check
                if not (yield self.membership.reconcile(patience=30.0)):
                    self.log("[chaos] the member list could not be read after the load")
            settled, rows = yield self.settle(statusClient)
            self.final = yield self.finalReads()
            if self.bank is not None:
                yield self.bank.finalRead()
            yield self.finishWatch()
            if settled:
                settled, rows = yield self.settle(statusClient, 10.0)
            self.settled = settled
            self.statusRows = rows
            for attempt in range(5):
                self.finalMembers = yield self.watch.readMembers()
                if self.finalMembers is not None:
                    break
                yield _sleep(self.reactor, 1.0)
            yield self.finalObservation()
            self.stale = yield self.staleReads()
        finally:
            if self.membership is not None:
                self.membership.stop()
            if self.scraper is not None:
                yield self.scraper.stop()
            if self.watch is not None:
                yield self.watch.stop()
            if self.watchRun is not None:
                yield self.watchRun.stop()
            if statusClient is not None:
                yield self.closeClient(statusClient)
            for client in list(self.clients):
                yield self.closeClient(client)
            yield self.killAll()
            if self.watch is not None:
                self.readLogs()
            if self.watchRun is not None and self.watchRun.check is not None:
                self.readEventLogs()
        return self.report()

    @defer.inlineCallbacks
    def finishWatch(self):
        """A final linearizable read of the watched prefix; the watcher is
        stopped once it was handed everything up to that read's revision."""
        run = self.watchRun
        if run is None or run.check is None:
            return
        for attempt in range(5):
            try:
                final = yield run.client.rangeAll(self.prefix, prefix=True)
            except Exception as e:
                self.log(f"[chaos] the final read of {self.prefix!r} failed: {e}")
                yield _sleep(self.reactor, 0.5)
                continue
            run.check.finalRead(final.revision, final.kvs)
            yield run.finish(final.revision)
            return
        yield run.finish(0)

    def readEventLogs(self):
        """
        Every member's committed log, read offline (the nodes are dead), as
        the truth for the watch check: up to the index every member had
        applied when they settled (so committed), where it is still in the
        write-ahead log.
        """
        check = self.watchRun.check
        if not self.settled:
            check.logProblems.append("the nodes did not settle: no index known committed")
            return
        upTo = self.statusRows[0][1]["last_applied"]
        for i in self.memberIds():
            try:
                check.addLog(readWindow(i, launcher.dataPath(self.root, i), self.prefix, upTo))
            except Exception as e:
                check.logProblems.append(f"n{i}: {type(e).__name__}: {e}"[:300])

    def readLogs(self):
        """This run's part of every node's log (each complete: the nodes are
        dead), for the leader lines and the log checks."""
        for i in sorted(self.nodes):
            try:
                with open(self.nodes[i].logPath, "rb") as f:
                    f.seek(self.logOffsets[i])
                    data = f.read()
            except OSError as e:
                self.toolErrors.append(f"n{i}'s log could not be read: {e}")
                continue
            self.watch.observations.readLogData(data)
            self.observability.nodeLog(i, data)

    @defer.inlineCallbacks
    def finalObservation(self, patience=FINAL_PATIENCE):
        """
        After settling: every member's C{/health} is 200 and exactly one of
        them says C{raftkv_is_leader 1}, within C{patience} seconds (the
        last round's problems are the verdict).
        """
        members = self.memberIds()
        started = time.monotonic()
        while True:
            answers = yield self.scraper.round(members)
            health = {i: a[HEALTH].code if a[HEALTH] is not None else None
                      for i, a in answers.items()}
            isLeader = {i: sampleValue(a[METRICS], "raftkv_is_leader")
                        for i, a in answers.items()}
            problems = finalProblems(members, health, isLeader)
            took = time.monotonic() - started
            if not problems or took > patience:
                break
            yield _sleep(self.reactor, 0.25)
        self.observability.finalCheck(problems, took)

    def startWatch(self, statusClient):
        """Poll every node process and the member list, and scrape every
        node's /metrics and /health, from now on."""
        memberList = self.newClient(timeout=2.0, connectTimeout=0.5)

        def nodes():
            return {i: (self.address(i), node) for i, node in self.nodes.items() if node.running}

        def httpNodes():
            return {i: (self.httpPorts[i], node) for i, node in self.nodes.items()
                    if node.running}

        self.watch = Watch(self.reactor, statusClient, nodes, lambda: memberList)
        self.watch.start()
        self.scraper = Scraper(self.reactor, httpNodes, self.observability.sample)
        self.scraper.start()

    def _changeLoopFailed(self, failure):
        self.toolErrors.append("the membership changes stopped on an error")
        self.log(f"[chaos] membership changes failed: {failure.getTraceback()}")

    def _faultLoopFailed(self, failure):
        self.toolErrors.append("fault injection failed")
        self.log(f"[chaos] fault injection failed: {failure.getTraceback()}")

    def tail(self, lines=5):
        from twisted_raft.logs import parseLine

        for i, node in sorted(self.nodes.items()):
            try:
                with open(node.logPath, "rb") as f:
                    text = f.read().decode("utf-8", "replace").splitlines()[-lines:]
            except OSError:
                continue
            for line in text:
                record = parseLine(line)
                if record is not None:
                    line = f"{record.get('level')} {record.get('message')}"
                self.log(f"  [n{i}] {line}")


# -- entry point ---------------------------------------------------------------------


def checkHistoryFile(path, out=print):
    """Re-check a history written by C{--history}. @return: exit status."""
    ops = []
    with open(path) as f:
        for line in f:
            d = json.loads(line)
            if d.get("type") == "run" and d.get("workload", "kv") != "kv":
                out(f"a {d['workload']} workload's history: its operations are not checked "
                    "for linearizability")
                return EXIT_INCONCLUSIVE
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
