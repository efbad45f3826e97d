"""
A Deferred-based client library for raftkv.

    client = RaftKVClient(["127.0.0.1:8001", "127.0.0.1:8002", "127.0.0.1:8003"])
    revision = await client.put("hello", b"world")
    value = await client.get("hello")           # b"world", or None if missing
    page = await client.range("app/", prefix=True)  # RangeResult: kvs, more, count, revision
    r = await client.txn(                        # TxnResponse: succeeded, revision, responses
        compare=[Compare("hello", "value", "==", b"world")],
        success=[PutOp("hello", b"there"), RangeOp("app/", prefix=True, keysOnly=True)],
    )
    await client.close()

Every method returns a L{Deferred}.  Failures are the contract's exceptions
from L{twisted_raft.rpc.commands}: L{Unavailable}, L{InvalidArgument},
L{ValueTooLarge}, and for membership L{ChangeInProgress}, L{NotCaughtUp},
L{TransferFailed}.

Retries follow what is safe:

  - Reads (L{RaftKVClient.get}, L{RaftKVClient.range}, L{RaftKVClient.status})
    are retried on any node until the overall C{timeout}.
  - Writes (put, delete, compareAndSet, txn) are exactly-once by default: each
    client has a random client id and numbers its writes, and every attempt
    of one write carries the same C{(client_id, sequence)}; the cluster
    applies a (client id, sequence) at most once and answers a repeat like
    the first attempt (Raft thesis §6.3).  So a write is retried, on any
    node, until the overall C{timeout}, whatever went wrong (UNAVAILABLE, a
    lost connection, no answer in time).  Only if the timeout passes after
    an attempt that may have been applied does it fail with
    L{OutcomeUnknown}, a subclass of L{Unavailable}; if no attempt can have
    been applied, the failure is a L{NotProposed} (also a subclass of
    L{Unavailable}), whose message starts with C{"not proposed"}.
  - With C{sessions=False} writes carry no session and are retried only when
    the request provably was not applied: no connection could be made (so
    nothing was sent), or the node answered L{NotProposed} (UNAVAILABLE with
    a description starting with C{"not proposed"}).  Any other write failure
    fails at once with L{OutcomeUnknown}: the write may or may not have been
    applied.
  - Membership changes (L{RaftKVClient.addMember}, C{promoteMember},
    C{removeMember}) carry no session but are retried like writes with one,
    and CHANGE_IN_PROGRESS (another change not yet committed) is retried
    too: a repeat of a change that was applied is refused, never applied
    twice.  The rule for a change whose outcome is unknown (an attempt that
    may have been applied failed, a leader change say): when a repeat is
    refused as INVALID_ARGUMENT, the member list is read, and if it holds
    what the change wants -- the node a member at that address, a voter, or
    gone -- the change succeeded, with the list's revision (see
    L{RaftKVClient._change}).
  - A leadership transfer (L{RaftKVClient.transferLeader}) is not repeated
    blindly after an attempt that may have started one (a second transfer
    to "the most up-to-date voter" would move leadership again): the client
    asks who leads, and if leadership moved as asked, that is the answer.

Each operation takes one path (L{RaftKVClient._operation}): its first
attempt, on a live connection to the node believed to lead, is sent without
a coroutine (at thousands of requests a second a coroutine's overhead shows
in the client's profile); only if that is not possible, or it fails, does
the retry loop (L{RaftKVClient._retry}) take over, with the same
L{_Operation}.  Connections are L{twisted_raft.connections}' business.

(This module stays above 600 lines: the public API and its documentation,
membership changes included, which are operations on the same path with
their own rules for an unknown outcome; the one operation path with what
each failure means; and leader discovery, which shares the operation path's
idea of the preferred node.  The connections, the one part with a concern
of its own, are elsewhere.)
"""

import functools
import itertools
import uuid
from dataclasses import dataclass
from typing import NamedTuple, Optional, Tuple

from twisted.internet import defer, task
from twisted.internet.defer import CancelledError, Deferred, fail
from twisted.internet.error import ConnectionClosed
from twisted.logger import Logger
from twisted.protocols import amp
from twisted.python.failure import Failure

from twisted_raft.connections import (
    ClientAMP,
    Connections,
    alive,
    endpointString,
    parseAddresses,
    splitAddress,
)
from twisted_raft.raft.membership import (
    MAX_NODE_ID,
    Configuration,
    InvalidChange,
    Member,
    checkAddress,
)
from twisted_raft.kvrecords import Event  # what a watch delivers: public here
from twisted_raft.rpc.commands import MAX_WATCH_ID, Compacted
from twisted_raft.rpc.commands import (
    CHANGE_IN_PROGRESS,
    AddLearner,
    ChangeInProgress,
    CompareAndSet,
    Delete,
    Get,
    InvalidArgument,
    MemberList,
    NotCaughtUp,
    NotProposed,
    PermissionDenied,
    PromoteMember,
    Put,
    RemoveMember,
    Status,
    TransferFailed,
    TransferLeader,
    Unavailable,
    ValueTooLarge,
)
from twisted_raft.rpc.deadlines import Deadlines
from twisted_raft.rpc.fastamp import FastCalls

# ranges and transactions: the records they read and write, one definition
# with the store's (twisted_raft.kvrecords, twisted_raft.kvtxn)
from twisted_raft.kvrecords import (
    ALL_KEYS_END,
    DeleteResult,
    KeyValue,
    PutResult,
    RangeResult,
)
from twisted_raft.kvtxn import Compare, Txn
from twisted_raft.kvtxn import Delete as DeleteOp
from twisted_raft.kvtxn import Put as PutOp
from twisted_raft.kvtxn import Range as RangeOp
from twisted_raft.rpc import kvwire
from twisted_raft.rpc.commands import Range
from twisted_raft.rpc.commands import Txn as TxnCommand
from twisted_raft.rpc.kvwire import DeleteResponse, PutResponse, TxnResponse

