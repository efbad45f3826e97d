"""
The key-value state machine and the encoding of its commands in log entries.

A command is C{op (1 byte) | key length (u32) | key (UTF-8) | rest}; for a
put the rest is the value, for a compare-and-set it is
C{has expected (1 byte) | expected length (u32) | expected | value}.

A command sent with a client session (exactly-once writes, Raft thesis
§6.3) is wrapped as
C{SESSION (1 byte) | client id length (u16) | client id (UTF-8) |
sequence (u64) | the command above}.  Unwrapped commands are encoded exactly
as before sessions existed, so old logs still apply.
"""

import struct
from collections import OrderedDict

from zope.interface import implementer

from twisted_raft.raft.interfaces import IStateMachine

PUT = 1
DELETE = 2
CAS = 3
SESSION = 0x10

MAX_KEY_BYTES = 4096
MAX_VALUE_BYTES = 1024 * 1024

MAX_CLIENT_ID_BYTES = 128
"""A client id is 1 to 128 bytes of UTF-8 (sessions are kept in memory)."""
MAX_SEQUENCE = 2**64 - 1
"""Sequences are 1 to 2**64 - 1 (a u64 in the log entry)."""

SESSION_WINDOW = 1024
"""Results of a client's last this-many sequences are kept for duplicates."""
SESSION_EXPIRY_ENTRIES = 1_000_000
"""A session unused for more than this many log entries is dropped."""
MAX_SESSIONS = 100_000
"""At most this many sessions; the least recently used one is dropped."""
MAX_SESSION_RESULTS = 1_000_000
"""At most this many cached results over all sessions (a memory bound);
least recently used sessions are dropped to stay under it."""

_HEAD = struct.Struct(">BI")
_LEN = struct.Struct(">I")
_SESSION_HEAD = struct.Struct(">BH")
_SEQUENCE = struct.Struct(">Q")


class CommandError(ValueError):
    """A command could not be decoded: the log entry is not a KV command."""


class SequenceTooOld(ValueError):
    """
    A session command's sequence is at or below the session's window and its
    result is no longer kept: it may or may not have been applied before, so
    it is refused.  L{KVStore.apply} I{returns} (does not raise) an instance;
    the server answers it as INVALID_ARGUMENT.
    """


class Applied:
    """
    The result of applying a session command.

    @ivar result: the command's result (as for an unwrapped command).
    @ivar index: the log index at which the command took effect: for a
        duplicate, the index of the first application, not of the retry.
    @ivar duplicate: C{True} if this entry repeated an applied (client,
        sequence) and changed nothing.
    """

    __slots__ = ("result", "index", "duplicate")

    def __init__(self, result, index, duplicate=False):
        self.result = result
        self.index = index
        self.duplicate = duplicate

    def __eq__(self, other):
        if not isinstance(other, Applied):
            return NotImplemented
        return (self.result, self.index, self.duplicate) == (
            other.result, other.index, other.duplicate,
        )

    def __repr__(self):
        return (
            f"Applied(result={self.result!r}, index={self.index!r},"
            f" duplicate={self.duplicate!r})"
        )


def encodePut(key: str, value: bytes) -> bytes:
    k = key.encode("utf-8")
    return _HEAD.pack(PUT, len(k)) + k + value


def encodeDelete(key: str) -> bytes:
    k = key.encode("utf-8")
    return _HEAD.pack(DELETE, len(k)) + k


def encodeCompareAndSet(key: str, expected, value: bytes) -> bytes:
    """C{expected} is C{None} when the key must not exist."""
    k = key.encode("utf-8")
    if expected is None:
        mid = b"\x00" + _LEN.pack(0)
    else:
        mid = b"\x01" + _LEN.pack(len(expected)) + expected
    return _HEAD.pack(CAS, len(k)) + k + mid + value


def checkSession(clientId, sequence):
    """
    @raise ValueError: unless C{clientId} is 1 to L{MAX_CLIENT_ID_BYTES}
        bytes of UTF-8 and C{sequence} is 1 to L{MAX_SEQUENCE}.
    """
    if not isinstance(clientId, str) or not clientId:
        raise ValueError("empty client_id")
    n = len(clientId.encode("utf-8", "surrogatepass"))
    if n > MAX_CLIENT_ID_BYTES:
        raise ValueError(
            f"client_id is {n} bytes of UTF-8, over {MAX_CLIENT_ID_BYTES}"
        )
    if not isinstance(sequence, int) or not 1 <= sequence <= MAX_SEQUENCE:
        raise ValueError(f"sequence {sequence!r} is not between 1 and 2**64 - 1")


def encodeSession(clientId: str, sequence: int, command: bytes) -> bytes:
    """Wrap an encoded put, delete or compare-and-set in a client session."""
    checkSession(clientId, sequence)
    if command[:1] == bytes([SESSION]):
        raise ValueError("a session command cannot wrap another")
    c = clientId.encode("utf-8")
    return _SESSION_HEAD.pack(SESSION, len(c)) + c + _SEQUENCE.pack(sequence) + command


