"""
The peer wire of membership change (issue 11): configuration entries in
AppendEntries batches, the whole configuration in InstallSnapshot,
RequestVote's C{transfer}, and the TimeoutNow command -- through a real
AMP loopback (L{AMPTransport} to a L{NodeServerFactory}, in memory, with
the peer handshake), and through the in-memory test network.
"""

import struct

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.protocols import amp
from twisted.test import iosim

from twisted_raft.raft import messages
from twisted_raft.raft.membership import Configuration, Member, encodeMembers
from twisted_raft.raft.messages import CONFIGURATION, DATA, Entry
from twisted_raft.rpc import commands, wire
from twisted_raft.rpc.commands import InvalidArgument, PermissionDenied, Unavailable
from twisted_raft.rpc.peers import AMPTransport
from twisted_raft.rpc.server import NodeServerFactory
from twisted_raft.testing.network import Network
from twisted_raft.testing.scripted import ScriptedTransport

from tests.support import (
    PumpEndpoint,
    Pumps,
    StubNode,
    authority,
    captured,
    failureOf,
    proveMember,
    result,
)

CONFIG = Configuration(
    (
        Member(1, "10.0.0.1:8001", True),
        Member(2, "10.0.0.2:8002", True),
        Member(3, "10.0.0.3:8003", True),
        Member(4, "[::1]:8004", False),
    ),
    index=17,
)


def configEntry(index, term, configuration=CONFIG):
    return Entry(index, term, encodeMembers(configuration), CONFIGURATION)


class Node(StubNode):
    """A follower that records InstallSnapshot chunks too."""

    def __init__(self):
        super().__init__(nodeId=2, role=messages.FOLLOWER, leaderId=0)
        self.snapshots = []

    def handleInstallSnapshot(self, request):
        self.snapshots.append(request)
        return defer.succeed(messages.InstallSnapshotResult(request.term, True, 0))


def linked(node=None):
    """Node 1's AMPTransport linked, handshake done, to node 2's server."""
    clock = Clock()
    node = node or Node()
    factory = NodeServerFactory(node, node.store, None, authority(2), clock)
    endpoint = PumpEndpoint(factory, clock)
    transport = AMPTransport({2: endpoint}, authority(1), clock)
    transport.startService()
    Pumps(*endpoint.pumps).flush()
    assert transport.isConnected(2)
    return node, endpoint, transport


def send(endpoint, d):
    d = captured(d)
    Pumps(*endpoint.pumps).flush()
    return d


class Client:
    """A plain AMP connection to node 2's server (authenticated on demand)."""

    def __init__(self, node=None):
        self.clock = Clock()
        self.node = node or Node()
        factory = NodeServerFactory(self.node, self.node.store, None, authority(2), self.clock)
        self.proto, _, self.pump = iosim.connectedServerAndClient(
            lambda: factory.buildProtocol(None), amp.AMP, clock=self.clock
        )
        self.lost = []
        original = self.proto.connectionLost
        self.proto.connectionLost = lambda reason: (self.lost.append(reason), original(reason))

    def authenticate(self, asNode=1):
        d = proveMember(self.proto, asNode, 2)
        self.pump.flush()
        result(d)
        return self

    def call(self, command, **kw):
        d = captured(self.proto.callRemote(command, **kw))
        self.pump.flush()
        return d


# -- AppendEntries batches -----------------------------------------------------------


def test_a_batch_of_data_entries_is_encoded_as_before():
    entries = [Entry(5, 2, b"abc"), Entry(6, 3, b"")]
    old = struct.pack(">I", 2) + struct.pack(">QI", 2, 3) + b"abc" + struct.pack(">QI", 3, 0)
    assert wire.encodeEntries(entries) == old
    assert wire.decodeEntries(old, 5) == entries


def test_configuration_entries_are_marked_by_the_top_bit_of_their_length():
    entries = [Entry(5, 2, b"abc"), configEntry(6, 2), Entry(7, 2, b"z" * 1000)]
    blob = wire.encodeEntries(entries)
    _, length = struct.unpack_from(">QI", blob, 4 + 12 + 3)
    assert length == wire.CONFIGURATION_BIT | len(entries[1].data)
    decoded = wire.decodeEntries(blob, 5)
    assert decoded == entries
    assert [e.kind for e in decoded] == [DATA, CONFIGURATION, DATA]


@pytest.mark.parametrize("data", [b"", b"not json", b"[" * 100000, b'[{"id":1}]'])
def test_a_configuration_entry_that_is_no_configuration_spoils_the_batch(data):
    blob = wire.encodeEntries([Entry(1, 1, b"ok"), Entry(2, 1, data, CONFIGURATION)])
    with pytest.raises(ValueError, match="entry 2 is not a configuration"):
        wire.decodeEntries(blob, 1)


def test_entries_the_batch_cannot_describe_are_refused():
    class Huge(bytes):
        def __len__(self):
            return wire.MAX_DATA + 1

    with pytest.raises(ValueError, match="over"):
        wire.encodeEntries([Entry(1, 1, Huge())])
    with pytest.raises(ValueError, match="no known kind"):
        wire.encodeEntries([Entry(1, 1, b"x", kind=1)])


