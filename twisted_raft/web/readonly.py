"""
The base of the node's HTTP resources: read-only, C{GET} and C{HEAD} only.
"""

from twisted.web import resource

ALLOWED = (b"GET", b"HEAD")


class ReadOnlyResource(resource.Resource):
    """
    A resource that answers C{GET} (and C{HEAD}, which twisted.web serves
    from C{render_GET} without the body) and C{405 Method Not Allowed} to
    every other method, with no body.  (twisted.web alone answers C{501}
    to methods it does not know, such as C{PUT} or C{DELETE}.)
    """

    allowedMethods = ALLOWED

    def render(self, request):
        if request.method not in ALLOWED:
            request.setResponseCode(405)
            request.setHeader(b"allow", b", ".join(ALLOWED))
            return b""
        return super().render(request)
