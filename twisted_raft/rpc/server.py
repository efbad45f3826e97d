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
"""

import functools
import os

from twisted.internet import defer, protocol
from twisted.logger import Logger
from twisted.protocols import amp
from twisted.python.failure import Failure

from twisted_raft import kv
from twisted_raft.config import NodeConfig
from twisted_raft.raft import membership, messages
from twisted_raft.raft.membership import ChangeKind, ConfChange, decodeMembers
from twisted_raft.rpc import commands, kvwire, wire
from twisted_raft.rpc.commands import (
    InvalidArgument,
    Overloaded,
    PermissionDenied,
    ValueTooLarge,
)
from twisted_raft.rpc.deadlines import Deadlines
from twisted_raft.rpc.fastamp import FastBoxParsing, FastDispatch
from twisted_raft.rpc.limits import ConnectionLimit, Notice, PendingBytes, ReadBackPressure
from twisted_raft.rpc.routing import DECLARED, Request, Router
from twisted_raft.rpc.watches import WatchHub, WatchResponders


def validateKey(key):
    if key is None:
        raise InvalidArgument("missing key")
    if not key:
        raise InvalidArgument("empty key")
    n = len(key.encode("utf-8", "surrogatepass"))
    if n > kv.MAX_KEY_BYTES:
        raise InvalidArgument(f"key is {n} bytes of UTF-8, over {kv.MAX_KEY_BYTES}")


def validateValue(name, value):
    if value is not None and len(value) > kv.MAX_VALUE_BYTES:
        raise ValueTooLarge(
            f"{name} is {len(value)} bytes, over {kv.MAX_VALUE_BYTES} (1 MiB)"
        )


def validateSession(client_id, sequence):
    """
    @return: C{(client_id, sequence)}, or C{None} if neither is given.
    @raise InvalidArgument: only one is given, or either is out of range.
    """
    if client_id is None and sequence is None:
        return None
    if client_id is None or sequence is None:
        raise InvalidArgument("client_id and sequence must be given together")
    try:
        kv.checkSession(client_id, sequence)
    except ValueError as e:
        raise InvalidArgument(str(e))
    return client_id, sequence


def validateNodeId(nodeId, allowZero=False):
    """
    @raise InvalidArgument: C{nodeId} is missing or not a node id (1 to
        L{membership.MAX_NODE_ID}; 0 too with C{allowZero}).
    """
    low = 0 if allowZero else 1
    if nodeId is None:
        raise InvalidArgument("missing node_id")
    if not low <= nodeId <= membership.MAX_NODE_ID:
        # not quoted: it may have thousands of digits
        raise InvalidArgument(f"node_id is out of range {low} to 2**63 - 1")


def confChange(kind, nodeId, address=""):
    """
    The L{ConfChange} a client asked for, its node id and address checked
    (L{membership.checkAddress}: C{HOST:PORT}, at most 255 characters).

    @raise InvalidArgument: naming what is wrong.
    """
    validateNodeId(nodeId)
    try:
        return ConfChange(kind, nodeId, address)
    except membership.InvalidChange as e:
        raise InvalidArgument(str(e)) from None


def _address(transport):
    """Where a connection comes from, for a log line."""
    peer = transport.getPeer() if transport is not None else None
    host, port = getattr(peer, "host", None), getattr(peer, "port", None)
    return f"{host}:{port}" if host is not None else "?"


def _applied(r):
    """
    C{(revision, result)} from what C{propose} fired with.  A session
    command's revision is the index at which it first took effect, so a
    retry answers exactly like the first attempt.
    """
    index, result = r
    if isinstance(result, kv.SequenceTooOld):
        raise InvalidArgument(str(result))
    if isinstance(result, kv.Applied):
        return result.index, result.result
    return index, result


def _read(stateMachine, key):
    value = stateMachine.get(key)
    if value is None:
        return {"found": False, "value": b""}
    return {"found": True, "value": value}


# -- the client commands' requests ---------------------------------------------


def _committedConfiguration(ignored, node):
    """
    The configuration C{node}, a leader whose leadership a read round has
    just confirmed, is using, if it is committed.  It takes effect when its
    entry is appended (thesis §4.1), so while the leader's own change is
    being committed it is not yet what the cluster agreed on.

    @raise membership.ChangeInProgress: it is not committed yet.
    """
    configuration = node.configuration
    committed = node.status().commitIndex
    if configuration.index > committed:
        raise membership.ChangeInProgress(
            f"the configuration at index {configuration.index} is not yet"
            f" committed (commit index {committed}); retry shortly"
        )
    return configuration


class _Members(Request):
    """L{commands.MemberList}: the leader's committed configuration."""

    __slots__ = ()

    command = commands.MemberList
    what = "member list"

    def __init__(self, forwarded):
        self.key = None
        self.forwarded = forwarded
        self.proposed = False
        self.answered = self.rerouted = None

    def start(self, node):
        # A read round first (thesis §6.4): it confirms this node still
        # leads, and waits until it has committed an entry of its term, so
        # every configuration entry before that is committed too.
        return node.readIndex().addCallback(_committedConfiguration, node)

    def respond(self, configuration, stateMachine):
        return {
            "revision": configuration.index,
            "members": [
                {"node_id": m.id, "address": m.address, "voter": m.voter}
                for m in configuration.members
            ],
        }

    def arguments(self):
        return {"forwarded": True}