__all__ = [
    "RaftKVClient",
    "ClientAMP",
    "OutcomeUnknown",
    "NotProposed",
    "PermissionDenied",
    "ChangeInProgress",
    "NotCaughtUp",
    "TransferFailed",
    "Member",
    "Membership",
    "Compacted",
    "Event",
    "parseAddresses",
    "splitAddress",
    "endpointString",
    # ranges and transactions
    "ALL_KEYS_END",
    "KeyValue",
    "RangeResult",
    "PutResult",
    "DeleteResult",
    "Compare",
    "PutOp",
    "DeleteOp",
    "RangeOp",
    "TxnResponse",
    "PutResponse",
    "DeleteResponse",
]

STATUS_FIELDS = (
    "node_id",
    "role",
    "term",
    "leader_id",
    "commit_index",
    "last_applied",
    "last_log_index",
    "voter",
    "config_revision",
    "pid",
    "uptime",
)

CATCH_UP_TIMEOUT = 60.0
"""Seconds L{RaftKVClient.addMember} and L{RaftKVClient.promoteMember} wait,
by default, for a learner to catch up before promoting it."""


class Membership(NamedTuple):
    """
    The cluster's members, as committed by the leader: C{revision} is the
    log index of their configuration entry (0: the configuration the cluster
    was started with) and C{members} every L{Member} (C{id}, C{address},
    C{voter}), by id.  It unpacks as C{(revision, members)}.
    """

    revision: int
    members: Tuple[Member, ...]

    @property
    def configuration(self):
        """The same members as a L{Configuration} (voters, learners, lookups)."""
        return Configuration(self.members, self.revision)

    def member(self, nodeId) -> Optional[Member]:
        """The member with id C{nodeId}, or C{None}."""
        return self.configuration.member(nodeId)

    @property
    def voters(self):
        """The voters' ids, in order."""
        return self.configuration.voters

    @property
    def learners(self):
        """The learners' ids, in order."""
        return self.configuration.learners


class OutcomeUnknown(Unavailable):
    """
    A write failed after it may have reached the cluster: it may or may not
    have been applied.  A subclass of L{Unavailable}.
    """


@dataclass(slots=True)
class _Operation:
    """
    One operation of L{RaftKVClient} across its attempts: what to send, and
    how far it got.

    @ivar start: when it started (C{reactor.seconds()}).
    @ivar failures: attempts (or rounds finding no node) that failed.
    @ivar last: what went wrong last, for the final error.
    @ivar maybeApplied: a write attempt failed after it may have been applied.
    @ivar resend: whether a write attempt that may have been applied is
        tried again: C{None} as the client's C{sessions} say; C{True} for a
        membership change, which a repeat can never apply twice (it is
        refused as INVALID_ARGUMENT, see L{RaftKVClient._change}); C{False}
        for a leadership transfer, which a repeat could do twice.
    @ivar lastCode: the error code of the last failure, if it had one.
    """

    what: str
    command: type
    kwargs: dict
    write: bool
    extract: object
    wantAddress: bool
    start: float
    failures: int = 0
    last: str = "no attempt made"
    maybeApplied: bool = False
    resend: Optional[bool] = None
    lastCode: Optional[bytes] = None


class _Retryable(Exception):
    """
    An attempt failed in a way that lets the caller try again.

    @ivar sent: C{False} if the request provably was not applied (it was
        never sent, or the node answered L{NotProposed}); C{True} if it may
        have been applied.
    """

    def __init__(self, message, sent, code=None):
        super().__init__(message)
        self.sent = sent
        self.code = code


def _describe(error):
    """A short human description of an exception or Failure."""
    if isinstance(error, Failure):
        error = error.value
    if isinstance(error, defer.TimeoutError):
        return "timed out"
    if isinstance(error, (Unavailable, InvalidArgument, ValueTooLarge)):
        return _message(error)
    text = str(error).strip()
    name = type(error).__name__
    return f"{name}: {text}" if text else name


def _message(error):
    """The description carried by a contract exception, as text."""
    if error.args:
        first = error.args[0]
        if isinstance(first, bytes):
            return first.decode("utf-8", "replace")
        return str(first)
    return ""


def _checkKey(key):
    """
    @raise InvalidArgument: C{key} is not UTF-8 text: a key from a
        command line that was not UTF-8 holds surrogate escapes
        (PEP 383), which AMP could not encode.
    """
    if not isinstance(key, str):
        raise TypeError(f"key must be str, not {type(key).__name__}")
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        raw = key.encode("utf-8", "surrogateescape" if _onlyEscapes(key) else "backslashreplace")
        raise InvalidArgument(f"key is not UTF-8 text: {raw!r}") from None
    return key


def _onlyEscapes(text):
    """Whether every surrogate in C{text} is a PEP 383 escape of a byte."""
    return all(not 0xD800 <= ord(c) <= 0xDFFF or 0xDC80 <= ord(c) <= 0xDCFF for c in text)


def _checkValue(name, value):
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    if not isinstance(value, bytes):
        raise TypeError(f"{name} must be bytes, not {type(value).__name__}")
    return value


def _revision(r):
    return r["revision"]


def _rangeArguments(key, end, prefix, limit, after, keysOnly, countOnly, stale):
    """The L{Range} arguments of L{RaftKVClient.range}'s, checked for type."""
    kwargs = {"key": _checkKey(key)}
    if end is not None:
        kwargs["end"] = _checkKey(end)
    if prefix:
        kwargs["prefix"] = True
    if isinstance(limit, bool) or not isinstance(limit, int):
        raise TypeError(f"limit must be int, not {type(limit).__name__}")
    if limit:
        kwargs["limit"] = limit
    if after is not None:
        kwargs["after"] = _checkKey(after)
    if keysOnly:
        kwargs["keys_only"] = True
    if countOnly:
        kwargs["count_only"] = True
    if stale:
        kwargs["stale"] = True
    return kwargs


def _value(r):
    return r["value"] if r["found"] else None


def _deleted(r):
    return r["deleted"], r["revision"]


def _succeeded(r):
    return r["succeeded"], r["revision"]


