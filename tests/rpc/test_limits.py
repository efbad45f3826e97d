"""
The overload limits (L{twisted_raft.rpc.limits}) on a node's AMP server,
over in-memory connections (twisted.test.iosim) with stub nodes and a
task.Clock: connections per node, requests in flight per connection, and
bytes of pending writes.
"""

import pytest
from OpenSSL import SSL
from twisted.internet import defer, protocol
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import LogLevel, globalLogPublisher
from twisted.protocols import amp
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.test import iosim
from zope.interface import implementer

from twisted_raft.raft import messages
from twisted_raft.rpc import commands
from twisted_raft import kv
from twisted_raft.rpc.commands import NotProposed, Overloaded, PermissionDenied, Unavailable
from twisted_raft.rpc.limits import PendingBytes
from twisted_raft.rpc.peers import AMPTransport
from twisted_raft.rpc.server import NodeServerFactory
from twisted_raft.tls import TLSCredentials
from twisted_raft.tools import certs

from tests.support import (
    BoxCollector,
    PumpEndpoint,
    Pumps,
    StubNode,
    authority,
    captured,
    failureOf,
    proveMember,
    result,
    tlsFiles,
)

KiB = 1024


class _Client(amp.AMP):
    def __init__(self):
        super().__init__()
        self.lost = []

    def connectionLost(self, reason):
        self.lost.append(reason)
        super().connectionLost(reason)


class Connection:
    """One client connection to C{factory}, pumped by C{pumps}."""

    def __init__(self, factory, clock, pumps):
        self.client, self.server, pump = iosim.connectedServerAndClient(
            lambda: factory.buildProtocol(None), _Client, clock=clock
        )
        self.pumps = pumps
        pumps.add(pump)
        self.lost = self.client.lost
        self.reading = []  # the server transport's pause/resume calls, in order
        transport = self.server.transport
        if transport is not None:  # else refused, and already closed
            transport.pauseProducing = lambda: self.reading.append("pause")
            transport.resumeProducing = lambda: self.reading.append("resume")

    def call(self, command, **kw):
        d = captured(self.client.callRemote(command, **kw))
        self.pumps.flush()
        return d

    def close(self):
        self.client.transport.loseConnection()
        self.pumps.flush()


class Node:
    """A stub node's server with the given limits; optionally a follower of C{leader}."""

    def __init__(self, node, leader=None, leaderLimits=None, **limits):
        self.clock = Clock()
        self.node = node
        self.pumps = Pumps()
        peers = None
        if leader is not None:
            self.leaderFactory = NodeServerFactory(
                leader, leader.store, None, authority(leader.nodeId), self.clock,
                **(leaderLimits or {})
            )
            endpoint = PumpEndpoint(self.leaderFactory, self.clock)
            peers = AMPTransport({leader.nodeId: endpoint}, authority(node.nodeId), self.clock)
            peers.startService()
            self.pumps.add(*endpoint.pumps)
            self.pumps.flush()  # the peer link's handshake
        self.factory = NodeServerFactory(
            node, node.store, peers, authority(node.nodeId), self.clock, **limits
        )

    def connect(self):
        c = Connection(self.factory, self.clock, self.pumps)
        self.pumps.flush()  # a connection it made room for is closed
        return c

    def advance(self, seconds):
        self.clock.advance(seconds)
        self.pumps.flush()


@pytest.fixture
def warnings():
    events = []

    def observer(event):
        if event.get("log_level") == LogLevel.warn:
            events.append(event)

    globalLogPublisher.addObserver(observer)
    yield events
    globalLogPublisher.removeObserver(observer)


def _refusals(events, what):
    return [e for e in events if what in e.get("log_format", "")]


# -- connections per node -------------------------------------------------------


def test_a_connection_over_the_limit_is_closed_at_once(warnings):
    n = Node(StubNode(), maxConnections=2)
    first, second = n.connect(), n.connect()
    third = n.connect()
    assert third.lost and not first.lost and not second.lost
    assert n.factory.connections.open == 2
    assert result(first.call(commands.Put, key="k", value=b"v")) == {"revision": 1, "prev_kv": None}
    # a closed connection makes room for a new one
    first.close()
    assert n.factory.connections.open == 1
    fourth = n.connect()
    assert not fourth.lost
    assert result(fourth.call(commands.Get, key="k")) == {"found": True, "value": b"v"}


