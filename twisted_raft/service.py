"""
The raftkv node as a Twisted service: file storage, the Raft core, the
key-value state machine, peer links and the AMP server, started and stopped
in order.

No reactor import at module level: the twistd plugin imports this lazily,
and tests pass their own reactor.
"""

import atexit
import gc
import os
import sys

from twisted.application import service
from twisted.internet import defer
from twisted.logger import Logger

from twisted_raft.options import Options  # noqa: F401  (re-exported)

__all__ = ["RaftKVService", "makeService", "Options"]


def _exitWith(code):
    """Make the process exit with C{code} once twistd has cleaned up."""

    def hardExit():
        for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
            try:
                stream.flush()
            except Exception:
                pass
        os._exit(code)

    atexit.register(hardExit)


def tuneGarbageCollector():
    """
    Collect the young generation every 50,000 allocations instead of 700.

    A node keeps many long-lived tracked objects (log entries, sessions) and
    allocates a few short-lived containers per request (AMP boxes, Deferreds).
    With CPython's default thresholds the collector ran so often that a
    profile of a leader under load charged about 13 % of its time to the
    allocation of AMP boxes; at these thresholds it is negligible, and memory
    stays bounded because reference counting frees almost everything anyway.
    """
    gc.set_threshold(50000, 20, 100)


