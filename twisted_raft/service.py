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

from twisted_raft.config import DEFAULT_CLUSTER_TOKEN
from twisted_raft.options import Options, nodeConfig  # Options re-exported

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


def _onSighup(reactor, reload):
    """
    Call C{reload} in the reactor thread on each SIGHUP.  @return: a
    function that puts the previous handler back.  (Only from the main
    thread, where a signal handler can be set at all.)
    """
    import signal
    import threading

    if not hasattr(signal, "SIGHUP") or threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = signal.signal(signal.SIGHUP, lambda *_: reactor.callFromThread(reload))
    return lambda: signal.signal(signal.SIGHUP, previous)


def _stopOnce(reactor):
    """
    Make SIGINT and SIGTERM stop C{reactor} once: a second one while it
    stops (a Ctrl-C, then a supervisor's SIGTERM) is ignored, where the
    reactor's own handler would log C{ReactorNotRunning} as critical.
    (Only from the main thread, where a signal handler can be set at all.)
    """
    import signal
    import threading

    from twisted.internet.error import ReactorNotRunning

    if threading.current_thread() is not threading.main_thread():
        return

    def stop():
        try:
            reactor.stop()
        except ReactorNotRunning:
            pass

    for name in ("SIGINT", "SIGTERM"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), lambda *_: reactor.callFromThread(stop))


TRANSFER_MARGIN = 0.25
"""Seconds a stopping leader waits for its leadership transfer beyond the
maximum election timeout (the core gives up on a transfer after one election
timeout; this covers its timer and the answers in flight)."""