def test_refused_connections_are_logged_at_most_once_per_few_seconds(warnings):
    n = Node(StubNode(), maxConnections=1)
    first = n.connect()
    for _ in range(50):
        assert n.connect().lost
    assert len(_refusals(warnings, "--max-connections")) == 1
    n.advance(5.0)
    first.call(commands.Status)  # not idle: no room to make
    assert n.connect().lost
    logged = _refusals(warnings, "--max-connections")
    assert len(logged) == 2 and logged[1]["count"] == 50  # 49 unlogged + this one


def test_an_authenticated_peer_connection_stops_counting():
    n = Node(StubNode(), maxConnections=2)
    peer, client = n.connect(), n.connect()
    n.factory.peerAuthenticated(peer.server)
    assert n.factory.connections.open == 1
    another = n.connect()
    assert not another.lost and n.factory.connections.open == 2
    assert n.connect().lost  # the limit still holds for clients
    # saying it twice, or the peer's connection ending, does not count it again
    n.factory.peerAuthenticated(peer.server)
    peer.close()
    assert peer.lost and n.factory.connections.open == 2
    client.close()
    assert n.factory.connections.open == 1
    assert not n.connect().lost


# -- requests in flight per connection ------------------------------------------------


def test_reading_pauses_at_the_limit_and_resumes_below_it():
    node = StubNode()
    node.hold = True
    n = Node(node, maxRequestsPerConnection=3)
    c = n.connect()
    puts = [c.call(commands.Put, key=f"k{i}", value=b"v") for i in range(2)]
    assert c.reading == [] and c.server.inflight == 2
    puts.append(c.call(commands.Put, key="k2", value=b"v"))
    assert c.reading == ["pause"] and c.server.readingPaused
    # a request that arrives anyway (already read) waits, not parsed ...
    status = c.call(commands.Status)
    assert not status.called
    assert c.server.inflight == 3 and c.reading == ["pause"]
    node.held[0].callback((1, None))
    n.pumps.flush()
    assert result(puts[0]) == {"revision": 1, "prev_kv": None}
    # ... until reading resumes; answered at once, it is not in flight
    assert result(status)["node_id"] == 1
    assert c.reading == ["pause", "resume"] and c.server.inflight == 2
    node.held[1].callback((2, None))
    node.held[2].errback(messages.CommitUnknown("deposed"))
    n.pumps.flush()
    failureOf(puts[2], Unavailable)
    assert c.server.inflight == 0 and c.reading == ["pause", "resume"]


def test_reads_count_as_in_flight_too():
    node = StubNode()
    node.holdReads = True
    n = Node(node, maxRequestsPerConnection=2)
    c = n.connect()
    gets = [c.call(commands.Get, key="k") for _ in range(2)]
    assert c.reading == ["pause"]
    node.heldReads[0].callback(None)
    n.pumps.flush()
    assert result(gets[0]) == {"found": False, "value": b""}
    assert c.reading == ["pause", "resume"]


def test_each_connection_has_its_own_limit():
    node = StubNode()
    node.hold = True
    n = Node(node, maxRequestsPerConnection=1)
    greedy, other = n.connect(), n.connect()
    greedy.call(commands.Put, key="a", value=b"v")
    assert greedy.reading == ["pause"] and other.reading == []
    other.call(commands.Put, key="b", value=b"v")
    assert other.reading == ["pause"]


def test_a_request_that_times_out_leaves_flight():
    node = StubNode()
    node.hold = True
    n = Node(node, maxRequestsPerConnection=1)
    c = n.connect()
    d = c.call(commands.Put, key="k", value=b"v")
    assert c.reading == ["pause"]
    n.advance(n.factory.requestTimeout)
    failureOf(d, Unavailable)
    assert c.server.inflight == 0 and c.reading == ["pause", "resume"]


