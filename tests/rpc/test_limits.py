"""
The overload limits (L{twisted_raft.rpc.limits}) on a node's AMP server,
over in-memory connections (twisted.test.iosim) with stub nodes and a
task.Clock: connections per node, requests in flight per connection, and
bytes of pending writes.
"""

import pytest
from twisted.internet.task import Clock
from twisted.logger import LogLevel, globalLogPublisher
from twisted.protocols import amp
from twisted.test import iosim

from twisted_raft.raft import messages
from twisted_raft.rpc import commands
from twisted_raft.rpc.commands import NotProposed, Overloaded, Unavailable
from twisted_raft.rpc.limits import PendingBytes
from twisted_raft.rpc.peers import AMPTransport
from twisted_raft.rpc.server import NodeServerFactory

from tests.support import (
    PumpEndpoint,
    Pumps,
    StubNode,
    authority,
    captured,
    failureOf,
    result,
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
        return Connection(self.factory, self.clock, self.pumps)

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
    assert result(first.call(commands.Put, key="k", value=b"v")) == {"revision": 1}
    # a closed connection makes room for a new one
    first.close()
    assert n.factory.connections.open == 1
    fourth = n.connect()
    assert not fourth.lost
    assert result(fourth.call(commands.Get, key="k")) == {"found": True, "value": b"v"}


def test_refused_connections_are_logged_at_most_once_per_few_seconds(warnings):
    n = Node(StubNode(), maxConnections=1)
    n.connect()
    for _ in range(50):
        assert n.connect().lost
    assert len(_refusals(warnings, "--max-connections")) == 1
    n.advance(5.0)
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
    # requests answered at once are not in flight
    assert result(c.call(commands.Status))["node_id"] == 1
    assert c.server.inflight == 3 and c.reading == ["pause"]
    node.held[0].callback((1, None))
    n.pumps.flush()
    assert result(puts[0]) == {"revision": 1}
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
    # a small write still fits, and reads are not charged
    small = c.call(commands.Delete, key="c")
    assert len(node.proposed) == 2 and not small.called
    node.store.data["a"] = b"old"
    assert result(c.call(commands.Get, key="a", stale=True))["value"] == b"old"
    node.held[0].callback((1, None))
    node.held[1].callback((2, None))
    n.pumps.flush()
    assert result(first) == {"revision": 1}
    assert _pending(n) == 0
    # room again
    third = c.call(commands.Put, key="b", value=b"x" * (2 * KiB))
    assert not third.called and len(node.proposed) == 3


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
    assert result(c.call(commands.Put, key="big", value=b"x" * (4 * KiB))) == {"revision": 1}
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
    assert result(first) == {"revision": 1}
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
