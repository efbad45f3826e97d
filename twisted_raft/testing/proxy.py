"""
A blockable TCP proxy for fault injection against real processes.

One L{LinkProxy} carries one directed peer link (node i's connections to
node j): it listens on C{127.0.0.1:<ephemeral>} and forwards every accepted
connection to the target port.  L{LinkProxy.block} aborts every connection
it carries (both sides) and makes it abort new ones at once; L{unblock}
restores normal forwarding.  Everything runs in the caller's reactor.
"""

from twisted.internet import defer, protocol
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.logger import Logger

HOST = "127.0.0.1"


def _abort(transport):
    if transport is None:
        return
    abort = getattr(transport, "abortConnection", None)
    if abort is not None:
        abort()
    else:
        transport.loseConnection()


class _Outbound(protocol.Protocol):
    """The proxy's connection to the target; relays back to the inbound side."""

    def __init__(self, inbound):
        self.inbound = inbound

    def connectionMade(self):
        self.inbound.outboundConnected(self)

    def dataReceived(self, data):
        t = self.inbound.transport
        if t is not None and not self.inbound.closed:
            t.write(data)

    def connectionLost(self, reason):
        self.inbound.outboundLost()


class _Inbound(protocol.Protocol):
    """An accepted connection; forwards to a fresh connection to the target."""

    def __init__(self, proxy):
        self.proxy = proxy
        self.outbound = None
        self.pending = []
        self.closed = False
        self._connecting = None

    def connectionMade(self):
        self.proxy.accepted += 1
        if self.proxy.blocked:
            self.proxy.refused += 1
            self.closed = True
            _abort(self.transport)
            return
        self.proxy._pairs.add(self)
        endpoint = TCP4ClientEndpoint(
            self.proxy.reactor, self.proxy.targetHost, self.proxy.targetPort,
            timeout=self.proxy.connectTimeout,
        )
        d = endpoint.connect(_OneShotFactory(_Outbound(self)))
        d.addErrback(self._connectFailed)
        if not d.called:
            self._connecting = d

    def _connectFailed(self, failure):
        self._connecting = None
        self.close()

    def outboundConnected(self, outbound):
        self._connecting = None
        if self.closed:
            _abort(outbound.transport)
            return
        self.outbound = outbound
        for data in self.pending:
            outbound.transport.write(data)
        self.pending = []

    def dataReceived(self, data):
        if self.closed:
            return
        if self.outbound is None:
            self.pending.append(data)
        else:
            self.outbound.transport.write(data)

    def outboundLost(self):
        self.outbound = None
        self.close()

    def close(self):
        """Abort both sides (idempotent)."""
        if self.closed:
            return
        self.closed = True
        self.proxy._pairs.discard(self)
        d, self._connecting = self._connecting, None
        if d is not None:
            d.cancel()
        if self.outbound is not None:
            _abort(self.outbound.transport)
        _abort(self.transport)

    def connectionLost(self, reason):
        self.proxy._pairs.discard(self)
        if not self.closed:
            self.closed = True
            if self.outbound is not None:
                # A normal close from the client: let the target see a normal
                # close too (after any queued data).
                self.outbound.transport.loseConnection()
            d, self._connecting = self._connecting, None
            if d is not None:
                d.cancel()


class _OneShotFactory(protocol.Factory):
    noisy = False

    def __init__(self, proto):
        self.proto = proto

    def buildProtocol(self, addr):
        return self.proto


class _InboundFactory(protocol.Factory):
    noisy = False

    def __init__(self, proxy):
        self.proxy = proxy

    def buildProtocol(self, addr):
        return _Inbound(self.proxy)


class LinkProxy:
    """
    Forward connections accepted on C{127.0.0.1:<port>} to
    C{targetHost:targetPort}.

    @ivar port: the listening port number (after L{start}).
    @ivar blocked: whether the link is cut.
    @ivar accepted: connections accepted so far; C{refused}: of those, the
        ones aborted at once because the link was blocked.
    """

    log = Logger()

    def __init__(self, reactor, targetPort, targetHost=HOST, name="", connectTimeout=2):
        self.reactor = reactor
        self.targetHost = targetHost
        self.targetPort = targetPort
        self.name = name
        self.connectTimeout = connectTimeout
        self.blocked = False
        self.accepted = 0
        self.refused = 0
        self._pairs = set()
        self._listening = None
        self.port = None

    @defer.inlineCallbacks
    def start(self, port=0):
        """Listen (on an ephemeral port by default). @return: Deferred[int]."""
        endpoint = TCP4ServerEndpoint(self.reactor, port, interface=HOST)
        self._listening = yield endpoint.listen(_InboundFactory(self))
        self.port = self._listening.getHost().port
        return self.port

    @property
    def connections(self):
        """The number of connections currently forwarded."""
        return len(self._pairs)

    def block(self):
        """Cut the link: abort current connections and every new one."""
        self.blocked = True
        for pair in list(self._pairs):
            pair.close()

    def unblock(self):
        """Restore the link: new connections are forwarded again."""
        self.blocked = False

    def stop(self):
        """Stop listening and abort every connection. @return: Deferred."""
        self.blocked = True
        for pair in list(self._pairs):
            pair.close()
        if self._listening is None:
            return defer.succeed(None)
        listening, self._listening = self._listening, None
        return defer.maybeDeferred(listening.stopListening)

    def __repr__(self):
        state = "blocked" if self.blocked else "open"
        return f"<LinkProxy {self.name} :{self.port} -> {self.targetPort} {state}>"
