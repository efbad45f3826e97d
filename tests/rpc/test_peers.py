"""
AMPTransport over in-memory connections (iosim) and a task.Clock.
"""

from twisted.internet import defer
from twisted.internet.task import Clock

from twisted_raft.raft import messages
from twisted_raft.rpc import commands
from twisted_raft.rpc.commands import InvalidArgument
from twisted_raft.rpc.peers import REFUSED_RETRY_DELAY, AMPTransport, PeerUnreachable
from twisted_raft.rpc.server import NodeServerFactory

from tests.support import PumpEndpoint, Pumps, StubNode, authority, failureOf, result


class SilentNode(StubNode):
    """Never answers Raft RPCs (a hung or half-open peer)."""

    def handleRequestVote(self, request):
        self.votes.append(request)
        return defer.Deferred()

    def handleAppendEntries(self, request):
        self.appends.append(request)
        return defer.Deferred()


def setup(node=None, token="c1", serverToken=None, rpcTimeout=0.3):
    clock = Clock()
    node = node or StubNode(nodeId=2, role=messages.FOLLOWER, leaderId=0)
    serverFactory = NodeServerFactory(
        node, node.store, None, authority(2, serverToken or token), clock
    )
    endpoint = PumpEndpoint(serverFactory, clock)
    transport = AMPTransport({2: endpoint}, authority(1, token), clock, rpcTimeout=rpcTimeout)
    transport.startService()
    pumpAll(endpoint)  # the handshake
    return clock, node, endpoint, transport


def pumpAll(endpoint):
    Pumps(*endpoint.pumps).flush()


def captured(d):
    box = []
    d.addBoth(box.append)
    d._testOutcome = box
    return d


def vote():
    return messages.RequestVote(term=4, candidateId=1, lastLogIndex=9, lastLogTerm=3)


def test_request_vote_and_append_entries_roundtrip():
    clock, node, endpoint, transport = setup()
    assert transport.isConnected(2)
    d = captured(transport.requestVote(2, vote()))
    pumpAll(endpoint)
    assert result(d) == messages.RequestVoteResult(4, True)
    assert node.votes == [vote()]
    entries = [messages.Entry(10, 4, b"x" * 100000), messages.Entry(11, 4, b"")]
    ae = messages.AppendEntries(4, 1, 9, 3, entries, 8)
    d = captured(transport.appendEntries(2, ae))
    pumpAll(endpoint)
    assert result(d) == messages.AppendEntriesResult(4, True, 11, 0, 0)
    assert node.appends == [ae]


def test_not_connected_fails_fast():
    clock, node, endpoint, transport = setup()
    endpoint.refuse = True
    endpoint.pumps[0].serverIO.loseConnection()
    pumpAll(endpoint)
    assert not transport.isConnected(2)
    failureOf(transport.requestVote(2, vote()), PeerUnreachable)
    failureOf(transport.callPeer(2, commands.Status), PeerUnreachable)
    failureOf(transport.requestVote(99, vote()), PeerUnreachable)


def test_reconnects_quickly_after_loss():
    clock, node, endpoint, transport = setup()
    endpoint.refuse = True
    endpoint.pumps[0].serverIO.loseConnection()
    pumpAll(endpoint)
    clock.advance(0.2)
    assert endpoint.attempts >= 2  # retried well within an election timeout
    endpoint.refuse = False
    for _ in range(5):
        clock.advance(0.2)
        pumpAll(endpoint)  # a new connection's handshake
    assert transport.isConnected(2)
    d = captured(transport.requestVote(2, vote()))
    pumpAll(endpoint)
    assert result(d).voteGranted


def test_rpc_timeout_fails_and_aborts_silent_link():
    node = SilentNode(nodeId=2, role=messages.FOLLOWER, leaderId=0)
    clock, node, endpoint, transport = setup(node=node)
    d = captured(transport.appendEntries(2, messages.AppendEntries(4, 1, 0, 0, [], 0)))
    pumpAll(endpoint)
    assert not d.called
    clock.advance(0.3)
    failureOf(d, defer.TimeoutError)
    assert endpoint.pumps[0].clientIO.disconnecting  # abortConnection()
    pumpAll(endpoint)
    assert not transport.isConnected(2)
    # ClientService reconnects shortly
    clock.advance(0.2)
    pumpAll(endpoint)
    assert transport.isConnected(2)
    assert len(endpoint.pumps) == 2


