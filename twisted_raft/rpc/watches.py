"""
Watches, the node's side (the wire: the watches block of
L{twisted_raft.rpc.commands}).

A watch is a cursor into the store's event history
(L{twisted_raft.kvhistory}), not a buffer: the next revision to read and,
within an oversized revision, how many of its events were sent.  It is in
one of these states:

  - I{ready}: queued to read its next events (L{WatchHub._pump}, a few
    hundred watches per reactor turn);
  - I{sending}: one L{commands.WatchEvents} call is out; nothing more is
    read for it until the client answers (flow control);
  - I{blocked}: its connection, or the node, has too many bytes of calls
    unanswered (L{WatchLimits}); it waits in a queue, reading nothing;
  - I{idle}: it has read everything applied, and sits in an index by key
    and by prefix.

Waking.  After each entry that changed keys (the store's C{onApplied}),
if any watch is idle, the hub reads that entry's events once and wakes
only the idle watches whose key or prefix they touch (one dict lookup per
event for keys, one per distinct prefix length for prefixes); a watch
that is sending, ready or blocked costs nothing per entry.  Because every
entry is looked at while a watch idles, an idle watch is known to have
nothing below the applied revision + 1, which is where it resumes (and
what a progress note, sent to idle watches every L{WatchLimits.progressInterval}
seconds while the applied revision moved, tells the client).

Falling behind.  The history is bounded; a watch whose cursor falls below
its oldest revision is cancelled with COMPACTED and that revision (the
client re-reads with a range, or resumes on a node that still has it).  A
snapshot installed from the leader (the store's C{onRestored}) starts the
history again after its index: every watch that had not yet read up to
that index is cancelled the same way, never skipped silently.

Losing the leader.  A node cut off from its leader (a partition that
leaves the client's TCP connection open) applies nothing new, so its
watchers would wait in silence while the majority moves on.  Out of touch
with a leader (L{twisted_raft.raft.contact}: the half of C{/health}'s rule
about the leader) for L{WatchLimits.contactGrace} seconds, the node ends
its watches with UNAVAILABLE and refuses new ones, and the client library
resumes them on another node (etcd's "require leader", always on).

What a hostile client costs: at most L{WatchLimits.perConnection} watches
on a connection and L{WatchLimits.perNode} on the node, O(1) memory each;
unanswered calls hold at most L{WatchLimits.connectionBytes} (plus one
call) per connection and L{WatchLimits.nodeBytes} in all, after which
watches wait; a call unanswered for L{WatchLimits.answerTimeout} seconds
closes the connection (the client library resumes elsewhere).  Bad
arguments are INVALID_ARGUMENT; an error answer to WatchEvents ends that
watch.  Watches end with their connection.
"""

from collections import deque
from dataclasses import dataclass

from twisted.logger import Logger
from twisted.protocols import amp

from twisted_raft.kvlimits import MAX_KEY_BYTES
from twisted_raft.kvrecords import Compacted as HistoryCompacted
from twisted_raft.rpc import commands
from twisted_raft.rpc.commands import MAX_WATCH_ID, Compacted, InvalidArgument, Unavailable
from twisted_raft.rpc.deadlines import Deadlines
from twisted_raft.rpc.watchwire import encodeEvent

MiB = 1024 * 1024


@dataclass(frozen=True)
class WatchLimits:
    """
    Every limit of the watch layer, in one place (docs/design.rst, "Watches").

    @ivar perConnection: watches open on one connection; one more is
        INVALID_ARGUMENT.
    @ivar perNode: watches open on the node; one more is UNAVAILABLE (the
        client library tries another node).
    @ivar batchEvents: events read for one call, at most (whole revisions:
        the first one whatever its size).
    @ivar batchBytes: ... and about this many bytes of them (the history's
        own accounting).
    @ivar callBytes: the most bytes of events one call carries; a revision
        over it is split (C{revision_continues}).  Well inside a box (4 MiB).
    @ivar scanEvents: events one read looks at before it yields the
        reactor (a watch on a quiet key behind a busy history).
    @ivar stepsPerTurn: watches that read per reactor turn.
    @ivar connectionBytes: bytes of unanswered calls on one connection
        before its watches wait.
    @ivar nodeBytes: ... on the whole node.
    @ivar answerTimeout: seconds a call may stay unanswered before the
        connection is closed.
    @ivar progressInterval: seconds between two progress notes to idle
        watches (only if the applied revision moved).
    @ivar contactInterval: seconds between two looks, while watches are
        open, at whether the node is in touch with a leader.
    @ivar contactGrace: seconds the node may be out of touch with a leader
        (L{twisted_raft.raft.contact}) before its watches end with
        UNAVAILABLE and new ones are refused: longer than an election
        usually takes, so an election does not move every watcher, and
        short enough that a watcher of a cut-off node moves on within a
        couple of seconds.
    """

    perConnection: int = 1_000
    perNode: int = 10_000
    batchEvents: int = 1_000
    batchBytes: int = 256 * 1024
    callBytes: int = 2 * MiB
    scanEvents: int = 10_000
    stepsPerTurn: int = 256
    connectionBytes: int = 4 * MiB
    nodeBytes: int = 64 * MiB
    answerTimeout: float = 60.0
    progressInterval: float = 5.0
    contactInterval: float = 0.5
    contactGrace: float = 1.0


