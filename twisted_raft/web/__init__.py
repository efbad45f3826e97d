"""
The node's HTTP side (C{--http}): Prometheus metrics, a health check and a
live dashboard, on twisted.web.  Read-only: nothing served here changes the
node, and nothing here is on the path of a client request.
"""
