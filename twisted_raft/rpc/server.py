"""
The node's AMP protocol: Raft's peer RPCs and the client contract.

Every responder answers either with its command's response or with one of the
declared errors (C{UNAVAILABLE}, C{INVALID_ARGUMENT}, C{VALUE_TOO_LARGE}), so
no request ever costs a client its connection; unexpected exceptions are
logged and answered as C{UNAVAILABLE}.

The client commands are validated here and turned into a L{Request}, which
L{twisted_raft.rpc.routing.Router} serves: at this node if it leads,
otherwise forwarded to the leader.

A write with C{client_id} and C{sequence} is proposed wrapped in its client
session (L{kv.encodeSession}) and forwarded with them; if the state machine
finds it a duplicate, the answer carries the original revision.

Membership changes and leadership transfers take the same path as writes
(served by the leader, forwarded by anyone else); their node ids and
addresses are checked here, so the core only ever sees well-formed ones.

Here: L{NodeProtocol} (one connection: its life, the limits it is held
to, the responders of the plain key-value, status and membership
commands) and L{NodeServerFactory} (the node's side of every
connection).  The rest of the protocol is mixed in from
L{twisted_raft.rpc.clientrequests} (arguments checked, each command's
L{Request}, the metrics' measurement), L{twisted_raft.rpc.kvserve}
(ranges, transactions, prev_kv, range deletes),
L{twisted_raft.rpc.peerserve} (the peer handshake and the Raft RPCs) and
L{twisted_raft.rpc.watches}.
"""

import os

from twisted.internet import protocol
from twisted.logger import Logger
from twisted.protocols import amp
from twisted.python.failure import Failure

from twisted_raft import kv
from twisted_raft.config import NodeConfig
from twisted_raft.raft import messages
from twisted_raft.raft.membership import ChangeKind
from twisted_raft.rpc import commands, kvwire
from twisted_raft.rpc.clientrequests import (
    AddLearnerRequest,
    CompareAndSetRequest,
    DeleteRequest,
    MembersRequest,
    PromoteRequest,
    PutRequest,
    ReadRequest,
    RemoveRequest,
    TransferRequest,
    clientRequest,
    confChange,
    readKey,
    validateKey,
    validateNodeId,
    validateSession,
    validateValue,
)
from twisted_raft.rpc.commands import Overloaded
from twisted_raft.rpc.deadlines import Deadlines
from twisted_raft.rpc.fastamp import FastBoxParsing, FastDispatch
from twisted_raft.rpc.kvserve import DeleteRangeRequest, KVResponders, PutPrevKvRequest
from twisted_raft.rpc.limits import ConnectionLimit, Notice, PendingBytes, ReadBackPressure
from twisted_raft.rpc.peerserve import PeerResponders, connectionAddress
from twisted_raft.rpc.routing import DECLARED, Router
from twisted_raft.rpc.watches import WatchHub, WatchResponders


