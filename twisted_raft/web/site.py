"""
The HTTP site a node serves on its C{--http} endpoint.

Every resource under it is read-only and answers C{GET} (and C{HEAD}); the
site itself keeps per-request work small and logs nothing per request (an
access log at info would be per-connection noise).

The port may be reached by strangers, and it shares the node's process:
its file descriptors (the log's segments, the peer links, client
connections) and its disk.  So the site keeps no request body (a read-only
site has no use for one; Twisted would spool a large one to a temporary
file), and L{LimitedSite} bounds how many connections it holds open.
"""

import io

from twisted.protocols import policies
from twisted.web import pages, resource, server

MAX_CONNECTIONS = 64
"""HTTP connections held open at once: a scraper, a load balancer's checks
and a few dashboards need a handful; one more closes the one that has been
quiet longest."""


class _Discarded(io.BytesIO):
    """A request body's content file that keeps nothing."""

    def write(self, data):
        return len(data)


class NodeSite(server.Site):
    """
    A L{server.Site} that shows no tracebacks, keeps no access log and no
    request body: the port may be reached by strangers, and a request is
    not an event worth a log line.
    """

    noisy = False
    displayTracebacks = False

    def log(self, request):
        """Keep no access log (L{server.Site.log} writes one line per request)."""

    def getContentFile(self, length):
        """
        Where a request's body goes: nowhere.  (Twisted's default spools a
        body of 100 kB or more, or of unknown length, to a temporary file,
        as large as the client cares to send.)
        """
        return _Discarded()


class _Connection(policies.ProtocolWrapper):
    """One connection counted by L{LimitedSite}, with when it last sent."""

    lastReceived = 0.0

    def makeConnection(self, transport):
        self.lastReceived = self.factory.clock.seconds()
        super().makeConnection(transport)
        self.factory.admitted(self)

    def dataReceived(self, data):
        self.lastReceived = self.factory.clock.seconds()
        super().dataReceived(data)

    def close(self):
        """Close at once: nothing owed to it is worth waiting for."""
        transport = self.transport
        if transport is not None:
            abort = getattr(transport, "abortConnection", None)
            (abort or transport.loseConnection)()


class LimitedSite(policies.WrappingFactory):
    """
    C{site} with at most C{maximum} connections open: one more closes the
    connection that received nothing for longest (a scan, only then), so
    whoever opens connections cannot take the node's file descriptors.
    L{closeAll} closes every one (the node stops).

    @ivar protocols: C{{connection: 1}}, the connections open and counted.
    """

    protocol = _Connection
    noisy = False

    def __init__(self, site, maximum=MAX_CONNECTIONS, clock=None):
        super().__init__(site)
        if clock is None:
            from twisted.internet import reactor as clock
        self.maximum = maximum
        self.clock = clock

    def admitted(self, proto):
        if len(self.protocols) <= self.maximum:
            return
        victim = min((p for p in self.protocols if p is not proto),
                     key=lambda p: p.lastReceived)
        self.unregisterProtocol(victim)  # counted no more, even before it is gone
        victim.close()

    def unregisterProtocol(self, p):
        self.protocols.pop(p, None)

    def closeAll(self):
        for proto in list(self.protocols):
            self.unregisterProtocol(proto)
            proto.close()


class _Root(resource.Resource):
    """The site's root: its children, and a plain 404 for any other name
    (L{resource.Resource}'s own is deprecated for not escaping its text)."""

    def getChild(self, name, request):
        return pages.notFound()


def buildSite(children):
    """
    A L{NodeSite} whose root has C{children}: C{{b"metrics": resource, ...}}.
    The empty name C{b""} is the page at C{/}.
    """
    root = _Root()
    for name, child in children.items():
        root.putChild(name, child)
    return NodeSite(root)
