"""
The key-value state machine.  The encoding of its commands in log entries
is in L{twisted_raft.kvcodec} (a transaction's in L{twisted_raft.kvtxn}),
re-exported here with the store's public records: other code imports them
all from this module.

Every key carries C{create_revision}, C{mod_revision} and C{version}
(L{KVStore}); the keys are also kept in order (L{twisted_raft.kvindex}) for
ranges, and each entry's changes go to the event history
(L{twisted_raft.kvhistory}) for watches.

A C{METADATA_EPOCH} entry (the op byte alone) sets the store's metadata
floor, once per cluster; see L{KVStore} and L{encodeMetadataEpoch}.

The snapshot payload's format, writer and parser are in
L{twisted_raft.kvsnapshot}; the copy-on-write maps and the session table
stay here, with the store that mutates them.

Why one module of about 900 lines (some 600 of code): what is left is the
store and the state that its writes mutate together (the copy-on-write
maps, the session table, the history's appends); the formats, the index,
the transactions' rules, the history and the snapshot live apart already.
The put and session paths are inlined on purpose (every node runs them for
every write: C{docs/performance.rst}, "Instructions per write").
"""

from collections import OrderedDict
from collections.abc import MutableMapping

from zope.interface import implementer

from twisted_raft import kvstored
from twisted_raft.kvcodec import (  # re-exported: the commands' encoding
    CAS,
    DELETE,
    EPOCH_BYTE,
    MAX_CLIENT_ID_BYTES,
    MAX_SEQUENCE,
    METADATA_EPOCH,
    PUT,
    SESSION,
    SESSION_BYTE,
    TXN_BYTE,
    checkSession,
    decode,
    decodeCommand,
    decodeSession,
    encodeCompareAndSet,
    encodeDelete,
    encodeMetadataEpoch,
    encodePut,
    encodeSession,
    sessionHead,
    wrapSession,
)
from twisted_raft.kvhistory import HISTORY_MAX_BYTES, HISTORY_MAX_EVENTS, EventHistory
from twisted_raft.kvindex import SortedKeys
from twisted_raft.kvlimits import MAX_KEY_BYTES, MAX_VALUE_BYTES  # noqa: F401 (kv.MAX_*)
from twisted_raft.kvrecords import (  # re-exported: the store's public records
    ALL_KEYS_END,
    CommandError,
    Compacted,
    DeleteResult,
    KeyRange,
    KeyValue,
    MetadataUnavailable,
    PutResult,
    RangeResult,
    TxnResult,
    WatchBatch,
)
from twisted_raft.kvsnapshot import (  # MalformedSnapshotPayload: parseSnapshot raises it
    MalformedSnapshotPayload,
    ParsedSnapshot,
    SnapshotView,
    parsePayload,
)
from twisted_raft.kvtxn import (
    TXN,
    Compare,
    Delete,
    Put,
    Range,
    Txn,
    decodeTxn,
    encodeDeleteRange,
    encodePutPrevKv,
    encodeTxn,
    reducedResult,
    resultBytes,
)
from twisted_raft.raft.interfaces import IStateMachine

SESSION_WINDOW = 1024
"""Results of a client's last this-many sequences are kept for duplicates."""
SESSION_EXPIRY_ENTRIES = 1_000_000
"""A session unused for more than this many log entries is dropped."""
MAX_SESSIONS = 100_000
"""At most this many sessions; the least recently used one is dropped."""
MAX_SESSION_RESULTS = 1_000_000
"""At most this many cached results over all sessions (a memory bound);
least recently used sessions are dropped to stay under it."""
MAX_SESSION_RESULT_BYTES = 64 * 1024 * 1024
"""At most about this many bytes of transaction results kept over all
sessions (L{kvtxn.resultBytes}); least recently used sessions are dropped
to stay under it."""
SESSION_RESULT_BYTES = 16 * 1024
"""A transaction result larger than this is kept for duplicates without its
key-values (L{kvtxn.reducedResult}, C{complete=False})."""


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
_NEVER = 2**64  # past any log index
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

