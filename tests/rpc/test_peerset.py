"""
Peers that follow the configuration (issue 11): L{PeerSet}, the transport's
links added, removed and re-addressed at runtime, and peer authentication
following the configuration, over in-memory connections (iosim) and a
task.Clock.
"""

from twisted.internet import defer
from twisted.internet.task import Clock

from twisted_raft.raft import messages
from twisted_raft.raft.membership import EMPTY, Configuration, Member
from twisted_raft.rpc.commands import PermissionDenied
from twisted_raft.rpc.peerauth import NONCE_BYTES, PeerAuthority
from twisted_raft.rpc.peers import REFUSED_RETRY_DELAY, AMPTransport, PeerUnreachable
from twisted_raft.rpc.peerset import PeerSet
from twisted_raft.rpc.server import NodeServerFactory

from tests.support import PumpEndpoint, Pumps, StubNode, authority, captured, failureOf, result

TOKEN = "t0ken"


def conf(*members, index=0):
    """C{conf(1, 2, (4, False))}: voters 1 and 2, learner 4, at 127.0.0.1:800<id>."""
    out = []
    for m in members:
        nodeId, voter = m if isinstance(m, tuple) else (m, True)
        out.append(Member(nodeId, f"127.0.0.1:{8000 + nodeId}", voter))
    return Configuration(tuple(out), index)


def append(leaderId=1, term=4):
    return messages.AppendEntries(term, leaderId, 0, 0, [], 0)


class RecordingTransport:
    def __init__(self):
        self.calls = []

    def setPeers(self, targets):
        self.calls.append(dict(targets))


# -- PeerSet ------------------------------------------------------------------------


def test_members_other_than_itself_are_dialled_at_their_addresses():
    transport = RecordingTransport()
    peers = PeerSet(2, transport=transport)
    peers.configurationChanged(conf(1, 2, 3, (4, False)))
    assert transport.calls == [{
        1: ("127.0.0.1", 8001), 3: ("127.0.0.1", 8003), 4: ("127.0.0.1", 8004),
    }]
    peers.configurationChanged(conf(1, 2, (4, False)))  # 3 removed
    assert transport.calls[-1] == {1: ("127.0.0.1", 8001), 4: ("127.0.0.1", 8004)}


def test_own_peers_entry_overrides_a_members_address():
    transport = RecordingTransport()
    peers = PeerSet(2, {1: ("proxy", 9001), 2: ("me", 1), 7: ("gone", 7)}, transport)
    peers.configurationChanged(conf(1, 2, 3))
    # 1 overridden, 3 from the configuration; 7 is no member: not dialled
    assert transport.calls == [{1: ("proxy", 9001), 3: ("127.0.0.1", 8003)}]


def test_a_member_with_no_address_is_warned_about_once_and_not_dialled(logged):
    transport = RecordingTransport()
    peers = PeerSet(1, transport=transport)
    nowhere = Configuration((Member(1, "a:1"), Member(2, ""), Member(3, "bad")))
    peers.configurationChanged(nowhere)
    peers.configurationChanged(nowhere.at(5))
    assert transport.calls == [{}, {}]
    warnings = [e for e in logged if "not dialling it" in e.get("log_format", "")]
    assert sorted(e["peerId"] for e in warnings) == [2, 3]
    # an override makes it reachable
    peers.overrides[2] = ("h", 2)
    peers.configurationChanged(nowhere)
    assert transport.calls[-1] == {2: ("h", 2)}


def committedAt(peers, index):
    box = {"index": index}
    peers.committed = lambda: box["index"]
    return box


def test_whom_it_hears_is_the_cores_rule_and_never_itself():
    peers = PeerSet(2)
    peers.configurationChanged(conf(1, 2, (4, False), index=3))
    refused = {3}
    peers.accepts = lambda peerId: peerId not in refused  # RaftNode.acceptsPeer
    assert peers.isMember(1) and peers.isMember(4) and peers.isMember(99)
    assert not peers.isMember(3)
    assert not peers.isMember(2)  # itself


