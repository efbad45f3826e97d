"""
The one way to start raftkv node processes on this machine: for the tools
(C{raftkv cluster}, C{raftkv bench}, C{raftkv chaos}), the C{bench/*.py}
scripts and the tests that run real nodes.

L{nodeArgv} builds a node's command line and L{environment} its
environment; L{LocalTLS} is what "TLS on for this run" means (certificates,
node flags, client credentials); everything else here only runs them:

  - L{ProcessNode}: one node under C{subprocess} (blocking callers: bench
    scripts, tests, C{raftkv bench}'s local cluster).
  - L{SpawnedNode}: one node under a reactor (C{spawnProcess}), whose
    C{ended} Deferred fires when it exits (C{raftkv chaos}, C{raftkv
    cluster}).

Both write the node's output to its log file, after a start line of their
own (L{logStart}: text, or JSON for a node with C{--log-format json}, so
every line of its log parses; L{isStartLine} finds either), count their
starts (C{starts}: the lifetime of the current process), can be signalled
(C{SIGKILL}, C{SIGSTOP}/C{SIGCONT} for a pause) and started again on the
same data directory (a restart after a crash).  Both start the node through
L{guardedArgv}: in a session of its own (a Ctrl-C at the terminal reaches
only the tool, which stops its nodes once, itself) and, on Linux, killed
when the process that started it dies (no node outlives a killed tool).

Two runners, each with its pidfile policy spelled out:

  - L{TWIST} (the default): C{python -m twisted --log-format=text raftkv
    ...}, Twisted's C{twist} runner, always in the foreground and without a
    pidfile, so any number of nodes can share a working directory.
  - L{TWISTD}: C{twistd --pidfile= -n raftkv ...}, the daemon runner in the
    foreground with no pidfile (twistd would otherwise write and check
    C{twistd.pid} in its working directory and refuse a second node there).
"""

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time

from twisted.internet import defer, protocol

HOST = "127.0.0.1"

TWIST = "twist"
TWISTD = "twistd"
_RUNNERS = {
    TWIST: ["-m", "twisted", "--log-format=text"],
    TWISTD: ["-c", "from twisted.scripts.twistd import run; run()", "--pidfile=", "-n"],
}


# -- command lines ------------------------------------------------------------


def portsTaken(addresses):
    """
    Which of C{addresses} (C{"host:port"}) cannot be listened on now.

    @return: C{[(address, reason), ...]}, empty if every one is free.
    """
    taken = []
    for address in addresses:
        host, port = address.rsplit(":", 1)
        s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        try:
            # As Twisted's listenTCP does: a port in TIME_WAIT is free.
            if os.name != "nt":
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((host.strip("[]"), int(port)))
        except OSError as e:
            taken.append((address, e.strerror or str(e)))
        finally:
            s.close()
    return taken


_GUARD = """\
import os, sys
parent = int(sys.argv[1])
try:
    os.setsid()
except OSError:
    pass
if sys.platform.startswith("linux"):
    try:
        import ctypes, signal
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL), 0, 0, 0)
    except Exception as e:
        sys.stderr.write("raftkv: no parent-death signal: %s\\n" % (e,))
if os.getppid() != parent:
    os._exit(1)
os.execv(sys.argv[2], sys.argv[2:])
"""
"""Run by L{guardedArgv} before it becomes the node: a new session, then
C{prctl(PR_SET_PDEATHSIG, SIGKILL)} (kept across exec); if the parent is
already gone, exit rather than run unwatched.  SIGKILL, not SIGTERM: it also
ends a node paused with SIGSTOP, and a node's storage survives a crash by
design."""


def guardedArgv(argv, parent=None):
    """
    C{argv} run through L{_GUARD}: the process runs C{argv} (same pid, by
    exec) in a session of its own, and on Linux dies with C{parent}
    (default: this process).  Unchanged on Windows.  (Linux ties the signal
    to the thread that started the process: start nodes from one that
    lives as long as the tool, such as the reactor's.)
    """
    if os.name == "nt":
        return list(argv)
    parent = os.getpid() if parent is None else parent
    return [sys.executable, "-S", "-c", _GUARD, str(parent), *argv]


