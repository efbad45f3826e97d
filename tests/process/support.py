"""
Helpers of the process tests: real node processes on 127.0.0.1 (through
the launcher) and raw AMP calls to them, on pytest-twisted's reactor.
"""

import time

import pytest
from twisted.internet import defer
from twisted.protocols import amp

from twisted_raft.rpc import commands
from twisted_raft.tools import launcher


class Cluster(launcher.Nodes):
    """Real twistd nodes (no pidfile, in the foreground) in C{base}."""

    def __init__(self, base, n=3, tls=None, extra=(), http=False):
        # One call, so that the HTTP ports differ from the peer ports.
        ports = launcher.freePorts(2 * n if http else n)
        super().__init__([f"{launcher.HOST}:{p}" for p in ports[:n]], str(base),
                         runner=launcher.TWISTD, tls=tls, extra=extra,
                         httpPorts=ports[n:] or None)
        self.extra = list(extra)
        self.base = base
        self.ports = [int(a.rsplit(":", 1)[1]) for a in self.peers]

    def port(self, i):
        return self.ports[i - 1]

    def argv(self, i, dataId=None):
        return launcher.nodeArgv(i, self.peers, str(self.base), runner=launcher.TWISTD,
                                 dataId=dataId, tls=self.tls, extra=self.extra,
                                 http=self.httpEndpoint(i))

    def env(self):
        return launcher.environment()

    def killAll(self):
        self.kill()

    def logs(self):
        out = []
        for i in self.ids:
            path = self.base / f"n{i}.log"
            if path.exists():
                lines = path.read_text(errors="replace").splitlines()
                out.append(f"--- node {i} ---\n" + "\n".join(lines[-40:]))
        return "\n".join(out)


# -- async helpers (pytest-twisted's reactor) --------------------------------


def _reactor():
    from twisted.internet import reactor

    return reactor


def sleep(seconds):
    from twisted.internet.task import deferLater

    return deferLater(_reactor(), seconds, lambda: None)


def connect(port, tls=None, proto=None):
    """Deferred[AMP]: a connection to the node on C{port}, with TLS
    credentials C{tls} if given."""
    from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol, wrapClientTLS

    ep = TCP4ClientEndpoint(_reactor(), "127.0.0.1", port, timeout=1)
    if tls is not None:
        ep = wrapClientTLS(tls.clientCreator("127.0.0.1"), ep)
    return connectProtocol(ep, proto if proto is not None else amp.AMP())


@defer.inlineCallbacks
def call(port, command, timeout=3.0, tls=None, **kw):
    proto = yield connect(port, tls)
    try:
        d = proto.callRemote(command, **kw)
        d.addTimeout(timeout, _reactor())
        r = yield d
        return r
    finally:
        proto.transport.loseConnection()


@defer.inlineCallbacks
def statuses(c):
    out = {}
    for i in c.alive():
        try:
            out[i] = yield call(c.port(i), commands.Status, timeout=1)
        except Exception:
            pass
    return out


@defer.inlineCallbacks
def waitFor(what, check, deadline, c, interval=0.1):
    """Poll C{check()} (a Deferred-returning callable) every C{interval} s until truthy."""
    end = time.monotonic() + deadline
    while True:
        r = yield check()
        if r:
            return r
        if time.monotonic() > end:
            pytest.fail(f"timed out after {deadline}s waiting for {what}\n{c.logs()}")
        yield sleep(interval)


def waitForLeader(c, deadline=20):
    @defer.inlineCallbacks
    def check():
        s = yield statuses(c)
        leaders = [i for i, st in s.items() if st["role"] == "leader"]
        if len(leaders) == 1 and all(st["leader_id"] == leaders[0] for st in s.values()):
            return leaders[0]
        return None

    return waitFor("a leader", check, deadline, c)


@defer.inlineCallbacks
def write(c, via, command, deadline=8.0, **kw):
    """Send a write to node C{via}, retrying on UNAVAILABLE until C{deadline}."""
    end = time.monotonic() + deadline
    while True:
        try:
            r = yield call(c.port(via), command, timeout=6, **kw)
            return r
        except (commands.Unavailable, ConnectionError, OSError, defer.TimeoutError) as e:
            if time.monotonic() > end:
                pytest.fail(f"write via node {via} kept failing: {e!r}\n{c.logs()}")
        except Exception as e:  # connection refused and the like
            if time.monotonic() > end:
                pytest.fail(f"write via node {via} kept failing: {e!r}\n{c.logs()}")
        yield sleep(0.1)
