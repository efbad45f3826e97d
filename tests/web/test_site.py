"""
The HTTP port against a hostile or careless client: request bodies, HEAD,
paths below a resource, methods, and how many connections it holds; and
the service closing its HTTP side when it stops.
"""

import pytest
import pytest_twisted
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import LogLevel, globalLogPublisher

from twisted_raft.testing.cluster import SimCluster
from twisted_raft.web.dashboard import dashboardChildren
from twisted_raft.web.health import HealthResource
from twisted_raft.web.metrics import MetricsResource, NodeMetrics
from twisted_raft.web.site import LimitedSite, buildSite


class FakeView:
    def touch(self):
        pass

    def snapshot(self):
        return {"node_id": 1, "members": []}


def _reactor():
    from twisted.internet import reactor

    return reactor


@pytest.fixture
def served():
    """A node's whole site on a real port: C{(url base, log events)}."""
    from twisted.internet.endpoints import serverFromString

    cluster = SimCluster(3, seed=4)
    leader = cluster.waitForLeader()
    site = buildSite({
        b"metrics": MetricsResource(NodeMetrics(leader, processCollector=False)),
        b"health": HealthResource(leader),
        **dashboardChildren(FakeView()),
    })
    events = []
    globalLogPublisher.addObserver(events.append)
    port = pytest_twisted.blockon(
        serverFromString(_reactor(), "tcp:0:interface=127.0.0.1").listen(LimitedSite(site))
    )
    yield f"127.0.0.1:{port.getHost().port}", events
    globalLogPublisher.removeObserver(events.append)
    pytest_twisted.blockon(defer.maybeDeferred(port.stopListening))


@defer.inlineCallbacks
def exchange(address, data, timeout=3.0):
    """Send C{data} raw, then C{(status code, response bytes)} once closed."""
    from twisted.internet import protocol
    from twisted.internet.endpoints import clientFromString, connectProtocol

    class Raw(protocol.Protocol):
        def __init__(self):
            self.received = b""
            self.done = defer.Deferred()

        def dataReceived(self, more):
            self.received += more

        def connectionLost(self, reason):
            self.done.callback(self.received)

    host, port = address.rsplit(":", 1)
    raw = Raw()
    yield connectProtocol(clientFromString(_reactor(), f"tcp:host={host}:port={port}"), raw)
    raw.transport.write(data)
    d = raw.done
    d.addTimeout(timeout, _reactor())
    received = yield d
    return int(received.split(b" ", 2)[1]), received


def request(method, path, headers=b"", body=b""):
    return (method + b" " + path + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            + headers + b"\r\n" + body)


@pytest_twisted.inlineCallbacks
def test_a_request_body_is_kept_nowhere(served, monkeypatch):
    """Twisted spools a body of 100 kB or more to a temporary file, as large as
    the client sends: the site keeps none, in memory or on disk."""
    import tempfile

    spooled = []
    real = tempfile.TemporaryFile
    monkeypatch.setattr(tempfile, "TemporaryFile", lambda *a, **k: spooled.append(1) or real())
    address, _ = served
    body = b"x" * 300_000
    code, _ = yield exchange(address, request(
        b"POST", b"/metrics", b"Content-Length: %d\r\n" % len(body), body))
    assert code == 405
    code, _ = yield exchange(address, request(
        b"POST", b"/", b"Transfer-Encoding: chunked\r\n",
        b"%x\r\n" % len(body) + body + b"\r\n0\r\n\r\n"))
    assert code == 405
    assert spooled == []


@pytest.mark.parametrize("path", [b"/metrics", b"/health", b"/", b"/api/cluster",
                                  b"/dashboard.js"])
@pytest_twisted.inlineCallbacks
def test_head_has_gets_headers_no_body_and_logs_nothing(served, path):
    address, events = served
    code, get = yield exchange(address, request(b"GET", path))
    del events[:]
    code, head = yield exchange(address, request(b"HEAD", path))
    assert code == 200
    headers, _, body = head.partition(b"\r\n\r\n")
    assert body == b""
    length = [h for h in headers.split(b"\r\n") if h.lower().startswith(b"content-length:")]
    assert length and int(length[0].split(b":")[1]) > 0
    logged = [e for e in events if e.get("log_level", LogLevel.debug) >= LogLevel.info
              # this test's own client connection
              and e.get("log_namespace") != "twisted.internet.endpoints.OneShotFactory"]
    assert logged == []


