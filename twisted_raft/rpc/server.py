"""
The node's AMP protocol: Raft's peer RPCs and the client contract.

Every responder answers either with its command's response or with one of the
declared errors (C{UNAVAILABLE}, C{INVALID_ARGUMENT}, C{VALUE_TOO_LARGE}), so
no request ever costs a client its connection; unexpected exceptions are
logged and answered as C{UNAVAILABLE}.

Writes and linearizable reads are served by the leader.  A follower forwards
them to the leader over its peer link (with C{forwarded=True}) and relays the
answer; while no leader is known it waits for one (bounded), so a client
writing during a fail-over gets through.  A forwarded request is never
forwarded again.

A write with C{client_id} and C{sequence} is proposed wrapped in its client
session (L{kv.encodeSession}) and forwarded with them; if the state machine
finds it a duplicate, the answer carries the original revision.
"""

from twisted.internet import defer, error as ierror, protocol
from twisted.logger import Logger
from twisted.protocols import amp
from twisted.python.failure import Failure

from twisted_raft import kv
from twisted_raft.raft import messages
from twisted_raft.rpc import commands, wire
from twisted_raft.rpc.commands import (
    NOT_PROPOSED,
    InvalidArgument,
    Unavailable,
    ValueTooLarge,
)
from twisted_raft.rpc.peers import PeerUnreachable
from twisted_raft.rpc.deadlines import Deadlines
from twisted_raft.rpc.fastamp import FastBoxParsing, FastDispatch

_NOT_SENT = (PeerUnreachable, ierror.ConnectError)
_DECLARED = (Unavailable, InvalidArgument, ValueTooLarge)


class _Attempt:
    """Tracks whether a write may have been proposed (for error messages)."""

    def __init__(self):
        self.proposed = False


def _detached(d):
    """
    A new L{Deferred} with C{d}'s result.  Cancelling it (e.g. on a request
    timeout) does not touch C{d}, which belongs to someone else (the core).
    """
    r = defer.Deferred()

    def relay(result):
        if not r.called:
            r.callback(result)
        # else r was cancelled: drop the late result (a failure is consumed)
        return None

    d.addBoth(relay)
    return r


_DISK_FULL = "disk full on node"


def _diskFull(node):
    """Whether C{node}'s storage is waiting for disk space (writes pend)."""
    return bool(getattr(getattr(node, "storage", None), "diskFull", False))


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


def _command(data, session):
    """C{data}, wrapped in the client's session if it has one."""
    if session is None:
        return data
    return kv.encodeSession(session[0], session[1], data)


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


def _putAnswer(r):
    return {"revision": _applied(r)[0]}


def _deleteAnswer(r):
    revision, deleted = _applied(r)
    return {"deleted": bool(deleted), "revision": revision}


def _casAnswer(r):
    revision, succeeded = _applied(r)
    return {"succeeded": bool(succeeded), "revision": revision}


def _outcomeUnknown(f):
    """
    The client contract's error for a core failure after a write was
    proposed (L{messages.CommitUnknown}, L{messages.StorageFailed}), or
    L{None} for any other failure.
    """
    if f.check(messages.CommitUnknown):
        return Unavailable(f"outcome unknown: {f.value}")
    if f.check(messages.StorageFailed):
        return Unavailable(f"outcome unknown: storage failed: {f.value}")
    return None


def _relay(result, answered):
    if not answered.called:
        if isinstance(result, Failure):
            answered.errback(result)
        else:
            answered.callback(result)
    return None


def _timedOut(result, attempt, what, timeout):
    if attempt.proposed:
        return defer.fail(Unavailable(f"outcome unknown: {what} timed out after {timeout}s"))
    return defer.fail(
        Unavailable(f"{NOT_PROPOSED}: {what} timed out after {timeout}s (no leader reachable)")
    )


def _withSession(kwargs, session):
    if session is not None:
        kwargs["client_id"], kwargs["sequence"] = session
    return kwargs