def test_answers_left_unread_pause_reading_until_they_drain():
    n = Node(StubNode(), maxRequestsPerConnection=2)
    c = n.connect()
    proto = c.server
    # the transport says its send buffer is full (the client does not read) ...
    proto.pauseProducing()
    assert c.reading == ["pause"]
    # ... and drained: reading resumes
    proto.resumeProducing()
    assert c.reading == ["pause", "resume"]


def test_reading_stays_paused_while_either_reason_holds():
    node = StubNode()
    node.hold = True
    n = Node(node, maxRequestsPerConnection=1)
    c = n.connect()
    c.call(commands.Put, key="k", value=b"v")
    c.server.pauseProducing()  # answers unread too
    node.held[0].callback((1, None))
    n.pumps.flush()
    assert c.reading == ["pause"]  # still: the send buffer is full
    c.server.resumeProducing()
    assert c.reading == ["pause", "resume"]


def test_the_connection_is_the_transports_streaming_producer():
    n = Node(StubNode())
    c = n.connect()
    assert c.server.transport.producer is c.server
    assert c.server.transport.streamingProducer


def test_the_default_limit_never_throttles_a_bench_connection():
    """Bench clients keep 256 requests in flight per connection."""
    node = StubNode()
    node.hold = True
    n = Node(node)
    c = n.connect()
    for i in range(256):
        c.client.callRemote(commands.Put, key=f"k{i}", value=b"v").addErrback(lambda f: None)
    n.pumps.flush()
    assert c.server.inflight == 256 and c.reading == []


# -- bytes of pending writes ----------------------------------------------------------------


def _pending(n):
    return n.factory.pendingWrites.pending


def test_a_write_over_the_budget_is_not_proposed_overloaded():
    node = StubNode()
    node.hold = True
    n = Node(node, maxPendingBytes=3 * KiB)
    c = n.connect()
    first = c.call(commands.Put, key="a", value=b"x" * (2 * KiB))
    assert not first.called and _pending(n) > 2 * KiB
    second = c.call(commands.Put, key="b", value=b"x" * (2 * KiB))
    f = failureOf(second, Overloaded)  # a NotProposed: safe to retry
    assert isinstance(f.value, NotProposed)
    assert str(f.value) == "not proposed: overloaded"
    assert len(node.proposed) == 1  # nothing proposed for the refused write
    # the refused connection is not read until the budget has room again
    waiting = c.call(commands.Delete, key="d")
    assert not waiting.called and len(node.proposed) == 1
    # on another, a small write still fits, and reads are not charged
    other = n.connect()
    small = other.call(commands.Delete, key="c")
    assert len(node.proposed) == 2 and not small.called
    node.store.data["a"] = b"old"
    assert result(other.call(commands.Get, key="a", stale=True))["value"] == b"old"
    node.held[0].callback((1, None))
    node.held[1].callback((2, None))
    n.advance(0)
    assert result(first) == {"revision": 1, "prev_kv": None}
    # room: the waiting connection is read again, its Delete proposed
    assert len(node.proposed) == 3 and node.proposed[2] == kv.encodeDelete("d")
    node.held[2].callback((3, None))
    n.advance(0)
    assert result(waiting)["revision"] == 3
    assert _pending(n) == 0
    third = c.call(commands.Put, key="b", value=b"x" * (2 * KiB))
    assert not third.called and len(node.proposed) == 4


def test_the_refusal_reaches_a_client_as_safe_to_retry():
    node = StubNode()
    node.hold = True
    n = Node(node, maxPendingBytes=100)
    c = n.connect()
    c.call(commands.Put, key="a", value=b"x" * 80)
    raw = captured(c.client._sendBoxCommand(
        b"Put", amp.AmpBox(key=b"b", value=b"x" * 80)
    ))
    n.pumps.flush()
    f = failureOf(raw, amp.RemoteAmpError)
    assert f.value.errorCode == commands.UNAVAILABLE
    assert f.value.description == "not proposed: overloaded"


def test_one_write_larger_than_the_budget_gets_through_alone():
    n = Node(StubNode(), maxPendingBytes=KiB)
    c = n.connect()
    assert result(c.call(commands.Put, key="big", value=b"x" * (4 * KiB))) == {"revision": 1, "prev_kv": None}
    assert _pending(n) == 0


