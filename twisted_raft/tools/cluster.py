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

With C{--tls} the nodes run with mutual TLS: the certificates are made in
C{DATA/tls} if they are not there yet (C{raftkv certs}' generator: a CA,
C{node<i>.pem} per node, and a client certificate C{raftkv-tools.pem}),
each node gets C{--tls-ca/--tls-cert/--tls-key}, and the banner shows the
C{RAFTKV_TLS_*} variables that let C{raftkv} talk to the cluster.  Exit
status 1 if the certificates cannot be made or loaded.
"""

import collections
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

class ClusterOptions(ToolOptions):
    synopsis = (
        "raftkv cluster [--nodes N] [--base-port PORT] [--data DIR] "
        "[--election-timeout T] [--tls] [--verbose] [-- EXTRA_NODE_ARGS...]"
    )
    longdesc = (
        "Run N raftkv nodes on 127.0.0.1 in the foreground until Ctrl-C. "
        "Data is kept in DIR/n<i> between runs; node output goes to DIR/n<i>.log. "
        "Arguments after -- are passed to every node."
    )
    optParameters = [
        ["nodes", "n", 3, "Number of nodes.", int],
        ["base-port", "p", 8001, "Port of node 1; node i listens on base-port + i - 1.", int],
        ["data", "d", "data", "Directory for the nodes' data and logs."],
        ["election-timeout", "e", None, "Election timeout in ms (MIN-MAX, or N), passed to every node as --election-timeout."],
    ]
    optFlags = [
        ["verbose", "v", "Echo every line of node output, not only important ones."],
        ["tls", None, "Mutual TLS: certificates in DIR/tls (made if missing), passed to every node."],
    ]

    def parseArgs(self, *extra):
        self["extra"] = list(extra)

    def postOptions(self):
        if self["nodes"] < 1:
            raise usage.UsageError("--nodes must be at least 1")
        if not 0 < self["base-port"] or self["base-port"] + self["nodes"] - 1 > 65535:
            raise usage.UsageError("--base-port out of range")


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
    N node processes.  C{finished} fires when L{stop} is done, or fails with
    C{SystemExit(1)} when every node has died on its own.
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
    ):
        self.reactor = reactor
        self.tls = tls
        self.peers = peerAddresses(nodes, basePort)
        self.dataDir = os.path.abspath(dataDir)
        self.electionTimeout = electionTimeout
        self.extra = list(extra)
        self.verbose = verbose
        self.echo = echo or (lambda line: print(line, flush=True))
        self.python = python
        self.processes = []
        self.finished = defer.Deferred()
        self._stopping = None
        self._hinted = False
        self.killNow = lambda: None

    def logPath(self, nodeId):
        return os.path.join(self.dataDir, f"n{nodeId}.log")

    def start(self):
        os.makedirs(self.dataDir, exist_ok=True)
        ownToken = any(a.startswith("--cluster-token") for a in self.extra)
        tokenFile = None if ownToken else launcher.localTokenFile(self.dataDir, len(self.peers))
        for nodeId in range(1, len(self.peers) + 1):
            os.makedirs(launcher.dataPath(self.dataDir, nodeId), exist_ok=True)
            argv = launcher.nodeArgv(
                nodeId, self.peers, self.dataDir, self.electionTimeout, self.extra, self.python,
                tls=self.tls, tokenFile=tokenFile,
            )
            logFile = open(self.logPath(nodeId), "ab")
            launcher.logStart(logFile, argv)
            proc = NodeProcess(f"n{nodeId}", logFile, self.echo, self.verbose)
            proc.onEnded = self._ended
            proc.nodeId = nodeId
            self.processes.append(proc)
            launcher.spawn(self.reactor, proc, argv, cwd=os.getcwd())

    def _ended(self, proc, reason):
        if self._stopping is not None:
            killed = getattr(reason.value, "signal", None) == 9
            self.echo(f"[{proc.name}] {'killed' if killed else 'stopped'}")
            return
        self.echo(
            f"[cluster] node {proc.name} ({self.peers[proc.nodeId - 1]}) died: "
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


def banner(peers, tls=None):
    """What the cluster prints at start; with C{tls} (a L{launcher.LocalTLS})
    the variables that give C{raftkv} its client certificate."""
    cluster = ",".join(peers)
    lines = [f"raftkv cluster of {len(peers)} node(s)" + (" with mutual TLS" if tls else "") + ":"]
    lines += [f"  n{i}  {a}" for i, a in enumerate(peers, start=1)]
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

    client = RaftKVClient(cluster.peers, reactor=reactor, timeout=1.0, connectTimeout=1.0,
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
    )
    reactor.addSystemEventTrigger("before", "shutdown", cluster.stop)
    reactor.callWhenRunning(_installSignalHandlers, reactor, cluster)
    cluster.start()
    cluster.echo(banner(cluster.peers, tls))
    cluster.echo(f"Logs: {cluster.dataDir}/n<i>.log")
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
    """Run the cluster until Ctrl-C / SIGTERM; returns the exit status."""
    from twisted.internet.task import react

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
