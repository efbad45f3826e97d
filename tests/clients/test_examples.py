"""
The programs in C{examples/} run, against three real nodes: the counter
(blocking, compare-and-set from many threads) counts every increment once,
the configuration reloader (asyncio, a watch on a prefix) follows every
change, and the WSGI application keeps each visitor's session.  (C{cluster}: the
module's three nodes, from C{tests/clients/conftest.py}.)
"""

import importlib.util
import json
import os
import select
import subprocess
import sys
import threading
import time
from wsgiref.util import setup_testing_defaults

import pytest

from tests.support import ROOT
from twisted_raft.client import BlockingClient
from twisted_raft.tools import launcher

EXAMPLES = os.path.join(ROOT, "examples")

pytestmark = pytest.mark.integration


def example(name):
    """The module C{examples/NAME.py}."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(EXAMPLES, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(name, *args):
    return [sys.executable, os.path.join(EXAMPLES, f"{name}.py"), *args]


def test_the_counter_counts_every_increment_once(cluster):
    done = subprocess.run(
        run("counter", "--cluster", ",".join(cluster.peers), "--key", "examples/counter",
            "--threads", "6", "--increments", "20"),
        env=launcher.environment(), capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip() == "examples/counter: 0 -> 120 (120 increments)"


def readLine(proc, deadline):
    """The next line of C{proc}'s stdout, waiting at most until C{deadline}."""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.1)
        if ready:
            line = proc.stdout.readline()
            assert line, f"the reloader exited: {proc.stderr.read()}"
            return json.loads(line)
    raise AssertionError("no line from the reloader in time")


def test_the_config_reloader_follows_every_change(cluster):
    with BlockingClient(cluster.peers, timeout=10.0) as client:
        client.put("cfg/color", b"blue")
        client.put("cfgx", b"not under the prefix")
        proc = subprocess.Popen(
            run("config_reloader", "--cluster", ",".join(cluster.peers), "--prefix", "cfg/"),
            env=launcher.environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL, text=True,
        )
        try:
            deadline = time.monotonic() + 30
            assert readLine(proc, deadline) == {"cfg/color": "blue"}
            client.put("cfg/size", b"10")
            assert readLine(proc, deadline) == {"cfg/color": "blue", "cfg/size": "10"}
            client.put("cfgx", b"still not")
            client.delete("cfg/color")
            assert readLine(proc, deadline) == {"cfg/size": "10"}
        finally:
            proc.kill()
            proc.wait()
            proc.stdout.close()
            proc.stderr.close()


def request(app, cookie=None):
    environ = {}
    setup_testing_defaults(environ)
    if cookie is not None:
        environ["HTTP_COOKIE"] = cookie
    answer = {}

    def start_response(status, headers):
        answer["status"], answer["headers"] = status, dict(headers)

    body = b"".join(app(environ, start_response))
    return answer["status"], answer["headers"], body.decode()


def test_the_wsgi_app_keeps_each_session(cluster):
    sessions = example("wsgi_sessions")
    with BlockingClient(cluster.peers, timeout=10.0) as client:
        app = sessions.makeApp(client)
        status, headers, body = request(app)
        assert status == "200 OK" and "Visit number 1 " in body
        cookie = headers["Set-Cookie"].split(";")[0]
        assert request(app, cookie)[2].startswith("Hello! Visit number 2 ")
        # a second visitor has a session of its own
        assert "Visit number 1 " in request(app)[2]
        # requests of one visitor at once, from many threads: each counts once
        threads = [threading.Thread(target=request, args=(app, cookie)) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert "Visit number 11 " in request(app, cookie)[2]
        # a malformed cookie starts a new session rather than reading another key
        assert "Visit number 1 " in request(app, f"{sessions.COOKIE}=../x")[2]