@pytest.mark.parametrize("how", ["answer", "error", "timeout", "connection lost"])
def test_the_budget_is_released_however_a_write_ends(how):
    node = StubNode()
    node.hold = True
    n = Node(node, maxPendingBytes=64 * KiB)
    c = n.connect()
    writes = [
        c.call(commands.Put, key="a", value=b"x" * 1000),
        c.call(commands.CompareAndSet, key="a", expected=b"y", value=b"z" * 500),
        c.call(commands.Delete, key="a", client_id="me", sequence=1),
    ]
    assert _pending(n) > 1500
    if how == "connection lost":
        c.close()
        assert c.lost
        assert _pending(n) > 1500  # still held: the node still works on them
    if how == "timeout":
        n.advance(n.factory.requestTimeout)
        assert all(w.called for w in writes)
        # answered, but the core still holds the proposals: so do we
        assert _pending(n) > 1500
    if how == "timeout":
        for d in node.held:
            d.errback(messages.CommitUnknown("deposed"))
        n.pumps.flush()
    else:
        for i, d in enumerate(node.held):
            if how == "error":
                d.errback(messages.StorageFailed("disk"))
            else:
                d.callback((i + 1, None))
        n.pumps.flush()
    assert _pending(n) == 0
    if how != "connection lost":
        assert all(w.called for w in writes)
    assert n.clock.getDelayedCalls() == []


def test_a_write_refused_for_other_reasons_is_not_charged():
    node = StubNode()
    node.proposeError = RuntimeError("core bug")
    n = Node(node, maxPendingBytes=64 * KiB)
    c = n.connect()
    failureOf(c.call(commands.Put, key="a", value=b"x"), Unavailable)
    failureOf(c.call(commands.Put, key="", value=b"x"))  # invalid: never accepted
    assert _pending(n) == 0


def test_a_follower_charges_what_it_forwards_and_releases_it():
    leader = StubNode(nodeId=1)
    leader.hold = True
    follower = StubNode(nodeId=2, role=messages.FOLLOWER, leaderId=1)
    n = Node(follower, leader=leader, maxPendingBytes=3 * KiB,
             leaderLimits=dict(maxPendingBytes=64 * KiB))
    c = n.connect()
    first = c.call(commands.Put, key="a", value=b"x" * (2 * KiB))
    assert len(leader.proposed) == 1
    assert _pending(n) > 2 * KiB
    assert n.leaderFactory.pendingWrites.pending > 2 * KiB
    # the follower's own budget refuses the next one; the leader never sees it
    f = failureOf(c.call(commands.Put, key="b", value=b"x" * (2 * KiB)), NotProposed)
    assert "overloaded" in str(f.value)
    assert len(leader.proposed) == 1
    leader.held[0].callback((1, None))
    n.pumps.flush()
    assert result(first) == {"revision": 1, "prev_kv": None}
    assert _pending(n) == 0 and n.leaderFactory.pendingWrites.pending == 0


def test_a_leader_over_budget_refuses_a_forwarded_write_and_the_follower_relays_it():
    leader = StubNode(nodeId=1)
    leader.hold = True
    follower = StubNode(nodeId=2, role=messages.FOLLOWER, leaderId=1)
    n = Node(follower, leader=leader, leaderLimits=dict(maxPendingBytes=3 * KiB))
    c = n.connect()
    c.call(commands.Put, key="a", value=b"x" * (2 * KiB))
    d = c.call(commands.Put, key="b", value=b"x" * (2 * KiB))
    # relayed at once, by type: not sent to the leader again and again
    f = failureOf(d, Overloaded)
    assert str(f.value) == "not proposed: overloaded"
    assert len(leader.proposed) == 1
    assert n.leaderFactory.pendingWrites.pending > 2 * KiB
    assert _pending(n) > 2 * KiB  # the first write, still forwarded
    leader.held[0].callback((1, None))
    n.pumps.flush()
    assert _pending(n) == 0 and n.leaderFactory.pendingWrites.pending == 0


