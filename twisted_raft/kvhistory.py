"""
The store's bounded in-memory history of changes, what watches read.

It holds every change of the revisions after C{floor} up to the store's
applied index: the floor is where the store started (0, or the snapshot it
was restored from; a restart replays the log after that snapshot and so
rebuilds the history) and rises as the oldest revisions are trimmed to stay
within L{HISTORY_MAX_EVENTS} and L{HISTORY_MAX_BYTES}.  A read from a
revision at or below the floor raises L{Compacted} with the oldest
revision it can serve.

Events are kept flat, one slot each in three parallel sequences (the
revision in an C{array} of u64, so no int object is kept for it; the key;
the store's record, L{twisted_raft.kvstored}'s C{bytes}, or C{None} for a
delete), a revision's events next to each other: no tuple or list per event
or revision, and no copy of a record that is still the key's current one
(docs/design.rst has the bytes).  The trimmed head is dropped in amortised
O(1); a read finds its first event by bisection (O(log n)) and then looks
at the events from there on, each revision's together, until it has
enough: its cost is the events it looks at, not the history's size.  A key or prefix filter has to
look at every event of those revisions (nothing indexes events by key); a
watcher that keeps up reads only what is new.
"""

from array import array
from bisect import bisect_left, bisect_right
from operator import itemgetter

from twisted_raft import kvstored
from twisted_raft.kvrecords import DELETE_EVENT, PUT_EVENT, Compacted, Event, WatchBatch

HISTORY_MAX_EVENTS = 100_000
"""At most about this many events are kept (whole revisions are trimmed)."""
HISTORY_MAX_BYTES = 64 * 1024 * 1024
"""At most about this many bytes of events (keys, values and
L{EVENT_OVERHEAD} each) are kept."""
EVENT_OVERHEAD = 120
"""Bytes counted per event besides its key and value: what an event costs
once its key was written again and the history alone holds its record
(measured with tracemalloc by bench/kv_memory.py, see docs/design.rst)."""


_first = itemgetter(0)
_HEADER_SIZES = kvstored.HEADER_SIZES


def eventBytes(key, record):
    """The memory an event is counted as: C{record} is the store's
    (L{twisted_raft.kvstored}), C{None} for a delete."""
    return len(key) + (0 if record is None else kvstored.valueSize(record)) + EVENT_OVERHEAD


def materialise(revision, key, record):
    if record is None:
        return Event(DELETE_EVENT, key, None, 0, revision, 0)
    create, mod, version = kvstored.meta(record)
    return Event(PUT_EVENT, key, kvstored.value(record), create, mod, version)