class NodeProtocol(FastDispatch, FastBoxParsing, amp.AMP):
    """
    One connection to this node, from a client or from a peer's link.

    @param server: the L{NodeServerFactory} holding the node, the key-value
        store, the peer transport and the timeouts.
    """

    log = Logger()

    def __init__(self, server):
        super().__init__()
        self.server = server
        self._warnedCluster = False

    # -- helpers -----------------------------------------------------------

    @property
    def node(self):
        return self.server.node

    def _guard(self, d, what):
        """Map anything undeclared to UNAVAILABLE, logging it."""

        def unexpected(f):
            if f.check(*_DECLARED):
                return f
            raise self._internalError(f, what)

        return d.addErrback(unexpected)

    def _internalError(self, f, what):
        """Log an undeclared failure C{f}; @return: the UNAVAILABLE to answer."""
        self.log.failure("unexpected error serving {what}", failure=f, what=what)
        return Unavailable(f"internal error serving {what}: {f.value!r}")

    def _withDeadline(self, d, attempt, what):
        """
        Bound a whole client request by C{server.requestTimeout}: on expiry
        the request's Deferred is cancelled and answered UNAVAILABLE.
        """
        timeout = self.server.requestTimeout
        return self.server.deadlines.add(d, timeout, _timedOut, attempt, what, timeout)

    def _serveHere(self, attempt, local, isWrite):
        """
        Run C{local()} on this node, the leader.  L{messages.NotLeader} (nothing
        was proposed) passes through; the other outcomes become the client
        contract's errors.
        """
        node = self.server.node
        if isWrite and _diskFull(node):
            # Refuse at once rather than queue behind a write that waits for
            # space; nothing is proposed.
            return defer.fail(Unavailable(f"{NOT_PROPOSED}: {_DISK_FULL} {node.nodeId}"))
        if isWrite:
            attempt.proposed = True

        def failed(f):
            mapped = _outcomeUnknown(f)
            if mapped is not None:
                raise mapped
            return f

        return _detached(local()).addErrback(failed)

    def _route(self, attempt, local, command, kwargs, what, isWrite, forwarded):
        """
        Serve a request at the leader: run C{local()} here if this node leads,
        otherwise forward C{command(**kwargs)} to the leader and relay the
        answer.  Retries while nothing was proposed, within the deadline
        that L{_withDeadline} imposes (by cancelling this).

        The common case, this node leading, takes no generator and no loop:
        at thousands of requests a second that overhead shows in profiles.
        """
        if self.server.node.role != messages.LEADER:
            return self._routeAround(attempt, local, command, kwargs, what, isWrite, forwarded)

        def notLeader(f):
            f.trap(messages.NotLeader)
            attempt.proposed = False
            if forwarded:
                raise Unavailable(f"{NOT_PROPOSED}: {f.value}")
            return self._routeAround(attempt, local, command, kwargs, what, isWrite, forwarded)

        return self._serveHere(attempt, local, isWrite).addErrback(notLeader)

    @defer.inlineCallbacks
    def _routeAround(self, attempt, local, command, kwargs, what, isWrite, forwarded):
        """L{_route}'s general case: find the leader, forward, retry."""
        server = self.server
        node = server.node
        tries = 0
        while True:
            tries += 1
            if node.role == messages.LEADER:
                try:
                    result = yield self._serveHere(attempt, local, isWrite)
                    return result
                except messages.NotLeader as e:
                    # nothing was proposed; the leader changed under us
                    attempt.proposed = False
                    if forwarded or tries >= server.maxTries:
                        raise Unavailable(f"{NOT_PROPOSED}: {e}")
                    yield self._pause()
                    continue
            if forwarded:
                raise Unavailable(
                    f"{NOT_PROPOSED}: node {node.nodeId} is not the leader"
                    f" (leader is {node.leaderId or 'unknown'})"
                )
            leaderId = node.leaderId
            if not leaderId or leaderId == node.nodeId:
                try:
                    leaderId = yield self._waitForLeader()
                except defer.TimeoutError:
                    raise Unavailable(
                        f"{NOT_PROPOSED}: no leader known after"
                        f" {server.leaderTimeout}s"
                    )
                if leaderId == node.nodeId:
                    if node.role != messages.LEADER:
                        # our own view is stale; look again shortly
                        if tries >= server.maxTries:
                            raise Unavailable(f"{NOT_PROPOSED}: no leader")
                        yield self._pause()
                    continue
            try:
                if isWrite:
                    attempt.proposed = True
                result = yield server.peers.callPeer(leaderId, command, **kwargs)
                return result
            except _NOT_SENT as e:
                attempt.proposed = False
                if tries >= server.maxTries:
                    raise Unavailable(
                        f"{NOT_PROPOSED}: leader {leaderId} unreachable: {e}"
                    )
                yield self._pause()
                continue
            except Unavailable as e:
                if str(e).startswith(NOT_PROPOSED) and _DISK_FULL not in str(e):
                    # the node we took for the leader is not (any more)
                    attempt.proposed = False
                    if tries >= server.maxTries:
                        raise
                    yield self._pause()
                    continue
                raise
            except _DECLARED:
                raise
            except defer.CancelledError:
                raise
            except defer.TimeoutError:
                raise Unavailable(
                    f"outcome unknown: leader {leaderId} did not answer in time"
                )
            except Exception as e:
                # connection lost mid-request and the like
                if isWrite:
                    raise Unavailable(
                        f"outcome unknown: forwarding to leader {leaderId}"
                        f" failed: {e!r}"
                    )
                raise Unavailable(f"forwarding to leader {leaderId} failed: {e!r}")

    def _pause(self):
        """A cancellable wait of C{server.retryDelay} seconds."""

        def cancel(_):
            if call.active():
                call.cancel()

        d = defer.Deferred(cancel)
        call = self.server.clock.callLater(self.server.retryDelay, d.callback, None)
        return d

    def _waitForLeader(self):
        r = _detached(self.node.whenLeaderKnown())
        r.addTimeout(self.server.leaderTimeout, self.server.clock)
        return r

    def _client(self, what, attempt, d):
        d = self._withDeadline(d, attempt, what)
        return self._guard(d, what)

    # -- the client contract ---------------------------------------------

    def _writeHere(self, data, answer, what):
        """
        The common case of a write, this node leading with disk space: one
        Deferred and two callbacks from proposal to answer, the deadline
        included.  (L{_route} and L{_client} give the same outcomes through
        a longer chain that also forwards and retries.)

        @return: a Deferred of the answer, or L{None} if this is not the
            common case (then nothing was proposed).
        """
        node = self.server.node
        if node.role != messages.LEADER or _diskFull(node):
            return None
        proposed = node.propose(data)
        if (
            proposed.called
            and isinstance(proposed.result, Failure)
            and proposed.result.check(messages.NotLeader)
        ):
            # refused at once, nothing proposed: the general path finds the
            # leader
            proposed.addErrback(lambda f: None)
            return None
        attempt = _Attempt()
        attempt.proposed = True
        answered = defer.Deferred()
        proposed.addBoth(self._written, answered, answer, what)
        timeout = self.server.requestTimeout
        return self.server.deadlines.add(answered, timeout, _timedOut, attempt, what, timeout)

    def _written(self, result, answered, answer, what):
        if answered.called:
            return None  # timed out; the late outcome is dropped
        if isinstance(result, Failure):
            mapped = _outcomeUnknown(result)
            if mapped is not None:
                answered.errback(mapped)
            elif result.check(messages.NotLeader):
                # once proposed, a write may have been applied whatever
                # happens to its leader
                answered.errback(Unavailable(f"outcome unknown: {result.value}"))
            elif result.check(*_DECLARED):
                answered.errback(result)
            else:
                answered.errback(self._internalError(result, what))
            return None
        try:
            response = answer(result)
        except _DECLARED:
            answered.errback()
        except Exception:
            answered.errback(self._internalError(Failure(), what))
        else:
            answered.callback(response)
        return None

    @commands.Put.responder
    def put(self, key, value, forwarded=None, client_id=None, sequence=None):
        validateKey(key)
        validateValue("value", value)
        session = validateSession(client_id, sequence)
        data = _command(kv.encodePut(key, value), session)
        fast = self._writeHere(data, _putAnswer, "put")
        if fast is not None:
            return fast

        def local():
            return self.node.propose(data).addCallback(_putAnswer)

        attempt = _Attempt()
        d = self._route(
            attempt, local, commands.Put,
            _withSession(dict(key=key, value=value, forwarded=True), session),
            "put", True, forwarded,
        )
        return self._client("put", attempt, d)

    @commands.Delete.responder
    def delete(self, key, forwarded=None, client_id=None, sequence=None):
        validateKey(key)
        session = validateSession(client_id, sequence)
        data = _command(kv.encodeDelete(key), session)
        fast = self._writeHere(data, _deleteAnswer, "delete")
        if fast is not None:
            return fast

        def local():
            return self.node.propose(data).addCallback(_deleteAnswer)

        attempt = _Attempt()
        d = self._route(
            attempt, local, commands.Delete,
            _withSession(dict(key=key, forwarded=True), session),
            "delete", True, forwarded,
        )
        return self._client("delete", attempt, d)

    @commands.CompareAndSet.responder
    def compareAndSet(
        self, key, value, expected=None, forwarded=None, client_id=None,
        sequence=None,
    ):
        validateKey(key)
        validateValue("expected", expected)
        validateValue("value", value)
        session = validateSession(client_id, sequence)
        data = _command(kv.encodeCompareAndSet(key, expected, value), session)
        fast = self._writeHere(data, _casAnswer, "compare-and-set")
        if fast is not None:
            return fast

        def local():
            return self.node.propose(data).addCallback(_casAnswer)

        kwargs = _withSession(dict(key=key, value=value, forwarded=True), session)
        if expected is not None:
            kwargs["expected"] = expected
        attempt = _Attempt()
        d = self._route(
            attempt, local, commands.CompareAndSet,
            kwargs, "compare-and-set", True, forwarded,
        )
        return self._client("compare-and-set", attempt, d)

    def _readHere(self, key, local, forwarded):
        """
        The common case of a linearizable read, this node leading: like
        L{_writeHere}, one Deferred and two callbacks from the ReadIndex
        round to the answer.  If leadership is lost while the read waits, it
        is served as the general path would (forwarded to the new leader).

        @return: a Deferred of the answer, or L{None} if this is not the
            common case.
        """
        node = self.server.node
        if node.role != messages.LEADER:
            return None
        confirmed = node.readIndex()
        if confirmed.called and isinstance(confirmed.result, Failure):
            confirmed.addErrback(lambda f: None)
            return None
        rerouted = []
        answered = defer.Deferred(lambda _: rerouted and rerouted[0].cancel())
        confirmed.addBoth(self._readConfirmed, answered, key, local, forwarded, rerouted)
        timeout = self.server.requestTimeout
        return self.server.deadlines.add(answered, timeout, _timedOut, _Attempt(), "get", timeout)

    def _readConfirmed(self, result, answered, key, local, forwarded, rerouted):
        if answered.called:
            return None  # timed out
        if not isinstance(result, Failure):
            try:
                response = self._read(key)
            except Exception:
                answered.errback(self._internalError(Failure(), "get"))
            else:
                answered.callback(response)
        elif result.check(messages.NotLeader):
            if forwarded:
                answered.errback(Unavailable(f"{NOT_PROPOSED}: {result.value}"))
            else:
                d = self._routeAround(
                    _Attempt(), local, commands.Get, dict(key=key, forwarded=True),
                    "get", False, forwarded,
                )
                rerouted.append(d)
                d.addBoth(self._reroutedRead, answered)
        elif result.check(*_DECLARED):
            answered.errback(result)
        else:
            answered.errback(self._internalError(result, "get"))
        return None

    def _reroutedRead(self, result, answered):
        if answered.called:
            return None
        if isinstance(result, Failure) and not result.check(*_DECLARED, defer.CancelledError):
            # (a CancelledError is the deadline's, which says what it means)
            answered.errback(self._internalError(result, "get"))
        else:
            _relay(result, answered)
        return None

    @commands.Get.responder
    def get(self, key, stale=None, forwarded=None):
        validateKey(key)
        if stale:
            return self._read(key)

        def local():
            d = self.node.readIndex()
            return d.addCallback(lambda _: self._read(key))

        fast = self._readHere(key, local, forwarded)
        if fast is not None:
            return fast

        attempt = _Attempt()
        d = self._route(
            attempt, local, commands.Get,
            dict(key=key, forwarded=True), "get", False, forwarded,
        )
        return self._client("get", attempt, d)

    def _read(self, key):
        value = self.server.store.get(key)
        if value is None:
            return {"found": False, "value": b""}
        return {"found": True, "value": value}

    @commands.Status.responder
    def status(self):
        try:
            s = self.node.status()
        except Exception as e:
            self.log.failure("unexpected error serving status")
            raise Unavailable(f"internal error serving status: {e!r}")
        return {
            "node_id": s.nodeId,
            "role": s.role,
            "term": s.term,
            "leader_id": s.leaderId,
            "commit_index": s.commitIndex,
            "last_applied": s.lastApplied,
            "last_log_index": s.lastLogIndex,
        }

    # -- peer RPCs ---------------------------------------------------------

    def _checkCluster(self, cluster, what):
        if cluster != self.server.clusterToken:
            if not self._warnedCluster:  # once per connection, not per heartbeat
                self._warnedCluster = True
                self.log.warn(
                    "rejected {what} from a node of another cluster ({cluster!r})"
                    " at {peer}",
                    what=what,
                    cluster=cluster,
                    peer=self.transport.getPeer() if self.transport else "?",
                )
            raise InvalidArgument(
                f"cluster token mismatch: this node belongs to"
                f" {self.server.clusterToken!r}, not {cluster!r}"
            )

    @commands.RequestVote.responder
    def requestVote(
        self, cluster, term, candidate_id, last_log_index, last_log_term, pre_vote=None
    ):
        self._checkCluster(cluster, "RequestVote")
        msg = messages.RequestVote(
            term, candidate_id, last_log_index, last_log_term, bool(pre_vote)
        )
        d = defer.maybeDeferred(self.node.handleRequestVote, msg)
        d.addCallback(lambda r: {"term": r.term, "vote_granted": r.voteGranted})
        return self._guard(d, "RequestVote")

    @commands.AppendEntries.responder
    def appendEntries(
        self, cluster, term, leader_id, prev_log_index, prev_log_term, entries,
        leader_commit,
    ):
        self._checkCluster(cluster, "AppendEntries")
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
        data, done,
    ):
        self._checkCluster(cluster, "InstallSnapshot")
        msg = messages.InstallSnapshot(
            term,
            leader_id,
            messages.SnapshotMeta(last_index, last_term, tuple(members)),
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


class NodeServerFactory(protocol.ServerFactory):
    """
    Builds a L{NodeProtocol} per connection.

    @param node: the L{RaftNode} (or anything with its API).
    @param store: the L{kv.KVStore} the node applies to (for reads).
    @param peers: the L{AMPTransport} used to forward to the leader.
    @param clusterToken: Raft RPCs with another token are rejected.
    @param clock: an L{IReactorTime}.
    @param requestTimeout: seconds a client request may take in all.
    @param leaderTimeout: seconds to wait for a leader to become known.
    """

    protocol = NodeProtocol
    noisy = False

    def __init__(
        self,
        node,
        store,
        peers,
        clusterToken,
        clock,
        requestTimeout=5.0,
        leaderTimeout=2.5,
        retryDelay=0.1,
        maxTries=20,
    ):
        self.node = node
        self.store = store
        self.peers = peers
        self.clusterToken = clusterToken
        self.clock = clock
        self.requestTimeout = requestTimeout
        self.leaderTimeout = leaderTimeout
        self.retryDelay = retryDelay
        self.maxTries = maxTries
        self.deadlines = Deadlines(clock)

    def buildProtocol(self, addr):
        p = self.protocol(self)
        p.factory = self
        return p
