"""
The node's limits against overloading clients (issue 10): what keeps its
memory bounded however many clients send however much.

  - L{ConnectionLimit}: client connections open at once.  Beyond it a new
    connection is closed as soon as it is accepted; a peer's connection
    stops counting once it has proven it is a member node, so a flood of
    clients cannot starve the peer links that already stand.
  - L{ReadBackPressure}: requests in flight (received, not yet answered) on
    one connection.  At the limit the node stops reading that socket, and
    the kernel's TCP window pushes back on the sender; it also stops reading
    while the connection's answers wait unsent (a client that sends but does
    not read), so those are bounded too.  No error: the client just waits.
  - L{PendingBytes}: bytes of write requests the node holds.  Beyond it a
    write is answered at once with L{Overloaded} (UNAVAILABLE C{"not
    proposed: overloaded"}), which a client may retry without risk.

Their defaults and trade-offs are documented on L{NodeConfig}.
"""

from twisted.logger import Logger
from twisted.internet import protocol

from twisted_raft.rpc.commands import Overloaded

NOTICE_INTERVAL = 5.0
"""Seconds between two log lines about the same kind of refusal."""


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


class _Refused(protocol.Protocol):
    """
    The protocol of a connection over the limit: it drops the connection as
    soon as it is made.  (C{buildProtocol} returning L{None} does that too
    for plain TCP, but breaks a wrapping factory such as TLS's.)
    """

    def connectionMade(self):
        abort = getattr(self.transport, "abortConnection", None)
        if abort is not None:
            abort()
        else:
            self.transport.loseConnection()


class ConnectionLimit:
    """
    Counts a factory's connections against C{maximum}.

    L{admit} when a connection is accepted; L{release} when it ends or has
    proven it is a peer (L{release} again is harmless).

    @ivar open: connections counted now.
    """

    log = Logger()

    def __init__(self, maximum, clock):
        self.maximum = maximum
        self.open = 0
        self._refused = Notice(
            self.log, clock,
            "refused {count} connection(s) in the last few seconds: {open} client"
            " connections are open, the limit (--max-connections)",
        )

    def admit(self, proto):
        """
        Count C{proto}'s connection.  @return: C{proto}, or a protocol that
        closes the connection at once if the limit is reached.
        """
        if self.open >= self.maximum:
            self._refused(open=self.open)
            return _Refused()
        self.open += 1
        proto._countedConnection = True
        return proto

    def release(self, proto):
        """C{proto}'s connection no longer counts (it ended, or is a peer's)."""
        if getattr(proto, "_countedConnection", False):
            proto._countedConnection = False
            self.open -= 1


class ReadBackPressure:
    """
    Mix into an L{amp.AMP} subclass, before L{FastDispatch}: stop reading
    the connection while L{maxInflight} requests wait for their answers, or
    while its answers wait unsent because the other end does not read them.

    The connection registers itself as a streaming producer with its
    transport, which calls L{pauseProducing} when its send buffer fills and
    L{resumeProducing} when it drains; both that and the in-flight count
    pause and resume the transport's reading (C{transport.pauseProducing}).

    Requests are counted when their answer is not ready at once (an unfired
    Deferred).  Boxes already read from the socket when the limit is reached
    are still dispatched, so a connection may go beyond the limit by one
    read's worth of requests (at most 64 KiB of them), never more.

    @ivar maxInflight: the limit, or L{None} for none.
    @ivar inflight: requests received and not yet answered.
    """

    maxInflight = None
    inflight = 0
    _tooMany = False
    _answersUnread = False
    _readingPaused = False

    def connectionMade(self):
        super().connectionMade()
        register = getattr(self.transport, "registerProducer", None)
        if register is not None:
            register(self, True)

    # -- in flight ------------------------------------------------------------

    def answerPending(self, d):
        """
        A request was received whose answer C{d} is not ready yet; count it
        until C{d} fires (after the answer has been sent).
        """
        self.inflight += 1
        if self.maxInflight is not None and self.inflight >= self.maxInflight:
            if not self._tooMany:
                self._tooMany = True
                self._updateReading()
        d.addBoth(self._answered)

    def _answered(self, result):
        self.inflight -= 1
        if self._tooMany and self.inflight < self.maxInflight:
            self._tooMany = False
            self._updateReading()
        return result

    def dispatchCommand(self, box):
        # Twisted's own dispatch path (L{FastDispatch} calls answerPending).
        d = super().dispatchCommand(box)
        if not d.called:
            self.answerPending(d)
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

    @property
    def readingPaused(self):
        """Whether this connection's socket is not being read now."""
        return self._readingPaused

    def _updateReading(self):
        pause = self._tooMany or self._answersUnread
        transport = self.transport
        if pause == self._readingPaused or transport is None:
            return
        self._readingPaused = pause
        if pause:
            transport.pauseProducing()
        else:
            transport.resumeProducing()


class PendingBytes:
    """
    The bytes of write requests a node holds: L{charge} when one is
    accepted, L{release} when it is answered, whichever way.

    @ivar maximum: the budget.
    @ivar pending: bytes held now.
    """

    log = Logger()

    def __init__(self, maximum, clock):
        self.maximum = maximum
        self.pending = 0
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
        if pending and pending + size > self.maximum:
            self._refused(pending=pending, maximum=self.maximum)
            raise Overloaded()
        self.pending = pending + size

    def release(self, result, size):
        """C{size} bytes are no longer held; passes C{result} through (a callback)."""
        self.pending -= size
        return result