def decodeSession(data: bytes):
    """
    @return: C{(clientId, sequence, command)} of a session-wrapped command;
        C{command} is the inner command's bytes (see L{decode}).
    @raise CommandError: if C{data} is not a well-formed session command.
    """
    try:
        op, clen = _SESSION_HEAD.unpack_from(data, 0)
        if op != SESSION:
            raise CommandError(f"not a session command (op {op})")
        pos = _SESSION_HEAD.size
        if len(data) < pos + clen:
            raise CommandError("malformed session command: truncated client id")
        clientId = data[pos : pos + clen].decode("utf-8")
        pos += clen
        (sequence,) = _SEQUENCE.unpack_from(data, pos)
        pos += _SEQUENCE.size
    except (struct.error, UnicodeDecodeError) as e:
        raise CommandError(f"malformed session command: {e}") from e
    command = data[pos:]
    if command[:1] == bytes([SESSION]):
        raise CommandError("malformed session command: nested session")
    if not clientId or sequence < 1:
        raise CommandError("malformed session command: empty client id or sequence 0")
    return clientId, sequence, command


def decode(data: bytes):
    """
    Decode an unwrapped command (see L{decodeSession} for session commands).

    @return: C{(op, key, expected, value)}; C{expected} is C{None} unless op is
        CAS with an expected value; C{value} is C{None} for a delete.
    """
    try:
        op, klen = _HEAD.unpack_from(data, 0)
        pos = _HEAD.size
        key = data[pos : pos + klen].decode("utf-8")
        pos += klen
        if op == PUT:
            return op, key, None, data[pos:]
        if op == DELETE:
            return op, key, None, None
        if op == CAS:
            has = data[pos]
            (elen,) = _LEN.unpack_from(data, pos + 1)
            pos += 1 + _LEN.size
            expected = data[pos : pos + elen] if has else None
            return op, key, expected, data[pos + elen :]
    except (struct.error, IndexError, UnicodeDecodeError) as e:
        raise CommandError(f"malformed command: {e}") from e
    raise CommandError(f"unknown command op {op}")


class _Session:
    """
    One client's session: C{results} maps recent sequences to
    C{(result, index)} in the order they were applied; C{highest} is the
    highest sequence applied; C{lastIndex} the log index of its last use.
    """

    __slots__ = ("results", "highest", "lastIndex")

    def __init__(self):
        self.results = OrderedDict()
        self.highest = 0
        self.lastIndex = 0


@implementer(IStateMachine)
class KVStore:
    """
    An in-memory dict of C{str} keys to C{bytes} values, plus the client
    sessions that make session-wrapped writes exactly-once.

    Results of L{apply}: C{None} for a put, whether the key existed for a
    delete, whether the swap happened for a compare-and-set.  A
    session-wrapped command returns an L{Applied} carrying that result and
    the index it took effect at (the original index for a duplicate), or a
    L{SequenceTooOld} instance if its sequence is below the session's window.

    Everything about sessions is decided from the log alone (indexes, never
    the wall clock), so every node, and a node re-applying its log after a
    restart, reaches the same sessions and the same answers.

    @ivar sessions: client id -> L{_Session}, least recently used first
        (which is also in order of C{lastIndex}).
    """

    def __init__(
        self,
        window=SESSION_WINDOW,
        expiryEntries=SESSION_EXPIRY_ENTRIES,
        maxSessions=MAX_SESSIONS,
        maxResults=MAX_SESSION_RESULTS,
    ):
        self.data = {}
        self.window = window
        self.expiryEntries = expiryEntries
        self.maxSessions = maxSessions
        self.maxResults = max(maxResults, window)
        self.sessions = OrderedDict()
        self.cachedResults = 0

    def apply(self, index, data):
        self._expire(index)
        if data[:1] == bytes([SESSION]):
            return self._applySession(index, data)
        return self._apply(*decode(data))

    def _apply(self, op, key, expected, value):
        if op == PUT:
            self.data[key] = value
            return None
        if op == DELETE:
            return self.data.pop(key, None) is not None
        current = self.data.get(key)
        if (expected is None and current is None) or (
            expected is not None and current == expected
        ):
            self.data[key] = value
            return True
        return False

    def _applySession(self, index, data):
        clientId, sequence, inner = decodeSession(data)
        command = decode(inner)  # malformed: raise before touching anything
        session = self.sessions.get(clientId)
        if session is None:
            session = self.sessions[clientId] = _Session()
        else:
            self.sessions.move_to_end(clientId)
        session.lastIndex = index
        cached = session.results.get(sequence)
        if cached is not None:
            return Applied(cached[0], cached[1], duplicate=True)
        if sequence <= session.highest - self.window:
            return SequenceTooOld(
                f"sequence {sequence} is older than this session's window"
                f" (the last {self.window} sequences, up to {session.highest})"
            )
        result = self._apply(*command)
        session.results[sequence] = (result, index)
        self.cachedResults += 1
        if sequence > session.highest:
            session.highest = sequence
        floor = session.highest - self.window
        results = session.results
        while results:
            oldest = next(iter(results))
            if oldest > floor:
                break
            results.popitem(last=False)
            self.cachedResults -= 1
        self._evict()
        return Applied(result, index)

    def _drop(self):
        _, session = self.sessions.popitem(last=False)
        self.cachedResults -= len(session.results)

    def _expire(self, index):
        """Drop sessions unused for more than C{expiryEntries} entries."""
        sessions = self.sessions
        horizon = index - self.expiryEntries
        while sessions:
            oldest = sessions[next(iter(sessions))]
            if oldest.lastIndex >= horizon:
                break
            self._drop()

    def _evict(self):
        """Keep within C{maxSessions} and C{maxResults}, dropping LRU sessions."""
        while len(self.sessions) > 1 and (
            len(self.sessions) > self.maxSessions
            or self.cachedResults > self.maxResults
        ):
            self._drop()

    def get(self, key):
        """@return: the value, or C{None} if the key does not exist."""
        return self.data.get(key)
