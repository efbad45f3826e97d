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
    L{RaftKVClient._change}, in L{twisted_raft.memberclient}).
  - A leadership transfer (L{RaftKVClient.transferLeader}) is not repeated
    blindly after an attempt that may have started one (a second transfer
    to "the most up-to-date voter" would move leadership again): the client
    asks who leads, and if leadership moved as asked, that is the answer.

Each operation takes one path (L{twisted_raft.clientpath}: a first attempt
without a coroutine, then the retry loop; what each failure means; leader
discovery).  Here: L{RaftKVClient}, its constructor, the single-key
operations, status, and watches (L{twisted_raft.watchclient}); its ranges
and transactions are mixed in from L{twisted_raft.kvclient}, its membership
changes and leadership transfers from L{twisted_raft.memberclient}.
Connections are L{twisted_raft.connections}' business.
"""

import functools
import itertools
import uuid

from twisted.internet.defer import Deferred, fail
from twisted.logger import Logger

from twisted_raft.clientpath import (
    OperationPath,
    OutcomeUnknown,
    Retryable,
    checkKey,
    checkValue,
    deferredErrors,
    revisionOf,
)
from twisted_raft.connections import (
    ClientAMP,
    Connections,
    endpointString,
    parseAddresses,
    splitAddress,
)
from twisted_raft.kvclient import KVRequests
# CATCH_UP_TIMEOUT: the CLI imports it from here
from twisted_raft.memberclient import CATCH_UP_TIMEOUT, Membership, MembershipRequests  # noqa: F401
from twisted_raft.raft.membership import Member
from twisted_raft.kvrecords import Event  # what a watch delivers: public here
from twisted_raft.rpc.commands import MAX_WATCH_ID, Compacted
from twisted_raft.rpc.commands import (
    ChangeInProgress,
    CompareAndSet,
    Delete,
    Get,
    InvalidArgument,
    NotCaughtUp,
    NotProposed,
    PermissionDenied,
    Put,
    Status,
    TransferFailed,
    Unavailable,
)

# ranges and transactions: the records they read and write, one definition
# with the store's (twisted_raft.kvrecords, twisted_raft.kvtxn)
from twisted_raft.kvrecords import (
    ALL_KEYS_END,
    DeleteResult,
    KeyValue,
    PutResult,
    RangeResult,
)
from twisted_raft.kvtxn import Compare
from twisted_raft.kvtxn import Delete as DeleteOp
from twisted_raft.kvtxn import Put as PutOp
from twisted_raft.kvtxn import Range as RangeOp
from twisted_raft.rpc import kvwire
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
    # the same client for blocking and asyncio programs (issue 14)
    "BlockingClient",
    "AsyncioClient",
]


def _value(r):
    return r["value"] if r["found"] else None


def _deleted(r):
    return r["deleted"], r["revision"]


def _succeeded(r):
    return r["succeeded"], r["revision"]


# -- the client ----------------------------------------------------------------


class RaftKVClient(KVRequests, MembershipRequests, OperationPath):
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

    @deferredErrors
    def put(self, key, value, prevKV=False):
        """
        Set C{key} to C{value} (bytes).

        @return: Deferred[int] revision; with C{prevKV}, Deferred[L{PutResponse}]
            (C{revision}, C{prev_kv}: the L{KeyValue} the key had, or
            C{None}; C{complete}).
        """
        key = checkKey(key)
        value = checkValue("value", value)
        kwargs = {"key": key, "value": value}
        if prevKV:
            kwargs["prev_kv"] = True
        return self._operation(
            f"put {key!r}", Put, self._session(kwargs), write=True,
            extract=kvwire.putResponse if prevKV else revisionOf,
        )

    @deferredErrors
    def get(self, key, stale=False):
        """
        Read C{key}.  With C{stale=True} any node may answer from its own
        state (faster, possibly out of date).

        @return: Deferred[bytes or None] (None when the key does not exist).
        """
        key = checkKey(key)
        kwargs = {"key": key}
        if stale:
            kwargs["stale"] = True
        return self._operation(
            f"get {key!r}", Get, kwargs, write=False,
            extract=_value,
        )

    @deferredErrors
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
        key = checkKey(key)
        if end is None and not prefix and not prevKV:
            return self._operation(
                f"delete {key!r}", Delete, self._session({"key": key}), write=True,
                extract=_deleted,
            )
        kwargs = {"key": key}
        if end is not None:
            kwargs["end"] = checkKey(end)
        if prefix:
            kwargs["prefix"] = True
        if prevKV:
            kwargs["prev_kv"] = True
        return self._operation(
            f"delete {key!r}", Delete, self._session(kwargs), write=True,
            extract=functools.partial(kvwire.deleteResponse, prevKvAsked=bool(prevKV)),
        )

    @deferredErrors
    def compareAndSet(self, key, expected, value):
        """
        Set C{key} to C{value} only if its current value is C{expected}
        (C{None}: only if the key does not exist).

        @return: Deferred[(succeeded: bool, revision: int)].
        """
        key = checkKey(key)
        value = checkValue("value", value)
        kwargs = {"key": key, "value": value}
        if expected is not None:
            kwargs["expected"] = checkValue("expected", expected)
        return self._operation(
            f"compareAndSet {key!r}", CompareAndSet, self._session(kwargs), write=True,
            extract=_succeeded,
        )

    @deferredErrors
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
            except Retryable as e:
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
        key = checkKey(key)
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
        # the addresses as they are at each attempt: setAddresses reaches
        # the watches already open
        return Watcher(
            self._pool, lambda: self.addresses, self._reactor, key, prefix, startRevision,
            onEvents,
            self.readAttemptTimeout, first=first, ids=self._watchIds,
            retryInitialDelay=self.retryInitialDelay, retryMaxDelay=self.retryMaxDelay,
        )

    _watchIds = None
    """The watch ids this client's watches use (one count: a connection is
    shared by all of them)."""

from twisted_raft.blocking import BlockingClient  # noqa: E402,F401  (issue 14)
from twisted_raft.aio import AsyncioClient  # noqa: E402,F401  (the asyncio client, twisted_raft/aio.py)