READY, SENDING, BLOCKED, IDLE, DONE = "ready", "sending", "blocked", "idle", "done"

COMPACTED = commands.COMPACTED.decode("ascii")
UNAVAILABLE = commands.UNAVAILABLE.decode("ascii")


class _Watch:
    __slots__ = ("id", "conn", "key", "prefix", "cursor", "skip", "state", "reported")

    def __init__(self, watchId, conn, key, prefix, cursor):
        self.id = watchId
        self.conn = conn
        self.key = key
        self.prefix = prefix
        self.cursor = cursor  # the next revision to read
        self.skip = 0  # events of revision `cursor` already sent (a split revision)
        self.state = READY
        self.reported = 0  # the last next_revision sent

    def __repr__(self):
        star = "*" if self.prefix else ""
        return f"<watch {self.id} {self.key!r}{star} at {self.cursor} {self.state}>"


class _Connection:
    __slots__ = ("proto", "watches", "inflightBytes", "blocked")

    def __init__(self, proto):
        self.proto = proto
        self.watches = {}
        self.inflightBytes = 0
        self.blocked = deque()


def checkWatchKey(key, prefix):
    """
    @raise InvalidArgument: C{key} is empty (unless a prefix: C{""} is
        every key) or over L{MAX_KEY_BYTES} of UTF-8.
    """
    if key is None:
        raise InvalidArgument("missing key")
    if not key and not prefix:
        raise InvalidArgument("empty key (watch every key with an empty prefix)")
    n = len(key.encode("utf-8", "surrogatepass"))
    if n > MAX_KEY_BYTES:
        raise InvalidArgument(f"key is {n} bytes of UTF-8, over {MAX_KEY_BYTES}")


def _checkRevision(name, value):
    if not 1 <= value <= MAX_WATCH_ID:
        raise InvalidArgument(f"{name} is out of range 1 to 2**63 - 1")