def test_overloaded_writes_are_logged_at_most_once_per_few_seconds(warnings):
    budget = PendingBytes(10, Clock())
    budget.charge(8)
    for _ in range(20):
        with pytest.raises(Overloaded):
            budget.charge(8)
    assert len(_refusals(warnings, "--max-pending-bytes")) == 1
    assert budget.pending == 8


# -- a burst already read stops at the limits (review of issue 10, 1) -----------------


class SendBuffer(StringTransport):
    """
    A transport with a send buffer as Twisted's TCP has: beyond
    C{bufferSize} bytes unsent it pauses its streaming producer
    (C{abstract.FileDescriptor._maybePauseProducer}), and L{drain} (the
    other end reading) resumes it.
    """

    bufferSize = 64 * KiB

    def write(self, data):
        super().write(data)
        if (self.producer is not None and self.streaming
                and len(self.io.getvalue()) > self.bufferSize):
            self.producer.pauseProducing()

    def drain(self):
        sent = self.value()
        self.clear()
        if self.producer is not None:
            self.producer.resumeProducing()
        return sent


class _TwistedParsing(NodeServerFactory.protocol):
    _fastPaths = False


PARSERS = pytest.mark.parametrize("fast", [True, False], ids=["fast parser", "Twisted's parser"])


def _served(node, fast=True, **limits):
    """A node's connection over a L{SendBuffer}: C{(protocol, transport)}."""
    factory = NodeServerFactory(node, node.store, None, authority(node.nodeId), Clock(), **limits)
    if not fast:
        factory.protocol = _TwistedParsing
    proto = factory.buildProtocol(None)
    transport = SendBuffer()
    proto.makeConnection(transport)
    return proto, transport


def _requests(*calls):
    """The bytes a client sends for C{calls}, C{(command, arguments)} each."""
    client = amp.AMP()
    client.makeConnection(StringTransport())
    for command, kw in calls:
        client.callRemote(command, **kw).addErrback(lambda f: None)
    return client.transport.value()


def _boxes(data):
    """The AMP boxes in C{data}, as dicts."""
    collector = BoxCollector()
    parser = amp.BinaryBoxProtocol(collector)
    parser.makeConnection(StringTransport())
    parser.dataReceived(data)
    return collector.boxes


def _answers(data):
    return sum(b"_answer" in box for box in _boxes(data))


@PARSERS
def test_stale_gets_in_one_read_stop_when_the_send_buffer_fills(fast):
    """
    A client that sends without reading: answered at once, stale Gets are
    never in flight, so only the send buffer can stop them; the rest of
    the read waits unparsed, and is served as the client reads.
    """
    node = StubNode()
    node.store.data["k"] = b"x" * (20 * KiB)
    proto, transport = _served(node, fast)
    burst = _requests(*[(commands.Get, dict(key="k", stale=True))] * 100)
    assert len(burst) < 8 * KiB  # one read
    proto.dataReceived(burst)
    # 64 KiB of buffer: the 4th 20 KiB answer goes over it
    assert _answers(transport.value()) == 4 and proto.readingPaused
    assert transport.producerState == "paused"
    total, rounds = 0, 0
    while True:
        sent = _answers(transport.drain())
        assert sent <= 4
        total += sent
        rounds += 1
        if not sent:
            break
    assert total == 100 and rounds == 26
    assert not proto.readingPaused and transport.producerState == "producing"


@PARSERS
def test_requests_in_one_read_stop_at_the_in_flight_limit(fast):
    node = StubNode()
    node.hold = True
    proto, transport = _served(node, fast, maxRequestsPerConnection=3)
    proto.dataReceived(_requests(
        *[(commands.Put, dict(key=f"k{i}", value=b"v")) for i in range(10)]
    ))
    assert len(node.proposed) == 3 and proto.readingPaused
    for i in range(10):
        node.held[i].callback((i + 1, None))
        assert len(node.proposed) == min(10, i + 4)
    assert _answers(transport.value()) == 10 and proto.inflight == 0
    assert not proto.readingPaused
    # the answers in order, nothing dispatched twice
    answers = _boxes(transport.value())
    assert [int(a[b"revision"]) for a in answers] == list(range(1, 11))
    assert [int(a[b"_answer"], 16) for a in answers] == list(range(1, 11))
    assert len(node.proposed) == 10