class _Change(Request):
    """
    A membership change (thesis §4.1), proposed at the leader as a
    configuration entry; answered with that entry's index once committed.
    """

    __slots__ = ("change", "data")

    isWrite = mayChange = True

    def __init__(self, change, forwarded):
        self.key = None
        self.forwarded = forwarded
        self.proposed = False
        self.answered = self.rerouted = None
        self.change = change
        # What the pending-writes budget charges: about the request's size
        # (the configuration entry itself is the core's business).
        self.data = f"{change.kind.value} {change.nodeId} {change.address}".encode("utf-8")

    def start(self, node):
        return node.changeMembership(self.change)

    def respond(self, outcome, stateMachine):
        index, configuration = outcome
        return {"revision": index}

    def arguments(self):
        return {"node_id": self.change.nodeId, "forwarded": True}


class _AddLearner(_Change):
    __slots__ = ()
    command, what = commands.AddLearner, "add learner"

    def arguments(self):
        return {"node_id": self.change.nodeId, "address": self.change.address, "forwarded": True}


class _Promote(_Change):
    __slots__ = ()
    command, what = commands.PromoteMember, "promote member"


class _Remove(_Change):
    __slots__ = ()
    command, what = commands.RemoveMember, "remove member"


class _Transfer(Request):
    """
    A leadership transfer (thesis §3.10) to C{targetId} (0: the most
    up-to-date voter).  It writes nothing, but once started it may move
    leadership whatever happens to the answer: its outcome is then unknown
    if it fails.
    """

    __slots__ = ("targetId",)

    command = commands.TransferLeader
    what = "transfer leader"
    mayChange = True

    def __init__(self, targetId, forwarded):
        self.key = None
        self.forwarded = forwarded
        self.proposed = False
        self.answered = self.rerouted = None
        self.targetId = targetId

    def start(self, node):
        return node.transferLeadership(self.targetId)

    def respond(self, leaderId, stateMachine):
        return {"leader_id": leaderId}

    def arguments(self):
        return {"node_id": self.targetId, "forwarded": True}


class _Read(Request):
    """A linearizable L{commands.Get}: ReadIndex (thesis §6.4), then the store."""

    __slots__ = ()

    command = commands.Get
    what = "get"

    def __init__(self, key, forwarded):
        self.key = key
        self.forwarded = forwarded
        self.proposed = False
        self.answered = self.rerouted = None

    def start(self, node):
        return node.readIndex()

    def respond(self, outcome, stateMachine):
        return _read(stateMachine, self.key)

    def arguments(self):
        return {"key": self.key, "forwarded": True}


class _Write(Request):
    """
    A write: C{data}, the command for the log (wrapped in the client's
    session if it has one), is proposed at the leader.
    """

    __slots__ = ("data", "session", "value", "expected")

    isWrite = mayChange = True
    resultName = None
    """The response's field for what the command returned, if it has one."""

    def __init__(self, key, data, session, forwarded, value=None, expected=None):
        self.key = key
        self.forwarded = forwarded
        self.proposed = False
        self.answered = self.rerouted = None
        if session is not None:
            data = kv.encodeSession(session[0], session[1], data)
        self.data = data
        self.session = session
        self.value = value
        self.expected = expected

    def start(self, node):
        return node.propose(self.data)

    def respond(self, outcome, stateMachine):
        revision, result = _applied(outcome)
        if self.resultName is None:
            return {"revision": revision}
        return {self.resultName: bool(result), "revision": revision}

    def arguments(self):
        kwargs = {"key": self.key, "forwarded": True}
        if self.value is not None:
            kwargs["value"] = self.value
        if self.expected is not None:
            kwargs["expected"] = self.expected
        if self.session is not None:
            kwargs["client_id"], kwargs["sequence"] = self.session
        return kwargs