def _membership(r):
    members = (Member(m["node_id"], m["address"], m["voter"]) for m in r["members"])
    return Membership(r["revision"], tuple(sorted(members, key=lambda m: m.id)))


def _leaderId(r):
    return r["leader_id"]


_FINAL = (
    InvalidArgument, ValueTooLarge, PermissionDenied, NotCaughtUp, TransferFailed,
    CancelledError,
)
"""Failures of an attempt that end the operation as they are."""


def _checkNodeId(nodeId):
    if isinstance(nodeId, bool) or not isinstance(nodeId, int):
        raise TypeError(f"node id must be int, not {type(nodeId).__name__}")
    if not 1 <= nodeId <= MAX_NODE_ID:
        raise InvalidArgument(f"node id {nodeId} is out of range 1 to 2**63 - 1")
    return nodeId


def _isVoter(nodeId):
    """What promoting C{nodeId} wants of a L{Membership}."""

    def wants(current):
        m = current.member(nodeId)
        return m is not None and m.voter

    return wants


def _timedOut(failure):
    failure.trap(CancelledError)
    raise defer.TimeoutError("no answer in time")


def _deferredErrors(method):
    """Make C{method} report synchronous exceptions as a failed Deferred."""

    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        try:
            return method(*args, **kwargs)
        except Exception:
            return fail()

    return wrapper


# -- the client ----------------------------------------------------------------