def freePorts(n, host=HOST):
    """
    C{n} distinct TCP ports free on C{host} now: all bound at once (so they
    differ), then released for the caller's processes to listen on.
    """
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind((host, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def peerAddresses(nodes, basePort, host=HOST):
    """C{["127.0.0.1:8001", ...]}: node C{i} is element C{i - 1}."""
    return [f"{host}:{basePort + i}" for i in range(nodes)]


def localAddresses(n, host=HOST):
    """C{n} C{"host:port"} addresses on L{freePorts}."""
    return [f"{host}:{p}" for p in freePorts(n, host)]


def dataPath(dataDir, nodeId):
    """Node C{nodeId}'s data directory under C{dataDir}: C{DATA/n<i>}."""
    return os.path.join(dataDir, f"n{nodeId}")


TOKEN_FILE = "cluster-token"
"""Where L{localTokenFile} keeps a local cluster's token, under its data dir."""


def localTokenFile(dataDir, nodes):
    """
    The file holding the cluster token of the local cluster in C{dataDir}
    (mode 0600, made with a random token when the cluster is new), so that
    its peers authenticate with a secret rather than the public default.

    @return: its path, or C{None} if the nodes' data dirs already exist
        without one: they are bound to the default token, which they keep.
    """
    path = os.path.join(dataDir, TOKEN_FILE)
    if os.path.exists(path):
        return path
    if any(os.path.exists(dataPath(dataDir, i)) for i in range(1, nodes + 1)):
        return None
    os.makedirs(dataDir, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32) + "\n")
    return path


def peersFlag(peers):
    """
    The C{--peers} value for C{peers}: a list of C{"host:port"} (ids are
    positions) as C{"h:p,h:p"}, or a dict C{{id: "host:port"}} as
    C{"1=h:p,4=h:p"}.
    """
    if hasattr(peers, "items"):
        return ",".join(f"{i}={a}" for i, a in sorted(peers.items()))
    return ",".join(peers)


def httpEndpoint(port, host=HOST):
    """The C{--http} endpoint that serves a node's web side on C{host:port}."""
    return f"tcp:{port}:interface={host}"


def nodeArgv(nodeId, peers, dataDir, electionTimeout=None, extra=(), python=None,
             runner=TWIST, dataId=None, tls=None, tokenFile=None, join=False, listen=None,
             http=None):
    """
    The argv that starts node C{nodeId} (1-based) of C{peers}.

    @param peers: every node's C{"host:port"}: a list (node C{i} is element
        C{i - 1}), or a dict by node id (C{--peers ID=HOST:PORT,...}); may be
        empty with C{join}.
    @param dataId: whose data directory under C{dataDir} to use (default:
        C{nodeId}'s own; another's only to see the node refuse it).
    @param tls: a L{LocalTLS} to start the node with mutual TLS.
    @param tokenFile: the cluster token's file (L{localTokenFile}), if any.
    @param join: start it with C{--join}: a new node for a running cluster,
        waiting to be added (C{raftkv member add}).
    @param listen: its C{--listen} endpoint, if not its own C{peers} entry.
    @param http: its C{--http} endpoint, if any (L{httpEndpoint}).
    """
    argv = [python or sys.executable, *_RUNNERS[runner], "raftkv", "--id", str(nodeId)]
    if join:
        argv += ["--join"]
    if peers:
        argv += ["--peers", peersFlag(peers)]
    argv += ["--data", dataPath(dataDir, dataId or nodeId)]
    if listen is not None:
        argv += ["--listen", listen]
    if electionTimeout is not None:
        argv += ["--election-timeout", str(electionTimeout)]
    if tls is not None:
        argv += tls.nodeArgs(nodeId)
    if tokenFile is not None:
        argv += ["--cluster-token-file", tokenFile]
    if http is not None:
        argv += ["--http", http]
    return argv + list(extra)


TLS_DIR = "tls"
"""Where a run keeps its certificates, under its data directory."""
TLS_CLIENT = "raftkv-tools"
"""The Common Name of the client certificate the tools' clients present."""


class LocalTLS:
    """
    Mutual TLS for one run of local nodes (C{raftkv cluster --tls}, C{bench
    --tls}, C{chaos --tls}): the certificates in C{directory}, made by
    L{twisted_raft.tools.certs} for nodes 1..C{nodes} on L{HOST} and
    C{localhost} and for the client L{TLS_CLIENT} where they are missing
    (an existing CA is kept and signs them), each node's TLS flags
    (L{nodeArgs}), and the credentials of the run's clients
    (L{credentials}).

    @raise twisted_raft.tools.certs.CertificateError: the certificates
        cannot be made (e.g. a CA certificate without its key).
    """

    def __init__(self, directory, nodes, clientName=TLS_CLIENT):
        from twisted_raft.tools import certs

        self.directory = os.path.abspath(directory)
        self.clientName = clientName
        self.ca = os.path.join(self.directory, certs.CA_FILE)
        self._credentials = None

        def missing(paths):
            return not all(os.path.exists(p) for p in paths)

        if os.path.exists(self.ca):
            nodeIds = [i for i in range(1, nodes + 1)
                       if missing(certs.nodeFiles(self.directory, i))]
            clients = [clientName] if missing(certs.clientFiles(self.directory, clientName)) else []
        else:
            # a new CA: whatever else is there was signed by another
            nodeIds, clients = list(range(1, nodes + 1)), [clientName]
        if nodeIds or clients:
            self.written = certs.makeCertificates(
                self.directory, nodeIds, hosts=(HOST, "localhost"), clients=clients
            )
        else:
            self.written = []

    def nodeArgs(self, nodeId):
        """Node C{nodeId}'s flags: C{--tls-ca FILE --tls-cert FILE --tls-key FILE}."""
        from twisted_raft.tools.certs import nodeFiles

        cert, key = nodeFiles(self.directory, nodeId)
        return ["--tls-ca", self.ca, "--tls-cert", cert, "--tls-key", key]

    def clientFiles(self):
        """The L{twisted_raft.tls.TLSFiles} of the run's client certificate."""
        from twisted_raft.tls import TLSFiles
        from twisted_raft.tools.certs import clientFiles

        cert, key = clientFiles(self.directory, self.clientName)
        return TLSFiles(ca=self.ca, cert=cert, key=key)

    def credentials(self):
        """
        The run's client credentials (loaded once).
        @raise twisted_raft.tls.TLSConfigError: they do not load.
        """
        if self._credentials is None:
            from twisted_raft.tls import TLSCredentials

            self._credentials = TLSCredentials(self.clientFiles())
        return self._credentials

    def environment(self):
        """The C{raftkv} command's variables for the client certificate."""
        from twisted_raft.cli import ENV_TLS_CA, ENV_TLS_CERT, ENV_TLS_KEY

        files = self.clientFiles()
        return {ENV_TLS_CA: files.ca, ENV_TLS_CERT: files.cert, ENV_TLS_KEY: files.key}


def sourceRoot():
    """
    The directory holding the C{twisted_raft} package in use (a checkout or
    site-packages): C{twisted/plugins/raftkv_plugin.py} sits beside it.
    """
    import twisted_raft

    return os.path.dirname(os.path.dirname(os.path.abspath(twisted_raft.__file__)))


def environment(base=None):
    """
    The environment of a child process that must import this very raftkv
    (a node, or a tool run as C{python -m}): L{sourceRoot} first on
    C{PYTHONPATH}, so that a checkout's code and plugin win over any
    installed copy, and unbuffered output, so that a node's log is complete
    when it is killed.
    """
    env = dict(os.environ if base is None else base)
    rest = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join([sourceRoot()] + rest)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def describeExit(reason):
    """A few words for how a process ended (a L{Failure} from processEnded)."""
    value = reason.value
    if getattr(value, "signal", None):
        return f"killed by signal {value.signal}"
    return f"exited with status {getattr(value, 'exitCode', '?')}"


START_EVENT = "launcher_start"
"""The C{event} of the JSON line L{logStart} writes (the launcher's, not
the node's: listed with the node's events in C{docs/design.rst})."""


def logFormat(argv):
    """
    The C{--log-format} a node's C{argv} gives it: C{"text"} or C{"json"}.
    Only the plugin's flags count (after C{raftkv}): the runner's own
    C{--log-format=text} before it is C{twist}'s, which the plugin overrides.
    """
    try:
        args = argv[argv.index("raftkv") + 1:]
    except ValueError:
        args = argv
    chosen = "text"
    for n, arg in enumerate(args):
        if arg == "--log-format" and n + 1 < len(args):
            chosen = args[n + 1]
        elif arg.startswith("--log-format="):
            chosen = arg.split("=", 1)[1]
    return chosen.strip().lower()


def _nodeIdOf(argv):
    try:
        return int(argv[argv.index("--id") + 1])
    except (ValueError, IndexError):
        return None


def _endsMidLine(log):
    """Whether the file of C{log} ends inside a line: its last process was
    killed while it wrote one."""
    try:
        with open(log.name, "rb") as f:
            f.seek(0, os.SEEK_END)
            if f.tell() == 0:
                return False
            f.seek(-1, os.SEEK_END)
            return f.read(1) != b"\n"
    except (OSError, TypeError, AttributeError):
        return False


def logStart(log, argv):
    """
    The line a node's log gets before each start of the node
    (L{isStartLine}): text, or with C{--log-format json} a JSON line of the
    node's shape (event L{START_EVENT}, its C{argv}), so that every line of
    a JSON log parses.  A line the last process left unfinished is ended
    first, so the start line is always a line of its own.
    """
    if logFormat(argv) == "json":
        from twisted_raft.logs import isoTime

        line = json.dumps({
            "time": isoTime(time.time()), "level": "info", "node_id": _nodeIdOf(argv),
            "event": START_EVENT, "message": f"starting: {' '.join(argv)}",
            "namespace": __name__, "argv": list(argv),
        }) + "\n"
    else:
        line = f"==== {time.strftime('%H:%M:%S')} starting: {' '.join(argv)}\n"
    log.write((b"\n" if _endsMidLine(log) else b"") + line.encode())
    log.flush()


def isStartLine(line):
    """Is C{line} (bytes or str) one that L{logStart} wrote, text or JSON?"""
    if isinstance(line, bytes):
        line = line.decode("utf-8", "replace")
    if line.startswith("==== ") and " starting: " in line:
        return True
    if START_EVENT not in line:
        return False
    from twisted_raft.logs import parseLine

    record = parseLine(line)
    return record is not None and record.get("event") == START_EVENT


def _signal(pid, name):
    """Send SIG<name> to C{pid}, if it is still there."""
    if not pid:
        return
    try:
        os.kill(pid, getattr(signal, "SIG" + name))
    except OSError:
        pass


# -- blocking: subprocess -------------------------------------------------------


class ProcessNode:
    """
    One node process under C{subprocess}, in its own session (a Ctrl-C
    meant for the caller does not reach it) and dying with the caller
    (L{guardedArgv}), its output appended to C{logPath}.  L{start} again after it exited restarts it on the same data
    directory.
    """

    def __init__(self, argv, logPath, cwd=None, env=None):
        self.argv = argv
        self.logPath = logPath
        self.cwd = cwd
        self.env = environment() if env is None else env
        self.proc = None
        self.paused = False
        self.starts = 0  # processes started: the current one's lifetime, from 1

    @property
    def pid(self):
        return None if self.proc is None else self.proc.pid

    def start(self):
        with open(self.logPath, "ab") as log:
            logStart(log, self.argv)
            self.starts += 1
            self.proc = subprocess.Popen(
                guardedArgv(self.argv), stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, cwd=self.cwd, env=self.env,
            )
        self.paused = False
        return self

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def exitDescription(self):
        """C{None} while running (or never started), else how it exited."""
        if self.proc is None or self.proc.poll() is None:
            return None
        code = self.proc.returncode
        return f"killed by signal {-code}" if code < 0 else f"exited with status {code}"

    def signal(self, name):
        if self.running():
            _signal(self.proc.pid, name)

    def pause(self):
        self.signal("STOP")
        self.paused = True

    def resume(self):
        self.signal("CONT")
        self.paused = False

    def kill(self):
        """SIGKILL (it need not be resumed first) and reap it."""
        if self.proc is not None:
            self.signal("KILL")
            self.proc.wait()

    def stop(self, grace=3.0):
        """SIGTERM, then SIGKILL after C{grace} seconds."""
        if self.proc is None:
            return
        if self.paused:
            self.resume()
        self.signal("TERM")
        try:
            self.proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            self.kill()


class Nodes:
    """
    The node processes of one local cluster (blocking): node C{i} of
    C{peers} keeps its data in C{DATA/n<i>} and logs to C{DATA/n<i>.log}.
    Nodes are started, killed and restarted one by one or all together.
    With C{tls} (a L{LocalTLS}) they run with mutual TLS.  With C{httpPorts}
    (one per node, in order) node C{i} serves C{--http} on 127.0.0.1 at
    C{httpPorts[i - 1]}.
    """

    def __init__(self, peers, dataDir, electionTimeout=None, extra=(), runner=TWIST,
                 cwd=None, tls=None, httpPorts=None):
        self.peers = list(peers)
        self.dataDir = dataDir
        self.ids = list(range(1, len(self.peers) + 1))
        self.cwd = dataDir if cwd is None else cwd
        self.tls = tls
        self.httpPorts = list(httpPorts) if httpPorts else None
        env = environment()
        self.nodes = {
            i: ProcessNode(nodeArgv(i, self.peers, dataDir, electionTimeout, extra,
                                    runner=runner, tls=tls, http=self.httpEndpoint(i)),
                           os.path.join(dataDir, f"n{i}.log"), self.cwd, env)
            for i in self.ids
        }

    def __getitem__(self, nodeId):
        return self.nodes[nodeId]

    def httpEndpoint(self, nodeId):
        """Node C{nodeId}'s C{--http} endpoint, or C{None}."""
        if self.httpPorts is None:
            return None
        return httpEndpoint(self.httpPorts[nodeId - 1])

    def url(self, nodeId, path="/"):
        """The URL of C{path} on node C{nodeId}'s web side."""
        return f"http://{HOST}:{self.httpPorts[nodeId - 1]}{path}"

    def start(self, *nodeIds):
        """Start (or restart) the given nodes, or every node."""
        for i in nodeIds or self.ids:
            self.nodes[i].start()

    def kill(self, *nodeIds):
        """SIGKILL the given nodes, or every node."""
        for i in nodeIds or self.ids:
            self.nodes[i].kill()

    def stop(self, grace=3.0):
        """SIGTERM every node, then SIGKILL what is left after C{grace} seconds."""
        running = [n for n in self.nodes.values() if n.running()]
        for n in running:
            if n.paused:
                n.resume()
            n.signal("TERM")
        end = time.monotonic() + grace
        for n in running:
            try:
                n.proc.wait(timeout=max(0.01, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                n.kill()

    def alive(self):
        return [i for i in self.ids if self.nodes[i].running()]

    def dead(self):
        """Descriptions of the started nodes that have exited."""
        return [f"n{i} {d}" for i in self.ids
                if (d := self.nodes[i].exitDescription()) is not None]


# -- Twisted: spawnProcess ----------------------------------------------------------


def spawn(reactor, proto, argv, cwd=None, env=None, childFDs=None):
    """
    C{reactor.spawnProcess} of a node's C{argv} (from L{nodeArgv}) with
    L{environment} unless C{env} is given, through L{guardedArgv}: in a
    session of its own, dying with this process.
    """
    argv = guardedArgv(argv)
    return reactor.spawnProcess(proto, argv[0], argv, env=environment() if env is None else env,
                                path=cwd, childFDs=childFDs)


class _Ended(protocol.ProcessProtocol):
    def __init__(self):
        self.ended = defer.Deferred()
        self.reason = None

    def processEnded(self, reason):
        # The reason is a Failure even for a clean exit: keep it aside, or
        # the Deferred would fail.
        self.reason = reason
        self.ended.callback(None)


class SpawnedNode:
    """
    One node process under a reactor, its output going straight to
    C{logPath} (no copying through this process).  L{start} again after it
    exited restarts it on the same data directory.

    @ivar ended: fires when the current process has ended.
    @ivar unexpectedExits: C{(time.monotonic(), description)} of every exit
        that was not asked for with L{kill} or L{terminate}.
    @ivar starts: how many times L{start} ran: the current process's
        lifetime, counting from 1, which is also how many start lines
        (L{isStartLine}) it wrote to the log.
    """

    def __init__(self, reactor, nodeId, argv, logPath, cwd=None, env=None):
        self.reactor = reactor
        self.nodeId = nodeId
        self.argv = argv
        self.logPath = logPath
        self.cwd = cwd
        self.env = environment() if env is None else env
        self.proto = None
        self.ended = defer.succeed(None)
        self.running = False
        self.paused = False
        self.expectedDown = False
        self.unexpectedExits = []
        self.starts = 0

    def start(self):
        with open(self.logPath, "ab") as log:
            logStart(log, self.argv)
            self.starts += 1
            devnull = os.open(os.devnull, os.O_RDONLY)
            try:
                self.proto = proto = _Ended()
                spawn(self.reactor, proto, self.argv, self.cwd, self.env,
                      childFDs={0: devnull, 1: log.fileno(), 2: log.fileno()})
            finally:
                os.close(devnull)
        self.ended = proto.ended.addCallback(self._ended, proto)
        self.running = True
        self.paused = False
        self.expectedDown = False
        return self

    def _ended(self, _, proto):
        if proto is self.proto:
            self.running = False
            self.paused = False
            if not self.expectedDown:
                self.unexpectedExits.append((time.monotonic(), describeExit(proto.reason)))

    def signal(self, name):
        """Send SIG<name> (Twisted's signalProcess only knows a few names)."""
        if self.proto is not None and self.running:
            _signal(getattr(self.proto.transport, "pid", None), name)

    def kill(self):
        """SIGKILL (after SIGCONT if paused). @return: Deferred firing when dead."""
        if not self.running:
            return defer.succeed(None)
        self.expectedDown = True
        self.resume()
        self.signal("KILL")
        return self.ended

    def terminate(self, grace=3.0):
        """
        SIGTERM (after SIGCONT if paused), then SIGKILL if it is still
        running after C{grace} seconds.  @return: Deferred firing when it
        has exited (C{self.proto.reason} says how).
        """
        if not self.running:
            return defer.succeed(None)
        self.expectedDown = True
        self.resume()
        self.signal("TERM")
        proto = self.proto

        def overdue():
            if self.proto is proto and self.running:
                self.signal("KILL")

        killer = self.reactor.callLater(grace, overdue)
        ended = defer.Deferred()

        def done(result):
            if killer.active():
                killer.cancel()
            ended.callback(None)
            return result

        self.ended.addBoth(done)
        return ended

    def pause(self):
        if self.running and not self.paused:
            self.signal("STOP")
            self.paused = True

    def resume(self):
        if self.running and self.paused:
            self.signal("CONT")
            self.paused = False