class RaftKVService(service.MultiService):
    """
    One raftkv node.

    Start: storage start (the data dir's identity is checked) -> peer links
    -> Raft node start (recovers term, vote and log) -> listen.  If any step
    fails (notably L{DataDirError}: a data dir of another node or cluster, or
    a corrupt log), a clear critical message is logged, the reactor stops and
    the process exits with status 1.

    Stop: stop listening -> node stop (pending requests fail) -> peer links
    stop -> storage close.

    @ivar exitCode: C{None}, or the status the process will exit with.
    """

    log = Logger()

    def __init__(
        self,
        nodeId,
        peers,
        dataDir,
        listen,
        clusterToken="raftkv",
        electionTimeout=(0.3, 0.55),
        heartbeatInterval=0.08,
        reactor=None,
        storageFactory=None,
        exitOnFailure=True,
        snapshotEntries=50000,
        snapshotBytes=64 * 1024 * 1024,
        segmentBytes=16 * 1024 * 1024,
    ):
        super().__init__()
        self.segmentBytes = segmentBytes
        self.snapshotEntries = snapshotEntries
        self.snapshotBytes = snapshotBytes
        self.nodeId = nodeId
        self.peers = list(peers)
        self.dataDir = dataDir
        self.listen = listen
        self.clusterToken = clusterToken
        self.electionTimeout = tuple(electionTimeout)
        self.heartbeatInterval = heartbeatInterval
        self._reactor = reactor
        self.storageFactory = storageFactory
        self.exitOnFailure = exitOnFailure
        self.exitCode = None
        self.storage = None
        self.store = None
        self.transport = None
        self.node = None
        self.factory = None
        self.port = None
        self.started = None

    @property
    def reactor(self):
        if self._reactor is None:
            from twisted.internet import reactor

            self._reactor = reactor
        return self._reactor

    # -- start -------------------------------------------------------------

    _gcThreshold = gc.get_threshold()

    def startService(self):
        super().startService()
        self._gcThreshold = gc.get_threshold()
        if os.environ.get("RAFTKV_GC") != "default":
            tuneGarbageCollector()
        self.started = self._start()
        self.started.addErrback(self._startFailed)
        return None

    @defer.inlineCallbacks
    def _start(self):
        from twisted.internet.endpoints import serverFromString

        from twisted_raft.kv import KVStore
        from twisted_raft.raft.node import RaftNode
        from twisted_raft.rpc.peers import AMPTransport
        from twisted_raft.rpc.server import NodeServerFactory

        reactor = self.reactor
        self.log.info(
            "raftkv node {nodeId} starting: data dir {dataDir}, cluster {cluster!r},"
            " peers {peers}",
            nodeId=self.nodeId,
            dataDir=self.dataDir,
            cluster=self.clusterToken,
            peers=",".join(f"{h}:{p}" for h, p in self.peers),
        )
        factory = self.storageFactory
        if factory is None:
            from twisted_raft.storage.files import FileStorage

            def factory(*args):
                return FileStorage(*args, segmentBytes=self.segmentBytes)

        self.storage = factory(self.dataDir, self.nodeId, self.clusterToken, reactor)
        yield defer.maybeDeferred(self.storage.start)

        others = {
            i: addr for i, addr in enumerate(self.peers, start=1) if i != self.nodeId
        }
        self.transport = AMPTransport.fromAddresses(
            reactor, others, self.clusterToken, rpcTimeout=self.electionTimeout[0]
        )
        self.store = KVStore(clock=reactor)
        self.node = RaftNode(
            self.nodeId,
            list(others),
            self.storage,
            self.transport,
            self.store,
            reactor,
            electionTimeout=self.electionTimeout,
            heartbeatInterval=self.heartbeatInterval,
            onFatalError=self._fatal,
            snapshotEntries=self.snapshotEntries,
            snapshotBytes=self.snapshotBytes,
        )
        self.transport.startService()
        yield self.node.start()
        s = self.node.status()
        self.log.info(
            "raftkv node {nodeId} recovered: term={term} votedFor={votedFor}"
            " log length={lastLogIndex}",
            nodeId=self.nodeId,
            term=s.term,
            votedFor=getattr(self.node, "votedFor", "?"),
            lastLogIndex=s.lastLogIndex,
        )
        self.factory = NodeServerFactory(
            self.node, self.store, self.transport, self.clusterToken, reactor
        )
        self.port = yield serverFromString(reactor, self.listen).listen(self.factory)
        self.log.info(
            "raftkv node {nodeId} started, listening on {address}"
            " (election timeout {lo:g}-{hi:g} ms, heartbeat {hb:g} ms)",
            nodeId=self.nodeId,
            address=self.port.getHost(),
            lo=self.electionTimeout[0] * 1000,
            hi=self.electionTimeout[1] * 1000,
            hb=self.heartbeatInterval * 1000,
        )

    def _startFailed(self, failure):
        from twisted.internet.error import CannotListenError

        from twisted_raft.storage.errors import DataDirError

        if failure.check(defer.CancelledError) and not self.running:
            return None  # stopped during start-up
        if failure.check(DataDirError):
            self.log.critical(
                "raftkv node {nodeId} refuses to start: {error}",
                nodeId=self.nodeId,
                error=failure.value,
            )
        elif failure.check(CannotListenError):
            self.log.critical(
                "raftkv node {nodeId} cannot listen on {listen}: {error}",
                nodeId=self.nodeId,
                listen=self.listen,
                error=failure.value,
            )
        else:
            self.log.failure(
                "raftkv node {nodeId} failed to start",
                failure,
                nodeId=self.nodeId,
            )
        self._shutdown(1)
        return None

    def _fatal(self, failure):
        self.log.critical(
            "raftkv node {nodeId} stops after a fatal error: {error}",
            nodeId=self.nodeId,
            error=failure.value,
        )
        self._shutdown(1)

    def _shutdown(self, code):
        self.exitCode = code
        if not self.exitOnFailure:
            return
        _exitWith(code)
        reactor = self.reactor
        if reactor.running:
            reactor.callLater(0, reactor.stop)
        else:
            reactor.callWhenRunning(reactor.stop)

    # -- stop --------------------------------------------------------------

    @defer.inlineCallbacks
    def stopService(self):
        gc.set_threshold(*self._gcThreshold)
        yield defer.maybeDeferred(super().stopService)
        if self.started is not None and not self.started.called:
            self.started.cancel()  # stopped while still starting
        if self.port is not None:
            port, self.port = self.port, None
            yield defer.maybeDeferred(port.stopListening)
        if self.node is not None:
            try:
                self.node.stop()
            except Exception:
                self.log.failure("error stopping the Raft node")
        if self.transport is not None:
            yield self.transport.stopService()
        if self.storage is not None:
            storage, self.storage = self.storage, None
            try:
                yield defer.maybeDeferred(storage.close)
            except Exception:
                self.log.failure("error closing the storage")
        self.log.info("raftkv node {nodeId} stopped", nodeId=self.nodeId)


def makeService(options):
    """
    Build a L{RaftKVService} from parsed L{Options} (or a dict with the same
    keys and parsed values).

    A C{--data} path that exists but is not a directory is refused here,
    before twistd starts, with C{SystemExit} (a message and status 1).
    """
    dataDir = options["data"]
    if os.path.exists(dataDir) and not os.path.isdir(dataDir):
        raise SystemExit(f"raftkv: --data {dataDir} exists and is not a directory")
    return RaftKVService(
        nodeId=options["id"],
        peers=options["peers"],
        dataDir=dataDir,
        listen=options["listen"],
        clusterToken=options.get("cluster-token") or "raftkv",
        electionTimeout=options.get("election-timeout") or (0.3, 0.55),
        heartbeatInterval=options.get("heartbeat-interval") or 0.08,
        snapshotEntries=options.get("snapshot-entries") or 50000,
        snapshotBytes=options.get("snapshot-bytes") or 64 * 1024 * 1024,
        segmentBytes=options.get("segment-bytes") or 16 * 1024 * 1024,
    )
