"""
The client's one operation path: L{OperationPath}, the base of
L{twisted_raft.client.RaftKVClient} every request goes through.

Each operation takes one path (L{OperationPath._operation}): its first
attempt, on a live connection to the node believed to lead, is sent without
a coroutine (at thousands of requests a second a coroutine's overhead shows
in the client's profile); only if that is not possible, or it fails, does
the retry loop (L{OperationPath._retry}) take over, with the same
L{Operation}.  What each failure of an attempt means is
L{OperationPath._classify}'s; leader discovery is here too, as it shares
the path's idea of the preferred node.  Also here: the argument checks and
answer helpers the client's groups of methods share.
"""

import functools
from dataclasses import dataclass
from typing import Optional

from twisted.internet import defer, task
from twisted.internet.defer import CancelledError, Deferred, fail
from twisted.internet.error import ConnectionClosed
from twisted.protocols import amp
from twisted.python.failure import Failure

from twisted_raft.connections import alive
from twisted_raft.rpc.commands import (
    CHANGE_IN_PROGRESS,
    ChangeInProgress,
    InvalidArgument,
    NotCaughtUp,
    NotProposed,
    PermissionDenied,
    Status,
    TransferFailed,
    Unavailable,
    ValueTooLarge,
)
from twisted_raft.rpc.deadlines import Deadlines
from twisted_raft.rpc.fastamp import FastCalls


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


class OutcomeUnknown(Unavailable):
    """
    A write failed after it may have reached the cluster: it may or may not
    have been applied.  A subclass of L{Unavailable}.
    """


@dataclass(slots=True)
class Operation:
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


class Retryable(Exception):
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


def describe(error):
    """A short human description of an exception or Failure."""
    if isinstance(error, Failure):
        error = error.value
    if isinstance(error, defer.TimeoutError):
        return "timed out"
    if isinstance(error, (Unavailable, InvalidArgument, ValueTooLarge)):
        return errorMessage(error)
    text = str(error).strip()
    name = type(error).__name__
    return f"{name}: {text}" if text else name


def errorMessage(error):
    """The description carried by a contract exception, as text."""
    if error.args:
        first = error.args[0]
        if isinstance(first, bytes):
            return first.decode("utf-8", "replace")
        return str(first)
    return ""


def checkKey(key):
    """
    @raise InvalidArgument: C{key} is not UTF-8 text: a key from a
        command line that was not UTF-8 holds surrogate escapes
        (PEP 383), which AMP could not encode.
    """
    if not isinstance(key, str):
        raise TypeError(f"key must be str, not {type(key).__name__}")
    if key.isascii():  # O(1), and ASCII always encodes: once per operation
        return key
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        raw = key.encode("utf-8", "surrogateescape" if _onlyEscapes(key) else "backslashreplace")
        raise InvalidArgument(f"key is not UTF-8 text: {raw!r}") from None
    return key


def _onlyEscapes(text):
    """Whether every surrogate in C{text} is a PEP 383 escape of a byte."""
    return all(not 0xD800 <= ord(c) <= 0xDFFF or 0xDC80 <= ord(c) <= 0xDCFF for c in text)


def checkValue(name, value):
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    if not isinstance(value, bytes):
        raise TypeError(f"{name} must be bytes, not {type(value).__name__}")
    return value


def revisionOf(r):
    return r["revision"]


_FINAL = (
    InvalidArgument, ValueTooLarge, PermissionDenied, NotCaughtUp, TransferFailed,
    CancelledError,
)
"""Failures of an attempt that end the operation as they are."""


def _timedOut(failure):
    failure.trap(CancelledError)
    raise defer.TimeoutError("no answer in time")


def deferredErrors(method):
    """Make C{method} report synchronous exceptions as a failed Deferred."""

    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        try:
            return method(*args, **kwargs)
        except Exception:
            return fail()

    return wrapper


class OperationPath:
    """
    The operation path of L{twisted_raft.client.RaftKVClient}, which sets
    up the state it uses (its C{__init__}: the reactor, the timeouts,
    the session, the connection pool, the preferred node).
    """

    retryInitialDelay = 0.05
    retryMaxDelay = 0.5

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
        return self._run(Operation(what, command, kwargs, write, extract, wantAddress, now))

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
        except Retryable as e:
            self._failed(op, e, address)
            return Deferred.fromCoroutine(self._retry(op))
        except CancelledError:
            if self._closed:
                # the first attempt was sent: a write may have been applied
                op.maybeApplied = op.write
                raise self._closedError(op) from None
            raise

    def _resends(self, op):
        """Whether C{op}, a write, is tried again after an attempt that may
        have been applied (see L{Operation.resend})."""
        return self.sessions if op.resend is None else op.resend

    def _attemptTimeout(self, remaining, op):
        if not op.write:
            return min(remaining, self.readAttemptTimeout)
        if self._resends(op):
            return min(remaining, self.writeAttemptTimeout)
        return remaining

    def _failed(self, op, e, address):
        """
        Note the failed attempt C{e} (a L{Retryable}) of C{op} at
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
                if self._closed:
                    raise self._closedError(op)
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
                except Retryable as e:
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

        @raise Retryable: a failure after which trying again is an option;
            C{.sent} says whether the request may have been applied.
        @raise InvalidArgument, ValueTooLarge: as answered.
        """
        try:
            proto = await self._pool.get(address)
        except CancelledError:
            raise
        except Exception as e:
            raise Retryable(f"cannot connect: {describe(e)}", sent=False) from None
        if not alive(proto):
            self._pool.drop(address, proto)
            raise Retryable("connection lost before sending", sent=False)
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
            raise InvalidArgument(f"cannot encode request: {describe(e)}") from None
        if deadlines is None:
            return d.addTimeout(timeout, self._reactor)
        return deadlines.add(d, timeout, _timedOut)

    def _classify(self, e, address, proto, timeout):
        """
        Raise what the failure C{e} of one attempt means for the operation.

        @raise Retryable: a failure after which trying again is an option;
            C{.sent} says whether the request may have been applied.
        @raise InvalidArgument, ValueTooLarge, PermissionDenied, NotCaughtUp,
            TransferFailed: as answered.
        """
        if isinstance(e, _FINAL):
            raise e
        if isinstance(e, ChangeInProgress):
            # nothing was proposed; the change in the way commits shortly
            raise Retryable(
                f"CHANGE_IN_PROGRESS: {errorMessage(e)}", sent=False, code=CHANGE_IN_PROGRESS
            ) from None
        if isinstance(e, Unavailable):
            raise Retryable(
                f"UNAVAILABLE: {errorMessage(e)}", sent=not isinstance(e, NotProposed)
            ) from None
        if isinstance(e, defer.TimeoutError):
            self._pool.drop(address, proto, abort=True)
            raise Retryable(f"no answer within {timeout:g}s", sent=True) from None
        if isinstance(e, ConnectionClosed):
            self._pool.drop(address, proto)
            raise Retryable(f"connection lost: {describe(e)}", sent=True) from None
        # UnknownRemoteError, a garbled answer, ...: the server may have
        # acted on the request.
        raise Retryable(f"failed: {describe(e)}", sent=True) from None

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
            self._lastStatusError = str(e) if isinstance(e, Retryable) else describe(e)
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