class _DataView(MutableMapping):
    """
    L{KVStore.data}: key -> value over the store's records.  Two views are
    equal only if their stores hold the same keys with the same values
    I{and metadata as read} (and the same metadata floor), so a simulation
    comparing nodes' data compares the metadata too; against a plain
    mapping, values only.
    """

    __slots__ = ("_store",)

    def __eq__(self, other):
        if isinstance(other, _DataView):
            return self._store._readable() == other._store._readable()
        return MutableMapping.__eq__(self, other)

    __hash__ = None

    def __init__(self, store):
        self._store = store

    def __getitem__(self, key):
        value = self._store.get(key)
        if value is None:
            raise KeyError(key)
        return value

    def __setitem__(self, key, value):
        store = self._store
        store._put(store.appliedIndex, key, value, event=False)  # not an entry

    def __delitem__(self, key):
        store = self._store
        if store._delete(store.appliedIndex, key, event=False) is None:
            raise KeyError(key)

    def __iter__(self):
        return iter(self._store._data.logical())

    def __len__(self):
        return len(self._store._keys)

    def __repr__(self):
        return repr(dict(self))


@implementer(IStateMachine)
class KVStore:
    """
    An in-memory map of C{str} keys to C{bytes} values with per-key
    metadata, plus the client sessions that make session-wrapped writes
    exactly-once.

    Each key's record is one C{bytes} object, a header packing its metadata
    and then its value (L{twisted_raft.kvstored}), never mutated (a snapshot
    view and the history may share it, so a write makes a new one).
    C{create_revision} is the index of the write that created the key,
    C{mod_revision} that of its last write, C{version} the writes since
    creation (a delete ends the key; writing it again creates it anew,
    version 1).  A duplicate of a session write changes nothing.

    The metadata floor: metadata is only deterministic if every node
    computes it from the same log (Raft §5, thesis §3: replicas must apply
    the same commands to the same state), but a node that loaded a version
    1 snapshot payload (written before metadata existed) made it up at that
    snapshot's index.  So the cluster's first C{METADATA_EPOCH} entry sets
    L{metadataFloor} to its index, and from then on a key last written
    below the floor I{reads} as C{create_revision = mod_revision = floor},
    version 1, on every node whatever it loaded, worked out at read time in
    O(1) (a write to such a key goes on from there: version 2).  Until a
    floor exists every transaction is refused with L{MetadataUnavailable}
    (its compares and results depend on metadata), the same on every node
    since the floor is a function of the log; the metadata that ranges and
    events show before the floor is node-local and provisional.

    Results of L{apply}: C{None} for a put, whether the key existed for a
    delete, whether the swap happened for a compare-and-set, a
    L{TxnResult} for a transaction (or a L{MetadataUnavailable} instance,
    see above), the floor in force for a C{METADATA_EPOCH}.  A
    session-wrapped command returns an L{Applied} carrying that result and
    the index it took effect at (the original index for a duplicate), or a
    L{SequenceTooOld} or L{MetadataUnavailable} instance (neither is
    remembered as the sequence's result).

    Reads: L{get}, L{getKeyValue}, L{range}; L{watchEvents} reads the
    changes since a revision (L{EventHistory}).  After each entry that
    changed keys, C{onApplied(index)} is called if set (the hook for a
    watch layer; C{None} costs an attribute check), and after a
    L{restoreSnapshot}, C{onRestored(index)}.

    Everything about sessions is decided from the log alone (indexes, never
    the wall clock), so every node, and a node re-applying its log after a
    restart, reaches the same sessions and the same answers.

    Snapshots (§7) are copy-on-write: L{snapshotWriter} freezes the key
    dict, the key index (L{SortedKeys}) and the session index (L{_CowMap})
    and bumps the session epoch, all in O(1); until L{snapshotDone},
    changed keys go to overlays and a session is copied before its first
    change.  The returned C{write} then serialises the frozen view on
    another thread.  With a C{clock}, L{snapshotDone} folds the overlays
    back in slices of C{foldSlice} keys via C{clock.callLater(0, ...)};
    without one, at once.

    @ivar sessions: client id -> L{_Session}, least recently used first
        (which is also in order of C{lastIndex}).
    @ivar appliedIndex: the index of the last entry applied (or restored):
        the store's revision.
    @ivar metadataFloor: the index of the first C{METADATA_EPOCH} entry
        applied, 0 if none was.
    @ivar history: the L{EventHistory}.
    """

    def __init__(
        self,
        window=SESSION_WINDOW,
        expiryEntries=SESSION_EXPIRY_ENTRIES,
        maxSessions=MAX_SESSIONS,
        maxResults=MAX_SESSION_RESULTS,
        clock=None,
        foldSlice=5_000,
        maxResultBytes=MAX_SESSION_RESULT_BYTES,
        resultBytesEach=SESSION_RESULT_BYTES,
        historyEvents=HISTORY_MAX_EVENTS,
        historyBytes=HISTORY_MAX_BYTES,
    ):
        self._data = _CowMap()
        self._keys = SortedKeys()
        self.window = window
        self.expiryEntries = expiryEntries
        self.maxSessions = maxSessions
        self.maxResults = max(maxResults, window)
        self.maxResultBytes = maxResultBytes
        self.resultBytesEach = resultBytesEach
        self.sessions = OrderedDict()
        # At most the index after which the oldest session expires (0:
        # unknown): one comparison per entry instead of _expire's look at
        # the oldest session.  Touching or dropping a session only raises
        # that index; a new session lowers this to its own if need be.
        self._expireAt = 0
        # client id -> _Session, the same sessions as self.sessions in a
        # plain (copy-on-write) dict: what a snapshot view captures.
        self._sessionIndex = _CowMap()
        self.cachedResults = 0
        self.cachedResultBytes = 0
        self.appliedIndex = 0
        self.metadataFloor = 0
        self.history = EventHistory(historyEvents, historyBytes)
        self.onApplied = None
        self.onRestored = None
        self.clock = clock
        self.foldSlice = foldSlice
        self._epoch = 0  # bumped by each snapshotWriter()
        self._view = None  # the open snapshot view, if any
        self._folding = None  # the pending IDelayedCall of an incremental fold

    @property
    def data(self):
        """
        The key -> value mapping, a live view (for tests and debugging, not
        hot paths: iterating it while a snapshot's overlay exists copies).
        Writing to it sets the key as if written at L{appliedIndex}, with
        no event: a test's way to seed a store.
        """
        return _DataView(self)

    # -- applying entries ----------------------------------------------------------

    def apply(self, index, data):
        # Every node runs this for every entry: the common cases (a put,
        # alone or in a session) take no call that they can do without.
        if index > self._expireAt:  # nothing to expire nearly always
            self._expire(index)
        self.appliedIndex = index
        kind = data[:1]
        if kind == SESSION_BYTE:
            result = self._applySession(index, data)
        elif kind == EPOCH_BYTE:
            return self._applyEpoch(index, data)
        elif kind == TXN_BYTE:  # decodeCommand, inlined
            result = self._applyCommand(index, decodeTxn(data))
        else:
            command = decode(data, kvstored.VIEW_FROM)
            if command[0] == PUT:  # _applyCommand's first case, inlined
                self._put(index, command[1], command[3])
                result = None
            else:
                result = self._applyCommand(index, command)
        if self.onApplied is not None and self.history.lastRevision == index:
            self.onApplied(index)  # the entry changed something
        return result

    def _applyEpoch(self, index, data):
        if len(data) != 1:
            raise CommandError(f"malformed metadata epoch: {len(data) - 1} bytes after the op")
        if not self.metadataFloor:
            self.metadataFloor = index
        return self.metadataFloor

    def needsMetadataEpoch(self):
        """Whether no C{METADATA_EPOCH} entry was applied (what a leader
        proposes, L{encodeMetadataEpoch}, if so)."""
        return not self.metadataFloor

    def _applyCommand(self, index, command):
        if type(command) is Txn:
            if not self.metadataFloor:
                return MetadataUnavailable()
            return self._applyTxn(index, command)
        op, key, expected, value = command
        if op == PUT:
            self._put(index, key, value)
            return None
        if op == DELETE:
            return self._delete(index, key) is not None
        current = self._data.get(key)
        if (expected is None and current is None) or (
            expected is not None and current is not None
            and kvstored.valueEquals(current, expected)
        ):
            self._put(index, key, value)
            return True
        return False

    def _put(self, index, key, value, event=True):
        """Write C{key}; return its previous record, or C{None}.  With
        C{event}, the write is an event of revision C{index}."""
        data = self._data
        if data.overlay is None:
            # no snapshot view open (nearly always): the map's own dict,
            # without two method calls per write
            base = data.base
            old = base.get(key)
            if old is None:
                base[key] = record = kvstored.packOnce(value, index)
                self._keys.insert(key)
            else:
                base[key] = record = kvstored.packAgain(old, self.metadataFloor, value, index)
        else:
            old = data.get(key)
            if old is None:
                record = kvstored.packOnce(value, index)
                self._keys.insert(key)
            else:
                record = kvstored.packAgain(old, self.metadataFloor, value, index)
            data.set(key, record)
        if event:
            self.history.add(index, key, record)
        return old

    def _delete(self, index, key, event=True):
        """Delete C{key}; return its record, or C{None} if it did not exist.
        With C{event}, the delete is an event of revision C{index}."""
        old = self._data.get(key)
        if old is not None:
            self._data.delete(key)
            self._keys.remove(key)
            if event:
                self.history.add(index, key, None)
        return old

    def _kv(self, key, record, keysOnly=False):
        return kvstored.keyValue(key, record, self.metadataFloor, keysOnly)

    def _readable(self):
        """The floor and key -> (value, metadata as read): what two
        nodes with the same log prefix agree on."""
        floor = self.metadataFloor
        return floor, {
            key: (kvstored.value(record), kvstored.effectiveMeta(record, floor))
            for key, record in self._data.logical().items()
        }

    def _compare(self, c):
        record = self._data.get(c.key)
        if c.target == "value":
            if record is None:
                return False  # etcd: a value compare on a missing key fails
            have = kvstored.value(record)
        elif record is None:
            have = 0
        else:
            create, mod, version = kvstored.effectiveMeta(record, self.metadataFloor)
            if c.target == "version":
                have = version
            elif c.target == "create_revision":
                have = create
            else:
                have = mod
        want, op = c.value, c.op
        if op == "==":
            return have == want
        if op == "!=":
            return have != want
        if op == "<":
            return have < want
        return have > want

    def _applyTxn(self, index, txn):
        succeeded = all(self._compare(c) for c in txn.compares)
        responses = []
        for op in txn.success if succeeded else txn.failure:
            kind = type(op)
            if kind is Put:
                old = self._put(index, op.key, op.value)
                responses.append(
                    PutResult(self._kv(op.key, old) if op.prevKv and old is not None else None)
                )
            elif kind is Delete:
                r = KeyRange.of(op.key, op.end, op.prefix)
                keys = list(self._keys.irange(r.lo, r.hi)) if self._nonEmpty(r) else []
                kv = self._kv
                prev = [kv(key, self._delete(index, key)) for key in keys]
                responses.append(DeleteResult(len(prev), prev if op.prevKv else None))
            else:
                responses.append(self.range(
                    op.key, op.end, op.prefix, op.limit, op.after, op.keysOnly,
                    op.countOnly, op.maxBytes,
                ))
        return TxnResult(succeeded, responses)

    # -- sessions ------------------------------------------------------------------

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
        # Once per client write on every node: the put's case and the
        # checks that nearly always pass (_touch's, _evict's) are inlined.
        # decodeSession and decodeCommand, without a copy of the inner
        # command; malformed: raise before touching anything
        clientId, sequence, pos = sessionHead(data)
        if data[pos : pos + 1] == TXN_BYTE:
            command = decodeTxn(data[pos:])
            put = False
        else:
            command = decode(data, kvstored.VIEW_FROM, pos)
            put = command[0] == PUT
        sessions = self.sessions
        session = sessions.get(clientId)
        if session is None:
            session = sessions[clientId] = _Session(self._epoch)
            self._sessionIndex.set(clientId, session)
            self._expireAt = min(self._expireAt, index + self.expiryEntries)
        else:
            if self._view is not None and session.epoch < self._epoch:
                session = self._touch(clientId, session)
            sessions.move_to_end(clientId)
        session.lastIndex = index
        results = session.results
        cached = results.get(sequence)
        if cached is not None:
            return Applied(cached[0], cached[1], duplicate=True)
        if sequence <= session.highest - self.window:
            return SequenceTooOld(
                f"sequence {sequence} is older than this session's window"
                f" (the last {self.window} sequences, up to {session.highest})"
            )
        if put:
            self._put(index, command[1], command[3])
            result = kept = None
        else:
            result = self._applyCommand(index, command)
            if type(result) is MetadataUnavailable:
                return result  # not remembered: a retry after the epoch applies
            kept = result
            if type(result) is TxnResult:
                size = resultBytes(result)
                if size > self.resultBytesEach:
                    kept = reducedResult(result)
                    size = resultBytes(kept)
                self.cachedResultBytes += size
        results[sequence] = (kept, index)
        self.cachedResults += 1
        if sequence > session.highest:
            session.highest = sequence
        floor = session.highest - self.window
        while results:
            oldest = next(iter(results))
            if oldest > floor:
                break
            evicted = results.popitem(last=False)[1][0]
            if type(evicted) is TxnResult:  # only these are counted in bytes
                self.cachedResultBytes -= resultBytes(evicted)
            self.cachedResults -= 1
        if len(sessions) > 1:  # _evict's first test, inlined
            self._evict()
        return Applied(result, index)

    def _drop(self):
        clientId, session = self.sessions.popitem(last=False)
        self._sessionIndex.delete(clientId)
        self.cachedResults -= len(session.results)
        for result, _ in session.results.values():
            self.cachedResultBytes -= resultBytes(result)

    def _expire(self, index):
        """Drop sessions unused for more than C{expiryEntries} entries."""
        sessions = self.sessions
        horizon = index - self.expiryEntries
        while sessions:
            oldest = sessions[next(iter(sessions))]
            if oldest.lastIndex >= horizon:
                self._expireAt = oldest.lastIndex + self.expiryEntries
                return
            self._drop()
        self._expireAt = _NEVER  # until a session is made

    def _evict(self):
        """Keep within C{maxSessions}, C{maxResults} and C{maxResultBytes},
        dropping LRU sessions."""
        while len(self.sessions) > 1 and (
            len(self.sessions) > self.maxSessions
            or self.cachedResults > self.maxResults
            or self.cachedResultBytes > self.maxResultBytes
        ):
            self._drop()

    # -- reads ---------------------------------------------------------------------

    def get(self, key):
        """@return: the value, or C{None} if the key does not exist."""
        record = self._data.get(key)
        return None if record is None else kvstored.value(record)

    def getKeyValue(self, key):
        """@return: the L{KeyValue} of C{key}, or C{None} if it does not exist."""
        record = self._data.get(key)
        return None if record is None else self._kv(key, record)

    @staticmethod
    def _nonEmpty(r):
        return r.hi is None or r.lo < r.hi

    def range(self, key, end=None, prefix=False, limit=0, after=None,
              keysOnly=False, countOnly=False, maxBytes=0):
        """
        Read C{key} alone (C{end} C{None}), every key starting with C{key}
        (C{prefix}), or C{[key, end)} in key order (C{end}
        L{ALL_KEYS_END}, C{"\\0"}: to the last key), as of L{appliedIndex}.

        @param after: start strictly after this key (paging: the last key
            of the previous page).
        @param limit: at most this many keys (0: no limit).
        @param maxBytes: stop before the keys and values returned (UTF-8
            bytes of the keys, plus the values unless C{keysOnly}) would
            pass this many bytes; at least one key is returned (0: no
            limit).
        @param keysOnly: the L{KeyValue}s have no value.
        @param countOnly: return no keys, only the count: O(log n).
        @rtype: L{RangeResult}; its C{count} is the number of keys in the
            range (after C{after}), whatever C{limit} and C{maxBytes}.

        Cost: O(log n) to find the range and count it, then O(1) per key
        returned; nothing is copied but the page.
        """
        r = KeyRange.of(key, end, prefix)
        lo, hi, loInclusive = r.lo, r.hi, True
        if after is not None and after >= lo:
            lo, loInclusive = after, False
        revision = self.appliedIndex
        if hi is not None and lo >= hi:
            return RangeResult([], False, 0, revision)
        index = self._keys
        count = index.count(lo, hi, loInclusive)
        if countOnly or not count:
            return RangeResult([], False, count, revision)
        kvs = []
        size = 0
        get = self._data.get
        kv = kvstored.keyValue
        floor = self.metadataFloor
        for k in index.irange(lo, hi, loInclusive):
            if limit and len(kvs) >= limit:
                break
            record = get(k)
            if maxBytes:
                n = len(k.encode("utf-8", "surrogatepass"))
                if not keysOnly:
                    n += kvstored.valueSize(record)
                if kvs and size + n > maxBytes:
                    break
                size += n
            kvs.append(kv(k, record, floor, keysOnly))
        return RangeResult(kvs, len(kvs) < count, count, revision)

    def watchEvents(self, fromRevision, key, end=None, prefix=False,
                    maxEvents=0, maxBytes=0, maxScan=0):
        """
        The changes to C{key} (or the prefix, or C{[key, end)}, as for
        L{range}) at revisions from C{fromRevision} on: see
        L{EventHistory.read}.

        @rtype: L{WatchBatch}
        @raise Compacted: if the history no longer holds C{fromRevision}.
        """
        return self.history.read(
            fromRevision, KeyRange.of(key, end, prefix), self.appliedIndex,
            maxEvents, maxBytes, maxScan,
        )

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
            self._data.freeze(), self._keys.freeze(), self._sessionIndex.freeze(),
            self.appliedIndex, self.metadataFloor,
        )
        self._view = view
        return view.write

    def snapshotDone(self):
        view, self._view = self._view, None
        if view is None:
            return
        view.released = True
        self._data.thaw()
        self._keys.thaw()
        self._sessionIndex.thaw()
        if self.clock is None:
            self._finishFold()
        elif self._folding is None and (
            self._data.pending() or self._keys.pending() or self._sessionIndex.pending()
        ):
            self._folding = self.clock.callLater(0, self._foldStep)

    def _foldStep(self):
        self._folding = None
        left = self._sessionIndex.foldSome(self.foldSlice)
        if not left:
            left = self._data.foldSome(self.foldSlice)
        if not left:
            left = self._keys.foldSome(self.foldSlice)
        if left:
            self._folding = self.clock.callLater(0, self._foldStep)

    def _finishFold(self):
        if self._folding is not None:
            self._folding.cancel()
            self._folding = None
        self._sessionIndex.foldSome(None)
        self._data.foldSome(None)
        self._keys.foldSome(None)

    def parseSnapshot(self, fileobj):
        """
        Parse a payload written by a C{snapshotWriter()} callable, and build
        the key index (sorted) from it; touches no state (safe on any
        thread).

        @raise MalformedSnapshotPayload: if the payload is truncated, garbled
            or of another version.
        """
        return parsePayload(fileobj, _Session)

    def restoreSnapshot(self, parsed):
        """
        Replace the whole state with a L{parseSnapshot} result, in O(1).  An
        open snapshot view keeps serialising what it captured.  The event
        history starts again after the snapshot's index.
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
        self._keys = SortedKeys(parsed.keys)
        self._sessionIndex = _CowMap(parsed.sessionIndex)
        self.sessions = parsed.sessions
        self._expireAt = 0  # _expire looks at them on the next entry
        self.cachedResults = parsed.cachedResults
        self.cachedResultBytes = parsed.cachedResultBytes
        self.appliedIndex = parsed.appliedIndex
        self.metadataFloor = parsed.metadataFloor
        self.history.reset(parsed.appliedIndex)
        parsed.data = parsed.keys = parsed.sessions = parsed.sessionIndex = None  # used once
        if self.onRestored is not None:
            self.onRestored(self.appliedIndex)


__all__ = [
    "KVStore", "Applied", "SequenceTooOld", "CommandError", "MalformedSnapshotPayload",
    "MetadataUnavailable", "encodeMetadataEpoch", "METADATA_EPOCH",
    "encodePut", "encodeDelete", "encodeCompareAndSet", "encodeSession", "wrapSession",
    "decodeSession", "decode", "checkSession", "MAX_KEY_BYTES", "MAX_VALUE_BYTES",
    "KeyValue", "RangeResult", "PutResult", "DeleteResult", "TxnResult",
    "WatchBatch", "Compacted", "KeyRange", "ALL_KEYS_END",
    "Txn", "Compare", "Put", "Delete", "Range", "encodeTxn", "encodePutPrevKv",
    "encodeDeleteRange", "PUT", "DELETE", "CAS", "TXN", "SESSION",
    "MAX_CLIENT_ID_BYTES", "MAX_SEQUENCE",
]