@PARSERS
def test_a_request_split_across_the_pause_is_parsed_whole(fast):
    node = StubNode()
    node.hold = True
    proto, transport = _served(node, fast, maxRequestsPerConnection=1)
    data = _requests(*[(commands.Put, dict(key=f"k{i}", value=b"v" * 300)) for i in range(3)])
    proto.dataReceived(data[:500])  # the first request and part of the second
    assert len(node.proposed) == 1
    proto.dataReceived(data[500:])  # still paused: kept
    assert len(node.proposed) == 1
    node.held[0].callback((1, None))
    node.held[1].callback((2, None))
    node.held[2].callback((3, None))
    assert [d[-4:] for d in node.proposed] == [b"vvvv"] * 3 and _answers(transport.value()) == 3


# -- idle connections make room (review of issue 10, 2) -------------------------------


def test_at_the_limit_the_connection_idle_longest_makes_room(warnings):
    n = Node(StubNode(), maxConnections=3)
    a, b, c = n.connect(), n.connect(), n.connect()
    n.advance(2.0)
    a.call(commands.Status)  # a spoke lately; b and c are idle, b longest (as old)
    d = n.connect()
    assert not d.lost and b.lost and not a.lost and not c.lost
    assert n.factory.connections.open == 3
    assert result(d.call(commands.Get, key="k")) == {"found": False, "value": b""}
    e = n.connect()
    assert not e.lost and c.lost
    # now nobody has been idle a second: refused
    assert n.connect().lost
    assert not (a.lost or d.lost or e.lost) and n.factory.connections.open == 3
    logged = _refusals(warnings, "idle connection")
    assert len(logged) == 1  # at most one line per few seconds
    n.advance(5.0)
    assert not n.connect().lost
    assert len(_refusals(warnings, "idle connection")) == 2


def test_a_connection_with_a_request_in_flight_is_not_idle():
    node = StubNode()
    node.hold = True
    n = Node(node, maxConnections=1)
    busy = n.connect()
    busy.call(commands.Put, key="k", value=b"v")
    n.advance(2.0)
    assert n.connect().lost and not busy.lost
    node.held[0].callback((1, None))
    n.pumps.flush()
    n.advance(1.0)
    assert not n.connect().lost and busy.lost


def test_a_peer_gets_back_in_past_silent_strangers():
    """512 silent connections must not keep a dropped peer link out."""
    n = Node(StubNode(nodeId=1), maxConnections=4)
    strangers = [n.connect() for _ in range(4)]
    assert n.connect().lost  # none idle yet
    n.advance(1.0)
    peer = n.connect()
    assert not peer.lost
    d = proveMember(peer.client, 2, 1)
    n.pumps.flush()
    result(d)
    assert peer.server.peerId == 2
    assert sum(bool(s.lost) for s in strangers) == 1
    assert n.factory.connections.open == 3  # the peer does not count
    # and a proven peer is never evicted
    n.advance(10.0)
    for _ in range(4):
        assert not n.connect().lost
    assert not peer.lost


def test_only_connections_made_count():
    """
    A protocol built whose connection is never made (its setup failed, a
    TLS context error say) never counts, so it never leaks a slot.
    """
    n = Node(StubNode(), maxConnections=2)
    for _ in range(5):
        n.factory.buildProtocol(None)
    assert n.factory.connections.open == 0
    first, second = n.connect(), n.connect()
    assert not first.lost and not second.lost
    assert n.factory.connections.open == 2


def test_a_tls_connection_whose_setup_fails_does_not_count():
    @implementer(IOpenSSLServerConnectionCreator)
    class Broken:
        def serverConnectionForTLS(self, tlsProtocol):
            raise SSL.Error("no context")

    n = Node(StubNode(), maxConnections=1)
    tlsFactory = TLSMemoryBIOFactory(Broken(), False, n.factory, clock=n.clock)
    for _ in range(3):
        proto = tlsFactory.buildProtocol(None)
        with pytest.raises(SSL.Error):
            proto.makeConnection(StringTransport())
    assert n.factory.connections.open == 0
    assert not n.connect().lost


