"""
A plain WSGI application that keeps its web sessions in raftkv.

    python examples/wsgi_sessions.py [--cluster 127.0.0.1:8001,...] [--port 8080]

Each visitor gets a session cookie; the session (a JSON object) lives under
C{sessions/<id>}, so any number of web workers, on any machines, share it
and a worker that dies loses nothing.  A request updates its session with
compare-and-set, so two requests of one visitor at once both count.  One
L{BlockingClient} serves every thread of the server.  Any WSGI server runs
L{makeApp}'s application; C{main} uses the standard library's C{wsgiref}.
"""

import argparse
import json
import secrets
from http.cookies import SimpleCookie
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIServer, make_server

from twisted_raft.client import BlockingClient

LOCAL_CLUSTER = "127.0.0.1:8001,127.0.0.1:8002,127.0.0.1:8003"
COOKIE = "raftkv_session"


def sessionId(environ):
    """The request's session id, or C{None} (a missing or malformed cookie)."""
    cookie = SimpleCookie(environ.get("HTTP_COOKIE", ""))
    morsel = cookie.get(COOKIE)
    if morsel is None or not morsel.value.isalnum() or len(morsel.value) > 64:
        return None
    return morsel.value


def countVisit(client, sid):
    """Add one to the session's visit count; return the session."""
    key = f"sessions/{sid}"
    while True:
        stored = client.get(key)
        session = json.loads(stored) if stored is not None else {"visits": 0}
        session["visits"] += 1
        succeeded, _ = client.compareAndSet(key, stored, json.dumps(session).encode())
        if succeeded:
            return session


def makeApp(client):
    """The WSGI application, keeping sessions through C{client}."""

    def app(environ, start_response):
        sid = sessionId(environ) or secrets.token_hex(16)
        session = countVisit(client, sid)
        body = f"Hello! Visit number {session['visits']} of this session.\n".encode()
        start_response("200 OK", [
            ("Content-Type", "text/plain; charset=utf-8"),
            ("Content-Length", str(len(body))),
            ("Set-Cookie", f"{COOKIE}={sid}; HttpOnly; SameSite=Lax; Path=/"),
        ])
        return [body]

    return app


class ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


def main(argv=None):
    parser = argparse.ArgumentParser(description="Serve a WSGI app with sessions in raftkv.")
    parser.add_argument("--cluster", default=LOCAL_CLUSTER, help="host:port of each node")
    parser.add_argument("--port", type=int, default=8080)
    args = parser.parse_args(argv)
    with BlockingClient(args.cluster.split(","), timeout=10.0) as client:
        with make_server("127.0.0.1", args.port, makeApp(client),
                         server_class=ThreadingWSGIServer) as server:
            print(f"serving on http://127.0.0.1:{args.port}/", flush=True)
            try:
                server.serve_forever()
            except KeyboardInterrupt:
                pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
