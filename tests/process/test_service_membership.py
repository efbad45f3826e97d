"""
The node service under membership change (issue 11), in memory with a stub
Raft node: the node's configuration decides whom the peer links dial and who
may speak Raft, a --join node starts with no configuration, and a stopping
leader hands leadership over first.
"""

from twisted.internet import defer
from twisted.internet.testing import MemoryReactorClock

from twisted_raft.config import NodeConfig
from twisted_raft.raft import messages
from twisted_raft.raft.config import RaftConfig
from twisted_raft.raft.membership import EMPTY, Configuration, Member
from twisted_raft.service import TRANSFER_MARGIN, RaftKVService
from twisted_raft.storage.memory import MemoryStorage

from tests.support import StubNode

PEERS = {1: ("127.0.0.1", 7001), 2: ("127.0.0.1", 7002), 3: ("127.0.0.1", 7003)}
RAFT = RaftConfig(electionTimeout=(0.3, 0.5), heartbeatInterval=0.05)


class Storage(MemoryStorage):
    def __init__(self, *args):
        super().__init__()

    def start(self):
        pass


class Node(StubNode):
    """A StubNode built the way the service builds a RaftNode."""

    made = []

    def __init__(self, nodeId, peerIds, storage, transport, stateMachine, clock,
                 config=None, onFatalError=None, configuration=None):
        super().__init__(nodeId, role=messages.FOLLOWER, leaderId=0, store=stateMachine)
        self.peerIds = peerIds
        self.bootstrap = configuration
        self.configuration = configuration if len(configuration) else EMPTY
        self.running = False
        Node.made.append(self)

    def start(self):
        self.running = True
        return defer.succeed(self)


def start(config):
    reactor = MemoryReactorClock()
    svc = RaftKVService(config, reactor=reactor, storageFactory=Storage, exitOnFailure=False,
                        nodeFactory=Node)
    svc.startService()
    assert svc.exitCode is None
    return reactor, svc


def dialled(svc):
    return {peerId: link.target for peerId, link in svc.transport.links.items()}


def stop(svc):
    done = []
    svc.stopService().addBoth(done.append)
    return done


# -- wiring -----------------------------------------------------------------------


def test_a_new_cluster_node_bootstraps_from_peers_and_dials_the_configuration():
    reactor, svc = start(NodeConfig(1, PEERS, "d", raft=RAFT))
    node = svc.node
    assert sorted(node.peerIds) == [2, 3]
    assert node.bootstrap.members == tuple(
        Member(i, f"127.0.0.1:{7000 + i}", True) for i in (1, 2, 3)
    )
    assert dialled(svc) == {2: ("127.0.0.1", 7002), 3: ("127.0.0.1", 7003)}
    # a learner is added (at its own address), then node 3 removed
    node.setConfiguration(node.configuration.withMember(Member(4, "10.0.0.4:7004", False)).at(5))
    assert dialled(svc) == {2: ("127.0.0.1", 7002), 3: ("127.0.0.1", 7003),
                            4: ("10.0.0.4", 7004)}
    assert svc.peerSet.isMember(4)
    node.setConfiguration(node.configuration.without(3).at(6))
    # dialled until its removal commits, so that node 3 hears of it
    assert 3 in dialled(svc)
    node.commitIndex = 6
    node.setConfiguration(node.configuration)  # the core: it committed
    assert dialled(svc) == {2: ("127.0.0.1", 7002), 4: ("10.0.0.4", 7004)}
    node.refusedPeers = {3}  # the core's acceptsPeer decides whom it hears
    assert not svc.peerSet.isMember(3)
    # the server asks the same membership test
    assert svc.factory.peers.isMember(4) and not svc.factory.peers.isMember(3)
    assert stop(svc) == [None]