def describePeers(config):
    """The start-up log's words for C{config}'s peers: C{"1=h:p,2=h:p"}."""
    from twisted_raft.config import formatAddress

    peers = ",".join(f"{i}={formatAddress(*a)}" for i, a in config.peers.items()) or "none"
    return f"joining (waits to be added), peers {peers}" if config.join else f"peers {peers}"


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
    -> Raft node start (recovers term, vote and log) -> the metadata epoch's
    proposer (L{twisted_raft.kvepoch}) -> listen.  If any step
    fails (notably L{DataDirError}: a data dir of another node or cluster, or
    a corrupt log), a clear critical message is logged, the reactor stops and
    the process exits with status 1.

    The node's configuration decides whom the peer links dial and who may
    speak Raft to it (L{PeerSet}); C{--peers} only bootstraps a new cluster
    and overrides members' addresses.

    Stop (SIGTERM): stop listening -> stop the epoch's proposer -> if this
    node leads and another voter exists, hand leadership over
    (L{RaftNode.transferLeadership}, waited for at most the maximum election
    timeout plus L{TRANSFER_MARGIN}), so the cluster does not wait out an
    election timeout -> node stop (pending requests fail) -> peer links stop
    -> storage close.

    @ivar exitCode: C{None}, or the status the process will exit with.
    @ivar logObserver: C{None}, or the L{ILogObserver} that the service
        sets on the application it is given as a parent (twistd logs to it
        from its first line on: L{twisted_raft.logs.configureRunner}).
    """

    log = Logger()

    def __init__(self, config, reactor=None, storageFactory=None, exitOnFailure=True,
                 nodeFactory=None):
        """
        @param config: the node's L{NodeConfig}.
        @param storageFactory: builds the storage from C{(dataDir, nodeId,
            clusterToken, reactor)}; L{FileStorage} by default.
        @param exitOnFailure: make the process exit with status 1 when the
            node cannot start or stops after a fatal error (off in tests).
        @param nodeFactory: the class of the Raft node (L{RaftNode} by
            default; tests pass a stand-in with its constructor and API).
        """
        super().__init__()
        self.config = config
        self.nodeId = config.nodeId
        self._reactor = reactor
        self.storageFactory = storageFactory
        self.nodeFactory = nodeFactory
        self.exitOnFailure = exitOnFailure
        self.exitCode = None
        self.storage = None
        self.stateMachine = None
        self.transport = None
        self.node = None
        self.peerSet = None
        self.factory = None
        self.port = None
        self.httpPort = None
        self.httpSite = None
        self.metrics = None
        self.dashboard = None
        self.started = None
        self.startedAt = None
        self.tls = None
        self._restoreSighup = None
        self.logObserver = None

    def setServiceParent(self, parent):
        if self.logObserver is not None and hasattr(parent, "setComponent"):
            from twisted.logger import ILogObserver

            parent.setComponent(ILogObserver, self.logObserver)
        return super().setServiceParent(parent)

    @property
    def reactor(self):
        if self._reactor is None:
            from twisted.internet import reactor

            self._reactor = reactor
        return self._reactor

    # -- start -------------------------------------------------------------

    _gcThreshold = gc.get_threshold()

    stopOnce = False
    """Whether to install L{_stopOnce} once the reactor runs (in a node
    process, not in tests sharing a reactor)."""

    def startService(self):
        super().startService()
        self.startedAt = self.reactor.seconds()  # for Status's uptime
        if self.stopOnce:
            # after the reactor's own handlers, installed as it starts
            self.reactor.callWhenRunning(_stopOnce, self.reactor)
        self._gcThreshold = gc.get_threshold()
        if os.environ.get("RAFTKV_GC") != "default":
            tuneGarbageCollector()
        self.started = self._start()
        self.started.addErrback(self._startFailed)
        return None

    @defer.inlineCallbacks
    def _start(self):
        from twisted.internet.endpoints import serverFromString, wrapServerTLS

        from twisted_raft.kv import KVStore
        from twisted_raft.raft.contact import nodeContactReason
        from twisted_raft.rpc.peerauth import PeerAuthority
        from twisted_raft.rpc.peers import AMPTransport
        from twisted_raft.rpc.peerset import PeerSet
        from twisted_raft.rpc.server import NodeServerFactory

        reactor, config = self.reactor, self.config
        self.log.info(
            "raftkv node {nodeId} starting: data dir {dataDir}, {peers}, {tls}",
            raftkv_event="node_starting",
            nodeId=self.nodeId,
            dataDir=config.dataDir,
            peers=describePeers(config),
            tls="mutual TLS" if config.tls else "no TLS",
        )
        if config.tls:
            self.tls = self._loadTLS()
        elif config.clusterToken == DEFAULT_CLUSTER_TOKEN:
            self.log.warn(
                "peer traffic is unauthenticated: this node uses the default cluster"
                " token, which anyone can know, and no TLS; anyone who can reach"
                " {listen} can act as a member of the cluster.  Set --cluster-token"
                " to a long random secret, or use --tls-ca/--tls-cert/--tls-key.",
                raftkv_event="peer_auth_default_token",
                listen=config.listen,
            )
        factory = self.storageFactory
        if factory is None:
            from twisted_raft.storage.files import FileStorage

            def factory(*args):
                # Closed by stopService, after the leadership handover.
                return FileStorage(
                    *args, segmentBytes=config.segmentBytes, closeOnShutdown=False
                )

        self.storage = factory(config.dataDir, self.nodeId, config.clusterToken, reactor)
        yield defer.maybeDeferred(self.storage.start)

        # Whom to dial and whom to accept follow the node's configuration,
        # once the node has loaded it (watchConfiguration, below).
        self.peerSet = peerSet = PeerSet(self.nodeId, config.peers)
        authority = PeerAuthority(
            self.nodeId, config.clusterToken, peerSet.isMember,
            certificateRequired=self.tls is not None,
        )
        self.transport = peerSet.transport = AMPTransport.fromAddresses(
            reactor, {}, authority, tls=self.tls,
            rpcTimeout=config.raft.requestTimeout,
            snapshotChunkTimeout=config.raft.chunkTimeout,
            forwardTimeout=config.forwardTimeout,
            initialDelay=config.reconnectDelay[0],
            maxDelay=config.reconnectDelay[1],
        )
        self.stateMachine = KVStore(clock=reactor)
        RaftNode = self.nodeFactory
        if RaftNode is None:
            from twisted_raft.raft.node import RaftNode
        self.node = RaftNode(
            self.nodeId,
            [] if config.join else list(config.others),
            self.storage,
            self.transport,
            self.stateMachine,
            reactor,
            config=config.raft,
            onFatalError=self._fatal,
            configuration=config.bootstrap,  # used only if the data dir holds none
        )
        peerSet.accepts = self.node.acceptsPeer
        peerSet.committed = lambda: self.node.commitIndex
        self.transport.startService()
        yield self.node.start()  # it logs what it recovered
        self.node.watchConfiguration(peerSet.configurationChanged)
        self._startMetadataEpoch()
        self.factory = NodeServerFactory(
            self.node, self.stateMachine, self.transport, authority, reactor,
            requestTimeout=config.requestTimeout,
            leaderTimeout=config.leaderTimeout,
            retryDelay=config.retryDelay,
            maxTries=config.maxTries,
            maxConnections=config.maxConnections,
            maxRequestsPerConnection=config.maxRequestsPerConnection,
            maxPendingBytes=config.maxPendingBytes,
            startedAt=self.startedAt,
            watchContactReason=lambda: nodeContactReason(self.node),
        )
        endpoint = serverFromString(reactor, config.listen)
        if self.tls is not None:
            endpoint = wrapServerTLS(self.tls.serverCreator(), endpoint)
            self._restoreSighup = _onSighup(reactor, self.reloadTLS)
        self.port = yield endpoint.listen(self.factory)
        if config.http is not None:
            self.httpPort = yield serverFromString(reactor, config.http).listen(
                self.buildHTTPSite()
            )
            self.log.info(
                "raftkv node {nodeId} serves /metrics, /health and its dashboard on"
                " {address}",
                nodeId=self.nodeId, address=self.httpPort.getHost(),
            )
        election = config.raft.electionTimeout
        self.log.info(
            "raftkv node {nodeId} started, listening on {address}"
            " (election timeout {lo:g}-{hi:g} ms, heartbeat {hb:g} ms)",
            raftkv_event="node_started",
            nodeId=self.nodeId,
            address=self.port.getHost(),
            lo=election[0] * 1000,
            hi=election[1] * 1000,
            hb=config.raft.heartbeatInterval * 1000,
        )

    def buildHTTPSite(self):
        """The site served on C{--http}, once the node has started."""
        from twisted_raft.web.dashboard import Dashboard
        from twisted_raft.web.site import LimitedSite, buildSite

        self.dashboard = Dashboard.forService(self)
        self.dashboard.start()
        self.httpSite = LimitedSite(buildSite({
            b"metrics": self._metricsResource(),
            b"health": self._healthResource(),
            **self.dashboard.children(),
        }), clock=self.reactor)
        return self.httpSite

    def _metricsResource(self):
        """
        C{/metrics}: the node's own registry, and the recording hooks given
        to storage, peer links and server only now (without C{--http} they
        keep their no-op default).
        """
        from twisted_raft.web.metrics import MetricsResource, NodeMetrics

        self.metrics = NodeMetrics(self.node)
        self.metrics.attach(self.storage, self.transport, self.factory)
        return MetricsResource(self.metrics)

    def _healthResource(self):
        from twisted_raft.web.health import HealthResource

        return HealthResource(self.node)

    def _loadTLS(self):
        """
        This node's TLS credentials, from the files its config names.

        @raise TLSConfigError: unreadable or inconsistent files, or a
            certificate that does not name this node (its peers would refuse
            it).
        """
        from twisted_raft.tls import TLSCredentials, TLSFiles

        config = self.config
        tls = TLSCredentials(TLSFiles(config.tlsCA, config.tlsCert, config.tlsKey))
        self._checkOwnName(tls.commonName)
        return tls

    def _checkOwnName(self, commonName):
        from twisted_raft.tls import TLSConfigError, nodeCommonName

        expected = nodeCommonName(self.nodeId)
        if commonName != expected:
            raise TLSConfigError(
                f"{self.config.tlsCert}: its Common Name is {commonName!r}, but node"
                f" {self.nodeId} needs {expected!r}"
            )

    def reloadTLS(self):
        """
        Re-read the TLS files for new connections (SIGHUP); connections
        already made keep theirs.  On any error the node keeps the
        credentials it has and says why.
        """
        from twisted_raft.tls import TLSConfigError

        if self.tls is None:
            return
        try:
            self.tls.reload(check=self._checkOwnName)
        except TLSConfigError as e:
            self.log.error(
                "SIGHUP: TLS files not reloaded, keeping the old ones: {error}",
                raftkv_event="tls_reload_failed", error=e,
            )
            return
        except Exception:
            self.log.failure(
                "SIGHUP: TLS files not reloaded, keeping the old ones",
                raftkv_event="tls_reload_failed",
            )
            return
        self.log.info(
            "SIGHUP: TLS files reloaded; new connections use them", raftkv_event="tls_reload"
        )

    def _startFailed(self, failure):
        from twisted.internet.error import CannotListenError

        from twisted_raft.storage.errors import DataDirError
        from twisted_raft.tls import TLSConfigError

        if failure.check(defer.CancelledError) and not self.running:
            return None  # stopped during start-up
        if failure.check(DataDirError, TLSConfigError):
            self.log.critical(
                "raftkv node {nodeId} refuses to start: {error}",
                raftkv_event="node_start_failed",
                nodeId=self.nodeId,
                error=failure.value,
            )
        elif failure.check(CannotListenError):
            self.log.critical(
                "raftkv node {nodeId} cannot listen on {listen}: {error}",
                raftkv_event="node_start_failed",
                nodeId=self.nodeId,
                listen=self.config.http if self.port is not None else self.config.listen,
                error=failure.value,
            )
        else:
            self.log.failure(
                "raftkv node {nodeId} failed to start",
                failure,
                raftkv_event="node_start_failed",
                nodeId=self.nodeId,
            )
        self._shutdown(1)
        return None

    def _fatal(self, failure):
        # The node has logged why it stopped (and the storage, the failure).
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
        if self._restoreSighup is not None:
            restore, self._restoreSighup = self._restoreSighup, None
            restore()
        if self.started is not None and not self.started.called:
            self.started.cancel()  # stopped while still starting
        if self.port is not None:
            port, self.port = self.port, None
            yield defer.maybeDeferred(port.stopListening)
        if self.httpPort is not None:
            port, self.httpPort = self.httpPort, None
            yield defer.maybeDeferred(port.stopListening)
        if self.httpSite is not None:
            # Its connections too: a kept-alive one would go on asking a
            # stopped node (and wake its dashboard's polling).
            site, self.httpSite = self.httpSite, None
            site.closeAll()
        if self.dashboard is not None:
            dashboard, self.dashboard = self.dashboard, None
            yield dashboard.stop()
        self._stopMetadataEpoch()
        yield self._handOverLeadership()
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
        self.log.info("raftkv node {nodeId} stopped", raftkv_event="node_stopped", nodeId=self.nodeId)


    # -- the KV store's metadata epoch (twisted_raft.kvepoch) --------------------

    metadataEpoch = None
    """The L{MetadataEpochProposer} while the node runs."""

    def _startMetadataEpoch(self):
        from twisted_raft.kvepoch import MetadataEpochProposer

        self.metadataEpoch = MetadataEpochProposer(self.node, self.stateMachine, self.reactor)
        self.metadataEpoch.start()

    def _stopMetadataEpoch(self):
        if self.metadataEpoch is not None:
            proposer, self.metadataEpoch = self.metadataEpoch, None
            proposer.stop()

    @defer.inlineCallbacks
    def _handOverLeadership(self):
        """
        If this node leads and another voter exists, transfer leadership
        (thesis §3.10) before stopping, so that the others need not wait out
        an election timeout to notice it is gone.  Waits at most one maximum
        election timeout plus L{TRANSFER_MARGIN}; whatever happens, the stop
        goes on (and says why it went on without a transfer).
        """
        from twisted_raft.raft.messages import LEADER

        node = self.node
        if node is None or not node.running or node.role != LEADER:
            return
        if not [v for v in node.configuration.voters if v != self.nodeId]:
            return
        limit = self.config.raft.electionTimeout[1] + TRANSFER_MARGIN
        self.log.info(
            "raftkv node {nodeId} stopping: handing leadership over first (at most"
            " {limit:g} ms)",
            raftkv_event="node_stopping", nodeId=self.nodeId, limit=limit * 1000,
        )
        d = defer.maybeDeferred(node.transferLeadership)
        d.addTimeout(limit, self.reactor)
        try:
            newLeader = yield d
        except defer.TimeoutError:
            why = f"no new leader within {limit * 1000:g} ms"
        except Exception as e:
            why = f"{type(e).__name__}: {e}"
        else:
            self.log.info(
                "raftkv node {nodeId} handed leadership to node {leaderId}",
                raftkv_event="handover_done",
                nodeId=self.nodeId, leaderId=newLeader,
            )
            return
        self.log.warn(
            "raftkv node {nodeId} stops without handing leadership over: {why}",
            raftkv_event="handover_failed",
            nodeId=self.nodeId, why=why,
        )


def makeService(options):
    """
    Build a L{RaftKVService} from parsed L{Options} (or a dict with the same
    keys and parsed values).

    A C{--data} path that exists but is not a directory is refused here,
    before twistd starts, with C{SystemExit} (a message and status 1).
    """
    config = getattr(options, "config", None) or nodeConfig(options)
    if os.path.exists(config.dataDir) and not os.path.isdir(config.dataDir):
        raise SystemExit(f"raftkv: --data {config.dataDir} exists and is not a directory")
    from twisted_raft.logs import configureRunner

    node = RaftKVService(config)
    node.logObserver = configureRunner(options, config.nodeId)
    # A node process run by twistd/twist: its signals are its own.
    node.stopOnce = True
    return node