class NodeProtocol(
    WatchResponders, KVResponders, PeerResponders, ReadBackPressure, FastDispatch,
    FastBoxParsing, amp.AMP,
):
    """
    One connection to this node, from a client or from a peer's link.  Its
    socket is not read while it has too many requests in flight
    (L{ReadBackPressure}).

    @param server: the L{NodeServerFactory} holding the node, the key-value
        state machine, the peer transport, the timeouts and the L{Router}.
    """

    log = Logger()

    def __init__(self, server):
        super().__init__()
        self.server = server
        self.peerId = None
        """The member node this connection speaks for, once its handshake
        is done; C{None} for a client."""
        self._handshake = None
        self._deniedLogged = False

    @property
    def node(self):
        return self.server.node

    lastReceived = 0.0
    """When this connection last received bytes (the server's clock)."""

    def connectionMade(self):
        self.lastReceived = self.server.clock.seconds()
        # Counted from here, not from buildProtocol: a connection whose setup
        # fails before (a TLS context error) never gets connectionLost either.
        if not self.server.connections.admit(self):
            self.dropped = "over the connection limit"
            self._abort()
            return
        super().connectionMade()

    def dataReceived(self, data):
        if data:
            self.lastReceived = self.server.clock.seconds()
        super().dataReceived(data)

    def evict(self):
        """Close this idle connection at once to make room for a new one
        (L{ConnectionLimit})."""
        self.dropped = "idle, closed to make room for a new connection"
        self._abort()

    def _abort(self):
        abort = getattr(self.transport, "abortConnection", None)
        (abort or self.transport.loseConnection)()

    def connectionLost(self, reason):
        self.server.connections.release(self)
        super().connectionLost(reason)

    def _guard(self, d, what):
        """Map anything undeclared to UNAVAILABLE, logging it."""
        return d.addErrback(self._unexpected, what)

    def _unexpected(self, f, what):
        if f.check(*DECLARED):
            return f
        if f.check(messages.NotLeader):
            # The node has stopped (its peer handlers say so this way): a
            # normal moment while a cluster stops, no internal error.
            raise commands.Unavailable(f"{what}: {f.value}")
        raise self.server.router.internalError(f, what)

    # -- the client contract ---------------------------------------------

    @commands.Put.responder
    @clientRequest(commands.Put)
    def put(self, key, value, forwarded=None, client_id=None, sequence=None, prev_kv=None):
        if forwarded:
            self._authorize(None, "a forwarded Put")
        validateKey(key)
        validateValue("value", value)
        session = validateSession(client_id, sequence)
        if prev_kv:
            return self._serveWrite(
                PutPrevKvRequest(key, kvwire.putPrevKv(key, value), session, forwarded, value)
            )
        return self._serveWrite(
            PutRequest(key, kv.encodePut(key, value), session, forwarded, value)
        )

    @commands.Delete.responder
    @clientRequest(commands.Delete)
    def delete(
        self, key, forwarded=None, client_id=None, sequence=None, end=None, prefix=None,
        prev_kv=None,
    ):
        if forwarded:
            self._authorize(None, "a forwarded Delete")
        if end is not None or prefix or prev_kv:
            session = validateSession(client_id, sequence)
            return self._serveWrite(
                DeleteRangeRequest(key, end, prefix, prev_kv, session, forwarded)
            )
        validateKey(key)
        session = validateSession(client_id, sequence)
        return self._serveWrite(
            DeleteRequest(key, kv.encodeDelete(key), session, forwarded)
        )

    @commands.CompareAndSet.responder
    @clientRequest(commands.CompareAndSet)
    def compareAndSet(
        self, key, value, expected=None, forwarded=None, client_id=None,
        sequence=None,
    ):
        if forwarded:
            self._authorize(None, "a forwarded CompareAndSet")
        validateKey(key)
        validateValue("expected", expected)
        validateValue("value", value)
        session = validateSession(client_id, sequence)
        return self._serveWrite(
            CompareAndSetRequest(
                key, kv.encodeCompareAndSet(key, expected, value), session,
                forwarded, value, expected,
            )
        )

    def _serveWrite(self, request):
        """
        Serve a write.  One refused as overloaded also stops this connection
        being read until the node's write budget has room again (a client's,
        not a peer's link): a client that keeps sending large writes would
        otherwise cost the node the CPU of reading and refusing each one,
        which a flood turns into all of it.
        """
        try:
            return self.server.router.serve(request)
        except Overloaded:
            if self.peerId is None:
                self.waitForRoom(self.server.pendingWrites)
            raise

    @commands.Get.responder
    @clientRequest(commands.Get)
    def get(self, key, stale=None, forwarded=None):
        if forwarded:
            self._authorize(None, "a forwarded Get")
        validateKey(key)
        if stale:
            answer = readKey(self.server.stateMachine, key)
            if not forwarded:
                self.server.readsAnswered += 1
            return answer
        answer = self.server.router.serve(ReadRequest(key, forwarded))
        if not forwarded:
            answer.addCallback(self.server.countRead)
        return answer

    @commands.Status.responder
    @clientRequest(commands.Status)
    def status(self):
        try:
            s = self.node.status()
        except Exception:
            raise self.server.router.internalError(Failure(), "status")
        return {
            "node_id": s.nodeId,
            "role": s.role,
            "term": s.term,
            "leader_id": s.leaderId,
            "commit_index": s.commitIndex,
            "last_applied": s.lastApplied,
            "last_log_index": s.lastLogIndex,
            "voter": s.voter,
            "config_revision": s.configIndex,
            "pid": os.getpid(),
            "uptime": self.server.uptime(),
            "reads": self.server.readsAnswered,
        }

    # -- membership and leadership transfer ------------------------------

    @commands.MemberList.responder
    @clientRequest(commands.MemberList)
    def memberList(self, forwarded=None):
        if forwarded:
            self._authorize(None, "a forwarded MemberList")
        return self.server.router.serve(MembersRequest(forwarded))

    @commands.AddLearner.responder
    @clientRequest(commands.AddLearner)
    def addLearner(self, node_id, address, forwarded=None):
        if forwarded:
            self._authorize(None, "a forwarded AddLearner")
        change = confChange(ChangeKind.ADD_LEARNER, node_id, address)
        return self._serveWrite(AddLearnerRequest(change, forwarded))

    @commands.PromoteMember.responder
    @clientRequest(commands.PromoteMember)
    def promoteMember(self, node_id, forwarded=None):
        if forwarded:
            self._authorize(None, "a forwarded PromoteMember")
        change = confChange(ChangeKind.PROMOTE, node_id)
        return self._serveWrite(PromoteRequest(change, forwarded))

    @commands.RemoveMember.responder
    @clientRequest(commands.RemoveMember)
    def removeMember(self, node_id, forwarded=None):
        if forwarded:
            self._authorize(None, "a forwarded RemoveMember")
        change = confChange(ChangeKind.REMOVE, node_id)
        return self._serveWrite(RemoveRequest(change, forwarded))

    @commands.TransferLeader.responder
    @clientRequest(commands.TransferLeader)
    def transferLeader(self, node_id=None, forwarded=None):
        if forwarded:
            self._authorize(None, "a forwarded TransferLeader")
        targetId = 0 if node_id is None else node_id
        validateNodeId(targetId, allowZero=True)
        return self.server.router.serve(TransferRequest(targetId, forwarded))