class WatchHub:
    """
    Every watch of one node (L{NodeServerFactory.watches}).

    @param store: the node's L{KVStore}: its C{watchEvents},
        C{appliedIndex}, C{history.oldestRevision}, and the
        C{onApplied}/C{onRestored} hooks (set at the first watch, calling
        on to any hook already there).
    @param clock: an L{IReactorTime}.
    @param contactReason: C{None}, or a callable returning why the node is
        out of touch with a leader now (L{nodeContactReason}), or C{None}
        if it is in touch.  Out of touch for L{WatchLimits.contactGrace}
        seconds, the node ends its watches with UNAVAILABLE and refuses new
        ones: it applies nothing new, so its watchers would wait in silence
        while the majority moves on (a partition that leaves the client's
        TCP connection open).
    @ivar count: watches open.
    @ivar inflightBytes: bytes of WatchEvents calls not yet answered.
    @ivar ended: how many watches the node ended, by error code
        (C{COMPACTED}, C{UNAVAILABLE}).
    """

    log = Logger()

    def __init__(self, store, clock, limits=None, contactReason=None):
        self.store = store
        self.clock = clock
        self.limits = limits or WatchLimits()
        self.contactReason = contactReason
        self.count = 0
        self.ended = {}
        self.inflightBytes = 0
        self._conns = {}  # protocol -> _Connection
        self._ready = deque()
        self._blocked = deque()  # waiting for the node's byte budget
        self._pumping = None
        self._installed = False
        self._scanned = 0  # every entry with changes below it was looked at for idle watches
        # the idle watches, and their index
        self._idle = {}
        self._byKey = {}
        self._byPrefix = {}
        self._prefixLengths = {}  # length -> idle prefix watches of that length
        self._lengths = None  # sorted(_prefixLengths), or None to recompute
        self._progress = None
        self._deadlines = Deadlines(clock)
        self._outSince = None  # when the node was first seen out of touch with a leader
        self._contactCheck = None

    # -- requests -----------------------------------------------------------

    def create(self, proto, watchId, key, prefix, startRevision):
        """The L{commands.Watch} responder's work; @return: its answer."""
        limits = self.limits
        if not 0 <= watchId <= MAX_WATCH_ID:
            raise InvalidArgument("watch_id is out of range 0 to 2**63 - 1")
        checkWatchKey(key, prefix)
        store = self.store
        if startRevision is None:
            startRevision = store.appliedIndex + 1
        else:
            _checkRevision("start_revision", startRevision)
        conn = self._conns.get(proto)
        if conn is not None and watchId in conn.watches:
            raise InvalidArgument(f"watch_id {watchId} is in use on this connection")
        if conn is not None and len(conn.watches) >= limits.perConnection:
            raise InvalidArgument(
                f"too many watches on this connection (the limit is {limits.perConnection})"
            )
        if self.count >= limits.perNode:
            raise Unavailable(
                f"too many watches on this node (the limit is {limits.perNode}); try another node"
            )
        reason = self._outOfTouch()
        if reason is not None:
            raise Unavailable(f"{reason}; try another node")
        oldest = store.history.oldestRevision
        if startRevision < oldest:
            raise Compacted(oldest)
        if conn is None:
            conn = self._conns[proto] = _Connection(proto)
        self._install()
        w = _Watch(watchId, conn, key, bool(prefix), startRevision)
        conn.watches[watchId] = w
        self.count += 1
        self._makeReady(w)
        self._scheduleContactCheck()
        return {"created": True, "start_revision": startRevision}

    def cancel(self, proto, watchId):
        """The L{commands.CancelWatch} responder's work: whether it was open."""
        conn = self._conns.get(proto)
        w = conn.watches.get(watchId) if conn is not None else None
        if w is None:
            return False
        self._remove(w)
        return True

    def connectionLost(self, proto):
        """Every watch of C{proto}'s connection ends."""
        conn = self._conns.pop(proto, None)
        if conn is None:
            return
        for w in list(conn.watches.values()):
            self._remove(w)
        conn.blocked.clear()

    def watchesOf(self, proto):
        """The watch ids open on C{proto}'s connection (tests, debugging)."""
        conn = self._conns.get(proto)
        return sorted(conn.watches) if conn is not None else []

    # -- the store's hooks --------------------------------------------------

    def _install(self):
        if self._installed:
            return
        self._installed = True
        store = self.store
        self._scanned = store.appliedIndex + 1
        applied, restored = store.onApplied, store.onRestored
        if applied is None:
            store.onApplied = self._applied
        else:
            def both(index):
                applied(index)
                self._applied(index)
            store.onApplied = both
        if restored is None:
            store.onRestored = self._restored
        else:
            def bothRestored(index):
                restored(index)
                self._restored(index)
            store.onRestored = bothRestored

    def _applied(self, index):
        """Entry C{index} changed keys: wake the idle watches it concerns."""
        self._scanned = index + 1
        if not self._idle:
            return
        try:
            events = self.store.watchEvents(index, "", prefix=True).events
        except HistoryCompacted:  # cannot be: the newest revision is always held
            events = ()
        byKey, byPrefix = self._byKey, self._byPrefix
        for event in events:
            key = event.key
            if key in byKey:
                self._wake(byKey[key], index)
            if byPrefix:
                for n in self._sortedLengths():
                    if n > len(key):
                        break
                    watches = byPrefix.get(key[:n])
                    if watches:
                        self._wake(watches, index)
            if not self._idle:
                break

    def _restored(self, index):
        """
        A snapshot replaced the state at C{index}: the changes between what
        a watch had read and C{index} are gone, so every watch that had not
        read up to C{index} ends with COMPACTED.
        """
        scanned, self._scanned = self._scanned, index + 1
        for conn in list(self._conns.values()):
            for w in list(conn.watches.values()):
                cursor = max(w.cursor, scanned) if w.state == IDLE else w.cursor
                if cursor <= index:
                    self._end(
                        w, COMPACTED, index + 1,
                        f"the node installed a snapshot at revision {index}",
                    )

    # -- contact with a leader ----------------------------------------------

    def _outOfTouch(self):
        """
        Why the node has been out of touch with a leader for at least
        L{WatchLimits.contactGrace} seconds, or C{None}.
        """
        if self.contactReason is None:
            return None
        reason = self.contactReason()
        if reason is None:
            self._outSince = None
            return None
        now = self.clock.seconds()
        if self._outSince is None:
            self._outSince = now
        if now - self._outSince < self.limits.contactGrace:
            return None
        return reason

    def _scheduleContactCheck(self):
        # Look while watches are open, and while out of touch (so that a new
        # watch is refused until contact is back).
        if self.contactReason is None or self._contactCheck is not None:
            return
        if not self.count and self._outSince is None:
            return
        self._contactCheck = self.clock.callLater(
            self.limits.contactInterval, self._checkContact
        )

    def _checkContact(self):
        self._contactCheck = None
        reason = self._outOfTouch()
        if reason is not None:
            for conn in list(self._conns.values()):
                for w in list(conn.watches.values()):
                    self._end(w, UNAVAILABLE, None, f"{reason}; resume on another node")
        self._scheduleContactCheck()

    # -- the idle index ---------------------------------------------------

    def _sortedLengths(self):
        if self._lengths is None:
            self._lengths = sorted(self._prefixLengths)
        return self._lengths

    def _goIdle(self, w):
        w.state = IDLE
        self._idle[w] = None
        if w.prefix:
            self._byPrefix.setdefault(w.key, set()).add(w)
            n = len(w.key)
            count = self._prefixLengths.get(n, 0)
            if not count:
                self._lengths = None
            self._prefixLengths[n] = count + 1
        else:
            self._byKey.setdefault(w.key, set()).add(w)
        if self._progress is None and self.limits.progressInterval:
            self._progress = self.clock.callLater(self.limits.progressInterval, self._sendProgress)

    def _unindex(self, w):
        del self._idle[w]
        index = self._byPrefix if w.prefix else self._byKey
        watches = index[w.key]
        watches.discard(w)
        if not watches:
            del index[w.key]
        if w.prefix:
            n = len(w.key)
            count = self._prefixLengths[n] - 1
            if count:
                self._prefixLengths[n] = count
            else:
                del self._prefixLengths[n]
                self._lengths = None
        if not self._idle and self._progress is not None:
            self._progress.cancel()
            self._progress = None

    def _wake(self, watches, index):
        for w in list(watches):
            if w.cursor > index:
                continue  # it starts later
            self._unindex(w)
            # every revision from its cursor up to this one had nothing for it
            w.cursor = index
            self._makeReady(w)

    def _sendProgress(self):
        """Tell each idle watch how far the node has looked (where to resume)."""
        self._progress = None
        applied = self.store.appliedIndex + 1
        for w in list(self._idle):
            cursor = max(w.cursor, applied)
            if cursor > w.reported:
                self._unindex(w)
                w.cursor = cursor
                self._call(w, b"", cursor, False)
        if self._idle and self._progress is None:
            self._progress = self.clock.callLater(self.limits.progressInterval, self._sendProgress)

    # -- reading and sending ------------------------------------------------

    def _makeReady(self, w):
        w.state = READY
        self._ready.append(w)
        if self._pumping is None:
            self._pumping = self.clock.callLater(0, self._pump)

    def _pump(self):
        self._pumping = None
        ready = self._ready
        for _ in range(min(len(ready), self.limits.stepsPerTurn)):
            w = ready.popleft()
            if w.state == READY:
                self._step(w)
        if ready and self._pumping is None:
            self._pumping = self.clock.callLater(0, self._pump)

    def _step(self, w):
        limits = self.limits
        conn = w.conn
        if conn.inflightBytes >= limits.connectionBytes:
            w.state = BLOCKED
            conn.blocked.append(w)
            return
        if self.inflightBytes >= limits.nodeBytes:
            w.state = BLOCKED
            self._blocked.append(w)
            return
        store = self.store
        try:
            batch = store.watchEvents(
                w.cursor, w.key, prefix=w.prefix, maxEvents=limits.batchEvents,
                maxBytes=limits.batchBytes, maxScan=limits.scanEvents,
            )
        except HistoryCompacted as e:
            self._end(
                w, COMPACTED, e.compact_revision,
                f"the watch fell behind: revision {w.cursor} is no longer held",
            )
            return
        except Exception:
            self.log.failure("reading the event history for {watch}", watch=w)
            self._end(w, UNAVAILABLE, None, "internal error reading the event history")
            return
        if batch.events:
            self._send(w, batch.events, batch.next_revision)
            return
        w.cursor = batch.next_revision
        if batch.next_revision > store.appliedIndex:
            self._goIdle(w)
        else:
            self._makeReady(w)  # looked at scanEvents events: the rest next turn

    def _send(self, w, events, nextRevision):
        """
        Send C{events} (whole revisions from a read at C{w.cursor}) up to
        L{WatchLimits.callBytes}: all of them, or those of the revisions
        that fit, or (one oversized revision) as many of its events as fit,
        after the C{w.skip} already sent.
        """
        limit = self.limits.callBytes
        skip = w.skip if events[0].mod_revision == w.cursor else 0
        parts = []
        size = 0
        i, n = skip, len(events)
        while i < n:
            data = encodeEvent(events[i])
            if parts and size + len(data) > limit:
                break
            parts.append(data)
            size += len(data)
            i += 1
        continues = False
        if i == n:
            w.cursor, w.skip = nextRevision, 0
        else:
            last = events[i - 1].mod_revision
            if events[i].mod_revision != last:
                w.cursor, w.skip = last + 1, 0
            else:
                first = i - 1
                while first and events[first - 1].mod_revision == last:
                    first -= 1
                w.cursor, w.skip = last, i - first
                continues = True
        self._call(w, b"".join(parts), w.cursor, continues)

    def _call(self, w, payload, nextRevision, continues):
        conn = w.conn
        kwargs = {"watch_id": w.id, "events": payload, "next_revision": nextRevision}
        if continues:
            kwargs["revision_continues"] = True
        w.state = SENDING
        try:
            d = conn.proto.callRemote(commands.WatchEvents, **kwargs)
        except Exception:
            # the connection is going: connectionLost ends its watches
            self._remove(w)
            return
        w.reported = nextRevision
        size = len(payload)
        conn.inflightBytes += size
        self.inflightBytes += size
        self._deadlines.add(d, self.limits.answerTimeout, self._timedOut, conn)
        d.addCallbacks(self._answered, self._unanswered, (w, size), None, (w, size))

    def _timedOut(self, failure, conn):
        self.log.info(
            "closing a client connection that left a WatchEvents call unanswered"
            " for {seconds:g}s", seconds=self.limits.answerTimeout,
        )
        transport = conn.proto.transport
        if transport is not None:
            abort = getattr(transport, "abortConnection", None)
            (abort or transport.loseConnection)()
        return failure

    def _answered(self, result, w, size):
        self._release(w.conn, size)
        if w.state == SENDING:
            self._makeReady(w)

    def _unanswered(self, failure, w, size):
        """
        The client answered with an error (it does not want the watch: it
        is dropped, silently), or the connection was lost or timed out (its
        watches end with it).
        """
        self._release(w.conn, size)
        if w.state == SENDING:
            if not failure.check(amp.RemoteAmpError, InvalidArgument):
                self.log.debug("a WatchEvents call failed: {f}", f=failure.value)
            self._remove(w)

    def _release(self, conn, size):
        conn.inflightBytes -= size
        self.inflightBytes -= size
        limits = self.limits
        while conn.blocked and conn.inflightBytes < limits.connectionBytes:
            w = conn.blocked.popleft()
            if w.state == BLOCKED:
                self._makeReady(w)
        while self._blocked and self.inflightBytes < limits.nodeBytes:
            w = self._blocked.popleft()
            if w.state == BLOCKED:
                self._makeReady(w)

    # -- ending ---------------------------------------------------------------

    def _remove(self, w):
        if w.state == DONE:
            return
        if w.state == IDLE:
            self._unindex(w)
        w.state = DONE
        conn = w.conn
        if conn.watches.get(w.id) is w:
            del conn.watches[w.id]
        self.count -= 1

    def _end(self, w, code, compactRevision, description):
        """Drop C{w} and tell the client why (L{commands.WatchCancelled})."""
        self._remove(w)
        self.ended[code] = self.ended.get(code, 0) + 1
        kwargs = {"watch_id": w.id, "code": code, "description": description}
        if compactRevision is not None:
            kwargs["compact_revision"] = compactRevision
        try:
            d = w.conn.proto.callRemote(commands.WatchCancelled, **kwargs)
        except Exception:
            return
        d.addErrback(lambda f: None)


class WatchResponders(amp.CommandLocator):
    """
    Mix into the node's protocol (before L{amp.AMP}): the client's watch
    commands, served by C{self.server.watches} (a L{WatchHub}).
    """

    @commands.Watch.responder
    def watch(self, watch_id, key, prefix=None, start_revision=None):
        return self.server.watches.create(self, watch_id, key, bool(prefix), start_revision)

    @commands.CancelWatch.responder
    def cancelWatch(self, watch_id):
        return {"cancelled": self.server.watches.cancel(self, watch_id)}

    def connectionLost(self, reason):
        self.server.watches.connectionLost(self)
        super().connectionLost(reason)