def test_a_member_being_removed_is_dialled_until_its_removal_commits():
    # So that it receives its removal and stops campaigning.
    peers = PeerSet(2)
    commit = committedAt(peers, 3)
    peers.configurationChanged(conf(1, 2, (4, False), index=3))
    peers.configurationChanged(conf(2, (4, False), index=5))
    assert set(peers.targets()) == {1, 4}
    commit["index"] = 5
    peers.configurationChanged(conf(2, (4, False), index=5))  # now committed
    assert set(peers.targets()) == {4}


def test_a_removal_undone_by_a_truncation_dials_as_before():
    peers = PeerSet(2)
    committedAt(peers, 3)
    peers.configurationChanged(conf(1, 2, 3, index=3))
    peers.configurationChanged(conf(2, 3, index=5))  # appended, not committed
    peers.configurationChanged(conf(1, 2, 3, index=3))  # truncated away
    assert set(peers.targets()) == {1, 3}
    peers.configurationChanged(conf(2, 3, index=6))
    peers.committed = lambda: 6
    peers.configurationChanged(conf(2, 3, index=6))
    assert set(peers.targets()) == {3}


def test_a_node_not_yet_added_accepts_any_other_node():
    peers = PeerSet(4)
    assert peers.configuration == EMPTY
    assert peers.isMember(1) and peers.isMember(99)
    assert not peers.isMember(4)
    peers.configurationChanged(conf(1, 2, 3, (4, False)))
    assert peers.isMember(1) and peers.isMember(99) and not peers.isMember(4)


def test_a_joining_node_dials_nobody():
    transport = RecordingTransport()
    PeerSet(4, {1: ("a", 1)}, transport).configurationChanged(EMPTY)
    assert transport.calls == [{}]


# -- the transport's links at runtime -------------------------------------------


def nodeServer(nodeId, clock, isMember, token=TOKEN, node=None):
    node = node or StubNode(nodeId=nodeId, role=messages.FOLLOWER, leaderId=0)
    factory = NodeServerFactory(
        node, node.store, None, PeerAuthority(nodeId, token, isMember), clock
    )
    return node, PumpEndpoint(factory, clock)


def everyone(peerId):
    return True


def transportOf(nodeId, clock, endpoints=None, token=TOKEN):
    members = PeerSet(nodeId)  # EMPTY: it accepts anyone (not tested here)
    t = AMPTransport(endpoints or {}, PeerAuthority(nodeId, token, members.isMember), clock,
                     rpcTimeout=0.3)
    t.startService()
    return t


def test_peers_are_added_and_removed_at_runtime():
    clock = Clock()
    n2, e2 = nodeServer(2, clock, everyone)
    n3, e3 = nodeServer(3, clock, everyone)
    t = transportOf(1, clock, {2: e2})
    pumps = Pumps(*e2.pumps)
    pumps.flush()
    assert t.isConnected(2)
    failureOf(t.appendEntries(3, append()), PeerUnreachable)  # unknown: at once
    t.setPeers({2: e2, 3: e3})
    pumps.add(*e3.pumps)
    pumps.flush()
    assert t.isConnected(3) and e2.attempts == 1  # 2's link kept
    d = captured(t.appendEntries(3, append()))
    pumps.flush()
    assert result(d).success and n3.appends == [append()]
    t.setPeers({3: e3})
    pumps.flush()
    assert not t.isConnected(2) and set(t.links) == {3}
    failureOf(t.appendEntries(2, append()), PeerUnreachable)
    clock.advance(5)
    pumps.flush()
    assert e2.attempts == 1  # no reconnecting to a removed peer


def test_a_peer_is_re_addressed():
    clock = Clock()
    n2, old = nodeServer(2, clock, everyone)
    _, new = nodeServer(2, clock, everyone, node=n2)
    t = transportOf(1, clock, {2: old})
    Pumps(*old.pumps).flush()
    assert t.isConnected(2)
    t.setPeers({2: new})
    Pumps(*old.pumps, *new.pumps).flush()
    assert t.isConnected(2)
    assert old.pumps[0].clientIO.disconnecting  # the old connection closed
    d = captured(t.appendEntries(2, append()))
    Pumps(*new.pumps).flush()
    assert result(d).success
    assert t.links[2].endpoint is new