# -- a connection we close really closes (review of issue 10, 3) -----------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("pki"))
    certs.makeCertificates(directory, 1, clients=["alice"])
    return directory


class _BrokenStore:
    def get(self, key):
        raise RuntimeError("a bug")


def _tlsConnection(pki, factory, clock):
    """
    A client L{_Client} connected to C{factory} over real TLS in memory.

    @return: C{(server protocol, its TLS protocol, client, pump)}
    """
    serverCreator = TLSCredentials(tlsFiles(pki, "node1")).serverCreator()
    clientCreator = TLSCredentials(tlsFiles(pki, "alice")).clientCreator("127.0.0.1")
    client = _Client()
    serverSide = TLSMemoryBIOFactory(serverCreator, False, factory, clock=clock)
    clientSide = TLSMemoryBIOFactory(
        clientCreator, True, protocol.Factory.forProtocol(lambda: client), clock=clock
    )
    _, serverTLS, pump = iosim.connectedServerAndClient(
        lambda: serverSide.buildProtocol(None),
        lambda: clientSide.buildProtocol(None),
        clock=clock,
    )
    pump.flush()
    return serverTLS.wrappedProtocol, serverTLS, client, pump


@pytest.mark.parametrize("how", ["key too long", "fatal error", "box guard", "evicted"])
def test_a_tls_connection_the_node_closes_ends(pki, how):
    node = StubNode()
    n = Node(node, maxConnections=1)
    if how == "fatal error":
        n.factory.stateMachine = _BrokenStore()
    server, serverTLS, client, pump = _tlsConnection(pki, n.factory, n.clock)
    assert result(_pumped(client, pump, commands.Status))["node_id"] == 1
    # the TLS layer passes our registration on to the transport below it
    assert serverTLS.transport.producer is not None
    if how == "key too long":
        client.transport.write(b"\x01\x00" + b"k" * 256)
    elif how == "fatal error":
        # an undeclared error: AMP answers UNKNOWN with a QuitBox and closes
        d = client.callRemote(commands.Get, key="k", stale=True)
        d.addErrback(lambda f: None)
    elif how == "box guard":
        client.transport.write(b"\x00\x01x\x00\x01y\x00\x00")  # neither command nor answer
    else:
        n.advance(1.0)
        n.connect()
    pump.flush()
    assert client.lost and server.transport is None
    assert n.factory.connections.open == (1 if how == "evicted" else 0)


def _pumped(client, pump, command, **kw):
    d = captured(client.callRemote(command, **kw))
    pump.flush()
    return d


def test_closing_unregisters_the_producer_first():
    """Plain TCP resumes a paused producer instead of closing: unregister first."""
    proto, transport = _served(StubNode())
    assert transport.producer is proto
    proto.pauseProducing()
    proto.transport.loseConnection()
    assert transport.producer is None and transport.disconnecting
    # nothing more is parsed nor read once closing
    proto.resumeProducing()
    assert transport.producerState == "paused"
    proto.connectionLost(Failure(ConnectionDone()))
    assert "loseConnection" not in vars(transport)  # unwrapped


# -- the budget holds until the core is done (review of issue 10, 4) -------------------


def test_a_write_that_timed_out_holds_its_bytes_until_the_core_is_done():
    node = StubNode()
    node.hold = True
    n = Node(node, maxPendingBytes=3 * KiB)
    c = n.connect()
    first = c.call(commands.Put, key="a", value=b"x" * (2 * KiB))
    n.advance(n.factory.requestTimeout)
    failureOf(first, Unavailable)
    # the client was answered, but the proposal is still in the core
    failureOf(c.call(commands.Put, key="b", value=b"x" * (2 * KiB)), Overloaded)
    assert len(node.proposed) == 1
    node.held[0].callback((1, None))
    n.advance(0)  # room: the refused connection is read again
    assert _pending(n) == 0
    assert not c.call(commands.Put, key="b", value=b"x" * (2 * KiB)).called
    assert len(node.proposed) == 2


