"""
Peer links: one long-lived AMP connection per peer, used for Raft's RPCs and
for forwarding client requests to the leader.

A link is usable only once its handshake (L{twisted_raft.rpc.peerauth}) has
proven, both ways, that the two ends are member nodes of one cluster and
that the node reached is the one dialled.  A handshake the other end refuses
(another cluster token, another node at that address, a certificate that
does not name it) is logged once and retried only after
L{REFUSED_RETRY_DELAY}: a misconfigured peer costs a line, not a storm.

L{AMPTransport} provides L{ITransport} to the consensus core.  Each peer has a
L{ClientService} that keeps reconnecting with a short, capped back-off (well
below the election timeout).  A call to a peer that is not connected right now
fails at once with L{PeerUnreachable} instead of waiting for a reconnect: Raft
retries anyway, and a dead peer must never stall the others.

The set of peers changes with the cluster's membership:
L{AMPTransport.setPeers} adds, removes and re-addresses links at runtime
(the service calls it from the node's configuration, through
L{twisted_raft.rpc.peerset.PeerSet}); a call to a peer that has no link is
refused like a call to an unreachable one.
"""

import random

from twisted.application import service
from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet import defer, error, protocol
from twisted.logger import Logger
from twisted.protocols import amp
from zope.interface import implementer

from twisted_raft.raft import messages
from twisted_raft.config import NodeConfig
from twisted_raft.raft.config import RaftConfig
from twisted_raft.raft.interfaces import ITransport
from twisted_raft.raft.membership import encodeMembers
from twisted_raft.rpc import commands, wire
from twisted_raft.rpc.commands import PermissionDenied
from twisted_raft.rpc.fastamp import FastBoxParsing

REFUSED_RETRY_DELAY = 5.0
"""Seconds before a link whose handshake was refused tries again."""

HANDSHAKE_TIMEOUT = 3.0
"""Seconds a new link's handshake (TLS, then PeerHello and PeerProof: two
round trips) may take.  Longer than a Raft RPC's timeout: a loaded node may
be slow to answer a new connection, and giving up early only starts over."""


class PeerUnreachable(Exception):
    """
    There is no connection to the peer right now; nothing was sent.
    """


def _dropEvent(event):
    pass


class _QuietClientService(ClientService):
    """
    A L{ClientService} that does not log every reconnection attempt: with a
    back-off capped at a fraction of a second, a peer that is down would
    otherwise add several lines a second to the log.  L{_PeerLink} logs
    connects and disconnects instead.
    """

    _log = Logger(observer=_dropEvent)


class _PeerProtocol(FastBoxParsing, amp.AMP):
    """The client side of a peer link: it only sends commands."""

    def __init__(self, link):
        super().__init__()
        self.link = link
        self.received = 0  # number of dataReceived calls: liveness of the link
        self.lost = False

    def dataReceived(self, data):
        self.received += 1
        super().dataReceived(data)

    def connectionMade(self):
        super().connectionMade()
        self.link._connected(self)

    def connectionLost(self, reason):
        self.lost = True
        self.link._disconnected(self)
        super().connectionLost(reason)


class _PeerFactory(protocol.Factory):
    noisy = False

    def __init__(self, link):
        self.link = link

    def buildProtocol(self, addr):
        p = _PeerProtocol(self.link)
        p.factory = self
        return p


