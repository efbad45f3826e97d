"""
The node's limits against overloading clients (issue 10): what keeps its
memory bounded however many clients send however much.

  - L{ConnectionLimit}: client connections open at once.  At the limit a
    new connection takes the place of the one idle longest (nothing
    received for L{IDLE_EVICTION} seconds, nothing in flight), or is closed
    as soon as it is made if none is idle; a peer's connection stops
    counting once it has proven it is a member node.  So neither a flood of
    clients nor a crowd of silent strangers can keep a peer whose link
    dropped from connecting again.
  - L{ReadBackPressure}: requests in flight (received, not yet answered) on
    one connection.  At the limit the node stops reading that socket, and
    the kernel's TCP window pushes back on the sender; it also stops reading
    while the connection's answers wait unsent (a client that sends but does
    not read), so those are bounded too.  No error: the client just waits.
    The requests already read stay unparsed meanwhile (at most one read's
    worth), so a burst cannot get round the limit.
  - L{PendingBytes}: bytes of write requests the node holds, until the
    Raft core (or the leader a write was forwarded to) is done with them,
    even if the client was answered earlier (a timeout).  Beyond it a
    write is answered at once with L{Overloaded} (UNAVAILABLE C{"not
    proposed: overloaded"}), which a client may retry without risk.

Their defaults and trade-offs are documented on L{NodeConfig}.
"""

from twisted.logger import Logger

from twisted_raft.rpc.commands import Overloaded

NOTICE_INTERVAL = 5.0
"""Seconds between two log lines about the same kind of refusal."""

IDLE_EVICTION = 1.0
"""
Seconds a connection must have received nothing (and have nothing in
flight) before a new connection may take its place at the limit.  Long
enough that a client between two requests of a burst is not idle; short
enough that connections which say nothing keep no slot for long, so a peer
whose link dropped gets back in within its next few reconnection tries.
"""


class Notice:
    """
    A warning logged at most once per L{NOTICE_INTERVAL}, saying how many
    times it was due meanwhile: a flood must not flood the log too.

    @ivar count: times L{__call__} was called since the last line.
    """

    def __init__(self, log, clock, format, interval=NOTICE_INTERVAL):
        self.log = log
        self.clock = clock
        self.format = format
        self.interval = interval
        self.count = 0
        self._next = None

    def __call__(self, **fields):
        self.count += 1
        now = self.clock.seconds()
        if self._next is not None and now < self._next:
            return
        self._next = now + self.interval
        count, self.count = self.count, 0
        self.log.warn(self.format, count=count, **fields)


class ConnectionLimit:
    """
    Counts a factory's connections against C{maximum}.

    L{admit} when a connection is made (C{connectionMade}, so a connection
    whose setup fails before, a TLS context error say, never counts);
    L{release} when it ends or has proven it is a peer (L{release} again is
    harmless), so each counted connection is released exactly once.

    A protocol counted here has C{lastReceived} (the clock's time of the
    last bytes it received), C{inflight} (requests not yet answered),
    C{peerId} (L{None} until proven a member) and C{evict()} (close at
    once); see L{admit}.

    @ivar open: connections counted now.
    """

    log = Logger()

    def __init__(self, maximum, clock, idleAfter=IDLE_EVICTION):
        self.maximum = maximum
        self.clock = clock
        self.idleAfter = idleAfter
        # insertion-ordered: of equally idle connections the oldest goes
        self._counted = {}
        self._refused = Notice(
            self.log, clock,
            "refused {count} connection(s) in the last few seconds: {open} client"
            " connections are open, the limit (--max-connections), none of them idle",
        )
        self._evicted = Notice(
            self.log, clock,
            "closed {count} idle connection(s) in the last few seconds to make room"
            " for new ones: {open} client connections are open, the limit"
            " (--max-connections)",
        )

    @property
    def open(self):
        return len(self._counted)

    def admit(self, proto):
        """
        Count C{proto}'s connection, closing the idlest counted one to make
        room if the limit is reached (a scan of the counted connections,
        only then).

        @return: whether C{proto} was admitted; if not, it must close.
        """
        if len(self._counted) >= self.maximum:
            victim = self._idlest()
            if victim is None:
                self._refused(open=len(self._counted))
                return False
            self.release(victim)
            self._evicted(open=self.maximum)
            victim.evict()
        self._counted[proto] = None
        return True

    def _idlest(self):
        """The counted connection idle longest, or L{None} if none is idle."""
        found, oldest = None, self.clock.seconds() - self.idleAfter
        for proto in self._counted:
            seen = proto.lastReceived
            if (seen < oldest or found is None and seen <= oldest) and (
                    not proto.inflight and proto.peerId is None):
                found, oldest = proto, seen
        return found

    def release(self, proto):
        """C{proto}'s connection no longer counts (it ended, or is a peer's)."""
        self._counted.pop(proto, None)