def test_own_peers_entries_override_configured_addresses():
    reactor, svc = start(NodeConfig(1, {1: ("127.0.0.1", 7001), 2: ("nat", 9002)}, "d"))
    svc.node.setConfiguration(Configuration((
        Member(1, "127.0.0.1:7001"), Member(2, "10.0.0.2:7002"), Member(5, "10.0.0.5:7005"),
    ), 9))
    assert dialled(svc) == {2: ("nat", 9002), 5: ("10.0.0.5", 7005)}
    stop(svc)


def test_a_joining_node_starts_empty_and_dials_nobody(logged):
    config = NodeConfig(4, {1: ("127.0.0.1", 7001)}, "d", listen="tcp:7004", join=True)
    reactor, svc = start(config)
    node = svc.node
    assert node.peerIds == [] and node.bootstrap == EMPTY
    assert dialled(svc) == {}
    assert svc.peerSet.isMember(2)  # anyone proving the token, until it is added
    assert [p[0] for p in reactor.tcpServers] == [7004]
    node.setConfiguration(Configuration((
        Member(1, "127.0.0.1:7001"), Member(2, "127.0.0.1:7002"), Member(4, "h:7004", False),
    ), 12))
    assert dialled(svc) == {1: ("127.0.0.1", 7001), 2: ("127.0.0.1", 7002)}
    assert not svc.peerSet.isMember(4)  # itself
    starting = [e for e in logged if "starting" in e.get("log_format", "")]
    assert starting[0]["peers"] == "joining (waits to be added), peers 1=127.0.0.1:7001"
    stop(svc)


def test_the_start_up_line_names_peers_by_id(logged):
    reactor, svc = start(NodeConfig(2, {2: ("::1", 7002), 5: ("h", 7005)}, "d"))
    starting = [e for e in logged if "starting" in e.get("log_format", "")]
    assert starting[0]["peers"] == "peers 2=[::1]:7002,5=h:7005"
    stop(svc)


# -- SIGTERM: hand leadership over --------------------------------------------------


def leading(config=None):
    reactor, svc = start(config or NodeConfig(1, PEERS, "d", raft=RAFT))
    svc.node.becomeLeader()
    return reactor, svc


def test_a_stopping_leader_transfers_leadership_first(logged):
    reactor, svc = leading()
    node = svc.node
    done = stop(svc)
    assert [t for t, _ in node.transfers] == [0]  # to the most up-to-date voter
    assert done == [] and node.running  # still serving while it transfers
    node.transfers[0][1].callback(3)
    assert done == [None] and not node.running
    assert any(e.get("leaderId") == 3 for e in logged)


def test_a_transfer_that_does_not_finish_in_time_does_not_hold_the_stop(logged):
    reactor, svc = leading()
    node = svc.node
    done = stop(svc)
    reactor.advance(RAFT.electionTimeout[1] + TRANSFER_MARGIN - 0.01)
    assert done == [] and node.running
    reactor.advance(0.02)
    assert done == [None] and not node.running
    warned = [e for e in logged if "without handing leadership over" in e.get("log_format", "")]
    assert len(warned) == 1 and "no new leader within 750 ms" in warned[0]["why"]


def test_a_failed_transfer_is_logged_and_the_stop_goes_on(logged):
    reactor, svc = leading()
    done = stop(svc)
    svc.node.transfers[0][1].errback(messages.TransferFailed("target did not win"))
    assert done == [None]
    warned = [e for e in logged if "without handing leadership over" in e.get("log_format", "")]
    assert "TransferFailed: target did not win" in warned[0]["why"]


def test_no_transfer_from_a_follower_or_a_lone_voter():
    reactor, svc = start(NodeConfig(1, PEERS, "d", raft=RAFT))
    node = svc.node
    assert stop(svc) == [None] and node.transfers == []
    # a leader whose only other members are learners
    reactor, svc = leading()
    node = svc.node
    node.setConfiguration(Configuration((Member(1, "a:1"), Member(2, "a:2", False)), 3))
    assert stop(svc) == [None] and node.transfers == []