class RaftKVClient:
    """
    A client of a raftkv cluster.

    @param addresses: the nodes, a list of C{"host:port"} strings or one
        comma-separated string.  When it is the cluster's full peer list in
        order, node C{N} is C{addresses[N - 1]}; that is only used as a hint.
    @param reactor: the reactor (or a L{task.Clock} in tests, with C{connect});
        the global reactor if C{None}.
    @param timeout: overall seconds per operation, retries included.
    @param connectTimeout: seconds to establish one connection.
    @param connect: C{connect(address) -> Deferred[AMP]}, to replace how
        connections are made (tests); by default a TCP connection with
        L{ClientAMP}.
    @param readAttemptTimeout: seconds one read attempt may take before the
        read is tried again elsewhere (default: half of C{timeout}).
    @param sessions: if true (the default), writes are exactly-once and
        retried until C{timeout} (see the module docstring); if false, a
        write whose outcome is unknown is never retried.
    @param writeAttemptTimeout: with sessions, seconds one write attempt may
        take before it is retried (default: C{readAttemptTimeout}).
    @param clientId: the session's client id (default: a random UUID4 in
        hex).  Two clients must never share one.
    @param tls: a L{twisted_raft.tls.TLSCredentials}, to talk to nodes
        that require mutual TLS: every connection is TLS, presents this
        certificate, and checks the node's certificate against the CA and
        against the host of its address (an IP address or DNS name that
        must be among the certificate's subject alternative names).  A
        failed handshake is a failed connection, retried like one.  C{None}
        (the default): plain TCP.  Ignored with C{connect}.
    @ivar sequence: the sequence number of the last write issued.
    """

    log = Logger()

    retryInitialDelay = 0.05
    retryMaxDelay = 0.5
    catchUpPollDelay = 1.0
    """The longest pause between two promotions of a learner not yet caught up."""

    def __init__(
        self,
        addresses,
        reactor=None,
        timeout=5.0,
        connectTimeout=2.0,
        connect=None,
        readAttemptTimeout=None,
        sessions=True,
        writeAttemptTimeout=None,
        clientId=None,
        tls=None,
    ):
        if reactor is None:
            from twisted.internet import reactor
        self.addresses = parseAddresses(addresses)
        self._reactor = reactor
        self.timeout = float(timeout)
        self.connectTimeout = float(connectTimeout)
        if readAttemptTimeout is None:
            readAttemptTimeout = self.timeout / 2
        self.readAttemptTimeout = float(readAttemptTimeout)
        if writeAttemptTimeout is None:
            writeAttemptTimeout = self.readAttemptTimeout
        self.writeAttemptTimeout = float(writeAttemptTimeout)
        self.sessions = bool(sessions)
        self.clientId = clientId if clientId is not None else uuid.uuid4().hex
        self.sequence = 0
        self._pool = Connections(reactor, self.connectTimeout, connect, tls)
        self._sleeps = set()
        self._nodeIds = {}  # address -> node_id, learnt from Status
        self._preferred = None  # address to send requests to (leader if known)
        self._closed = False
        self._fastDeadlines = {}  # attempt timeout -> Deadlines
        # why the last Status of a node failed: "no node could be reached"
        # says why (e.g. a TLS handshake failure), not only that
        self._lastStatusError = None

    # -- public API -------------------------------------------------------

    @_deferredErrors
    def put(self, key, value, prevKV=False):
        """
        Set C{key} to C{value} (bytes).

        @return: Deferred[int] revision; with C{prevKV}, Deferred[L{PutResponse}]
            (C{revision}, C{prev_kv}: the L{KeyValue} the key had, or
            C{None}; C{complete}).
        """
        key = _checkKey(key)
        value = _checkValue("value", value)
        kwargs = {"key": key, "value": value}
        if prevKV:
            kwargs["prev_kv"] = True
        return self._operation(
            f"put {key!r}", Put, self._session(kwargs), write=True,
            extract=kvwire.putResponse if prevKV else _revision,
        )

    @_deferredErrors
    def get(self, key, stale=False):
        """
        Read C{key}.  With C{stale=True} any node may answer from its own
        state (faster, possibly out of date).

        @return: Deferred[bytes or None] (None when the key does not exist).
        """
        key = _checkKey(key)
        kwargs = {"key": key}
        if stale:
            kwargs["stale"] = True
        return self._operation(
            f"get {key!r}", Get, kwargs, write=False,
            extract=_value,
        )

    @_deferredErrors
    def delete(self, key, end=None, prefix=False, prevKV=False):
        """
        Delete C{key}; with C{end}, every key of C{[key, end)} (C{end}
        C{"\\0"}: every key from C{key} on); with C{prefix}, every key
        starting with C{key} (C{""}: every key).

        @return: Deferred[(deleted: bool, revision: int)]; with C{end},
            C{prefix} or C{prevKV}, Deferred[L{DeleteResponse}] (C{deleted},
            how many keys; C{revision}; with C{prevKV}, C{prev_kvs}, the
            L{KeyValue}s deleted as they were; C{complete}).
        """
        key = _checkKey(key)
        if end is None and not prefix and not prevKV:
            return self._operation(
                f"delete {key!r}", Delete, self._session({"key": key}), write=True,
                extract=_deleted,
            )
        kwargs = {"key": key}
        if end is not None:
            kwargs["end"] = _checkKey(end)
        if prefix:
            kwargs["prefix"] = True
        if prevKV:
            kwargs["prev_kv"] = True
        return self._operation(
            f"delete {key!r}", Delete, self._session(kwargs), write=True,
            extract=functools.partial(kvwire.deleteResponse, prevKvAsked=bool(prevKV)),
        )

    @_deferredErrors
    def compareAndSet(self, key, expected, value):
        """
        Set C{key} to C{value} only if its current value is C{expected}
        (C{None}: only if the key does not exist).

        @return: Deferred[(succeeded: bool, revision: int)].
        """
        key = _checkKey(key)
        value = _checkValue("value", value)
        kwargs = {"key": key, "value": value}
        if expected is not None:
            kwargs["expected"] = _checkValue("expected", expected)
        return self._operation(
            f"compareAndSet {key!r}", CompareAndSet, self._session(kwargs), write=True,
            extract=_succeeded,
        )

    # -- ranges and transactions ------------------------------------------

    @_deferredErrors
    def range(
        self, key, end=None, prefix=False, limit=0, after=None, keysOnly=False,
        countOnly=False, stale=False,
    ):
        """
        Read one page of C{key} alone, every key starting with C{key}
        (C{prefix}; C{""}: every key) or C{[key, end)} (C{end} C{"\\0"}:
        every key from C{key} on), in the byte order of the keys' UTF-8,
        from strictly after C{after} if given.  A page holds at most
        C{limit} keys (0: no limit) and at most what one answer carries
        (1,000 keys, about 1 MiB); L{rangePages} and L{rangeAll} go on
        from there.  Linearizable unless C{stale}.

        @return: Deferred[L{RangeResult}]: C{kvs} (L{KeyValue}s in key
            order, without values if C{keysOnly}, none if C{countOnly}),
            C{more} (keys were left out), C{count} (the keys in the range
            after C{after}, whatever the limit) and C{revision} (the
            store's revision the whole page was read at).
        """
        kwargs = _rangeArguments(key, end, prefix, limit, after, keysOnly, countOnly, stale)
        return self._operation(
            f"range {key!r}", Range, kwargs, write=False, extract=kvwire.rangeResult,
        )

    def rangePages(
        self, key, end=None, prefix=False, limit=0, after=None, keysOnly=False, stale=False,
    ):
        """
        Every page of a range (as L{range}'s arguments), each read with
        C{after} the last key of the one before, until the range or
        C{limit} keys (0: all) are done: an asynchronous iterator of
        L{RangeResult}s (C{async for page in client.rangePages(...)}).
        Each page is consistent at its own C{revision}; under writes, a
        key is returned at most once and every key that exists from the
        first page to the last is returned.
        """
        _rangeArguments(key, end, prefix, limit, after, keysOnly, False, stale)
        return self._pages(key, end, prefix, limit, after, keysOnly, stale)

    async def _pages(self, key, end, prefix, limit, after, keysOnly, stale):
        got = 0
        while True:
            want = limit - got if limit else 0
            page = await self.range(key, end, prefix, want, after, keysOnly, False, stale)
            got += len(page.kvs)
            yield page
            if not page.more or (limit and got >= limit):
                return
            if not page.kvs:
                raise Unavailable(f"range {key!r}: a page said more keys but held none")
            after = page.kvs[-1].key

    @_deferredErrors
    def rangeAll(
        self, key, end=None, prefix=False, limit=0, after=None, keysOnly=False, stale=False,
    ):
        """
        L{rangePages}' pages together.

        @return: Deferred[L{RangeResult}]: every key-value (at most
            C{limit}, if given), C{more} whether C{limit} left keys out,
            and the first page's C{count} and C{revision}.  Under writes
            that revision is the one to watch from (C{revision + 1}): every
            change after it is then seen, including those later pages
            already show.
        """
        pages = self.rangePages(key, end, prefix, limit, after, keysOnly, stale)

        async def collect():
            kvs, first, last = [], None, None
            async for page in pages:
                if first is None:
                    first = page
                last = page
                kvs.extend(page.kvs)
            return RangeResult(kvs, last.more, first.count, first.revision)

        return Deferred.fromCoroutine(collect())

    @_deferredErrors
    def txn(self, compare=(), success=(), failure=()):
        """
        A transaction, applied atomically as one log entry: if every
        L{Compare} in C{compare} holds, the C{success} operations run, else
        the C{failure} ones, in order (L{PutOp}, L{DeleteOp}, L{RangeOp}).
        Exactly-once and retried like every write.

        @return: Deferred[L{TxnResponse}] (C{succeeded}, C{revision},
            C{responses}: a L{PutResult}, L{DeleteResult} or L{RangeResult}
            per operation that ran; C{complete}).
        @raise InvalidArgument, ValueTooLarge: (in the Deferred) it breaks
            a rule or limit; nothing was sent.
        """
        data = kvwire.encodeTxn(Txn(compare, success, failure))
        return self._operation(
            "txn", TxnCommand, self._session({"txn": data}), write=True,
            extract=kvwire.txnResponse,
        )

    @_deferredErrors
    def status(self, address=None):
        """
        The status of one node: C{address}, or (if C{None}) the leader if
        known, else any node that answers.

        @return: Deferred[dict] with the L{Status} fields (C{node_id},
            C{role}, C{term}, C{leader_id}, C{commit_index}, C{last_applied},
            C{last_log_index}) plus C{address}.
        """
        if address is None:
            return self._operation(
                "status", Status, {}, write=False, extract=None, wantAddress=True,
            )

        async def one():
            self._checkOpen()
            try:
                result = await self._attempt(address, Status, {}, self.timeout)
            except _Retryable as e:
                raise Unavailable(f"status of {address}: {e}") from None
            return self._noteStatus(address, result)

        return Deferred.fromCoroutine(one())

    def clusterStatus(self):
        """
        Ask every node for its status, in parallel.

        @return: Deferred[list of (address, dict or None)], in address order;
            C{None} for a node that did not answer.
        """
        if self._closed:
            return fail(Unavailable("the client is closed"))
        return Deferred.fromCoroutine(self._gatherStatus(self.timeout))

    # -- membership and leadership ----------------------------------------

    @_deferredErrors
    def members(self):
        """
        The cluster's members: the leader's configuration, once committed.

        @return: Deferred[L{Membership}] (unpacks as C{(revision, members)}).
        """
        return self._operation(
            "member list", MemberList, {}, write=False, extract=_membership,
        )

    @_deferredErrors
    def addMember(self, nodeId, address, learner=False, timeout=CATCH_UP_TIMEOUT):
        """
        Add node C{nodeId}, reached at C{address} (C{"HOST:PORT"}, kept as
        given), as a learner; then, unless C{learner}, wait for it to catch
        up with the leader's log and promote it to voter (retried while the
        leader answers NOT_CAUGHT_UP, for at most C{timeout} seconds).

        Adding a node that is already a learner at that address resumes an
        add that was interrupted (it is promoted, unless C{learner}); one
        already a voter at that address (without C{learner}) is done.

        @return: Deferred[int], the revision of the last change made.
        @raise NotCaughtUp: the learner did not catch up within C{timeout};
            it stays a learner (L{promoteMember} it later).
        """
        nodeId = _checkNodeId(nodeId)
        if not isinstance(address, str):
            raise TypeError(f"address must be str, not {type(address).__name__}")
        try:
            checkAddress(address)
        except InvalidChange as e:
            raise InvalidArgument(str(e)) from None
        self._checkOpen()
        return Deferred.fromCoroutine(self._addMember(nodeId, address, learner, timeout))

    @_deferredErrors
    def promoteMember(self, nodeId, timeout=CATCH_UP_TIMEOUT):
        """
        Make the learner C{nodeId} a voter, once it has caught up with the
        leader's log (retried while the leader answers NOT_CAUGHT_UP, for at
        most C{timeout} seconds).

        @return: Deferred[int], the change's revision.
        @raise NotCaughtUp: it did not catch up within C{timeout}.
        """
        nodeId = _checkNodeId(nodeId)
        self._checkOpen()
        deadline = self._reactor.seconds() + timeout
        return Deferred.fromCoroutine(self._promote(nodeId, deadline, timeout))

    @_deferredErrors
    def removeMember(self, nodeId):
        """
        Remove member C{nodeId}, voter or learner.

        @return: Deferred[int], the change's revision.
        """
        nodeId = _checkNodeId(nodeId)
        self._checkOpen()
        return Deferred.fromCoroutine(self._change(
            f"remove member {nodeId}", RemoveMember, {"node_id": nodeId},
            lambda current: current.member(nodeId) is None,
        ))

    @_deferredErrors
    def transferLeader(self, nodeId=0):
        """
        Hand leadership to voter C{nodeId} (0: the most up-to-date voter, as
        the leader sees it).  A C{nodeId} that already leads is done at once.

        @return: Deferred[int], the new leader's id.
        @raise TransferFailed: no new leader was elected within an election
            timeout; the old one carries on.
        """
        if nodeId != 0:
            nodeId = _checkNodeId(nodeId)
        self._checkOpen()
        return Deferred.fromCoroutine(self._transfer(nodeId))

    async def _change(self, what, command, kwargs, wants):
        """
        The membership change C{command(**kwargs)}, retried like a write
        with a session, whatever went wrong, until C{self.timeout}: a repeat
        of a change that was applied is refused (a member added twice, a
        voter promoted twice, a stranger removed), never applied twice.

        The rule for a change whose outcome is unknown: if the leader
        refuses a repeat as INVALID_ARGUMENT after an earlier attempt may
        have been applied, the member list is read; if it holds what the
        change wants (C{wants(membership)}), the change succeeded and its
        revision is the list's (that of the latest change since, if any);
        else the refusal stands.

        @return: the change's revision.
        """
        op = _Operation(
            what, command, kwargs, True, _revision, False, self._reactor.seconds(), resend=True,
        )
        try:
            return await self._run(op)
        except InvalidArgument:
            if not op.maybeApplied:
                raise
            refused = Failure()
        try:
            current = await self.members()
        except Exception as e:
            raise OutcomeUnknown(
                f"outcome unknown: {what}: refused ({refused.getErrorMessage()}) after "
                f"an attempt that may have been applied, and the member list "
                f"could not be read: {_describe(e)}"
            ) from None
        if wants(current):
            return current.revision
        refused.raiseException()

    async def _addMember(self, nodeId, address, learner, timeout):
        deadline = self._reactor.seconds() + timeout

        def atAddress(current):
            m = current.member(nodeId)
            return m is not None and m.address == address

        try:
            revision = await self._change(
                f"add learner {nodeId} at {address}", AddLearner,
                {"node_id": nodeId, "address": address}, atAddress,
            )
        except InvalidArgument:
            # Already a member: maybe of an add that was interrupted.
            refused = Failure()
            try:
                current = await self.members()
            except Exception:
                refused.raiseException()
            m = current.member(nodeId)
            if m is None or m.address != address or (m.voter and learner):
                refused.raiseException()
            if m.voter or learner:
                return current.revision
        if learner:
            return revision
        return await self._promote(nodeId, deadline, timeout)

    async def _promote(self, nodeId, deadline, timeout):
        """Promote learner C{nodeId}, retried while it is not caught up
        until C{deadline}."""
        tries = 0
        while True:
            try:
                return await self._change(
                    f"promote member {nodeId}", PromoteMember, {"node_id": nodeId},
                    _isVoter(nodeId),
                )
            except NotCaughtUp as e:
                tries += 1
                delay = min(self.catchUpPollDelay, self.retryInitialDelay * 2 ** (tries - 1))
                if self._reactor.seconds() + delay > deadline:
                    raise NotCaughtUp(
                        f"node {nodeId} did not catch up with the leader's log within "
                        f"{timeout:g}s ({_message(e)}); it stays a learner: promote it "
                        "once it has caught up"
                    ) from None
                await self._pause(delay, f"promote member {nodeId}")

    async def _transfer(self, nodeId):
        """
        L{transferLeader}.  A transfer is not idempotent (a repeat of one to
        the most up-to-date voter would move leadership again), so an
        attempt that may have started one is not simply repeated: the
        leader is asked for first, and if leadership moved as wanted, that
        is the answer.
        """
        what = f"transfer leader to node {nodeId}" if nodeId else "transfer leader"
        start = self._reactor.seconds()
        before = (await self.status())["leader_id"]
        if nodeId and before == nodeId:
            return nodeId

        def moved(leaderId):
            return leaderId != before and leaderId > 0 and (not nodeId or leaderId == nodeId)

        uncertain = None  # the failure of an attempt that may have started one
        while True:
            op = _Operation(
                what, TransferLeader, {"node_id": nodeId}, True, _leaderId, False, start,
                resend=False,
            )
            try:
                return self._leaderMoved(await self._run(op))
            except NotProposed:
                if uncertain is not None:
                    uncertain.raiseException()
                raise
            except (OutcomeUnknown, InvalidArgument):
                # leadership may have moved (by this attempt, an earlier one,
                # or an election): look
                failure = Failure()
            try:
                leaderId = (await self.status())["leader_id"]
            except Unavailable:
                failure.raiseException()
            if moved(leaderId):
                return self._leaderMoved(leaderId)
            if failure.check(InvalidArgument):
                failure.raiseException()
            uncertain = failure
            if self._reactor.seconds() - start >= self.timeout:
                failure.raiseException()
            await self._pause(self.retryInitialDelay, what)

    def _leaderMoved(self, leaderId):
        """Node C{leaderId} leads now: send there (if its address is known;
        else look for it).  @return: C{leaderId}."""
        self._preferred = None
        for address, n in self._nodeIds.items():
            if n == leaderId:
                self._preferred = address
        return leaderId

    def setAddresses(self, addresses):
        """
        Talk to C{addresses} (as for the constructor) from the next attempt
        on: the cluster's members changed.  What was learnt of addresses no
        longer listed is forgotten; connections to them close with their
        nodes.

        @raise ValueError: one is malformed, or there is none (nothing
            changes).
        """
        addresses = parseAddresses(addresses)
        self.addresses = addresses
        if self._preferred not in addresses:
            self._preferred = None
        for address in list(self._nodeIds):
            if address not in addresses:
                del self._nodeIds[address]

    def close(self):
        """
        Drop every connection and fail pending operations with
        L{Unavailable}.  @return: Deferred firing once connections are closed.
        """
        self._closed = True
        self._pool.stopConnecting()
        for d in list(self._sleeps):
            d.cancel()
        return self._pool.close()

    # -- operations with retries ----------------------------------------------

    def _session(self, kwargs):
        """Give a write the next sequence of this client's session."""
        self._checkOpen()
        if self.sessions:
            self.sequence += 1
            kwargs["client_id"] = self.clientId
            kwargs["sequence"] = self.sequence
        return kwargs

    def _checkOpen(self):
        if self._closed:
            raise Unavailable("the client is closed")

    def _operation(self, what, command, kwargs, write, extract, wantAddress=False):
        """
        The operation C{command(**kwargs)} (C{extract} makes its result of
        the answer), tried until C{self.timeout}: its first attempt here, the
        rest in L{_retry}.
        """
        self._checkOpen()
        now = self._reactor.seconds()
        return self._run(_Operation(what, command, kwargs, write, extract, wantAddress, now))

    def _run(self, op):
        """Run C{op} until C{self.timeout} after its start (L{_operation})."""
        address = self._preferred
        proto = self._pool.protocols.get(address) if address is not None else None
        if op.wantAddress or not isinstance(proto, FastCalls) or not alive(proto):
            return Deferred.fromCoroutine(self._retry(op))
        # The common case, a live connection to the node we believe leads:
        # the first attempt, chained on the call's own Deferred (a FastCalls
        # Deferred is the caller's alone: AMP's own would drop the
        # connection on a failure left unhandled).
        timeout = self._attemptTimeout(self.timeout, op)
        try:
            sent = self._send(proto, op.command, op.kwargs, timeout, self._deadlinesFor(timeout))
        except InvalidArgument:
            return fail()
        return sent.addCallbacks(
            op.extract, self._firstFailed, errbackArgs=(op, address, proto, timeout),
        )

    def _deadlinesFor(self, timeout):
        deadlines = self._fastDeadlines.get(timeout)
        if deadlines is None:
            deadlines = self._fastDeadlines[timeout] = Deadlines(self._reactor)
        return deadlines

    def _firstFailed(self, failure, op, address, proto, timeout):
        """The first attempt failed: L{_retry} goes on as after its own."""
        try:
            self._classify(failure.value, address, proto, timeout)
        except _Retryable as e:
            self._failed(op, e, address)
            return Deferred.fromCoroutine(self._retry(op))
        except CancelledError:
            if self._closed:
                raise self._closedError(op) from None
            raise

    def _resends(self, op):
        """Whether C{op}, a write, is tried again after an attempt that may
        have been applied (see L{_Operation.resend})."""
        return self.sessions if op.resend is None else op.resend

    def _attemptTimeout(self, remaining, op):
        if not op.write:
            return min(remaining, self.readAttemptTimeout)
        if self._resends(op):
            return min(remaining, self.writeAttemptTimeout)
        return remaining

    def _failed(self, op, e, address):
        """
        Note the failed attempt C{e} (a L{_Retryable}) of C{op} at
        C{address}.  @raise OutcomeUnknown: a write that may have been
        applied and is not to be tried again (without a session, say).
        """
        if self._preferred == address and e.code != CHANGE_IN_PROGRESS:
            # (a node busy with a membership change still leads)
            self._preferred = None
        op.failures += 1
        op.last = f"{address}: {e}"
        op.lastCode = e.code
        if op.write and e.sent:
            if not self._resends(op):
                raise OutcomeUnknown(
                    f"outcome unknown: {op.what} via {address}: {e}; "
                    "the write may or may not have been applied"
                ) from None
            # safe: a repeat of this (client_id, sequence) is never applied
            # twice, nor is a membership change
            op.maybeApplied = True

    def _closedError(self, op):
        """The error for C{op} stopped by L{close}."""
        if op.maybeApplied:
            return OutcomeUnknown(
                f"outcome unknown: {op.what}: the client was closed after an "
                "attempt that may have been applied"
            )
        return Unavailable(f"{op.what}: the client was closed")

    def _exhausted(self, op):
        """The error for C{op} when C{self.timeout} has passed."""
        what, last = op.what, op.last
        if op.maybeApplied:
            return OutcomeUnknown(
                f"outcome unknown: {what}: no attempt succeeded within "
                f"{self.timeout:g}s and one may have been applied (last error: "
                f"{last}); the write may or may not have been applied"
            )
        if op.lastCode == CHANGE_IN_PROGRESS:
            return ChangeInProgress(
                f"{what}: a membership change was still in progress after "
                f"{self.timeout:g}s (last error: {last})"
            )
        if op.write:
            return NotProposed(
                f"{what} was not applied: no node accepted it "
                f"within {self.timeout:g}s (last error: {last})"
            )
        return Unavailable(f"{what}: no node answered within {self.timeout:g}s (last error: {last})")

    async def _retry(self, op):
        """C{op}'s attempts after those already made, until C{self.timeout}."""
        now = self._reactor.seconds
        deadline = op.start + self.timeout
        try:
            while True:
                if op.failures:
                    remaining = deadline - now()
                    if remaining <= 0:
                        break
                    delay = min(
                        self.retryMaxDelay, self.retryInitialDelay * 2 ** (op.failures - 1)
                    )
                    await self._sleep(min(delay, remaining))
                self._checkOpen()
                remaining = deadline - now()
                if remaining <= 0:
                    break
                address, why = await self._chooseAddress(
                    remaining, allowAny=now() - op.start >= self.timeout / 2
                )
                remaining = deadline - now()
                if address is None or remaining <= 0:
                    op.failures += 1
                    op.last = why
                    continue
                try:
                    result = await self._attempt(
                        address, op.command, op.kwargs, self._attemptTimeout(remaining, op)
                    )
                except _Retryable as e:
                    self._failed(op, e, address)
                    continue
                if op.wantAddress:
                    return self._noteStatus(address, result)
                return op.extract(result)
        except CancelledError:
            if self._closed:
                raise self._closedError(op) from None
            raise
        raise self._exhausted(op)

    async def _pause(self, seconds, what):
        """Sleep C{seconds} between two steps of C{what}; L{close} ends it."""
        try:
            await self._sleep(seconds)
        except CancelledError:
            if self._closed:
                raise Unavailable(f"{what}: the client was closed") from None
            raise
        self._checkOpen()

    def _sleep(self, seconds):
        d = task.deferLater(self._reactor, seconds)
        self._sleeps.add(d)

        def done(result):
            self._sleeps.discard(d)
            return result

        d.addBoth(done)
        return d

    async def _attempt(self, address, command, kwargs, timeout):
        """
        Send one request to C{address}.

        @raise _Retryable: a failure after which trying again is an option;
            C{.sent} says whether the request may have been applied.
        @raise InvalidArgument, ValueTooLarge: as answered.
        """
        try:
            proto = await self._pool.get(address)
        except CancelledError:
            raise
        except Exception as e:
            raise _Retryable(f"cannot connect: {_describe(e)}", sent=False) from None
        if not alive(proto):
            self._pool.drop(address, proto)
            raise _Retryable("connection lost before sending", sent=False)
        d = self._send(proto, command, kwargs, timeout)
        try:
            return await d
        except Exception as e:
            self._classify(e, address, proto, timeout)

    def _send(self, proto, command, kwargs, timeout, deadlines=None):
        """
        C{command(**kwargs)} on C{proto}, failing with L{defer.TimeoutError}
        after C{timeout} seconds (through C{deadlines} if given).

        @raise InvalidArgument: the request cannot be encoded.
        """
        try:
            d = proto.callRemote(command, **kwargs)
        except (TypeError, ValueError, amp.TooLong) as e:
            raise InvalidArgument(f"cannot encode request: {_describe(e)}") from None
        if deadlines is None:
            return d.addTimeout(timeout, self._reactor)
        return deadlines.add(d, timeout, _timedOut)

    def _classify(self, e, address, proto, timeout):
        """
        Raise what the failure C{e} of one attempt means for the operation.

        @raise _Retryable: a failure after which trying again is an option;
            C{.sent} says whether the request may have been applied.
        @raise InvalidArgument, ValueTooLarge, PermissionDenied, NotCaughtUp,
            TransferFailed: as answered.
        """
        if isinstance(e, _FINAL):
            raise e
        if isinstance(e, ChangeInProgress):
            # nothing was proposed; the change in the way commits shortly
            raise _Retryable(
                f"CHANGE_IN_PROGRESS: {_message(e)}", sent=False, code=CHANGE_IN_PROGRESS
            ) from None
        if isinstance(e, Unavailable):
            raise _Retryable(
                f"UNAVAILABLE: {_message(e)}", sent=not isinstance(e, NotProposed)
            ) from None
        if isinstance(e, defer.TimeoutError):
            self._pool.drop(address, proto, abort=True)
            raise _Retryable(f"no answer within {timeout:g}s", sent=True) from None
        if isinstance(e, ConnectionClosed):
            self._pool.drop(address, proto)
            raise _Retryable(f"connection lost: {_describe(e)}", sent=True) from None
        # UnknownRemoteError, a garbled answer, ...: the server may have
        # acted on the request.
        raise _Retryable(f"failed: {_describe(e)}", sent=True) from None

    # -- leader discovery -----------------------------------------------

    async def _chooseAddress(self, remaining, allowAny):
        """
        The address to send the next request to: the leader if it can be
        found, else (when C{allowAny} or a leader exists that no address maps
        to) any node that answers, since nodes forward to the leader.

        @return: C{(address or None, reason for None)}.
        """
        if self._preferred is not None:
            return self._preferred, None
        rows = await self._gatherStatus(min(remaining, self.readAttemptTimeout), untilLeader=True)
        up = [(a, s) for a, s in rows if s is not None]
        if not up:
            why = self._lastStatusError
            return None, "no node could be reached" + (f" ({why})" if why else "")
        for address, s in up:
            if s["role"].lower() == "leader" and s["node_id"] == s["leader_id"]:
                self._preferred = address
                return address, None
        best = max(up, key=lambda row: row[1]["term"])[1]
        leaderId = best["leader_id"]
        if leaderId > 0:
            reachable = {a for a, _ in up}
            known = [a for a, n in self._nodeIds.items() if n == leaderId]
            if known:
                if known[0] in reachable:
                    self._preferred = known[0]
                    return known[0], None
            elif 1 <= leaderId <= len(self.addresses):
                guess = self.addresses[leaderId - 1]
                if guess in reachable and guess not in self._nodeIds:
                    self._preferred = guess
                    return guess, None
            # The leader is not one of our addresses (or not reachable from
            # here): any node forwards to it.
            self._preferred = up[0][0]
            return up[0][0], None
        if allowAny:
            return up[0][0], None
        return None, f"no leader elected yet (term {best['term']})"

    async def _gatherStatus(self, timeout, untilLeader=False):
        """
        Status of every address in parallel.  With C{untilLeader}, return as
        soon as a node answers that it is the leader (the others are reported
        as whatever they answered by then, C{None} if nothing yet).
        """
        results = {}
        done = Deferred()
        outstanding = [len(self.addresses)]

        def finish():
            if not done.called:
                done.callback(None)

        def got(status, address):
            results[address] = status
            outstanding[0] -= 1
            if untilLeader and status["role"].lower() == "leader" and status["node_id"] == status["leader_id"]:
                finish()
            elif outstanding[0] == 0:
                finish()

        def failed(reason, address):
            e = reason.value
            self._lastStatusError = str(e) if isinstance(e, _Retryable) else _describe(e)
            results[address] = None
            outstanding[0] -= 1
            if outstanding[0] == 0:
                finish()

        for address in self.addresses:
            d = Deferred.fromCoroutine(
                self._attempt(address, Status, {}, timeout)
            )
            d.addCallback(lambda r, a=address: self._noteStatus(a, r))
            d.addCallbacks(got, failed, callbackArgs=(address,), errbackArgs=(address,))
        if not self.addresses:
            finish()
        await done
        return [(a, results.get(a)) for a in self.addresses]

    def _noteStatus(self, address, result):
        status = {name: result[name] for name in STATUS_FIELDS}
        status["address"] = address
        nodeId = status["node_id"]
        for other, n in list(self._nodeIds.items()):
            if n == nodeId and other != address:
                del self._nodeIds[other]
        self._nodeIds[address] = nodeId
        return status

    # -- watches (twisted_raft.watchclient) --------------------------------

    def watch(self, key, prefix=False, startRevision=None, onEvents=None):
        """
        Watch C{key} (with C{prefix}: every key starting with it; C{""}:
        every key) from C{startRevision} (C{None}: from now), on any node.

        @param onEvents: called with each batch of L{Event}s (a list, in
            revision order, whole revisions: a transaction's events come
            together), one batch at a time; if it returns a Deferred, the
            next batch waits for it (the node sends nothing more meanwhile).
            What it raises ends the watch with that failure.
        @return: a L{Watcher} (not a Deferred): C{cancel()} ends it,
            C{done} fires when it ends (failing with L{Compacted} when no
            node holds its next revision any more), C{whenStarted()} once
            a node accepted it.  It resumes on another node by itself
            when its node is lost, with nothing lost or repeated.
        @raise InvalidArgument: a bad key or start revision (raised here:
            no Deferred to fail yet).
        @raise Unavailable: the client is closed.
        """
        from twisted_raft.watchclient import Watcher

        if not callable(onEvents):
            raise TypeError("onEvents must be callable")
        key = _checkKey(key)
        if not key and not prefix:
            raise InvalidArgument("empty key (watch every key with an empty prefix)")
        if startRevision is not None:
            if isinstance(startRevision, bool) or not isinstance(startRevision, int):
                raise TypeError(f"startRevision must be int, not {type(startRevision).__name__}")
            if not 1 <= startRevision <= MAX_WATCH_ID:
                raise InvalidArgument(
                    f"start revision {startRevision} is out of range 1 to 2**63 - 1"
                )
        self._checkOpen()
        addresses = self.addresses
        first = addresses.index(self._preferred) if self._preferred in addresses else 0
        if self._watchIds is None:
            self._watchIds = itertools.count(1)
        return Watcher(
            self._pool, addresses, self._reactor, key, prefix, startRevision, onEvents,
            self.readAttemptTimeout, first=first, ids=self._watchIds,
            retryInitialDelay=self.retryInitialDelay, retryMaxDelay=self.retryMaxDelay,
        )

    _watchIds = None
    """The watch ids this client's watches use (one count: a connection is
    shared by all of them)."""