@pytest.mark.parametrize("method", [b"POST", b"PUT", b"DELETE", b"OPTIONS", b"TRACE"])
@pytest.mark.parametrize("path", [b"/", b"/api/cluster", b"/dashboard.css", b"/metrics"])
@pytest_twisted.inlineCallbacks
def test_every_other_method_is_405_with_allow(served, method, path):
    address, _ = served
    code, response = yield exchange(address, request(method, path))
    assert code == 405, response[:200]
    assert b"\r\nAllow: GET, HEAD\r\n" in response


@pytest.mark.parametrize("path", [b"/api/cluster/x", b"/api/cluster/", b"/dashboard.js/x",
                                  b"//metrics", b"/metrics/x", b"/health/", b"/../metrics/x",
                                  b"/nothing"])
@pytest_twisted.inlineCallbacks
def test_nothing_lives_below_a_resource(served, path):
    address, _ = served
    code, _ = yield exchange(address, request(b"GET", path))
    assert code == 404


@pytest_twisted.inlineCallbacks
def test_a_query_string_changes_nothing(served):
    address, _ = served
    code, _ = yield exchange(address, request(b"GET", b"/health?a=1&a=2&b=%zz&" + b"c=x" * 500))
    assert code == 200


# -- how many connections ----------------------------------------------------------


class Channel:
    """A stand-in for the site's HTTP channel."""

    def __init__(self):
        self.received = b""
        self.lost = False

    def makeConnection(self, transport):
        self.transport = transport

    def dataReceived(self, data):
        self.received += data

    def connectionLost(self, reason):
        self.lost = True


class Factory:
    def doStart(self):
        pass

    def doStop(self):
        pass

    def buildProtocol(self, addr):
        return Channel()


def connect(site):
    proto = site.buildProtocol(None)
    transport = StringTransport()
    proto.makeConnection(transport)
    return proto, transport


def test_connections_beyond_the_limit_close_the_quietest():
    clock = Clock()
    site = LimitedSite(Factory(), maximum=3, clock=clock)
    opened = []
    for i in range(3):
        opened.append(connect(site))
        clock.advance(1)
    opened[0][0].dataReceived(b"GET")  # the first is the liveliest now
    clock.advance(1)
    newest = connect(site)
    assert len(site.protocols) == 3
    assert [t.disconnecting for _, t in opened] == [False, True, False]
    assert not newest[1].disconnecting
    for i in range(100):
        connect(site)
    assert len(site.protocols) == 3


def test_close_all():
    site = LimitedSite(Factory(), maximum=3, clock=Clock())
    opened = [connect(site) for i in range(2)]
    site.closeAll()
    assert [t.disconnecting for _, t in opened] == [True, True]
    assert site.protocols == {}


# -- the service's HTTP side --------------------------------------------------------


def test_the_service_closes_its_http_connections_and_polls_no_more_once_stopped():
    from twisted.internet.testing import MemoryReactorClock

    from twisted_raft.config import NodeConfig
    from twisted_raft.service import RaftKVService
    from twisted_raft.storage.memory import MemoryStorage

    class Storage(MemoryStorage):
        def __init__(self, *a):
            super().__init__()

        def start(self):
            pass

    reactor = MemoryReactorClock()
    config = NodeConfig(
        1, [("127.0.0.1", 7001), ("127.0.0.1", 7002)], "unused",
        listen="tcp:7001:interface=127.0.0.1", http="tcp:7101:interface=127.0.0.1",
    )
    svc = RaftKVService(config, reactor=reactor, storageFactory=Storage, exitOnFailure=False)
    svc.startService()
    (site,) = [f for port, f, *_ in reactor.tcpServers if port == 7101]
    proto = site.buildProtocol(None)
    transport = StringTransport()
    proto.makeConnection(transport)
    proto.dataReceived(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    assert transport.value().startswith(b"HTTP/1.1 200 ")
    view = svc.dashboard.view
    done = []
    svc.stopService().addBoth(done.append)
    assert done == [None]
    assert transport.disconnecting
    view.touch()  # a request that was on its way
    assert not view.polling