class _PeerLink:
    """
    The connection to one peer, kept up by a L{ClientService}; usable
    (L{protocol} set) once its handshake is done.

    @param target: what the link was made for (an address, or the endpoint
        itself): a link is replaced when its peer's target changes.
    @param authority: this node's L{PeerAuthority}.
    @param handshakeTimeout: seconds the whole handshake may take.
    """

    log = Logger()

    def __init__(self, peerId, endpoint, clock, retryPolicy, authority, handshakeTimeout,
                 target=None):
        self.peerId = peerId
        self.target = endpoint if target is None else target
        self.endpoint = endpoint
        self.clock = clock
        self.authority = authority
        self.handshakeTimeout = handshakeTimeout
        self.protocol = None
        self.everConnected = False
        self.refused = None
        """The reason of the last refused handshake, until one succeeds."""
        self._retry = None
        self._waiting = False  # paused after a refused handshake
        self.service = _QuietClientService(
            endpoint, _PeerFactory(self), retryPolicy=retryPolicy, clock=clock
        )

    def start(self):
        self.service.startService()

    def stop(self):
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        self._waiting = False
        return self.service.stopService()

    def retryRefused(self):
        """
        If the link waits after a refused handshake, try again now: the
        membership changed, and a node that refused us as a non-member a
        moment ago may accept us now.
        """
        if self._waiting:
            self._retry.cancel()
            self._again()

    def _connected(self, proto):
        """The connection is up: prove who we are, and check who they are."""
        dialling = self.authority.dial(self.peerId)
        d = proto.callRemote(
            commands.PeerHello, **dialling.helloArguments(self.authority.nodeId)
        )
        d.addCallback(self._answered, proto, dialling)
        d.addTimeout(self.handshakeTimeout, self.clock)
        d.addCallbacks(self._authenticated, self._handshakeFailed, (proto,), None, (proto,))

    def _answered(self, answer, proto, dialling):
        certificateId = None
        if self.authority.certificateRequired:
            from twisted_raft.tls import peerNodeId

            certificateId = peerNodeId(proto.transport)
        proof = self.authority.checkAnswer(dialling, answer, certificateId)
        return proto.callRemote(commands.PeerProof, proof=proof)

    def _authenticated(self, _, proto):
        if proto.lost:
            return
        self.protocol = proto
        self.everConnected = True
        self.refused = None
        self.log.info("connected to peer {peerId}", raftkv_event="peer_connected", peerId=self.peerId)

    def _handshakeFailed(self, failure, proto):
        if proto.transport is not None:
            proto.transport.abortConnection()
        if not failure.check(PermissionDenied):
            # lost or timed out: the ClientService reconnects as usual
            self.log.debug(
                "handshake with peer {peerId} failed: {error}",
                peerId=self.peerId, error=failure.value,
            )
            return
        reason = str(failure.value)
        if reason != self.refused:
            self.refused = reason
            self.log.warn(
                "peer {peerId} refused or failed the handshake: {reason}; retrying"
                " every {delay:g} s",
                raftkv_event="peer_refused",
                peerId=self.peerId, reason=reason, delay=REFUSED_RETRY_DELAY,
            )
        if self._retry is None and self.service.running:
            # Not from inside the ClientService's own callbacks (re-entry).
            self._retry = self.clock.callLater(0, self._pause)

    def _pause(self):
        self.service.stopService()
        self._waiting = True
        self._retry = self.clock.callLater(REFUSED_RETRY_DELAY, self._again)

    def _again(self):
        self._retry = None
        self._waiting = False
        self.service.startService()

    def _disconnected(self, proto):
        if self.protocol is proto:
            self.protocol = None
            self.log.info(
                "lost connection to peer {peerId}",
                raftkv_event="peer_disconnected", peerId=self.peerId,
            )


_RAFT_DEFAULTS = RaftConfig()


