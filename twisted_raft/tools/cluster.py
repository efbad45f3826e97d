"""
C{raftkv cluster}: run a local cluster of real node processes in the
foreground.

    raftkv cluster [--nodes 3] [--base-port 8001] [--data ./data]
                   [--election-timeout T] [--tls] [--verbose] [-- EXTRA NODE ARGS]

Node C{i} (1-based) listens on C{127.0.0.1:<base-port + i - 1>} and keeps
its data in C{DATA/n<i>} (kept between runs).  Each node runs as

    <python> -m twisted --log-format=text raftkv --id i --peers <all> --data DATA/n<i>

(C{python -m twisted} is the C{twist} runner: always in the foreground and
without a pidfile, so several nodes can run from one directory), with
C{--cluster-token-file DATA/cluster-token}: a random token made when the
cluster is new, so that its peers authenticate with a secret (data dirs made
before there was one keep the default token, and a C{--cluster-token} among
the extra node arguments wins).  Everything
a node prints goes to C{DATA/n<i>.log}; important lines (errors, tracebacks,
leadership changes) are echoed here prefixed C{[n<i>]}, or every line with
C{--verbose}.  Ctrl-C or SIGTERM stops every node (SIGTERM, then SIGKILL
after a grace period).  A node that dies on its own is reported and the
others keep running; when all have died the command exits with status 1.

The nodes' ports are checked before any starts: one taken is named, and the
command exits with status 1.  Each node runs in a session of its own
(L{launcher.guardedArgv}), so a Ctrl-C at the terminal reaches only this
command, which stops each node once; and each dies with this command, even
if it is killed with SIGKILL.

While it runs, its membership can change from another terminal:

    raftkv cluster add [--learner] [--data DIR]
    raftkv cluster remove ID [--data DIR]
    raftkv cluster stop ID [--data DIR]
    raftkv cluster restart ID [--data DIR]

C{add} starts the next local node (the next id never used in DIR, on
C{base-port + id - 1}) with C{--join}, waits until it answers, and asks the
cluster to add it (L{RaftKVClient.addMember}: as a learner, promoted once
caught up unless C{--learner}); C{remove} asks the cluster to remove node ID
(L{RaftKVClient.removeMember}) and then stops its process; C{stop} stops
node ID's process (a member still, the others go on without it) and
C{restart} stops it if it runs and starts it again on its data dir.  All go to the
running C{raftkv cluster}, which owns the node processes, over its control
socket C{DIR/control.sock} (L{twisted_raft.tools.clustercontrol}).  Which
local nodes were added or removed is kept in C{DIR/local-nodes.json}, so
that the next C{raftkv cluster} on DIR runs the same nodes: the first
C{--nodes} ones (those not removed) and the added ones.

With C{--tls} the nodes run with mutual TLS: the certificates are made in
C{DATA/tls} if they are not there yet (C{raftkv certs}' generator: a CA,
C{node<i>.pem} per node, and a client certificate C{raftkv-tools.pem}),
each node gets C{--tls-ca/--tls-cert/--tls-key}, and the banner shows the
C{RAFTKV_TLS_*} variables that let C{raftkv} talk to the cluster.  Exit
status 1 if the certificates cannot be made or loaded.

Why one module of nearly 900 lines (some 600 of code): it is one command,
C{raftkv cluster}, whose L{LocalCluster} owns the node processes that its
start, stop, restart, add and remove, its control socket and its signal
handling all act on; the launch itself is L{twisted_raft.tools.launcher}'s
and the control client L{twisted_raft.tools.clustercontrol}'s.
"""

import collections
import json
import os
import re
import shlex
import signal
import sys

from twisted.internet import defer, error, protocol
from twisted.python import usage

from twisted_raft.tools import launcher
from twisted_raft.tools.command import ToolOptions
from twisted_raft.tools.launcher import peerAddresses

GRACE_SECONDS = 5.0
IMPORTANT = re.compile(
    r"error|traceback|exception|critical|fatal|unhandled|warn|leader|unknown command"
    r"|listening|starting|stopping|address already in use",
    re.IGNORECASE,
)

class ClusterError(Exception):
    """A local node could not be added or removed; the message says why."""


