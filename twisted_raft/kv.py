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

The snapshot payload's format, writer and parser are in
L{twisted_raft.kvsnapshot}; the copy-on-write maps and the session table
stay here, with the store that mutates them.
"""

import struct
from collections import OrderedDict

from zope.interface import implementer

from twisted_raft.kvsnapshot import (  # MalformedSnapshotPayload: parseSnapshot raises it
    MalformedSnapshotPayload,
    ParsedSnapshot,
    SnapshotView,
    parsePayload,
)
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

    C{epoch} is the store's snapshot epoch when this object was made: an
    object older than the open snapshot view may be in that view, so it is
    copied before it changes (see L{KVStore._touch}).
    """

    __slots__ = ("results", "highest", "lastIndex", "epoch")

    def __init__(self, epoch=0):
        self.results = OrderedDict()
        self.highest = 0
        self.lastIndex = 0
        self.epoch = epoch

    def copy(self, epoch):
        s = _Session(epoch)
        s.results = OrderedDict(self.results)
        s.highest = self.highest
        s.lastIndex = self.lastIndex
        return s


# -- copy-on-write maps ------------------------------------------------------------

_ABSENT = object()
_TOMBSTONE = object()


class _CowMap:
    """
    A dict that can be frozen in O(1) for a reader on another thread.

    Normally everything lives in C{base}.  L{freeze} hands C{base} out; from
    then on changes go to C{overlay} (a deleted key maps to C{_TOMBSTONE})
    and reads consult C{overlay} first, so C{base} is never mutated while
    frozen.  After L{thaw}, writes go to C{base} again (dropping any overlay
    entry for the key) and L{foldSome} drains the overlay into C{base}; the
    cost of folding is proportional to the keys changed while frozen, never
    to the size of the map.
    """

    __slots__ = ("base", "overlay", "frozen")

    def __init__(self, base=None):
        self.base = {} if base is None else base
        self.overlay = None
        self.frozen = False

    def get(self, key, default=None):
        overlay = self.overlay
        if overlay is not None:
            value = overlay.get(key, _ABSENT)
            if value is not _ABSENT:
                return default if value is _TOMBSTONE else value
        return self.base.get(key, default)

    def set(self, key, value):
        overlay = self.overlay
        if overlay is None:
            self.base[key] = value
        elif self.frozen:
            overlay[key] = value
        else:
            overlay.pop(key, None)
            self.base[key] = value

    def delete(self, key):
        """@return: whether C{key} existed."""
        overlay = self.overlay
        if overlay is None:
            return self.base.pop(key, _ABSENT) is not _ABSENT
        value = overlay.pop(key, _ABSENT)
        if self.frozen:
            if key in self.base:
                overlay[key] = _TOMBSTONE
                return value is not _TOMBSTONE
            return value is not _ABSENT  # only ever in the overlay
        existed = self.base.pop(key, _ABSENT) is not _ABSENT
        if value is not _ABSENT:  # the overlay entry is the current truth
            return value is not _TOMBSTONE
        return existed

    def freeze(self):
        """Fold any leftover overlay, then freeze and return C{base}."""
        self.frozen = False
        self.foldSome(None)
        self.overlay = {}
        self.frozen = True
        return self.base

    def thaw(self):
        """The frozen C{base} is no longer shared; fold with L{foldSome}."""
        self.frozen = False
        if not self.overlay:
            self.overlay = None

    def foldSome(self, n):
        """
        Fold up to C{n} (C{None}: all) overlay entries into C{base}.
        @return: the number of entries left to fold.
        """
        overlay = self.overlay
        if overlay is None:
            return 0
        assert not self.frozen
        base = self.base
        pop = overlay.popitem
        count = len(overlay) if n is None else min(n, len(overlay))
        for _ in range(count):
            key, value = pop()
            if value is _TOMBSTONE:
                base.pop(key, None)
            else:
                base[key] = value
        if overlay:
            return len(overlay)
        self.overlay = None
        return 0

    def pending(self):
        return 0 if self.overlay is None else len(self.overlay)

    def logical(self):
        """The current mapping: C{base} itself when there is no overlay, else a merged copy."""
        if self.overlay is None:
            return self.base
        merged = dict(self.base)
        for key, value in self.overlay.items():
            if value is _TOMBSTONE:
                merged.pop(key, None)
            else:
                merged[key] = value
        return merged


