"""
The store's bounded in-memory history of changes, what watches read.

It holds every change of the revisions after C{floor} up to the store's
applied index: the floor is where the store started (0, or the snapshot it
was restored from; a restart replays the log after that snapshot and so
rebuilds the history) and rises as the oldest revisions are trimmed to stay
within L{HISTORY_MAX_EVENTS} and L{HISTORY_MAX_BYTES}.  A read from a
revision at or below the floor raises L{Compacted} with the oldest
revision it can serve.

The revisions that made changes are kept in a list in order (a list, not a
deque: C{bisect} needs O(1) indexing), with the trimmed head dropped in
amortised O(1); a read finds its first revision by bisection (O(log n)) and
then looks at the revisions from there on, each revision's events
together, until it has enough: its cost is the events it looks at, not the
history's size.  A key or prefix filter has to look at every event of
those revisions (nothing indexes events by key); a watcher that keeps up
reads only what is new.
"""

from bisect import bisect_left

from twisted_raft.kvrecords import DELETE_EVENT, PUT_EVENT, Compacted, Event, WatchBatch

HISTORY_MAX_EVENTS = 100_000
"""At most about this many events are kept (whole revisions are trimmed)."""
HISTORY_MAX_BYTES = 64 * 1024 * 1024
"""At most about this many bytes of events (keys, values and
L{EVENT_OVERHEAD} each) are kept."""
EVENT_OVERHEAD = 250
"""Bytes counted per event besides its key and value: what an event costs
once its key was written again and the history alone holds its record
(measured with tracemalloc by bench/kv_memory.py, see docs/design.rst)."""


def eventBytes(key, record):
    """The memory an event is counted as: C{record} is the store's
    C{(value, create, mod, version)}, value C{None} for a delete."""
    value = record[0]
    return len(key) + (0 if value is None else len(value)) + EVENT_OVERHEAD


def materialise(key, record):
    value, create, mod, version = record
    if value is None:
        return Event(DELETE_EVENT, key, None, 0, mod, 0)
    return Event(PUT_EVENT, key, value, create, mod, version)


class EventHistory:
    """
    A revision's events are kept as C{(key, record)} pairs sharing the
    store's record tuple (no copy while the key is not overwritten) and
    made into L{Event}s only when read.

    @ivar floor: revisions at or below it are not held.
    """

    def __init__(self, maxEvents=HISTORY_MAX_EVENTS, maxBytes=HISTORY_MAX_BYTES, floor=0):
        self.maxEvents = maxEvents
        self.maxBytes = maxBytes
        self.reset(floor)

    def reset(self, floor):
        """Forget everything; hold the revisions after C{floor} from now on."""
        self.floor = floor
        self._revisions = []
        self._batches = []
        self._head = 0
        self.events = 0
        self.bytes = 0

    @property
    def oldestRevision(self):
        """The oldest revision a read may start from."""
        return self.floor + 1

    def __len__(self):
        """How many revisions with changes are held."""
        return len(self._revisions) - self._head

    def append(self, revision, changes):
        """
        Record C{changes} (C{(key, record)} pairs, in the order made) of
        C{revision}, after every revision held; then, if over a bound, trim
        the oldest revisions (all but the newest if need be) to 7/8 of it.
        """
        size = EVENT_OVERHEAD * len(changes)
        for key, record in changes:  # eventBytes, inlined: once per write
            value = record[0]
            size += len(key) if value is None else len(key) + len(value)
        self._revisions.append(revision)
        self._batches.append(changes)
        self.events += len(changes)
        self.bytes += size
        if self.events > self.maxEvents or self.bytes > self.maxBytes:
            self._trim()

    def _trim(self):
        # Down to 7/8 of the bounds, so trimming runs once per many entries
        # rather than at each one once the history is full.
        maxEvents, maxBytes = self.maxEvents * 7 // 8, self.maxBytes * 7 // 8
        head, last = self._head, len(self._revisions) - 1
        while head < last and (self.events > maxEvents or self.bytes > maxBytes):
            batch = self._batches[head]
            self.events -= len(batch)
            # recounted rather than kept: an int per revision costs more
            for key, record in batch:
                self.bytes -= eventBytes(key, record)
            self.floor = self._revisions[head]
            self._batches[head] = None
            head += 1
        if head > 1024 and head * 2 > len(self._revisions):
            del self._revisions[:head]
            del self._batches[:head]
            head = 0
        self._head = head

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
        revisions, batches = self._revisions, self._batches
        i = bisect_left(revisions, fromRevision, self._head)
        end = len(revisions)
        lo, hi = keyRange.lo, keyRange.hi
        out = []
        size = scanned = 0
        nextRevision = fromRevision
        while i < end:
            batch = batches[i]
            if hi is None:
                matched = [c for c in batch if lo <= c[0]]
            else:
                matched = [c for c in batch if lo <= c[0] < hi]
            scanned += len(batch)
            if matched:
                n = 0
                for key, record in matched:
                    n += eventBytes(key, record)
                if out and (
                    (maxEvents and len(out) + len(matched) > maxEvents)
                    or (maxBytes and size + n > maxBytes)
                ):
                    return WatchBatch(out, nextRevision)
                out.extend(materialise(key, record) for key, record in matched)
                size += n
            nextRevision = revisions[i] + 1
            i += 1
            if maxScan and scanned >= maxScan and i < end:
                return WatchBatch(out, nextRevision)
        return WatchBatch(out, max(nextRevision, appliedIndex + 1))