class NodeServerFactory(protocol.ServerFactory):
    """
    Builds a L{NodeProtocol} per connection.

    @param node: the L{RaftNode} (or anything with its API).
    @param stateMachine: the L{kv.KVStore} the node applies to (for reads).
    @param transport: the L{AMPTransport} used to forward to the leader.
    @param peers: the node's L{PeerAuthority}: which connections may speak
        Raft.
    @param clock: an L{IReactorTime}.
    @param requestTimeout: seconds a client request may take in all.
    @param leaderTimeout: seconds to wait for a leader to become known.
    @param retryDelay: seconds between two tries to reach the leader.
    @param maxTries: tries to reach the leader before giving up.
    @param maxConnections: connections counted at once (L{ConnectionLimit}).
    @param maxRequestsPerConnection: requests in flight on one connection
        before its socket is no longer read (L{ReadBackPressure}).
    @param maxPendingBytes: bytes of write requests held at once
        (L{PendingBytes}).
        (The defaults and their trade-offs: L{NodeConfig}.)
    @param startedAt: C{clock.seconds()} when the node started, for the
        uptime L{Status} reports (C{None}: now).
    @ivar router: the L{Router} that serves every connection's client
        requests.
    @ivar connections: the L{ConnectionLimit}.
    @ivar pendingWrites: the L{PendingBytes} the router charges writes to.
    @ivar deniedNotice: the L{Notice} logging refused peer commands.
    @ivar onClientRequest: C{None}, or called with C{(command, code,
        seconds)} for each client request answered (L{clientRequest}; the
        node's metrics).
    @ivar watches: the L{WatchHub}: every watch open on this node.  It
        ends them, and refuses new ones, while the node is out of touch
        with a leader if C{watchContactReason} says why (the service passes
        L{nodeContactReason}; see L{WatchHub}).
    @ivar readsAnswered: client reads (C{Get}, C{Range}) this node has
        answered since it started, counted where the client sent them (a
        read a follower forwards is counted by the follower, not again by
        the leader): the C{reads} of C{Status}, which the dashboard sums
        over the members.
    """

    onClientRequest = None

    protocol = NodeProtocol
    noisy = False
    log = Logger()

    def __init__(
        self,
        node,
        stateMachine,
        transport,
        peers,
        clock,
        requestTimeout=NodeConfig.requestTimeout,
        leaderTimeout=NodeConfig.leaderTimeout,
        retryDelay=NodeConfig.retryDelay,
        maxTries=NodeConfig.maxTries,
        maxConnections=NodeConfig.maxConnections,
        maxRequestsPerConnection=NodeConfig.maxRequestsPerConnection,
        maxPendingBytes=NodeConfig.maxPendingBytes,
        startedAt=None,
        watchContactReason=None,
    ):
        self.node = node
        self.stateMachine = stateMachine
        self.transport = transport
        self.peers = peers
        self.clock = clock
        self.requestTimeout = requestTimeout
        self.leaderTimeout = leaderTimeout
        self.retryDelay = retryDelay
        self.maxTries = maxTries
        self.deadlines = Deadlines(clock)
        self.connections = ConnectionLimit(maxConnections, clock)
        self.maxRequestsPerConnection = maxRequestsPerConnection
        self.pendingWrites = PendingBytes(maxPendingBytes, clock)
        self.deniedNotice = Notice(
            NodeProtocol.log, clock,
            "refused a peer command from {peer}: {reason} ({count} connection(s)"
            " refused one in the last few seconds)",
        )
        self.router = Router(self)
        self.startedAt = clock.seconds() if startedAt is None else startedAt
        self.readsAnswered = 0
        self.watches = WatchHub(stateMachine, clock, contactReason=watchContactReason)

    def uptime(self):
        """Seconds since the node started (to the millisecond)."""
        return round(max(0.0, self.clock.seconds() - self.startedAt), 3)

    def countRead(self, answer):
        """Count one client read answered (L{readsAnswered}); pass C{answer} on."""
        self.readsAnswered += 1
        return answer

    def buildProtocol(self, addr):
        p = self.protocol(self)
        p.factory = self
        p.maxInflight = self.maxRequestsPerConnection
        return p

    def peerAuthenticated(self, proto):
        """
        C{proto}'s connection has proven it is node C{proto.peerId}: it no
        longer counts against the connection limit, so a flood of clients
        cannot starve the peer links.
        """
        self.connections.release(proto)
        # One per peer connection: the peer links' own lines say when a
        # peer comes and goes.
        self.log.debug(
            "connection from {peer} authenticated as node {peerId}",
            peer=connectionAddress(proto.transport), peerId=proto.peerId,
        )