LOCAL_NODES_FILE = "local-nodes.json"
"""Which local nodes C{raftkv cluster add/remove} added and removed, under
the data dir: C{{"added": {"4": "127.0.0.1:8004"}, "removed": [2]}}."""

START_TIMEOUT = 30.0
"""Seconds a node started by C{add} may take to answer before it is given up."""


def readLocalNodes(dataDir):
    """
    The added and removed local nodes of the cluster in C{dataDir}.

    @return: C{(added, removed)}: C{{id: "host:port"}} and a set of ids.
    @raise ClusterError: the file is there but unreadable.
    """
    path = os.path.join(dataDir, LOCAL_NODES_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
        added = {int(i): str(a) for i, a in doc.get("added", {}).items()}
        removed = {int(i) for i in doc.get("removed", [])}
    except FileNotFoundError:
        return {}, set()
    except (OSError, ValueError, TypeError, AttributeError) as e:
        raise ClusterError(f"{path} is unreadable ({e}); fix or remove it")
    return added, removed


def writeLocalNodes(dataDir, added, removed):
    """Record the added and removed local nodes (replacing the file at once)."""
    path = os.path.join(dataDir, LOCAL_NODES_FILE)
    doc = {"added": {str(i): a for i, a in sorted(added.items())}, "removed": sorted(removed)}
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    os.replace(path + ".tmp", path)


def _addOptions():
    from twisted_raft.tools.clustercontrol import AddOptions

    return AddOptions()


def _removeOptions():
    from twisted_raft.tools.clustercontrol import RemoveOptions

    return RemoveOptions()


def _stopOptions():
    from twisted_raft.tools.clustercontrol import StopOptions

    return StopOptions()


def _restartOptions():
    from twisted_raft.tools.clustercontrol import RestartOptions

    return RestartOptions()


ACTIONS = {
    "add": _addOptions,
    "remove": _removeOptions,
    "stop": _stopOptions,
    "restart": _restartOptions,
}
"""C{raftkv cluster add|remove|stop|restart}: sent to the running C{raftkv
cluster}."""


class ClusterOptions(ToolOptions):
    synopsis = (
        "raftkv cluster [--nodes N] [--base-port PORT] [--http-base-port PORT] [--data DIR] "
        "[--election-timeout T] [--tls] [--verbose] [-- EXTRA_NODE_ARGS...]\n"
        "       raftkv cluster add [--learner] [--data DIR]\n"
        "       raftkv cluster remove ID [--data DIR]\n"
        "       raftkv cluster stop ID [--data DIR]\n"
        "       raftkv cluster restart ID [--data DIR]"
    )
    longdesc = (
        "Run N raftkv nodes on 127.0.0.1 in the foreground until Ctrl-C. "
        "Data is kept in DIR/n<i> between runs; node output goes to DIR/n<i>.log. "
        "Arguments after -- are passed to every node.  While it runs, 'raftkv "
        "cluster add' starts one more local node and adds it to the cluster, "
        "'raftkv cluster remove ID' removes node ID and stops it, 'raftkv cluster "
        "stop ID' stops node ID (a member still) and 'raftkv cluster restart ID' "
        "starts it again.  The ports are checked before any node starts."
    )
    subCommand = None
    # No subOptions until an action is parsed (as in Twisted's own
    # subcommands): Twisted's getUsage shows subOptions' usage whenever the
    # attribute exists, so a None one would break --help.
    optParameters = [
        ["nodes", "n", 3, "Number of nodes.", int],
        ["base-port", "p", 8001, "Port of node 1; node i listens on base-port + i - 1.", int],
        ["http-base-port", None, 9101,
         "Port of node 1's HTTP side (dashboard, /metrics, /health); node i's is"
         " http-base-port + i - 1; 0 for none.", int],
        ["data", "d", "data", "Directory for the nodes' data and logs."],
        ["election-timeout", "e", None, "Election timeout in ms (MIN-MAX, or N), passed to every node as --election-timeout."],
    ]
    optFlags = [
        ["verbose", "v", "Echo every line of node output, not only important ones."],
        ["tls", None, "Mutual TLS: certificates in DIR/tls (made if missing), passed to every node."],
    ]

    def parseOptions(self, options=None):
        # Not Twisted's subCommands: with those, "raftkv cluster -- ARGS"
        # would take the first extra node argument for a command.
        options = sys.argv[1:] if options is None else list(options)
        if options and options[0] in ACTIONS:
            self.subCommand = options[0]
            self.subOptions = ACTIONS[options[0]]()
            self.subOptions.parent = self
            self.subOptions.parseOptions(options[1:])
            return
        super().parseOptions(options)

    def parseArgs(self, *extra):
        self["extra"] = list(extra)

    def postOptions(self):
        if self["nodes"] < 1:
            raise usage.UsageError("--nodes must be at least 1")
        if not 0 < self["base-port"] or self["base-port"] + self["nodes"] - 1 > 65535:
            raise usage.UsageError("--base-port out of range")
        http = self["http-base-port"]
        if http and (http < 0 or http + self["nodes"] - 1 > 65535):
            raise usage.UsageError("--http-base-port out of range")


# -- processes ---------------------------------------------------------------


class NodeProcess(protocol.ProcessProtocol):
    """One node: output to a log file, important lines echoed with a prefix."""

    def __init__(self, name, logFile, echo, verbose=False):
        self.name = name
        self.logFile = logFile
        self.echo = echo
        self.verbose = verbose
        self.tail = collections.deque(maxlen=10)
        self.running = False
        self.unknownPlugin = False
        self._partial = {1: b"", 2: b""}
        self._endWaiters = []
        self.onEnded = None

    def connectionMade(self):
        self.running = True

    def outReceived(self, data):
        self._received(1, data)

    def errReceived(self, data):
        self._received(2, data)

    def _received(self, fd, data):
        if self.logFile is not None:
            self.logFile.write(data)
            self.logFile.flush()
        *lines, self._partial[fd] = (self._partial[fd] + data).split(b"\n")
        for line in lines:
            self._line(line)

    def _line(self, raw):
        line = raw.decode("utf-8", "replace").rstrip()
        if not line:
            return
        self.tail.append(line)
        if "Unknown command: raftkv" in line:
            self.unknownPlugin = True
            self.echo(f"[{self.name}] {line}")
            return
        if self.unknownPlugin and not self.verbose:
            return  # the rest is the runner's usage text
        if self.verbose or IMPORTANT.search(line):
            self.echo(f"[{self.name}] {line}")

    def processEnded(self, reason):
        for fd, rest in self._partial.items():
            if rest:
                self._line(rest)
        self._partial = {1: b"", 2: b""}
        self.running = False
        if self.logFile is not None:
            self.logFile.close()
            self.logFile = None
        if self.onEnded is not None:
            self.onEnded(self, reason)
        waiters, self._endWaiters = self._endWaiters, []
        for d in waiters:
            d.callback(None)

    def whenEnded(self):
        if not self.running:
            return defer.succeed(None)
        d = defer.Deferred()
        self._endWaiters.append(d)
        return d

    def signal(self, name):
        try:
            self.transport.signalProcess(name)
        except (error.ProcessExitedAlready, OSError):
            pass


class LocalCluster:
    """
    The local node processes of one cluster.  C{finished} fires when L{stop}
    is done, or fails with C{SystemExit(1)} when every node has died on its
    own.

    Node C{i} keeps its data in C{DATA/n<i>} and listens on C{base-port + i
    - 1}; the first C{nodes} bootstrap the cluster (C{--peers} lists them),
    and L{addNode} / L{removeNode} change the cluster's membership while it
    runs, recorded in L{LOCAL_NODES_FILE}.

    @param spawn: C{spawn(reactor, proto, argv, cwd=)} starts a process
        (L{launcher.spawn}; tests pass their own).
    @param clientFactory: C{clientFactory(addresses) -> RaftKVClient} (tests
        pass their own).
    @param portsTaken: C{portsTaken(addresses)}, which of them cannot be
        listened on (L{launcher.portsTaken}; tests pass their own).
    @ivar peers: the bootstrap nodes' addresses: node C{i} is C{peers[i - 1]}.
    @ivar added: C{{id: address}} of the nodes added by L{addNode}.
    @ivar removed: the ids of the nodes removed by L{removeNode}.
    """

    def __init__(
        self,
        reactor,
        nodes=3,
        basePort=8001,
        dataDir="data",
        electionTimeout=None,
        extra=(),
        verbose=False,
        echo=None,
        python=None,
        tls=None,
        spawn=None,
        clientFactory=None,
        portsTaken=None,
        httpBasePort=0,
    ):
        self.reactor = reactor
        self.httpBasePort = httpBasePort
        self.tls = tls
        self.basePort = basePort
        self.peers = peerAddresses(nodes, basePort)
        self.dataDir = os.path.abspath(dataDir)
        self.electionTimeout = electionTimeout
        self.extra = list(extra)
        self.verbose = verbose
        self.echo = echo or (lambda line: print(line, flush=True))
        self.python = python
        self.spawn = spawn or launcher.spawn
        self.portsTaken = portsTaken or launcher.portsTaken
        self.clientFactory = clientFactory or self._client
        self.processes = []
        self.added = {}
        self.removed = set()
        self.tokenFile = None
        self.finished = defer.Deferred()
        self._stopping = None
        self._hinted = False
        self._changing = defer.DeferredLock()
        self.killNow = lambda: None

    def logPath(self, nodeId):
        return os.path.join(self.dataDir, f"n{nodeId}.log")

    def address(self, nodeId):
        """Local node C{nodeId}'s C{"host:port"}."""
        return f"{launcher.HOST}:{self.basePort + nodeId - 1}"

    def httpAddress(self, nodeId):
        """Local node C{nodeId}'s C{"host:port"} for C{--http}, or C{None}."""
        if not self.httpBasePort:
            return None
        return f"{launcher.HOST}:{self.httpBasePort + nodeId - 1}"

    def _http(self, nodeId):
        address = self.httpAddress(nodeId)
        return None if address is None else launcher.httpEndpoint(int(address.rsplit(":", 1)[1]))

    def nodes(self):
        """C{{id: address}} of the local nodes this cluster runs, by id."""
        nodes = {i: a for i, a in enumerate(self.peers, start=1)}
        nodes.update(self.added)
        return {i: a for i, a in sorted(nodes.items()) if i not in self.removed}

    def running(self):
        """C{{id: address}} of the local nodes running now."""
        nodes = self.nodes()
        return {p.nodeId: nodes[p.nodeId] for p in self.processes
                if p.running and p.nodeId in nodes}

    def start(self):
        """
        Start every local node.

        @raise ClusterError: the added/removed record is unreadable, or a
            node's port is taken (then no node is started).
        """
        os.makedirs(self.dataDir, exist_ok=True)
        self.added, self.removed = readLocalNodes(self.dataDir)
        self.checkPorts(self.nodes())
        ownToken = any(a.startswith("--cluster-token") for a in self.extra)
        if not ownToken:
            self.tokenFile = launcher.localTokenFile(self.dataDir, len(self.peers))
        for nodeId in self.nodes():
            self._startNode(nodeId, self._argv(nodeId))

    def checkPorts(self, nodes):
        """
        @param nodes: C{{id: "host:port"}} of nodes about to start.
        @raise ClusterError: saying which of their ports are taken.
        """
        byAddress = {a: f"n{i}" for i, a in nodes.items()}
        for i in nodes:
            if self.httpAddress(i) is not None:
                byAddress[self.httpAddress(i)] = f"n{i}'s HTTP side"
        taken = self.portsTaken(list(byAddress))
        if taken:
            raise ClusterError("; ".join(
                f"port {a.rsplit(':', 1)[1]} of {byAddress[a]} ({a}) is taken: {why}"
                for a, why in taken
            ) + " (stop what listens there, or choose another --base-port or"
                " --http-base-port)")

    def _argv(self, nodeId):
        """Local node C{nodeId}'s command line (the same at every start)."""
        if nodeId in self.added:
            return self._joinArgv(nodeId)
        return launcher.nodeArgv(
            nodeId, self.peers, self.dataDir, self.electionTimeout, self.extra,
            self.python, tls=self.tls, tokenFile=self.tokenFile, http=self._http(nodeId),
        )

    def _joinArgv(self, nodeId):
        """A node added to the running cluster: C{--join}, its own address only
        (the configuration tells it the others'); ignored once it holds one."""
        tls = None
        if self.tls is not None:
            # makes this node's certificate if it has none yet
            tls = launcher.LocalTLS(self.tls.directory, nodeId, self.tls.clientName)
        return launcher.nodeArgv(
            nodeId, {nodeId: self.address(nodeId)}, self.dataDir, self.electionTimeout,
            self.extra, self.python, tls=tls, tokenFile=self.tokenFile, join=True,
            http=self._http(nodeId),
        )

    def _startNode(self, nodeId, argv):
        os.makedirs(launcher.dataPath(self.dataDir, nodeId), exist_ok=True)
        logFile = open(self.logPath(nodeId), "ab")
        launcher.logStart(logFile, argv)
        proc = NodeProcess(f"n{nodeId}", logFile, self.echo, self.verbose)
        proc.onEnded = self._ended
        proc.nodeId = nodeId
        proc.stopReason = None  # set when we stop it on purpose
        self.processes.append(proc)
        self.spawn(self.reactor, proc, argv, cwd=os.getcwd())
        return proc

    def _ended(self, proc, reason):
        if self._stopping is not None:
            killed = getattr(reason.value, "signal", None) == 9
            self.echo(f"[{proc.name}] {'killed' if killed else 'stopped'}")
            return
        if getattr(proc, "stopReason", None):
            self.echo(f"[{proc.name}] stopped: {proc.stopReason}")
            return
        self.echo(
            f"[cluster] node {proc.name} ({self.address(proc.nodeId)}) died: "
            f"{launcher.describeExit(reason)}; see {self.logPath(proc.nodeId)}"
        )
        if proc.unknownPlugin and not self._hinted:
            self._hinted = True
            self.echo(
                "[cluster] the 'raftkv' twistd plugin was not found: "
                "twisted/plugins/raftkv_plugin.py must be on the path (run from "
                "the repository root, or install raftkv non-editable: python3 dev.py cluster)"
            )
        elif proc.tail and not proc.unknownPlugin:
            for line in list(proc.tail)[-5:]:
                self.echo(f"[{proc.name}]   {line}")
        alive = [p for p in self.processes if p.running]
        if alive:
            self.echo(f"[cluster] {len(alive)} node(s) still running")
        elif not self.finished.called:
            self.echo("[cluster] every node has died; exiting")
            self.finished.errback(SystemExit(1))

    def stop(self, grace=GRACE_SECONDS):
        """SIGTERM every node, SIGKILL what is left after C{grace} seconds."""
        if self._stopping is not None:
            return self._stopping
        running = [p for p in self.processes if p.running]
        if running:
            self.echo(f"[cluster] stopping {len(running)} node(s)...")
        for p in running:
            p.signal("TERM")

        def kill():
            for p in self.processes:
                if p.running:
                    self.echo(f"[cluster] {p.name} did not stop in {grace:g}s: killing it")
                    p.signal("KILL")

        self.killNow = kill
        killer = self.reactor.callLater(grace, kill)
        d = defer.gatherResults([p.whenEnded() for p in running])

        def done(_):
            if killer.active():
                killer.cancel()
            if not self.finished.called:
                self.finished.callback(None)

        d.addBoth(done)
        self._stopping = d
        return d

    # -- membership ----------------------------------------------------------

    def _client(self, addresses):
        from twisted_raft.client import RaftKVClient

        return RaftKVClient(addresses, reactor=self.reactor, timeout=30.0,
                            tls=self.tls.credentials() if self.tls else None)

    def nextId(self):
        """The id of the next node to add: one above every id ever used in DATA."""
        used = set(self.nodes()) | self.removed | set(self.added) | {len(self.peers)}
        if os.path.isdir(self.dataDir):
            for name in os.listdir(self.dataDir):
                m = re.fullmatch(r"n([0-9]+)", name)
                if m:
                    used.add(int(m.group(1)))
        return max(used) + 1

    async def addNode(self, learner=False):
        """
        Start the next local node with C{--join}, wait until it answers, and
        ask the cluster to add it (as a learner, promoted once caught up
        unless C{learner}).

        @return: C{(nodeId, address, revision)}.
        @raise ClusterError: it did not start (it is stopped again and not
            recorded), or the cluster did not add it (it keeps running and
            is recorded: it may be a member).
        """
        await self._changing.acquire()
        try:
            return await self._addNode(learner)
        finally:
            self._changing.release()

    async def _addNode(self, learner):
        if self._stopping is not None:
            raise ClusterError("the cluster is stopping")
        members = self.running()
        if not members:
            raise ClusterError("no local node is running")
        nodeId = self.nextId()
        address = self.address(nodeId)
        if self.basePort + nodeId - 1 > 65535:
            raise ClusterError(f"node {nodeId} would listen on port {self.basePort + nodeId - 1}")
        self.checkPorts({nodeId: address})
        proc = self._startNode(nodeId, self._joinArgv(nodeId))
        self.echo(f"[cluster] started n{nodeId} ({address}) with --join")
        try:
            await self._whenAnswering(proc, address)
        except ClusterError:
            proc.stopReason = "it did not start"
            await self._stopNode(proc)
            raise
        self.added[nodeId] = address
        writeLocalNodes(self.dataDir, self.added, self.removed)
        client = self.clientFactory(list(members.values()))
        try:
            revision = await client.addMember(nodeId, address, learner=learner)
        except Exception as e:
            raise ClusterError(
                f"n{nodeId} runs at {address}, but the cluster did not add it: {e}.  It keeps"
                f" running: retry with 'raftkv member add {nodeId} {address}', or remove it"
                f" with 'raftkv cluster remove {nodeId}'"
            )
        finally:
            await client.close()
        role = "learner" if learner else "voter"
        self.echo(f"[cluster] n{nodeId} ({address}) added as a {role}, revision {revision}")
        return nodeId, address, revision

    async def _whenAnswering(self, proc, address):
        """Wait until the node at C{address} answers Status, or fail."""
        from twisted.internet.task import deferLater

        client = self.clientFactory([address])
        try:
            deadline = self.reactor.seconds() + START_TIMEOUT
            while True:
                if not proc.running:
                    raise ClusterError(
                        f"n{proc.nodeId} exited at start: {_why(proc.tail)}; see"
                        f" {self.logPath(proc.nodeId)}"
                    )
                try:
                    await client.status(address)
                    return
                except Exception:
                    if self.reactor.seconds() > deadline:
                        raise ClusterError(
                            f"n{proc.nodeId} did not answer at {address} within"
                            f" {START_TIMEOUT:g} s; see {self.logPath(proc.nodeId)}"
                        )
                await deferLater(self.reactor, 0.2, lambda: None)
        finally:
            await client.close()

    async def removeNode(self, nodeId):
        """
        Ask the cluster to remove node C{nodeId}, a local node, then stop
        its process.

        @return: the revision of the change.
        @raise ClusterError: not a running local node, or the cluster did
            not remove it (then it keeps running).
        """
        await self._changing.acquire()
        try:
            return await self._removeNode(nodeId)
        finally:
            self._changing.release()

    async def _removeNode(self, nodeId):
        if self._stopping is not None:
            raise ClusterError("the cluster is stopping")
        running = self.running()
        if nodeId not in running:
            local = ", ".join(map(str, running)) or "none"
            raise ClusterError(f"node {nodeId} is not a running local node (running: {local})")
        client = self.clientFactory([a for i, a in running.items() if i != nodeId]
                                    or list(running.values()))
        try:
            revision = await client.removeMember(nodeId)
        except Exception as e:
            raise ClusterError(f"the cluster did not remove node {nodeId}: {e}")
        finally:
            await client.close()
        self.removed.add(nodeId)
        writeLocalNodes(self.dataDir, self.added, self.removed)
        for proc in self.processes:
            if proc.nodeId == nodeId and proc.running:
                proc.stopReason = "removed from the cluster"
                await self._stopNode(proc)
        self.echo(f"[cluster] n{nodeId} removed, revision {revision}")
        return revision

    async def stopNode(self, nodeId):
        """
        Stop local node C{nodeId}'s process (SIGTERM, SIGKILL after a grace
        period); it stays a member, and L{restartNode} starts it again.

        @return: its address.
        @raise ClusterError: it is not a running local node.
        """
        await self._changing.acquire()
        try:
            if self._stopping is not None:
                raise ClusterError("the cluster is stopping")
            proc = self._runningProcess(nodeId)
            proc.stopReason = "by raftkv cluster stop"
            await self._stopNode(proc)
            return self.address(nodeId)
        finally:
            self._changing.release()

    async def restartNode(self, nodeId):
        """
        Stop local node C{nodeId} if it runs, start it again on its data
        dir, and wait until it answers.

        @return: C{(address, pid)}.
        @raise ClusterError: not a local node of this cluster, its port is
            taken, or it did not start.
        """
        await self._changing.acquire()
        try:
            if self._stopping is not None:
                raise ClusterError("the cluster is stopping")
            nodes = self.nodes()
            if nodeId not in nodes:
                local = ", ".join(map(str, nodes)) or "none"
                raise ClusterError(f"node {nodeId} is not a local node (local: {local})")
            for proc in self.processes:
                if proc.nodeId == nodeId and proc.running:
                    proc.stopReason = "to restart it"
                    await self._stopNode(proc)
            self.checkPorts({nodeId: nodes[nodeId]})
            proc = self._startNode(nodeId, self._argv(nodeId))
            try:
                await self._whenAnswering(proc, nodes[nodeId])
            except ClusterError:
                proc.stopReason = "it did not start"
                await self._stopNode(proc)
                raise
            pid = getattr(proc.transport, "pid", None)
            self.echo(f"[cluster] n{nodeId} ({nodes[nodeId]}) restarted, pid {pid}")
            return nodes[nodeId], pid
        finally:
            self._changing.release()

    def _runningProcess(self, nodeId):
        """@raise ClusterError: C{nodeId} is not a running local node."""
        for proc in self.processes:
            if proc.nodeId == nodeId and proc.running and nodeId in self.nodes():
                return proc
        local = ", ".join(map(str, self.running())) or "none"
        raise ClusterError(f"node {nodeId} is not a running local node (running: {local})")

    async def _stopNode(self, proc, grace=GRACE_SECONDS):
        """SIGTERM C{proc}, SIGKILL after C{grace} seconds; wait for its end."""
        proc.signal("TERM")
        killer = self.reactor.callLater(grace, proc.signal, "KILL")
        try:
            await proc.whenEnded()
        finally:
            if killer.active():
                killer.cancel()


def _why(lines):
    """The line of a node's last output that best says why it stopped."""
    lines = list(lines)
    for line in reversed(lines):
        if re.search(r"critical|error|refuses|cannot", line, re.IGNORECASE):
            return line
    return lines[-1] if lines else "no output"


def banner(peers, tls=None, http=None):
    """What the cluster prints at start: C{peers} is the nodes' addresses
    (node C{i} is C{peers[i - 1]}) or C{{id: address}}; with C{tls} (a
    L{launcher.LocalTLS}) the variables that give C{raftkv} its client
    certificate; with C{http} (C{{id: "host:port"}}) the nodes' dashboards."""
    nodes = dict(peers) if hasattr(peers, "items") else dict(enumerate(peers, start=1))
    cluster = ",".join(nodes.values())
    lines = [f"raftkv cluster of {len(nodes)} node(s)" + (" with mutual TLS" if tls else "") + ":"]
    lines += [f"  n{i}  {a}" for i, a in nodes.items()]
    if http:
        lines += ["Dashboards (and /metrics, /health): " + "  ".join(
            f"http://{a}/" for a in http.values()
        )]
    if tls is not None:
        lines += [f"Certificates in {tls.directory} (CA {tls.ca})."]
    lines += ["Try, in another terminal:"]
    if tls is not None:
        lines += [f"  export {name}={shlex.quote(path)}" for name, path in tls.environment().items()]
    default = ",".join(peerAddresses(3, 8001))
    prefix = "" if cluster == default else f"RAFTKV_CLUSTER={cluster} "
    lines += [
        f"  {prefix}raftkv put hello world",
        f"  {prefix}raftkv get hello",
        f"  {prefix}raftkv status",
        "Ctrl-C stops every node.",
    ]
    return "\n".join(lines)


async def _watchLeader(reactor, cluster, echo, patience=30.0):
    """Say which node became leader once there is one (best effort)."""
    from twisted.internet.task import deferLater

    from twisted_raft.client import RaftKVClient

    client = RaftKVClient(list(cluster.nodes().values()), reactor=reactor, timeout=1.0,
                          connectTimeout=1.0,
                          tls=cluster.tls.credentials() if cluster.tls else None)
    try:
        waited = 0.0
        while waited < patience and cluster._stopping is None and not cluster.finished.called:
            rows = await client.clusterStatus()
            for address, s in rows:
                if s and s["role"].lower() == "leader":
                    echo(f"[cluster] ready: leader is n{s['node_id']} ({address}), term {s['term']}")
                    return
            await deferLater(reactor, 0.5)
            waited += 0.5
        if cluster._stopping is None and not cluster.finished.called:
            echo(f"[cluster] no leader after {patience:g}s; check the logs in {cluster.dataDir}")
    finally:
        await client.close()


def _installSignalHandlers(reactor, cluster):
    """
    Ctrl-C / SIGTERM: stop the nodes gracefully (the reactor's shutdown
    waits for L{LocalCluster.stop}); a second one kills them at once.
    Replaces the reactor's own handlers, which would raise
    ReactorNotRunning on a second Ctrl-C.
    """

    def onSignal():
        if cluster._stopping is None:
            try:
                reactor.stop()
            except error.ReactorNotRunning:
                pass
        else:
            cluster.echo("[cluster] killing every node now")
            cluster.killNow()

    def handler(signum, frame):
        reactor.callFromThread(onSignal)

    for name in ("SIGINT", "SIGTERM"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), handler)