# -- the state machine ----------------------------------------------------------------


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

    Snapshots (§7) are copy-on-write: L{snapshotWriter} freezes the key
    dict and the session index (L{_CowMap}) and bumps the session epoch, all
    in O(1); until L{snapshotDone}, changed keys go to an overlay and a
    session is copied before its first change.  The returned C{write} then
    serialises the frozen view on another thread.  With a C{clock},
    L{snapshotDone} folds the overlays back in slices of C{foldSlice} keys
    via C{clock.callLater(0, ...)}; without one, at once.

    @ivar sessions: client id -> L{_Session}, least recently used first
        (which is also in order of C{lastIndex}).
    @ivar appliedIndex: the index of the last entry applied (or restored).
    """

    def __init__(
        self,
        window=SESSION_WINDOW,
        expiryEntries=SESSION_EXPIRY_ENTRIES,
        maxSessions=MAX_SESSIONS,
        maxResults=MAX_SESSION_RESULTS,
        clock=None,
        foldSlice=5_000,
    ):
        self._data = _CowMap()
        self.window = window
        self.expiryEntries = expiryEntries
        self.maxSessions = maxSessions
        self.maxResults = max(maxResults, window)
        self.sessions = OrderedDict()
        # client id -> _Session, the same sessions as self.sessions in a
        # plain (copy-on-write) dict: what a snapshot view captures.
        self._sessionIndex = _CowMap()
        self.cachedResults = 0
        self.appliedIndex = 0
        self.clock = clock
        self.foldSlice = foldSlice
        self._epoch = 0  # bumped by each snapshotWriter()
        self._view = None  # the open snapshot view, if any
        self._folding = None  # the pending IDelayedCall of an incremental fold

    @property
    def data(self):
        """
        The logical key -> value mapping (read-only).  Outside snapshots this
        is the live dict itself; while a snapshot's overlay exists it is a
        merged copy (O(keys): for tests and debugging, not hot paths).
        """
        return self._data.logical()

    def apply(self, index, data):
        self._expire(index)
        self.appliedIndex = index
        if data[:1] == bytes([SESSION]):
            return self._applySession(index, data)
        return self._apply(*decode(data))

    def _apply(self, op, key, expected, value):
        store = self._data
        if op == PUT:
            store.set(key, value)
            return None
        if op == DELETE:
            return store.delete(key)
        current = store.get(key)
        if (expected is None and current is None) or (
            expected is not None and current == expected
        ):
            store.set(key, value)
            return True
        return False

    def _touch(self, clientId, session):
        """
        Return C{session}, or (if the open snapshot view may hold it) a copy
        that replaces it, so the view's object never changes.
        """
        if self._view is not None and session.epoch < self._epoch:
            session = session.copy(self._epoch)
            self.sessions[clientId] = session  # keeps its LRU position
            self._sessionIndex.set(clientId, session)
        return session

    def _applySession(self, index, data):
        clientId, sequence, inner = decodeSession(data)
        command = decode(inner)  # malformed: raise before touching anything
        session = self.sessions.get(clientId)
        if session is None:
            session = self.sessions[clientId] = _Session(self._epoch)
            self._sessionIndex.set(clientId, session)
        else:
            session = self._touch(clientId, session)
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
        clientId, session = self.sessions.popitem(last=False)
        self._sessionIndex.delete(clientId)
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
        return self._data.get(key)

    # -- snapshots (§7) ------------------------------------------------------------

    def snapshotWriter(self):
        """
        Freeze the current state (O(1) plus the rest of an unfinished fold)
        and return C{write(fileobj)}, which serialises it; see
        L{IStateMachine.snapshotWriter}.  Only one view is open at a time:
        opening another releases the previous one.
        """
        if self._view is not None:
            self.snapshotDone()
        self._finishFold()
        self._epoch += 1
        view = SnapshotView(
            self._data.freeze(), self._sessionIndex.freeze(), self.appliedIndex
        )
        self._view = view
        return view.write

    def snapshotDone(self):
        view, self._view = self._view, None
        if view is None:
            return
        view.released = True
        self._data.thaw()
        self._sessionIndex.thaw()
        if self.clock is None:
            self._finishFold()
        elif self._folding is None and (self._data.pending() or self._sessionIndex.pending()):
            self._folding = self.clock.callLater(0, self._foldStep)

    def _foldStep(self):
        self._folding = None
        left = self._sessionIndex.foldSome(self.foldSlice)
        if not left:
            left = self._data.foldSome(self.foldSlice)
        if left:
            self._folding = self.clock.callLater(0, self._foldStep)

    def _finishFold(self):
        if self._folding is not None:
            self._folding.cancel()
            self._folding = None
        self._sessionIndex.foldSome(None)
        self._data.foldSome(None)

    def parseSnapshot(self, fileobj):
        """
        Parse a payload written by a C{snapshotWriter()} callable; touches no
        state (safe on any thread).

        @raise MalformedSnapshotPayload: if the payload is truncated, garbled
            or of another version.
        """
        return parsePayload(fileobj, _Session)

    def restoreSnapshot(self, parsed):
        """
        Replace the whole state with a L{parseSnapshot} result, in O(1).  An
        open snapshot view keeps serialising what it captured.
        """
        if not isinstance(parsed, ParsedSnapshot):
            raise TypeError(f"not a parsed KV snapshot: {parsed!r}")
        # An open view keeps its frozen dicts, which nothing mutates any more:
        # its write() may still finish.
        self._view = None
        if self._folding is not None:
            self._folding.cancel()
            self._folding = None
        self._data = _CowMap(parsed.data)
        self._sessionIndex = _CowMap(parsed.sessionIndex)
        self.sessions = parsed.sessions
        self.cachedResults = parsed.cachedResults
        self.appliedIndex = parsed.appliedIndex
        parsed.data = parsed.sessions = parsed.sessionIndex = None  # used once