class _Put(_Write):
    __slots__ = ()
    command, what = commands.Put, "put"


class _Delete(_Write):
    __slots__ = ()
    command, what, resultName = commands.Delete, "delete", "deleted"


class _CompareAndSet(_Write):
    __slots__ = ()
    command, what, resultName = commands.CompareAndSet, "compare-and-set", "succeeded"


# -- ranges, transactions, prev_kv and range deletes (rpc/kvwire.py) -----------


class _RangeRead(Request):
    """A linearizable L{commands.Range}: ReadIndex, then one page of the store."""

    __slots__ = ("query",)

    command = commands.Range
    what = "range"

    def __init__(self, query, forwarded):
        self.key = query.key
        self.forwarded = forwarded
        self.proposed = False
        self.answered = self.rerouted = None
        self.query = query

    def start(self, node):
        return node.readIndex()

    def respond(self, outcome, stateMachine):
        return self.query.read(stateMachine)

    def arguments(self):
        return {**self.query.arguments(), "forwarded": True}


class _Txn(_Write):
    """A L{commands.Txn}: C{txn} is the server's own encoding of it."""

    __slots__ = ("txn",)
    command, what = commands.Txn, "transaction"

    def __init__(self, txn, session, forwarded):
        super().__init__(None, txn, session, forwarded)
        self.txn = txn

    def respond(self, outcome, stateMachine):
        return kvwire.txnAnswer(*_applied(outcome))

    def arguments(self):
        kwargs = {"txn": self.txn, "forwarded": True}
        if self.session is not None:
            kwargs["client_id"], kwargs["sequence"] = self.session
        return kwargs


class _PutPrevKv(_Write):
    """A L{commands.Put} with C{prev_kv}: a one-operation transaction."""

    __slots__ = ()
    command, what = commands.Put, "put"

    def respond(self, outcome, stateMachine):
        return kvwire.putAnswer(*_applied(outcome))

    def arguments(self):
        return {**super().arguments(), "prev_kv": True}


class _DeleteRange(_Write):
    """
    A L{commands.Delete} with C{end}, C{prefix} or C{prev_kv}: a
    one-operation transaction.
    """

    __slots__ = ("end", "prefix", "prevKv")
    command, what = commands.Delete, "delete"

    def __init__(self, key, end, prefix, prevKv, session, forwarded):
        super().__init__(key, kvwire.deleteRange(key, end, prefix, prevKv), session, forwarded)
        self.end = end
        self.prefix = bool(prefix)
        self.prevKv = bool(prevKv)

    def respond(self, outcome, stateMachine):
        return kvwire.deleteAnswer(*_applied(outcome))

    def arguments(self):
        kwargs = super().arguments()
        if self.end is not None:
            kwargs["end"] = self.end
        if self.prefix:
            kwargs["prefix"] = True
        if self.prevKv:
            kwargs["prev_kv"] = True
        return kwargs


OK = "OK"
"""The C{code} a client request that succeeded is counted under."""


def _settled(result, record, name, clock, started):
    if isinstance(result, Failure):
        code = commands.wireErrorCode(_COMMANDS[name], result.value).decode("ascii")
    else:
        code = OK
    record(name, code, clock.seconds() - started)
    return result


_COMMANDS = {}


def clientRequest(command):
    """
    Decorate the responder of the client command C{command} (under its
    C{@command.responder}): if the server has an C{onClientRequest}, it is
    called with C{(name, code, seconds)} once the request is answered:
    C{name} the command's name as on the wire (C{"Put"}), C{code} C{"OK"} or
    the error code sent (L{commands.wireErrorCode}), C{seconds} from the
    responder's call to the answer.  Without one (no C{--http}) the cost is
    an attribute check.
    """
    name = command.commandName.decode("ascii")
    _COMMANDS[name] = command

    def decorate(responder):
        @functools.wraps(responder)
        def measured(self, *args, **kwargs):
            server = self.server
            record = server.onClientRequest
            if record is None:
                return responder(self, *args, **kwargs)
            clock = server.clock
            started = clock.seconds()
            try:
                result = responder(self, *args, **kwargs)
            except BaseException:
                _settled(Failure(), record, name, clock, started)
                raise
            if isinstance(result, defer.Deferred):
                return result.addBoth(_settled, record, name, clock, started)
            return _settled(result, record, name, clock, started)

        return measured

    return decorate