async def _run(reactor, options, tls=None):
    cluster = LocalCluster(
        reactor,
        nodes=options["nodes"],
        basePort=options["base-port"],
        dataDir=options["data"],
        electionTimeout=options["election-timeout"],
        extra=options["extra"],
        verbose=options["verbose"],
        tls=tls,
        httpBasePort=options["http-base-port"],
    )
    from twisted_raft.tools import clustercontrol

    try:
        cluster.start()
    except ClusterError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(1)
    reactor.addSystemEventTrigger("before", "shutdown", cluster.stop)
    reactor.callWhenRunning(_installSignalHandlers, reactor, cluster)
    http = {i: cluster.httpAddress(i) for i in cluster.nodes() if cluster.httpAddress(i)}
    cluster.echo(banner(cluster.nodes(), tls, http))
    cluster.echo(f"Logs: {cluster.dataDir}/n<i>.log")
    control = await clustercontrol.serve(reactor, cluster)
    if control is not None:
        reactor.addSystemEventTrigger("before", "shutdown", control.stopListening)
        data = "" if options["data"] == "data" else f" --data {shlex.quote(options['data'])}"
        cluster.echo(f"More nodes: raftkv cluster add{data}; fewer: raftkv cluster remove ID{data}")
        cluster.echo(f"One node: raftkv cluster stop ID{data}; raftkv cluster restart ID{data}")
    watcher = defer.Deferred.fromCoroutine(_watchLeader(reactor, cluster, cluster.echo))
    watcher.addErrback(lambda f: None)
    await cluster.finished


