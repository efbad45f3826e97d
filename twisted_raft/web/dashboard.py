"""
The live dashboard: the page at C{GET /}, its script and style, and the
JSON it draws from, C{GET /api/cluster} (a L{ClusterView} snapshot).

Everything the page needs is served by the node itself (no CDN, no font,
no image from elsewhere), and a Content-Security-Policy says so to the
browser: scripts, styles and requests only from the node, no inline
script.  The page escapes every value (it sets C{textContent}, never
C{innerHTML} with data) and changes nothing: it has no form and the site
answers C{GET}/C{HEAD} only.
"""

import importlib.resources
import json

from twisted.web import pages, resource

from twisted_raft.web.clusterview import ClusterView
from twisted_raft.web.readonly import ReadOnlyResource

CONTENT_SECURITY_POLICY = (
    b"default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self';"
    b" img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)

STATIC = {
    # URL name: (file under static/, content type)
    b"": ("dashboard.html", b"text/html; charset=utf-8"),
    b"dashboard.js": ("dashboard.js", b"text/javascript; charset=utf-8"),
    b"dashboard.css": ("dashboard.css", b"text/css; charset=utf-8"),
}


def _headers(request, contentType, cache):
    request.setHeader(b"content-type", contentType)
    request.setHeader(b"cache-control", cache)
    request.setHeader(b"x-content-type-options", b"nosniff")
    request.setHeader(b"content-security-policy", CONTENT_SECURITY_POLICY)
    request.setHeader(b"referrer-policy", b"no-referrer")


class StaticFile(ReadOnlyResource):
    """
    One file of the page, read once from the package (a few KiB), served
    as is.  Fetching the page also counts as looking at the cluster, so
    polling has started by the time the script first asks for data.
    """

    def __init__(self, name, contentType, view=None):
        super().__init__()
        self.body = importlib.resources.files(__package__).joinpath("static", name).read_bytes()
        self.contentType = contentType
        self.view = view

    def render_GET(self, request):
        if self.view is not None:
            self.view.touch()
        _headers(request, self.contentType, b"no-cache")
        return self.body


class ClusterResource(ReadOnlyResource):
    """C{GET /api/cluster}: the view's snapshot as JSON (shape: the README)."""

    def __init__(self, view):
        super().__init__()
        self.view = view

    def render_GET(self, request):
        self.view.touch()
        _headers(request, b"application/json", b"no-store")
        return json.dumps(self.view.snapshot(), separators=(",", ":")).encode()


class Directory(resource.Resource):
    """A resource with children only, answering anything else with a plain 404."""

    def getChild(self, path, request):
        return pages.notFound()


def dashboardChildren(view):
    """
    The site's children for the dashboard over C{view}: C{/} (the page),
    C{/dashboard.js}, C{/dashboard.css} and C{/api/cluster}.
    """
    children = {
        name: StaticFile(path, contentType, view if name == b"" else None)
        for name, (path, contentType) in STATIC.items()
    }
    api = Directory()
    api.putChild(b"cluster", ClusterResource(view))
    children[b"api"] = api
    return children


# -- wiring into a running node ---------------------------------------------------


def formatStatus(status, readsAnswered):
    """
    A C{Status} answer (the dict the AMP command sends) from the core's
    L{twisted_raft.raft.messages.Status}: the node's own row, read locally.
    """
    return {
        "node_id": status.nodeId,
        "role": status.role,
        "term": status.term,
        "leader_id": status.leaderId,
        "commit_index": status.commitIndex,
        "last_applied": status.lastApplied,
        "last_log_index": status.lastLogIndex,
        "voter": status.voter,
        "config_revision": status.configIndex,
        "reads": readsAnswered,
    }


class StatusFetcher:
    """
    Asks other members for their C{Status} over the client port, one cached
    connection per address (L{twisted_raft.connections.Connections}), with
    this node's own TLS credentials when the cluster uses mutual TLS (every
    connection must then present a certificate of the cluster's CA).
    Status is a client command: no token is sent.  A question that fails
    or is cancelled (the view's timeout) aborts its connection, so a
    half-open one is not reused.

    @param addressOf: C{addressOf(member) -> "host:port"}: where to dial
        the member (the node's C{--peers} override, else its configured
        address).
    """

    def __init__(self, reactor, addressOf, tls=None, connectTimeout=1.0):
        from twisted_raft.connections import Connections

        self.addressOf = addressOf
        self.connections = Connections(reactor, connectTimeout, tls=tls)

    def __call__(self, member):
        from twisted_raft.rpc.commands import Status

        address = self.addressOf(member)
        if not address:
            raise ValueError(f"member {member.id} has no address")
        d = self.connections.get(address)

        def ask(proto):
            asked = proto.callRemote(Status)
            asked.addErrback(self._dropped, address, proto)
            return asked

        return d.addCallback(ask)

    def _dropped(self, failure, address, proto):
        self.connections.drop(address, proto, abort=True)
        return failure

    def close(self):
        return self.connections.close()


class Dashboard:
    """
    The dashboard of one running node: its L{ClusterView}, the fetcher it
    asks the others with, and the site's children.
    """

    def __init__(self, view, fetcher=None):
        self.view = view
        self.fetcher = fetcher

    @classmethod
    def forService(cls, service):
        """
        The dashboard of a started L{twisted_raft.service.RaftKVService}
        (its node, server factory, peer set and TLS credentials).
        """
        from twisted_raft.config import formatAddress

        node, server, peerSet = service.node, service.factory, service.peerSet

        def addressOf(member):
            override = peerSet.overrides.get(member.id)
            return formatAddress(*override) if override is not None else member.address

        fetcher = StatusFetcher(service.reactor, addressOf, tls=service.tls)
        view = ClusterView(
            service.reactor, service.nodeId,
            configuration=lambda: node.configuration,
            localStatus=lambda: formatStatus(node.status(), server.readsAnswered),
            fetchStatus=fetcher,
            commitIndex=lambda: node.commitIndex,
        )
        return cls(view, fetcher)

    def children(self):
        return dashboardChildren(self.view)

    def start(self):
        self.view.start()

    def stop(self):
        """Stop polling and close the connections to the other members."""
        self.view.stop()
        if self.fetcher is not None:
            return self.fetcher.close()
        return None