def test_addresses_become_endpoints_and_only_changes_replace_links():
    from twisted.internet.testing import MemoryReactorClock

    reactor = MemoryReactorClock()
    t = AMPTransport.fromAddresses(reactor, {}, authority(1), connectTimeout=1)
    t.startService()
    t.setPeers({2: ("127.0.0.1", 8002), 3: ("::1", 8003)})
    assert [(c[0], c[1]) for c in reactor.tcpClients] == [("127.0.0.1", 8002), ("::1", 8003)]
    link2 = t.links[2]
    t.setPeers({2: ("127.0.0.1", 8002), 3: ("::1", 8013)})
    assert t.links[2] is link2  # same address: same link
    assert [(c[0], c[1]) for c in reactor.tcpClients][-1] == ("::1", 8013)
    result(captured(t.stopService()))


def test_links_added_before_start_wait_for_it():
    clock = Clock()
    _, e2 = nodeServer(2, clock, everyone)
    t = AMPTransport({}, authority(1), clock)
    t.setPeers({2: e2})
    assert e2.attempts == 0
    t.startService()
    assert e2.attempts == 1


def test_stop_waits_for_links_being_removed():
    clock = Clock()
    _, e2 = nodeServer(2, clock, everyone)
    t = transportOf(1, clock, {2: e2})
    Pumps(*e2.pumps).flush()
    t.removePeer(2)
    d = captured(t.stopService())
    Pumps(*e2.pumps).flush()
    assert result(d) is None
    assert t.links == {}


# -- authentication follows the configuration ------------------------------------------


def test_a_removed_member_is_refused_from_its_next_rpc_on():
    clock = Clock()
    members2 = PeerSet(2)
    members2.configurationChanged(conf(1, 2, 3))
    n2, e2 = nodeServer(2, clock, members2.isMember)
    t = transportOf(1, clock, {2: e2})
    Pumps(*e2.pumps).flush()
    d = captured(t.appendEntries(2, append()))
    Pumps(*e2.pumps).flush()
    assert result(d).success
    members2.configurationChanged(conf(2, 3, index=9))
    members2.accepts = lambda peerId: peerId != 1  # node 1's removal committed
    d = captured(t.appendEntries(2, append()))
    Pumps(*e2.pumps).flush()
    failureOf(d, PermissionDenied)
    assert n2.appends == [append()]  # the refused one changed nothing
    # and a new connection's handshake is refused too
    e2.pumps[0].serverIO.loseConnection()
    Pumps(*e2.pumps).flush()
    clock.advance(0.2)
    Pumps(*e2.pumps).flush()
    assert len(e2.pumps) == 2 and not t.isConnected(2)


def test_a_node_unknown_to_a_member_behind_the_cluster_is_heard():
    # Node 2 missed the change that added node 4, which now leads: refusing
    # it would keep node 2 behind for good.
    clock = Clock()
    members2 = PeerSet(2)
    members2.configurationChanged(conf(1, 2, 3))
    n2, e2 = nodeServer(2, clock, members2.isMember)
    t = transportOf(4, clock, {2: e2})
    Pumps(*e2.pumps).flush()
    clock.advance(0)
    assert t.isConnected(2)
    d = captured(t.appendEntries(2, append(leaderId=4)))
    Pumps(*e2.pumps).flush()
    assert result(d).success and n2.appends == [append(leaderId=4)]


