"""
The client's connections: cluster addresses, the client side of AMP, and one
cached connection per node.

L{twisted_raft.client.RaftKVClient} decides where to send a request and what
a failure means; this module only gets it a live connection (L{Connections})
and tells when one is gone.  The names here are also importable from
L{twisted_raft.client}, their public home.
"""

import math

from twisted.internet import defer
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.endpoints import clientFromString, quoteStringArgument
from twisted.internet.protocol import Factory
from twisted.protocols import amp
from twisted.python.failure import Failure

from twisted_raft.rpc.commands import Unavailable
from twisted_raft.rpc.fastamp import FastBoxParsing, FastCalls
from twisted_raft.rpc.watchwire import WatchReceiver

# -- addresses -----------------------------------------------------------------


def splitAddress(address):
    """
    Split C{"host:port"} (or C{"[v6host]:port"}) into C{(host, port)}.

    @raise ValueError: if it is not of that form.
    """
    if not isinstance(address, str):
        raise ValueError(f"address must be a 'host:port' string, not {address!r}")
    host, sep, port = address.strip().rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host:
        raise ValueError(f"address {address!r} is not of the form host:port")
    try:
        number = int(port)
    except ValueError:
        raise ValueError(f"address {address!r} has a bad port {port!r}") from None
    if not 0 < number < 65536:
        raise ValueError(f"address {address!r} has a bad port {port!r}")
    return host, number


def parseAddresses(addresses):
    """
    Normalise a list of C{"host:port"} strings, or one comma-separated string
    of them, into a list of stripped C{"host:port"} strings (order kept).

    @raise ValueError: if any is malformed or there is none.
    """
    if isinstance(addresses, str):
        items = addresses.split(",")
    else:
        items = list(addresses)
    result = []
    for item in items:
        if isinstance(item, str):
            item = item.strip()
            if not item:
                continue
        splitAddress(item)
        result.append(item)
    if not result:
        raise ValueError("no cluster addresses given")
    return result


def endpointString(address, timeout):
    """
    The client endpoint string for C{address}: C{tcp:host=H:port=P:timeout=T}
    (C{T} in whole seconds, at least 1: the TCP endpoint parser wants an int).
    """
    host, port = splitAddress(address)
    seconds = max(1, int(math.ceil(timeout)))
    return f"tcp:host={quoteStringArgument(host)}:port={port}:timeout={seconds}"


# -- connections -------------------------------------------------------------------


class ClientAMP(WatchReceiver, FastCalls, FastBoxParsing, amp.AMP):
    """
    The client side of a connection: plain AMP that can tell when it is lost.
    It reads answers a few KiB at a time (see L{FastBoxParsing.setReadSize}),
    and takes the events a node pushes for the watches open on it
    (L{WatchReceiver}).
    """

    readSize = 2048

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.lost = False
        self._lostWaiters = []

    def connectionLost(self, reason):
        self.lost = True
        super().connectionLost(reason)
        waiters, self._lostWaiters = self._lostWaiters, []
        for d in waiters:
            d.callback(None)

    def whenLost(self):
        """A Deferred that fires once the connection is lost."""
        if self.lost:
            return succeed(None)
        d = Deferred()
        self._lostWaiters.append(d)
        return d


class _OneShot(Factory):
    """
    The factory of one connection (L{connectProtocol}'s), quiet: Twisted's
    logs C{Starting factory}/C{Stopping factory} at info for each, and a
    node's dashboard connects to a member that does not answer twice a
    second.
    """

    noisy = False

    def __init__(self, proto):
        self.proto = proto

    def buildProtocol(self, addr):
        return self.proto


def alive(proto):
    """Whether C{proto}'s connection can still carry a request."""
    transport = getattr(proto, "transport", None)
    return (
        transport is not None
        and not getattr(transport, "disconnecting", False)
        and not getattr(proto, "lost", False)
    )


class Connections:
    """
    At most one connection per address, made on demand and shared by every
    request to it.

    @param reactor: the reactor (or a clock, with C{connect}).
    @param connectTimeout: seconds to establish one connection.
    @param connect: C{connect(address) -> Deferred[AMP]}; by default a TCP
        connection with L{ClientAMP}.
    @param tls: L{twisted_raft.tls.TLSCredentials} to make the default TCP
        connections TLS connections: our certificate is presented and the
        node's is checked against the CA and the host of the address.
    @ivar protocols: C{{address: AMP}}, the connections made.
    """

    def __init__(self, reactor, connectTimeout, connect=None, tls=None):
        self._reactor = reactor
        self.connectTimeout = connectTimeout
        self.tls = tls
        self._connect = connect if connect is not None else self._tcpConnect
        self.protocols = {}
        self._connecting = {}  # address -> [waiting Deferreds]
        self._attempts = {}  # address -> the connect Deferred
        self.closed = False

    def _tcpConnect(self, address):
        endpoint = clientFromString(self._reactor, endpointString(address, self.connectTimeout))
        if self.tls is not None:
            from twisted_raft.tls import endpointWithTLS

            endpoint = endpointWithTLS(
                endpoint, self.tls, splitAddress(address)[0], clock=self._reactor
            )
        return endpoint.connect(_OneShot(ClientAMP()))

    def get(self, address):
        """Deferred[AMP]: the cached connection to C{address}, or a new one."""
        if self.closed:
            return fail(Unavailable("the client is closed"))
        proto = self.protocols.get(address)
        if proto is not None:
            if alive(proto):
                return succeed(proto)
            del self.protocols[address]
        mine = Deferred()
        waiters = self._connecting.get(address)
        if waiters is not None:
            waiters.append(mine)
            return mine
        self._connecting[address] = [mine]
        d = defer.maybeDeferred(self._connect, address)
        d.addTimeout(self.connectTimeout, self._reactor)
        self._attempts[address] = d

        def connected(result):
            self._attempts.pop(address, None)
            waiting = self._connecting.pop(address, [])
            if not isinstance(result, Failure):
                if self.closed:
                    if getattr(result, "transport", None) is not None:
                        result.transport.loseConnection()
                    result = Failure(Unavailable("the client is closed"))
                else:
                    self.protocols[address] = result
            for w in waiting:
                if isinstance(result, Failure):
                    w.errback(result)
                else:
                    w.callback(result)

        d.addBoth(connected)
        return mine

    def drop(self, address, proto, abort=False):
        """Forget C{proto}, the connection to C{address}; C{abort} it too."""
        if self.protocols.get(address) is proto:
            del self.protocols[address]
        if abort:
            transport = getattr(proto, "transport", None)
            if transport is not None:
                if hasattr(transport, "abortConnection"):
                    transport.abortConnection()
                else:
                    transport.loseConnection()

    def stopConnecting(self):
        """Make no more connections; fail those under way."""
        self.closed = True
        for d in list(self._attempts.values()):
            d.cancel()

    def close(self):
        """
        Close every connection (after L{stopConnecting}).  @return: a
        Deferred firing once they are closed.
        """
        self.stopConnecting()
        waits = []
        for proto in list(self.protocols.values()):
            if getattr(proto, "transport", None) is not None:
                if hasattr(proto, "whenLost"):
                    waits.append(proto.whenLost())
                proto.transport.loseConnection()
        self.protocols.clear()
        return defer.gatherResults(waits, consumeErrors=True).addCallback(lambda _: None)