class NodeProtocol(WatchResponders, ReadBackPressure, FastDispatch, FastBoxParsing, amp.AMP):
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
                _PutPrevKv(key, kvwire.putPrevKv(key, value), session, forwarded, value)
            )
        return self._serveWrite(
            _Put(key, kv.encodePut(key, value), session, forwarded, value)
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
                _DeleteRange(key, end, prefix, prev_kv, session, forwarded)
            )
        validateKey(key)
        session = validateSession(client_id, sequence)
        return self._serveWrite(
            _Delete(key, kv.encodeDelete(key), session, forwarded)
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
            _CompareAndSet(
                key, kv.encodeCompareAndSet(key, expected, value), session,
                forwarded, value, expected,
            )
        )

    @commands.Range.responder
    @clientRequest(commands.Range)
    def readRange(
        self, key, end=None, prefix=None, limit=None, after=None, keys_only=None,
        count_only=None, stale=None, forwarded=None,
    ):
        if forwarded:
            self._authorize(None, "a forwarded Range")
        query = kvwire.rangeQuery(key, end, prefix, limit, after, keys_only, count_only)
        if stale:
            answer = query.read(self.server.stateMachine)
            if not forwarded:
                self.server.readsAnswered += 1
            return answer
        answer = self.server.router.serve(_RangeRead(query, forwarded))
        if not forwarded:
            answer.addCallback(self.server.countRead)
        return answer

    @commands.Txn.responder
    @clientRequest(commands.Txn)
    def txn(self, txn, forwarded=None, client_id=None, sequence=None):
        if forwarded:
            self._authorize(None, "a forwarded Txn")
        data = kvwire.checkTxn(txn)
        session = validateSession(client_id, sequence)
        return self._serveWrite(_Txn(data, session, forwarded))

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
            answer = _read(self.server.stateMachine, key)
            if not forwarded:
                self.server.readsAnswered += 1
            return answer
        answer = self.server.router.serve(_Read(key, forwarded))
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
        return self.server.router.serve(_Members(forwarded))

    @commands.AddLearner.responder
    @clientRequest(commands.AddLearner)
    def addLearner(self, node_id, address, forwarded=None):
        if forwarded:
            self._authorize(None, "a forwarded AddLearner")
        change = confChange(ChangeKind.ADD_LEARNER, node_id, address)
        return self._serveWrite(_AddLearner(change, forwarded))

    @commands.PromoteMember.responder
    @clientRequest(commands.PromoteMember)
    def promoteMember(self, node_id, forwarded=None):
        if forwarded:
            self._authorize(None, "a forwarded PromoteMember")
        change = confChange(ChangeKind.PROMOTE, node_id)
        return self._serveWrite(_Promote(change, forwarded))

    @commands.RemoveMember.responder
    @clientRequest(commands.RemoveMember)
    def removeMember(self, node_id, forwarded=None):
        if forwarded:
            self._authorize(None, "a forwarded RemoveMember")
        change = confChange(ChangeKind.REMOVE, node_id)
        return self._serveWrite(_Remove(change, forwarded))

    @commands.TransferLeader.responder
    @clientRequest(commands.TransferLeader)
    def transferLeader(self, node_id=None, forwarded=None):
        if forwarded:
            self._authorize(None, "a forwarded TransferLeader")
        targetId = 0 if node_id is None else node_id
        validateNodeId(targetId, allowZero=True)
        return self.server.router.serve(_Transfer(targetId, forwarded))

    # -- peer RPCs ---------------------------------------------------------
    #
    # Only on a connection that has proven, by the handshake below, that it
    # is a member node, and only for the node it proved to be
    # (L{twisted_raft.rpc.peerauth}); anything else is PERMISSION_DENIED
    # before the node sees it, so it changes nothing: no term, no vote, no
    # entry.

    def _deny(self, message):
        """
        Refuse with PERMISSION_DENIED, noting it once per connection, and
        logging at most one such note per few seconds node-wide (so churning
        connections cannot flood the log).
        """
        if not self._deniedLogged:
            self._deniedLogged = True
            self.server.deniedNotice(peer=_address(self.transport), reason=message)
        return PermissionDenied(message)

    def _authorize(self, claimedId, what):
        """Raise PERMISSION_DENIED unless this connection may send C{what}
        for node C{claimedId} (C{None}: for whichever node it proved to be)."""
        peerId = self.peerId
        if peerId is None:
            raise self._deny(f"{what} needs an authenticated peer connection")
        if claimedId is not None and claimedId != peerId:
            raise self._deny(
                f"{what} for node {claimedId} on a connection of node {peerId}"
            )
        if not self.server.peers.isMember(peerId):
            raise self._deny(f"node {peerId} is not a member")

    @commands.PeerHello.responder
    def peerHello(self, node_id, to_node_id, nonce):
        if self.peerId is not None or self._handshake is not None:
            raise self._deny("peer handshake: already under way or done")
        authority = self.server.peers
        certificateId = None
        if authority.certificateRequired:
            from twisted_raft.tls import peerNodeId

            certificateId = peerNodeId(self.transport)
        try:
            self._handshake, answer = authority.answerHello(
                node_id, to_node_id, nonce, certificateId
            )
        except PermissionDenied as e:
            raise self._deny(str(e))
        return answer

    @commands.PeerProof.responder
    def peerProof(self, proof):
        handshake, self._handshake = self._handshake, None
        if handshake is None:
            raise self._deny("peer handshake: PeerProof without PeerHello")
        try:
            self.peerId = self.server.peers.checkProof(handshake, proof)
        except PermissionDenied as e:
            raise self._deny(str(e))
        self.server.peerAuthenticated(self)
        return {}

    @commands.RequestVote.responder
    def requestVote(
        self, cluster, term, candidate_id, last_log_index, last_log_term, pre_vote=None,
        transfer=None,
    ):
        self._authorize(candidate_id, "RequestVote")
        msg = messages.RequestVote(
            term, candidate_id, last_log_index, last_log_term, bool(pre_vote), bool(transfer)
        )
        d = defer.maybeDeferred(self.node.handleRequestVote, msg)
        d.addCallback(lambda r: {"term": r.term, "vote_granted": r.voteGranted})
        return self._guard(d, "RequestVote")

    @commands.AppendEntries.responder
    def appendEntries(
        self, cluster, term, leader_id, prev_log_index, prev_log_term, entries,
        leader_commit,
    ):
        self._authorize(leader_id, "AppendEntries")
        try:
            decoded = wire.decodeEntries(entries, prev_log_index + 1)
        except ValueError as e:
            raise InvalidArgument(f"bad entry batch: {e}")
        msg = messages.AppendEntries(
            term, leader_id, prev_log_index, prev_log_term, decoded, leader_commit
        )
        d = defer.maybeDeferred(self.node.handleAppendEntries, msg)
        d.addCallback(
            lambda r: {
                "term": r.term,
                "success": r.success,
                "match_index": r.matchIndex,
                "conflict_index": r.conflictIndex,
                "conflict_term": r.conflictTerm,
            }
        )
        return self._guard(d, "AppendEntries")

    @commands.InstallSnapshot.responder
    def installSnapshot(
        self, cluster, term, leader_id, last_index, last_term, members, offset,
        data, done, configuration=None, config_index=None,
    ):
        self._authorize(leader_id, "InstallSnapshot")
        msg = messages.InstallSnapshot(
            term,
            leader_id,
            _snapshotMeta(last_index, last_term, members, configuration, config_index),
            offset,
            data,
            done,
        )
        d = defer.maybeDeferred(self.node.handleInstallSnapshot, msg)
        d.addCallback(
            lambda r: {
                "term": r.term,
                "success": r.success,
                "next_offset": r.nextOffset,
            }
        )
        return self._guard(d, "InstallSnapshot")

    @commands.TimeoutNow.responder
    def timeoutNow(self, cluster, term, leader_id):
        self._authorize(leader_id, "TimeoutNow")
        msg = messages.TimeoutNow(term, leader_id)
        d = defer.maybeDeferred(self.node.handleTimeoutNow, msg)
        d.addCallback(lambda r: {"term": r.term, "accepted": r.accepted})
        return self._guard(d, "TimeoutNow")


def _snapshotMeta(lastIndex, lastTerm, members, configuration, configIndex):
    """
    The L{messages.SnapshotMeta} an InstallSnapshot describes (see
    L{commands.InstallSnapshot}).

    @raise InvalidArgument: the configuration does not decode, comes
        without its index (or the index without it), postdates the
        snapshot, or disagrees with C{members}.
    """
    if configuration is None and configIndex is None:
        return messages.SnapshotMeta(lastIndex, lastTerm, tuple(members))
    if configuration is None or configIndex is None:
        raise InvalidArgument("configuration and config_index must be given together")
    try:
        decoded = decodeMembers(configuration, configIndex)
    except ValueError as e:
        raise InvalidArgument(f"bad configuration: {str(e)[:200]}") from None
    if configIndex > lastIndex:
        raise InvalidArgument(
            f"config_index {configIndex} is after the snapshot's last index {lastIndex}"
        )
    if sorted(members) != list(decoded.ids):
        raise InvalidArgument("members are not the configuration's node ids")
    return messages.SnapshotMeta(lastIndex, lastTerm, decoded)


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
            peer=_address(proto.transport), peerId=proto.peerId,
        )