class ReadBackPressure:
    """
    Mix into an L{amp.AMP} subclass, before L{FastDispatch} and
    L{FastBoxParsing}: stop reading the connection while L{maxInflight}
    requests wait for their answers, or while its answers wait unsent
    because the other end does not read them.

    The connection registers itself as a streaming producer with its
    transport, which calls L{pauseProducing} when its send buffer fills and
    L{resumeProducing} when it drains; both that and the in-flight count
    pause and resume the transport's reading (C{transport.pauseProducing}).

    Requests are counted when their answer is not ready at once (an unfired
    Deferred).  Pausing also stops the parser: the boxes already read but
    not yet dispatched stay in its buffer (L{readingPaused}; Twisted's
    parser, when the fast one is off, stops at C{paused}) and are parsed
    when reading resumes.  So neither a burst of requests in one read nor
    requests answered at once (a stale Get) can queue more than the send
    buffer's worth of answers.

    The producer is unregistered as soon as the connection is being closed
    (any C{loseConnection} or C{abortConnection} on its transport, ours or
    AMP's): Twisted's TLS layer does not close while a producer is
    registered, and its TCP transport resumes a paused producer instead of
    closing when its buffer drains.

    @ivar maxInflight: the limit, or L{None} for none.
    @ivar inflight: requests received and not yet answered.
    """

    maxInflight = None
    inflight = 0
    _tooMany = False
    _answersUnread = False
    _waitingForRoom = False
    readingPaused = False
    """Whether this connection's socket is not being read, nor the requests
    already read parsed, now (L{FastBoxParsing.readingPaused}); a plain
    attribute: the parser reads it after every box."""
    _producing = False
    _closing = False
    _unwrap = ()
    paused = False
    """Twisted's parser (L{twisted.protocols.basic.IntNStringReceiver})
    parses no further while this is true."""

    _CLOSERS = ("loseConnection", "abortConnection")

    def connectionMade(self):
        super().connectionMade()
        transport = self.transport
        register = getattr(transport, "registerProducer", None)
        if register is None:
            return
        register(self, True)
        self._producing = True
        # Every way of closing must unregister the producer first, whoever
        # closes (AMP's QuitBox and unhandledError, Twisted's parser on a
        # key too long, our box guard): so wrap the transport's own methods
        # on this instance rather than hunt for each caller.
        self._unwrap = []
        own = getattr(transport, "__dict__", {})
        for name in self._CLOSERS:
            close = getattr(transport, name, None)
            if close is not None:
                self._unwrap.append((name, own.get(name)))
                setattr(transport, name, self._closingFirst(close))

    def _closingFirst(self, close):
        def closeConnection(*args, **kwargs):
            self._stopProducing()
            return close(*args, **kwargs)

        return closeConnection

    def _stopProducing(self):
        """The connection is being closed: parse nothing more, and stop
        being its transport's producer so that the close can finish."""
        self._closing = True
        if self._producing:
            self._producing = False
            if self.transport is not None:
                self.transport.unregisterProducer()

    def connectionLost(self, reason):
        # the transport as it was (and no cycle through the wrappers)
        unwrap, self._unwrap = self._unwrap, ()
        for name, own in unwrap:
            if own is None:
                vars(self.transport).pop(name, None)
            else:
                setattr(self.transport, name, own)
        self._producing = False
        super().connectionLost(reason)

    # -- in flight ------------------------------------------------------------

    def requestPending(self):
        """A request was received whose answer is not ready yet: count it."""
        self.inflight += 1
        if self.maxInflight is not None and self.inflight >= self.maxInflight:
            if not self._tooMany:
                self._tooMany = True
                self._updateReading()

    def requestDone(self):
        """Its answer has been sent."""
        self.inflight -= 1
        if self._tooMany and self.inflight < self.maxInflight:
            self._tooMany = False
            self._updateReading()

    def _answered(self, result):
        self.requestDone()
        return result

    def dispatchCommand(self, box):
        # Twisted's own dispatch path (L{FastDispatch} calls requestPending
        # and requestDone itself).
        d = super().dispatchCommand(box)
        if not d.called:
            self.requestPending()
            d.addBoth(self._answered)
        return d

    # -- IPushProducer, for the transport's send buffer --------------------------

    def pauseProducing(self):
        self._answersUnread = True
        self._updateReading()

    def resumeProducing(self):
        self._answersUnread = False
        self._updateReading()

    def stopProducing(self):
        pass


    def waitForRoom(self, budget):
        """Stop reading until the L{PendingBytes} C{budget} has room."""
        if not self._waitingForRoom:
            self._waitingForRoom = True
            budget.whenRoom(self._room)
            self._updateReading()

    def _room(self):
        self._waitingForRoom = False
        self._updateReading()

    def _updateReading(self):
        pause = self._tooMany or self._answersUnread or self._waitingForRoom
        transport = self.transport
        if pause == self.readingPaused or transport is None or self._closing:
            return
        self.readingPaused = self.paused = pause
        if pause:
            transport.pauseProducing()
        else:
            transport.resumeProducing()
            # the requests read before the pause (a no-op while the parser
            # is running: it goes on by itself)
            self.dataReceived(b"")