def test_configuration_entries_cross_append_entries():
    node, endpoint, transport = linked()
    entries = [Entry(10, 4, b"x" * 70000), configEntry(11, 4), Entry(12, 4, b"")]
    request = messages.AppendEntries(4, 1, 9, 3, entries, 8)
    d = send(endpoint, transport.appendEntries(2, request))
    assert result(d) == messages.AppendEntriesResult(4, True, 12, 0, 0)
    assert node.appends == [request]
    assert node.appends[0].entries[1].kind is CONFIGURATION


def test_a_batch_with_a_malformed_configuration_entry_reaches_no_one():
    client = Client().authenticate()
    blob = wire.encodeEntries([Entry(1, 1, b"{broken", CONFIGURATION)])
    d = client.call(
        commands.AppendEntries, cluster="", term=1, leader_id=1, prev_log_index=0,
        prev_log_term=0, entries=blob, leader_commit=0,
    )
    assert "not a configuration" in str(failureOf(d, InvalidArgument).value)
    assert client.node.appends == [] and not client.lost


# -- InstallSnapshot ------------------------------------------------------------------


def chunk(meta, data=b"snap", done=True):
    return messages.InstallSnapshot(6, 1, meta, 0, data, done)


def test_install_snapshot_carries_the_whole_configuration():
    node, endpoint, transport = linked()
    meta = messages.SnapshotMeta(40, 5, CONFIG)
    d = send(endpoint, transport.installSnapshot(2, chunk(meta)))
    assert result(d) == messages.InstallSnapshotResult(6, True, 0)
    received = node.snapshots[0].meta
    assert received == meta  # members, addresses, voter flags and index
    assert received.configuration.member(4) == Member(4, "[::1]:8004", False)
    assert received.configuration.index == 17


def snapshotArgs(**kw):
    args = dict(
        cluster="", term=6, leader_id=1, last_index=40, last_term=5, members=[1, 2, 3, 4],
        offset=0, data=b"snap", done=True,
    )
    args.update(kw)
    return args


def test_install_snapshot_from_a_sender_without_configurations():
    """Only C{members}: voters without addresses, as of index 0."""
    client = Client().authenticate()
    result(client.call(commands.InstallSnapshot, **snapshotArgs(members=[3, 1, 2])))
    meta = client.node.snapshots[0].meta
    assert meta == messages.SnapshotMeta(40, 5, Configuration.ofVoters((1, 2, 3)))
    assert meta.configuration.index == 0


@pytest.mark.parametrize(
    "kw,words",
    [
        (dict(configuration=encodeMembers(CONFIG)), "given together"),
        (dict(config_index=17), "given together"),
        (dict(configuration=b"[{", config_index=17), "bad configuration"),
        (dict(configuration=b"[" * 60000, config_index=17), "bad configuration"),
        (dict(configuration=encodeMembers(CONFIG), config_index=41), "after the snapshot"),
        (dict(configuration=encodeMembers(CONFIG), config_index=17, members=[1, 2, 3]),
         "members are not"),
        (dict(configuration=encodeMembers(CONFIG), config_index=-1), "out of range"),
    ],
)
def test_install_snapshot_with_a_bad_configuration_is_refused(kw, words):
    client = Client().authenticate()
    d = client.call(commands.InstallSnapshot, **snapshotArgs(**kw))
    assert words in str(failureOf(d, InvalidArgument).value)
    assert client.node.snapshots == [] and not client.lost


# -- RequestVote's transfer flag ----------------------------------------------------------


@pytest.mark.parametrize("transfer", [False, True])
def test_request_vote_carries_transfer(transfer):
    node, endpoint, transport = linked()
    vote = messages.RequestVote(9, 1, 30, 8, transfer=transfer)
    d = send(endpoint, transport.requestVote(2, vote))
    assert result(d) == messages.RequestVoteResult(9, True)
    assert node.votes == [vote]


def test_a_plain_vote_looks_as_it_did_on_the_wire():
    """Without a transfer, the box has no C{transfer} key: old nodes parse it."""
    boxes = []
    vote = messages.RequestVote(9, 1, 30, 8, preVote=True)
    node, endpoint, transport = linked()
    proto = transport.links[2].protocol
    original = proto.callRemote

    def spy(command, **kw):
        boxes.append(command.makeArguments(kw, proto))
        return original(command, **kw)

    proto.callRemote = spy
    send(endpoint, transport.requestVote(2, vote))
    send(endpoint, transport.requestVote(2, messages.RequestVote(9, 1, 30, 8, transfer=True)))
    assert b"transfer" not in boxes[0] and boxes[0][b"pre_vote"] == b"True"
    assert boxes[1][b"transfer"] == b"True"


# -- TimeoutNow ------------------------------------------------------------------------