def test_caller_cancellation_of_silent_rpc_aborts_link():
    node = SilentNode(nodeId=2, role=messages.FOLLOWER, leaderId=0)
    clock, node, endpoint, transport = setup(node=node, rpcTimeout=10)
    d = transport.requestVote(2, vote())
    d.addTimeout(0.3, clock)  # what the core does
    captured(d)
    pumpAll(endpoint)
    clock.advance(0.3)
    failureOf(d, defer.TimeoutError)
    assert endpoint.pumps[0].clientIO.disconnecting


def test_slow_answer_on_a_live_link_keeps_it():
    # Votes hang but appends answer: the link is alive, so a vote timing out
    # must not abort it.
    class HalfSilent(StubNode):
        def handleRequestVote(self, request):
            return defer.Deferred()

    clock, node, endpoint, transport = setup(
        node=HalfSilent(nodeId=2, role=messages.FOLLOWER, leaderId=0)
    )
    d = captured(transport.requestVote(2, vote()))
    pumpAll(endpoint)
    clock.advance(0.1)
    d2 = captured(transport.appendEntries(2, messages.AppendEntries(4, 1, 0, 0, [], 0)))
    pumpAll(endpoint)
    assert result(d2).success
    clock.advance(0.2)
    failureOf(d, defer.TimeoutError)
    assert not endpoint.pumps[0].clientIO.disconnecting
    assert transport.isConnected(2)


def test_one_slow_peer_does_not_stall_another():
    clock = Clock()
    slow = SilentNode(nodeId=2, role=messages.FOLLOWER, leaderId=0)
    fast = StubNode(nodeId=3, role=messages.FOLLOWER, leaderId=0)
    e2 = PumpEndpoint(NodeServerFactory(slow, slow.store, None, authority(2), clock), clock)
    e3 = PumpEndpoint(NodeServerFactory(fast, fast.store, None, authority(3), clock), clock)
    transport = AMPTransport({2: e2, 3: e3}, authority(1), clock, rpcTimeout=0.3)
    transport.startService()
    Pumps(*e2.pumps, *e3.pumps).flush()
    d2 = captured(transport.requestVote(2, vote()))
    d3 = captured(transport.requestVote(3, vote()))
    Pumps(*e2.pumps, *e3.pumps).flush()
    assert not d2.called
    assert result(d3).voteGranted


def test_link_is_usable_only_after_the_handshake():
    clock = Clock()
    node = StubNode(nodeId=2, role=messages.FOLLOWER, leaderId=0)
    endpoint = PumpEndpoint(
        NodeServerFactory(node, node.store, None, authority(2), clock), clock
    )
    transport = AMPTransport({2: endpoint}, authority(1), clock)
    transport.startService()
    assert not transport.isConnected(2)  # connected, not yet proven
    failureOf(transport.requestVote(2, vote()), PeerUnreachable)
    pumpAll(endpoint)
    assert transport.isConnected(2)
    assert endpoint.serverFactory.protocol  # and the node knows who it is:
    server = endpoint.pumps[0].server
    assert server.peerId == 1


def test_another_cluster_token_is_refused_and_retried_slowly(logged):
    clock, node, endpoint, transport = setup(token="c1", serverToken="c2")
    assert not transport.isConnected(2)
    failureOf(transport.requestVote(2, vote()), PeerUnreachable)
    assert node.votes == []
    attempts = endpoint.attempts
    for _ in range(20):
        clock.advance(0.2)  # 4 s: under REFUSED_RETRY_DELAY
        pumpAll(endpoint)
    assert endpoint.attempts == attempts  # not a reconnect storm
    assert not transport.isConnected(2)
    clock.advance(REFUSED_RETRY_DELAY)
    pumpAll(endpoint)
    assert endpoint.attempts == attempts + 1
    warnings = [e for e in logged if "refused or failed the handshake" in e.get("log_format", "")]
    assert len(warnings) == 1  # the same reason again is not logged again
    for secret in ("c1", "c2"):
        assert all(secret not in str(e.get("reason", "")) for e in logged)