def test_a_follower_holds_a_forward_until_it_ends():
    leader = StubNode(nodeId=1)
    leader.hold = True
    follower = StubNode(nodeId=2, role=messages.FOLLOWER, leaderId=1)
    n = Node(follower, leader=leader, leaderLimits=dict(maxPendingBytes=64 * KiB))
    c = n.connect()
    d = c.call(commands.Put, key="a", value=b"x" * KiB)
    assert _pending(n) > KiB and n.leaderFactory.pendingWrites.pending > KiB
    n.advance(n.factory.requestTimeout)
    failureOf(d, Unavailable)
    # the forward was cancelled with the request: it has ended here ...
    assert _pending(n) == 0
    # ... while the leader holds it until its core is done
    assert n.leaderFactory.pendingWrites.pending > KiB
    leader.held[0].callback((1, None))
    n.pumps.flush()
    assert n.leaderFactory.pendingWrites.pending == 0


def test_a_write_rerouted_after_not_leader_stays_charged_until_the_forward_ends():
    leader = StubNode(nodeId=1)
    leader.hold = True
    # this node thinks it leads; its core says it does not
    follower = StubNode(nodeId=2, role=messages.FOLLOWER, leaderId=1)
    n = Node(follower, leader=leader, leaderLimits=dict(maxPendingBytes=64 * KiB))
    follower.role = messages.LEADER
    follower.propose = lambda data: (setattr(follower, "role", messages.FOLLOWER),
                                     defer.fail(messages.NotLeader(1)))[1]
    c = n.connect()
    d = c.call(commands.Put, key="a", value=b"x" * KiB)
    assert len(leader.proposed) == 1 and not d.called
    assert _pending(n) > KiB  # the forward is under way
    leader.held[0].callback((1, None))
    n.pumps.flush()
    assert result(d) == {"revision": 1, "prev_kv": None}
    assert _pending(n) == 0 and n.leaderFactory.pendingWrites.pending == 0


# -- refused peer commands are logged node-wide at most so often (5) ------------------


def test_refused_peer_commands_are_logged_at_most_once_per_few_seconds(warnings):
    n = Node(StubNode(), maxConnections=1000)
    for _ in range(30):
        c = n.connect()
        for _ in range(2):
            failureOf(c.call(commands.Put, key="k", value=b"v", forwarded=True), PermissionDenied)
        c.close()
    logged = _refusals(warnings, "refused a peer command")
    assert len(logged) == 1
    n.advance(5.0)
    c = n.connect()
    failureOf(c.call(commands.Get, key="k", forwarded=True), PermissionDenied)
    logged = _refusals(warnings, "refused a peer command")
    # once per connection still: 29 more connections, and this one
    assert len(logged) == 2 and logged[1]["count"] == 30
    assert "forwarded Get" in logged[1]["reason"]


def test_a_connection_refused_as_overloaded_is_not_read_until_there_is_room():
    """
    A client that keeps sending writes over the budget costs the node one
    refusal, not the CPU of reading and refusing every one: its connection
    is not read again until the budget is down to half.
    """
    budget = PendingBytes(100, Clock())
    woken = []
    budget.charge(80)
    budget.whenRoom(lambda: woken.append(1))
    budget.release(None, 20)  # 60 held: over half
    budget._clock.advance(0)
    assert woken == []
    budget.release(None, 20)  # 40 held
    budget._clock.advance(0)
    assert woken == [1]
    budget.whenRoom(lambda: woken.append(2))  # room already: at once
    assert woken == [1, 2]


def test_a_quarter_of_the_budget_is_kept_for_small_writes():
    budget = PendingBytes(1024 * KiB, Clock())
    for _ in range(7):
        budget.charge(100 * KiB)  # large writes: 700 KiB
    with pytest.raises(Overloaded):
        budget.charge(100 * KiB)  # would pass 768 KiB, three quarters
    for _ in range(10):
        budget.charge(30 * KiB)  # small ones still fit: 1000 KiB
    with pytest.raises(Overloaded):
        budget.charge(30 * KiB)  # but not past the whole budget
    assert budget.pending == 1000 * KiB