def test_a_changed_configuration_retries_refused_links_at_once():
    clock = Clock()
    members2 = PeerSet(2)
    members2.configurationChanged(conf(1, 2, 3, index=3))
    members2.accepts = lambda peerId: peerId != 4  # node 4 was removed
    _, e2 = nodeServer(2, clock, members2.isMember)
    mine = PeerSet(4)
    down = PumpEndpoint(None, clock)
    down.refuse = True  # nodes 1 and 3

    def endpointFor(address):
        return e2 if address == ("127.0.0.1", 8002) else down

    mine.transport = AMPTransport({}, PeerAuthority(4, TOKEN, mine.isMember), clock,
                                  endpointFactory=endpointFor)
    mine.transport.startService()
    # node 4 learns it is added again and dials node 2, which has not
    # appended the change yet: refused, and the link waits
    mine.configurationChanged(conf(1, 2, 3, (4, False), index=7))
    Pumps(*e2.pumps).flush()
    clock.advance(0)
    assert not mine.transport.isConnected(2)
    assert e2.attempts == 1
    members2.configurationChanged(conf(1, 2, 3, (4, False), index=7))
    members2.accepts = lambda peerId: True  # added again
    clock.advance(1)
    assert e2.attempts == 1  # still waiting
    # the next change at node 4 (its promotion) retries at once, not after
    # REFUSED_RETRY_DELAY
    mine.configurationChanged(conf(1, 2, 3, 4, index=8))
    Pumps(*e2.pumps).flush()
    assert e2.attempts == 2
    assert mine.transport.isConnected(2)


def test_a_joining_node_is_reached_by_the_leader():
    """An EMPTY node accepts any node proving the token; the dialler checks it is node 4."""
    clock = Clock()
    members4 = PeerSet(4)  # --join, not yet added
    n4, e4 = nodeServer(4, clock, members4.isMember)
    leader = transportOf(1, clock, {4: e4})
    Pumps(*e4.pumps).flush()
    assert leader.isConnected(4)
    d = captured(leader.appendEntries(4, append()))
    Pumps(*e4.pumps).flush()
    assert result(d).success and n4.appends == [append()]
    # a stranger without the token is not
    _, e4b = nodeServer(4, clock, members4.isMember)
    stranger = transportOf(9, clock, {4: e4b}, token="guess")
    Pumps(*e4b.pumps).flush()
    assert not stranger.isConnected(4)


def test_a_joining_node_under_tls_accepts_only_node_certificates():
    peers = PeerSet(4)
    auth = PeerAuthority(4, TOKEN, peers.isMember, certificateRequired=True,
                         randomBytes=lambda n: b"\1" * n)
    nonce = b"\2" * NONCE_BYTES
    auth.answerHello(1, 4, nonce, certificateId=1)  # node 1's certificate
    for certificateId in (None, 2):  # a client's certificate, another node's
        try:
            auth.answerHello(1, 4, nonce, certificateId=certificateId)
        except PermissionDenied:
            pass
        else:
            raise AssertionError(f"accepted certificate {certificateId!r}")
    try:
        auth.answerHello(4, 4, nonce, certificateId=4)  # itself
    except PermissionDenied:
        pass
    else:
        raise AssertionError("accepted its own id")


def test_the_dialler_does_not_ask_whether_the_dialled_node_is_a_member():
    """A node dials whom its configuration says, even a node its own
    membership test would refuse (e.g. a leader removing itself)."""
    clock = Clock()
    _, e2 = nodeServer(2, clock, everyone)
    nobody = PeerAuthority(1, TOKEN, lambda peerId: False)
    t = AMPTransport({2: e2}, nobody, clock)
    t.startService()
    Pumps(*e2.pumps).flush()
    assert t.isConnected(2)


def test_removed_links_fail_their_calls(logged):
    clock = Clock()

    class Silent(StubNode):
        def handleAppendEntries(self, request):
            return defer.Deferred()

    _, e2 = nodeServer(2, clock, everyone, node=Silent(nodeId=2, role=messages.FOLLOWER))
    t = transportOf(1, clock, {2: e2})
    Pumps(*e2.pumps).flush()
    d = captured(t.appendEntries(2, append()))
    Pumps(*e2.pumps).flush()
    assert not d.called
    t.removePeer(2)
    Pumps(*e2.pumps).flush()
    assert d.called and hasattr(d._testOutcome[0], "check")  # failed: connection lost
