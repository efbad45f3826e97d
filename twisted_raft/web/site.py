"""
The HTTP site a node serves on its C{--http} endpoint.

Every resource under it is read-only and answers C{GET} (and C{HEAD}); the
site itself keeps per-request work small and logs nothing per request (an
access log at info would be per-connection noise).
"""

from twisted.web import resource, server


class NodeSite(server.Site):
    """
    A L{server.Site} that shows no tracebacks and keeps no access log: the
    port may be reached by strangers, and a request is not an event worth a
    log line.
    """

    noisy = False
    displayTracebacks = False

    def log(self, request):
        """Keep no access log (L{server.Site.log} writes one line per request)."""


def buildSite(children):
    """
    A L{NodeSite} whose root has C{children}: C{{b"metrics": resource, ...}}.
    The empty name C{b""} is the page at C{/}.
    """
    root = resource.Resource()
    for name, child in children.items():
        root.putChild(name, child)
    return NodeSite(root)