def test_timeout_now_through_an_authenticated_link():
    node, endpoint, transport = linked()
    request = messages.TimeoutNow(term=7, leaderId=1)
    d = send(endpoint, transport.timeoutNow(2, request))
    assert result(d) == messages.TimeoutNowResult(8, True)
    assert node.timeouts == [request]
    node.timeoutAnswer = messages.TimeoutNowResult(9, False)
    d = send(endpoint, transport.timeoutNow(2, request))
    assert result(d) == messages.TimeoutNowResult(9, False)


def test_timeout_now_needs_an_authenticated_peer():
    client = Client()
    d = client.call(commands.TimeoutNow, cluster="", term=7, leader_id=1)
    assert "needs an authenticated peer" in str(failureOf(d, PermissionDenied).value)
    assert client.node.timeouts == [] and not client.lost
    client.authenticate(asNode=1)
    d = client.call(commands.TimeoutNow, cluster="", term=7, leader_id=3)
    assert "node 3 on a connection of node 1" in str(failureOf(d, PermissionDenied).value)
    assert client.node.timeouts == []
    assert result(client.call(commands.TimeoutNow, cluster="", term=7, leader_id=1)) == {
        "term": 8, "accepted": True,
    }


@pytest.mark.parametrize(
    "kw", [dict(term=-1, leader_id=1), dict(term=2**64, leader_id=1), dict(term=7, leader_id=0)]
)
def test_timeout_now_arguments_are_range_checked(kw):
    client = Client().authenticate()
    d = client.call(commands.TimeoutNow, cluster="", **kw)
    assert "out of range" in str(failureOf(d, InvalidArgument).value)
    assert client.node.timeouts == []


def test_a_node_that_fails_timeout_now_answers_unavailable_and_keeps_the_link():
    client = Client().authenticate()
    client.node.timeoutAnswer = RuntimeError("boom")
    failureOf(client.call(commands.TimeoutNow, cluster="", term=7, leader_id=1), Unavailable)
    assert len(client.node.timeouts) == 1 and not client.lost
    assert result(client.call(commands.Status))["node_id"] == 2


def test_a_stopped_node_answers_unavailable_without_an_internal_error():
    """A node stopping with the rest of its cluster still gets TimeoutNow
    (the leader hands over as it stops): no critical line, no traceback."""
    from twisted.logger import LogLevel, globalLogPublisher

    logged = []
    globalLogPublisher.addObserver(logged.append)
    try:
        client = Client().authenticate()
        client.node.timeoutAnswer = messages.NotLeader(0, "node stopped")
        d = client.call(commands.TimeoutNow, cluster="", term=7, leader_id=1)
        assert "node stopped" in str(failureOf(d, Unavailable).value)
        assert not client.lost
    finally:
        globalLogPublisher.removeObserver(logged.append)
    assert not [e for e in logged if e.get("log_level") in (LogLevel.critical, LogLevel.error)]


def test_a_node_without_handle_timeout_now_answers_unavailable():
    """A core that predates transfers: the command fails, the link stays."""

    class OldNode(Node):
        handleTimeoutNow = None

    client = Client(OldNode()).authenticate()
    failureOf(client.call(commands.TimeoutNow, cluster="", term=7, leader_id=1), Unavailable)
    assert not client.lost


# -- the in-memory network ----------------------------------------------------------------


class NetNode:
    def __init__(self, nodeId):
        self.nodeId = nodeId
        self.timeouts = []

    def acceptsPeer(self, peerId):
        return True

    def handleTimeoutNow(self, request):
        self.timeouts.append(request)
        return defer.succeed(messages.TimeoutNowResult(request.term + 1, True))


def test_the_test_network_carries_timeout_now_like_the_other_rpcs():
    clock = Clock()
    network = Network(clock, latency=0.01)
    a, b = NetNode(1), NetNode(2)
    network.register(a)
    network.register(b)
    request = messages.TimeoutNow(3, 1)
    d = captured(network.transportFor(1).timeoutNow(2, request))
    clock.pump([0.01] * 3)  # there, answered, back
    assert result(d) == messages.TimeoutNowResult(4, True) and b.timeouts == [request]
    assert "TimeoutNow(t3 from=1)" in "\n".join(network.trace)
    network.isolate(2)  # a cut link loses it: no answer, ever
    d = captured(network.transportFor(1).timeoutNow(2, request))
    clock.pump([0.01] * 100)
    assert not d.called and len(b.timeouts) == 1
    network.heal()
    network.unregister(2)  # a node that is down refuses at once
    failureOf(network.transportFor(1).timeoutNow(2, request), ConnectionRefusedError)
    network.register(b)
    network.dropRate = 1.0
    d = captured(network.transportFor(1).timeoutNow(2, request))
    clock.pump([0.01] * 100)
    assert not d.called and len(b.timeouts) == 1


def test_the_scripted_transport_records_timeout_now():
    transport = ScriptedTransport()
    d = transport.timeoutNow(2, messages.TimeoutNow(3, 1))
    [(peerId, request, sent)] = transport.take(messages.TimeoutNow)
    assert (peerId, request, sent) == (2, messages.TimeoutNow(3, 1), d)