class EventHistory:
    """
    The events of each revision, kept as the store's own records (no copy
    while the key is not overwritten) and made into L{Event}s only when
    read.  An event's metadata is as its node stored it when it was made
    (below the store's metadata floor, node-local: see C{KVStore}).

    @ivar floor: revisions at or below it are not held.
    """

    def __init__(self, maxEvents=HISTORY_MAX_EVENTS, maxBytes=HISTORY_MAX_BYTES, floor=0):
        self.maxEvents = maxEvents
        self.maxBytes = maxBytes
        self.reset(floor)

    def reset(self, floor):
        """Forget everything; hold the revisions after C{floor} from now on."""
        self.floor = floor
        self._revisions = array("Q")  # per event: each revision's run is contiguous
        self._keys = []
        self._records = []
        self._head = 0  # the first event held
        self.lastRevision = floor  # the newest revision with an event, if any
        self.events = 0
        self.bytes = 0

    @property
    def oldestRevision(self):
        """The oldest revision a read may start from."""
        return self.floor + 1

    def __len__(self):
        """How many revisions with changes are held: counted when asked, in
        O(events) (for tests and debugging), so that L{add} keeps no count."""
        return len(set(self._revisions[self._head:]))

    def add(self, revision, key, record):
        """
        Record one change of C{revision}, at or after every revision held:
        C{key} written as C{record} (the store's, L{twisted_raft.kvstored}),
        or deleted if C{record} is C{None}.  The store adds a revision's
        changes as it makes them, in order, one call each (no list of them
        per entry).  Then, if over a bound, trim the oldest revisions (never
        the one being added) to a 64th below it.
        """
        # Every node runs this for every change it applies, so it does the
        # least it can: no count of revisions held (L{__len__} counts them)
        # and no test whether C{revision} is new.
        self.lastRevision = revision
        self._revisions.append(revision)
        self._keys.append(key)
        self._records.append(record)
        self.events += 1
        # eventBytes, inlined: once per change
        if record is None:
            self.bytes += EVENT_OVERHEAD + len(key)
        else:
            self.bytes += EVENT_OVERHEAD + len(key) + len(record) - _HEADER_SIZES[record[0]]
        if self.events > self.maxEvents or self.bytes > self.maxBytes:
            self._trim()

    def append(self, revision, changes):
        """L{add} each of C{changes}, C{(key, record)} pairs of C{revision}."""
        for key, record in changes:
            self.add(revision, key, record)

    def _trim(self):
        # Down to a 64th below the bounds: trimming runs once per many
        # entries rather than at each one, and each run is short (about
        # 1,500 of the default 100,000 events, a fraction of a millisecond,
        # where an eighth at once held the reactor, and every request in
        # flight, for about 3 ms).  The newest revision stays, whatever its
        # size.
        maxEvents = self.maxEvents - max(1, self.maxEvents // 64)
        maxBytes = self.maxBytes - max(1, self.maxBytes // 64)
        revisions = self._revisions
        head = self._head
        newest = bisect_left(revisions, revisions[-1], head)  # its first event
        if self.events > maxEvents:
            head = self._drop(head, min(newest, head + self.events - maxEvents))
        while self.bytes > maxBytes and head < newest:
            head = self._drop(head, head + 1)  # large values: a revision at a time
        if head > 1024 and head * 2 > len(revisions):
            del revisions[:head]
            del self._keys[:head]
            del self._records[:head]
            head = 0
        self._head = head

    def _drop(self, head, cut):
        """
        Forget the events from C{head} up to C{cut} and the rest of the
        revision of the event before C{cut} (whole revisions only); return
        the new head.  In bulk, at C speed: this runs for every event once.
        """
        if cut <= head:
            return head
        revisions, keys, records = self._revisions, self._keys, self._records
        revision = revisions[cut - 1]
        cut = bisect_right(revisions, revision, cut)
        n = cut - head
        present = list(filter(None, records[head:cut]))  # deletes are None
        # eventBytes of each, summed (recounted rather than kept: an int per
        # event costs more)
        self.bytes -= (
            EVENT_OVERHEAD * n + sum(map(len, keys[head:cut])) + sum(map(len, present))
            - sum(map(_HEADER_SIZES.__getitem__, map(_first, present)))
        )
        self.events -= n
        self.floor = revision
        keys[head:cut] = records[head:cut] = [None] * n
        return cut

    def read(self, fromRevision, keyRange, appliedIndex, maxEvents=0, maxBytes=0, maxScan=0):
        """
        The events of C{keyRange} (a L{KeyRange}) at revisions from
        C{fromRevision} on, whole revisions only, stopping before a revision
        whose events would pass C{maxEvents} or C{maxBytes} (0: no bound;
        the first revision with events is returned whatever its size) or
        once C{maxScan} events were looked at.

        @param appliedIndex: the store's applied index: every revision up to
            it is held (or had no changes).
        @rtype: L{WatchBatch}; its C{next_revision} is where to read on.
        @raise Compacted: if C{fromRevision} is at or below the floor.
        """
        if fromRevision <= self.floor:
            raise Compacted(self.floor + 1)
        revisions, keys, records = self._revisions, self._keys, self._records
        i = bisect_left(revisions, fromRevision, self._head)
        end = len(revisions)
        lo, hi = keyRange.lo, keyRange.hi
        out = []
        size = scanned = 0
        nextRevision = fromRevision
        while i < end:
            revision = revisions[i]
            j = i
            matched = []
            while j < end and revisions[j] == revision:
                key = keys[j]
                if lo <= key and (hi is None or key < hi):
                    matched.append(j)
                j += 1
            scanned += j - i
            if matched:
                n = 0
                for m in matched:
                    n += eventBytes(keys[m], records[m])
                if out and (
                    (maxEvents and len(out) + len(matched) > maxEvents)
                    or (maxBytes and size + n > maxBytes)
                ):
                    return WatchBatch(out, nextRevision)
                out.extend(materialise(revision, keys[m], records[m]) for m in matched)
                size += n
            nextRevision = revision + 1
            i = j
            if maxScan and scanned >= maxScan and i < end:
                return WatchBatch(out, nextRevision)
        return WatchBatch(out, max(nextRevision, appliedIndex + 1))