@implementer(ITransport)
class AMPTransport(service.Service):
    """
    Carries Raft RPCs and forwarded client commands to peers over AMP.

    @param endpoints: C{{peerId: target}} of the peers to dial at first;
        C{endpointFactory(target)} makes the client endpoint of a target.
        Without C{endpointFactory} the targets are C{IStreamClientEndpoint}s.
    @param authority: this node's L{PeerAuthority}: every link proves with it
        that it is a member node before it carries anything.
    @param clock: an L{IReactorTime} for timeouts and reconnect back-off.
    @param rpcTimeout: seconds before a Raft RPC fails with
        L{defer.TimeoutError}.  When a Raft RPC times out (or its caller
        cancels it) and nothing at all was received on that link meanwhile,
        the connection is aborted, so a half-open link is replaced by a fresh
        one; a link that is merely slow is kept.
    @param snapshotChunkTimeout: seconds before one InstallSnapshot chunk
        fails (at least C{rpcTimeout}; see L{RaftConfig}).
    @param forwardTimeout: default seconds before a forwarded client command
        (L{callPeer}) fails; the connection is kept (a slow commit is no sign
        of a broken link).
    @ivar links: C{{peerId: _PeerLink}}, the peers dialled now.
    """

    log = Logger()

    onRoundTrip = None
    """C{None}, or called with C{(peerId, seconds)} for each AppendEntries
    (heartbeats included) answered, from the call to its answer: the
    network both ways plus the follower's wait for its disk (the node's
    metrics)."""

    onSendFailure = None
    """C{None}, or called with C{peerId} for each Raft RPC to that peer that
    failed: not sent (no connection), errored, timed out or cancelled."""

    def __init__(
        self,
        endpoints,
        authority,
        clock,
        rpcTimeout=_RAFT_DEFAULTS.requestTimeout,
        snapshotChunkTimeout=_RAFT_DEFAULTS.snapshotChunkTimeout,
        forwardTimeout=NodeConfig.forwardTimeout,
        initialDelay=NodeConfig.reconnectDelay[0],
        maxDelay=NodeConfig.reconnectDelay[1],
        endpointFactory=None,
    ):
        self.authority = authority
        self.clock = clock
        self.rpcTimeout = rpcTimeout
        self.snapshotChunkTimeout = max(rpcTimeout, snapshotChunkTimeout)
        self.forwardTimeout = forwardTimeout
        self.endpointFactory = endpointFactory or (lambda endpoint: endpoint)
        # backoffPolicy's default jitter adds random.random(), up to a whole
        # second: far more than an election timeout.  Keep it small.
        self._policy = backoffPolicy(
            initialDelay=initialDelay,
            maxDelay=maxDelay,
            jitter=lambda: random.uniform(0, initialDelay),
        )
        self._handshakeTimeout = max(rpcTimeout, HANDSHAKE_TIMEOUT)
        self._stopping = set()  # Deferreds of links being stopped
        self.links = {}
        for peerId, target in endpoints.items():
            self.setPeer(peerId, target)

    @classmethod
    def fromAddresses(cls, reactor, addresses, authority, connectTimeout=2, tls=None, **kw):
        """
        Build a transport whose targets are C{(host, port)} (C{addresses}:
        C{{peerId: (host, port)}} at first), using TCP client endpoints with a
        C{connectTimeout} (seconds), wrapped in TLS with C{tls}
        (L{TLSCredentials}) if given: the peer's certificate is checked
        against the host dialled.
        """
        from twisted.internet.endpoints import clientFromString

        def endpointFor(address):
            host, port = address
            h = host.replace(":", "\\:")  # IPv6 literal in an endpoint string
            endpoint = clientFromString(
                reactor, f"tcp:host={h}:port={port}:timeout={connectTimeout}"
            )
            if tls is not None:
                from twisted_raft.tls import endpointWithTLS

                endpoint = endpointWithTLS(endpoint, tls, host)
            return endpoint

        return cls(addresses, authority, reactor, endpointFactory=endpointFor, **kw)

    # -- the peers ---------------------------------------------------------

    def setPeers(self, targets):
        """
        Dial exactly the peers of C{targets} (C{{peerId: target}}): links to
        others are closed, new peers get a link, a peer whose target changed
        gets a new one; a link kept as it was that waits after a refused
        handshake tries again now (see L{_PeerLink.retryRefused}).
        """
        for peerId in [p for p in self.links if p not in targets]:
            self.removePeer(peerId)
        for peerId, target in targets.items():
            link = self.links.get(peerId)
            if link is not None and link.target == target:
                link.retryRefused()
            else:
                self.setPeer(peerId, target)

    def setPeer(self, peerId, target):
        """Dial C{peerId} at C{target}: a new link, replacing any other one."""
        link = self.links.get(peerId)
        if link is not None:
            if link.target == target:
                return
            self.removePeer(peerId)
        link = _PeerLink(
            peerId, self.endpointFactory(target), self.clock, self._policy, self.authority,
            self._handshakeTimeout, target,
        )
        self.links[peerId] = link
        if self.running:
            link.start()

    def removePeer(self, peerId):
        """
        Close the link to C{peerId}, if any: calls on it fail as the
        connection is lost, and new calls fail with L{PeerUnreachable}.
        """
        link = self.links.pop(peerId, None)
        if link is None:
            return
        d = defer.maybeDeferred(link.stop)
        self._stopping.add(d)
        d.addBoth(lambda r: self._stopping.discard(d))

    # -- service ---------------------------------------------------------

    def startService(self):
        super().startService()
        for link in self.links.values():
            link.start()

    def stopService(self):
        super().stopService()
        stopping = [defer.maybeDeferred(l.stop) for l in self.links.values()]
        return defer.DeferredList(
            stopping + list(self._stopping), consumeErrors=True,
        ).addCallback(lambda _: None)

    # -- queries -----------------------------------------------------------

    def isConnected(self, peerId):
        link = self.links.get(peerId)
        return link is not None and link.protocol is not None

    # -- calls -------------------------------------------------------------

    def _call(self, peerId, command, timeout, abortOnTimeout, kwargs):
        link = self.links.get(peerId)
        if link is None:
            return defer.fail(PeerUnreachable(f"unknown peer {peerId}"))
        proto = link.protocol
        if proto is None:
            return defer.fail(PeerUnreachable(f"not connected to peer {peerId}"))
        try:
            d = proto.callRemote(command, **kwargs)
        except Exception as e:
            # e.g. TooLong, or the transport went away under us
            return defer.fail(e)
        if timeout is not None:
            d.addTimeout(timeout, self.clock)
        if abortOnTimeout:
            sentAt = proto.received

            def gaveUp(f):
                # Our timeout, or the caller's (the core times out its RPCs
                # by cancelling): if nothing at all arrived on the link since
                # the call was sent, the link is presumed half-open and is
                # aborted so that the ClientService reconnects.
                f.trap(defer.TimeoutError, defer.CancelledError)
                if link.protocol is proto and proto.received == sentAt:
                    self.log.info(
                        "{command} to peer {peerId} got no answer and the link"
                        " is silent; aborting the connection",
                        command=command.__name__,
                        peerId=peerId,
                    )
                    t = proto.transport
                    if t is not None:
                        t.abortConnection()
                return f

            d.addErrback(gaveUp)
        return d

    def _raft(self, peerId, command, timeout, answer, arguments):
        """A Raft RPC: it may be aborted (see L{_call})."""
        arguments["cluster"] = ""  # kept for the schema; see commands.py
        d = self._call(peerId, command, timeout, True, arguments)
        if self.onSendFailure is not None:
            d.addErrback(self._sendFailed, peerId)
        return d.addCallback(answer)

    def _sendFailed(self, failure, peerId):
        self.onSendFailure(peerId)
        return failure

    def _answeredAfter(self, result, peerId, sentAt):
        self.onRoundTrip(peerId, self.clock.seconds() - sentAt)
        return result

    def requestVote(self, peerId, request):
        arguments = _wireArguments(request, _VOTE_FIELDS)
        arguments["pre_vote"] = request.preVote or None  # absent for a plain vote
        arguments["transfer"] = request.transfer or None  # absent unless transferring
        return self._raft(peerId, commands.RequestVote, self.rpcTimeout, _voteResult, arguments)

    def appendEntries(self, peerId, request):
        arguments = _wireArguments(request, _APPEND_FIELDS)
        try:
            arguments["entries"] = wire.encodeEntries(request.entries)
        except Exception as e:
            return defer.fail(e)
        d = self._raft(
            peerId, commands.AppendEntries, self.rpcTimeout, _appendResult, arguments
        )
        if self.onRoundTrip is not None:
            d.addCallback(self._answeredAfter, peerId, self.clock.seconds())
        return d

    def installSnapshot(self, peerId, request):
        arguments = _wireArguments(request, _SNAPSHOT_FIELDS)
        meta = request.meta
        arguments.update(
            last_index=meta.lastIndex,
            last_term=meta.lastTerm,
            members=list(meta.members),
            configuration=encodeMembers(meta.configuration),
            config_index=meta.configuration.index,
        )
        return self._raft(
            peerId, commands.InstallSnapshot, self.snapshotChunkTimeout, _snapshotResult,
            arguments,
        )

    def timeoutNow(self, peerId, request):
        arguments = _wireArguments(request, _TIMEOUT_NOW_FIELDS)
        return self._raft(
            peerId, commands.TimeoutNow, self.rpcTimeout, _timeoutNowResult, arguments
        )

    def callPeer(self, peerId, command, timeout=None, **kwargs):
        """
        Send a client command (e.g. a forwarded L{commands.Put}) to a peer.

        @return: a L{Deferred} firing with the response dict, or failing with
            the command's declared errors, L{PeerUnreachable} (nothing sent),
            L{defer.TimeoutError}, or a connection-lost error (outcome
            unknown).
        """
        if timeout is None:
            timeout = self.forwardTimeout
        return self._call(peerId, command, timeout, False, kwargs)