def test_a_node_that_cannot_prove_the_token_is_not_trusted():
    """The dialler checks the node too: a stranger at a peer's address."""
    clock = Clock()
    node = StubNode(nodeId=2, role=messages.FOLLOWER, leaderId=0)
    impostor = authority(2, token="guessed")
    endpoint = PumpEndpoint(NodeServerFactory(node, node.store, None, impostor, clock), clock)
    transport = AMPTransport({2: endpoint}, authority(1, "real"), clock)
    transport.startService()
    pumpAll(endpoint)
    assert not transport.isConnected(2)
    assert endpoint.pumps[0].clientIO.disconnecting


def test_a_different_node_at_the_address_is_not_trusted():
    clock = Clock()
    node = StubNode(nodeId=3, role=messages.FOLLOWER, leaderId=0)
    endpoint = PumpEndpoint(NodeServerFactory(node, node.store, None, authority(3), clock), clock)
    transport = AMPTransport({2: endpoint}, authority(1), clock)
    transport.startService()
    pumpAll(endpoint)
    assert not transport.isConnected(2)
    assert node.votes == []


def test_call_peer_relays_declared_errors():
    clock, node, endpoint, transport = setup()
    d = captured(transport.callPeer(2, commands.Put, key="", value=b"v"))
    pumpAll(endpoint)
    failureOf(d, InvalidArgument)
    assert transport.isConnected(2)


def test_stop_service_disconnects():
    clock, node, endpoint, transport = setup()
    d = captured(transport.stopService())
    pumpAll(endpoint)
    result(d)
    assert not transport.isConnected(2)
    failureOf(transport.requestVote(2, vote()), PeerUnreachable)


# -- InstallSnapshot (§7) ----------------------------------------------------


class SnapshotNode(StubNode):
    """Records InstallSnapshot chunks; answers with the next offset."""

    def __init__(self, *args, silent=False, **kwargs):
        super().__init__(*args, **kwargs)
        self.snapshots = []
        self.silent = silent

    def handleInstallSnapshot(self, request):
        self.snapshots.append(request)
        if self.silent:
            return defer.Deferred()
        return defer.succeed(
            messages.InstallSnapshotResult(
                request.term, True, request.offset + len(request.data)
            )
        )


def snapshotChunk(size=300 * 1024, offset=0, done=False):
    data = bytes(range(256)) * (size // 256) + b"\x07" * (size % 256)
    meta = messages.SnapshotMeta(lastIndex=1234, lastTerm=5, configuration=(1, 2, 3))
    return messages.InstallSnapshot(
        term=6, leaderId=1, meta=meta, offset=offset, data=data, done=done
    )


def test_install_snapshot_big_chunk_roundtrip():
    node = SnapshotNode(nodeId=2, role=messages.FOLLOWER, leaderId=0)
    clock, node, endpoint, transport = setup(node=node)
    chunk = snapshotChunk(300 * 1024 + 17, offset=1 << 40, done=True)
    d = captured(transport.installSnapshot(2, chunk))
    pumpAll(endpoint)
    assert result(d) == messages.InstallSnapshotResult(6, True, (1 << 40) + 300 * 1024 + 17)
    assert node.snapshots == [chunk]  # meta (members as a tuple), data, done intact
    # an empty, non-final chunk too
    empty = snapshotChunk(0)
    d = captured(transport.installSnapshot(2, empty))
    pumpAll(endpoint)
    assert result(d) == messages.InstallSnapshotResult(6, True, 0)
    assert node.snapshots[-1] == empty


def test_install_snapshot_timeout_is_longer_than_rpc_timeout():
    node = SnapshotNode(nodeId=2, role=messages.FOLLOWER, leaderId=0, silent=True)
    clock, node, endpoint, transport = setup(node=node, rpcTimeout=0.3)
    d = captured(transport.installSnapshot(2, snapshotChunk(1000)))
    pumpAll(endpoint)
    clock.advance(1.9)
    assert not d.called  # a chunk gets max(rpcTimeout, 2 s)
    clock.advance(0.1)
    failureOf(d, defer.TimeoutError)
    assert endpoint.pumps[0].clientIO.disconnecting
