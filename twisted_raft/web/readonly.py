"""
The base of the node's HTTP resources: read-only, C{GET} and C{HEAD} only.
"""

from twisted.web import pages, resource

ALLOWED = (b"GET", b"HEAD")


class ReadOnlyResource(resource.Resource):
    """
    A resource that answers C{GET}, C{HEAD} (the headers of C{GET}, without
    its body) and C{405 Method Not Allowed} to every other method, with no
    body.  (twisted.web alone answers C{501} to methods it does not know,
    such as C{PUT} or C{DELETE}, and logs a line at info for every C{HEAD}
    a resource answers with a body or without a C{render_HEAD}.)
    """

    allowedMethods = ALLOWED

    def getChild(self, path, request):
        # Nothing below a resource: /metrics/x, /api/cluster/x, //metrics.
        return pages.notFound()

    def render(self, request):
        if request.method not in ALLOWED:
            request.setResponseCode(405)
            request.setHeader(b"allow", b", ".join(ALLOWED))
            return b""
        return super().render(request)

    def render_HEAD(self, request):
        body = self.render_GET(request)
        request.setHeader(b"content-length", b"%d" % (len(body),))
        return b""