# Each Raft RPC's AMP arguments (see rpc/commands.py) and the message
# attributes they carry.
_VOTE_FIELDS = (
    ("term", "term"), ("candidate_id", "candidateId"),
    ("last_log_index", "lastLogIndex"), ("last_log_term", "lastLogTerm"),
)
_APPEND_FIELDS = (
    ("term", "term"), ("leader_id", "leaderId"), ("prev_log_index", "prevLogIndex"),
    ("prev_log_term", "prevLogTerm"), ("leader_commit", "leaderCommit"),
)
_TIMEOUT_NOW_FIELDS = (("term", "term"), ("leader_id", "leaderId"))
_SNAPSHOT_FIELDS = (
    ("term", "term"), ("leader_id", "leaderId"), ("offset", "offset"), ("data", "data"),
    ("done", "done"),
)


def _wireArguments(message, fields):
    return {name: getattr(message, attribute) for name, attribute in fields}


def _voteResult(r):
    return messages.RequestVoteResult(r["term"], r["vote_granted"])


def _appendResult(r):
    return messages.AppendEntriesResult(
        r["term"], r["success"], r["match_index"], r["conflict_index"], r["conflict_term"]
    )


def _snapshotResult(r):
    return messages.InstallSnapshotResult(r["term"], r["success"], r["next_offset"])


def _timeoutNowResult(r):
    return messages.TimeoutNowResult(r["term"], r["accepted"])


NOT_SENT_ERRORS = (PeerUnreachable, error.ConnectError)
"""Failures of L{AMPTransport.callPeer} that guarantee nothing was sent."""