SMALL_WRITE = 64 * 1024
"""Writes under this size may use the last quarter of L{PendingBytes}'
budget: a flood of large writes cannot crowd small ones out."""


class PendingBytes:
    """
    The bytes of write requests a node holds: L{charge} when one is
    accepted, L{release} when the node is done with it, whichever way (the
    L{Router} holds it until the core's Deferred for its proposal has fired
    and any forward to the leader has ended, even if the client was
    answered before).

    @ivar maximum: the budget.
    @ivar pending: bytes held now.
    """

    log = Logger()

    def __init__(self, maximum, clock):
        self.maximum = maximum
        self.pending = 0
        self._waiting = []
        self._clock = clock
        self._refused = Notice(
            self.log, clock,
            "refused {count} write(s) in the last few seconds as overloaded:"
            " {pending} bytes of writes pending, the limit {maximum}"
            " (--max-pending-bytes)",
        )

    def charge(self, size):
        """
        Hold C{size} more bytes.  A write is refused only while others are
        pending, so one larger than the whole budget still gets through
        alone.

        @raise Overloaded: if over budget; nothing is charged then.
        """
        pending = self.pending
        limit = self.maximum
        if size >= SMALL_WRITE:
            limit -= self.maximum // 4  # the rest is kept for small writes
        if pending and pending + size > limit:
            self._refused(pending=pending, maximum=self.maximum)
            raise Overloaded()
        self.pending = pending + size

    def release(self, result, size):
        """C{size} bytes are no longer held; passes C{result} through (a callback)."""
        self.pending -= size
        if self._waiting and self.pending <= self.maximum // 2:
            waiting, self._waiting = self._waiting, []
            # Not from inside whatever answered this write: a woken
            # connection parses (and may charge) at once.
            for room in waiting:
                self._clock.callLater(0, room)
        return result

    def whenRoom(self, callback):
        """
        Call C{callback()} once the bytes held are down to half the budget
        (not at the first byte free: the connections it wakes would each
        send more at once).  Those connections are not read meanwhile
        (L{ReadBackPressure.waitForRoom}).
        """
        if self.pending <= self.maximum // 2:
            callback()
        else:
            self._waiting.append(callback)