def prepareTLS(options):
    """
    The L{launcher.LocalTLS} of C{--tls} (certificates made and the
    client's loaded), or C{None} without it.

    @raise twisted_raft.tools.certs.CertificateError,
        twisted_raft.tls.TLSConfigError: they cannot be made or loaded.
    """
    if not options["tls"]:
        return None
    tls = launcher.LocalTLS(os.path.join(options["data"], launcher.TLS_DIR), options["nodes"])
    tls.credentials()
    return tls


def main(options):
    """
    Run the cluster until Ctrl-C / SIGTERM, or send C{add}/C{remove} to the
    running one; returns the exit status.
    """
    from twisted.internet.task import react

    if options.subCommand is not None:
        from twisted_raft.tools import clustercontrol

        return clustercontrol.main(options.subCommand, options.subOptions)

    from twisted_raft.tls import TLSConfigError
    from twisted_raft.tools.certs import CertificateError

    try:
        tls = prepareTLS(options)
    except (CertificateError, TLSConfigError) as e:
        where = os.path.join(options["data"], launcher.TLS_DIR)
        print(f"error: TLS: {e}\n(remove {where} to make new certificates)", file=sys.stderr)
        return 1
    try:
        react(_run, [options, tls])
    except SystemExit as e:
        return e.code
    return 0
