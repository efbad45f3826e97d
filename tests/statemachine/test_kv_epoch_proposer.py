"""
Who proposes the metadata epoch (twisted_raft.kvepoch): a new cluster gets
it at its first leader, a cluster restarted from old-style data dirs
(version 1 payloads, each node's at its own index) gets it once its leader
runs this code, transactions before it are refused by every node, a failed
proposal is retried, and the service runs the proposer.
"""

from twisted.internet.testing import MemoryReactorClock

from twisted_raft import kv
from twisted_raft.kvepoch import EPOCH_CHECK_INTERVAL, MetadataEpochProposer
from twisted_raft.kvrecords import MetadataUnavailable, PutResult, TxnResult
from twisted_raft.kvtxn import Compare, Put, Txn
from twisted_raft.raft import messages
from twisted_raft.raft.messages import SnapshotMeta
from twisted_raft.testing.cluster import SimCluster

from tests.statemachine.test_kv_epoch import v1Of
from tests.support import StubNode

EPOCH = kv.encodeMetadataEpoch()


def epochEntries(node):
    raftLog = node.raftLog
    return [i for i in range(raftLog.startIndex + 1, raftLog.lastIndex + 1)
            if raftLog.entry(i).data == EPOCH]


def committed(cluster, data):
    """Propose C{data} on the leader and run until it is applied everywhere."""
    results = []
    cluster.leader().propose(data).addBoth(results.append)
    cluster.runUntil(lambda: results)
    index, result = results[0]
    cluster.runUntil(lambda: all(n.lastApplied >= index for n in cluster.nodes.values()))
    return index, result


def test_a_new_cluster_gets_one_epoch_at_its_first_leader():
    cluster = SimCluster(3, seed=1, metadataEpoch=True)
    leader = cluster.waitForLeader()
    cluster.runUntil(lambda: all(not m.needsMetadataEpoch() for m in cluster.machines.values()))
    cluster.advance(1.0)  # more looks change nothing
    (index,) = epochEntries(leader)
    assert {m.metadataFloor for m in cluster.machines.values()} == {index}
    assert cluster.proposers[leader.nodeId].proposals == 1
    assert sum(p.proposals for p in cluster.proposers.values()) == 1
    # transactions apply, the same everywhere
    bump = kv.encodeTxn(Txn([Compare("k", "version", "==", 0)], [Put("k", b"v")]))
    assert committed(cluster, bump)[1] == TxnResult(True, [PutResult(None)])
    first = cluster.machines[1].data
    assert all(m.data == first for m in cluster.machines.values())


def test_a_new_leader_does_not_propose_it_again():
    cluster = SimCluster(3, seed=2, metadataEpoch=True)
    leader = cluster.waitForLeader()
    cluster.runUntil(lambda: all(not m.needsMetadataEpoch() for m in cluster.machines.values()))
    cluster.crash(leader.nodeId)
    second = cluster.waitForLeader(exclude=[leader.nodeId])
    cluster.advance(1.0)
    cluster.restart(leader.nodeId)
    cluster.advance(1.0)
    assert len(epochEntries(second)) == 1
    assert sum(p.proposals for p in cluster.proposers.values()) == 0  # the new ones


def test_an_upgraded_cluster_from_version_1_payloads_gets_it_and_agrees():
    # The old version: no proposer, no snapshots of its own (they are made
    # below, in its format).
    cluster = SimCluster(3, seed=3, snapshotEntries=10**6)
    cluster.waitForLeader()
    for i in range(20):
        committed(cluster, kv.encodePut(f"k{i % 7}", b"%d" % i))
    # Nodes 1 and 2 snapshotted at indexes of their own, in version 1; node
    # 3 kept its whole log.
    log = [cluster.nodes[3].raftLog.entry(i) for i in range(1, cluster.nodes[3].lastApplied + 1)]
    starts = {1: 8, 2: 17}
    for nodeId in cluster.ids:
        cluster.crash(nodeId)
    for nodeId, start in starts.items():
        old = kv.KVStore()
        for entry in log[:start]:
            if entry.kind is messages.DATA and entry.data:
                old.apply(entry.index, entry.data)
        old.appliedIndex = start
        meta = SnapshotMeta(start, log[start - 1].term, cluster.nodes[nodeId].configs.at(start))
        storage = cluster.storages[nodeId]
        storage.snapshot = storage.durableSnapshot = (meta, v1Of(old))
    for nodeId in cluster.ids:
        cluster.restart(nodeId)
    cluster.waitForLeader()
    # The premise: each node made up metadata of its own for the old keys.
    assert len({m.getKeyValue("k0").create_revision for m in cluster.machines.values()}) == 3
    assert all(m.needsMetadataEpoch() for m in cluster.machines.values())
    # Before the epoch a transaction is refused, by every node alike.
    bump = kv.encodeTxn(Txn([Compare("k0", "version", "==", 1)], [Put("k0", b"bumped")]))
    index, result = committed(cluster, bump)
    assert result == MetadataUnavailable()
    assert all(m.get("k0") == b"14" for m in cluster.machines.values())
    # Now this version leads: the epoch, once, and the metadata agrees.
    for nodeId in cluster.ids:
        cluster.startProposer(nodeId)
    cluster.runUntil(lambda: all(not m.needsMetadataEpoch() for m in cluster.machines.values()))
    (floor,) = epochEntries(cluster.leader())
    assert floor > index
    first = cluster.machines[1]
    assert all(m.data == first.data for m in cluster.machines.values())
    assert first.getKeyValue("k0") == kv.KeyValue("k0", b"14", floor, floor, 1)
    index, result = committed(cluster, bump)
    assert result == TxnResult(True, [PutResult(None)])
    assert all(m.data == first.data for m in cluster.machines.values())
    assert first.getKeyValue("k0") == kv.KeyValue("k0", b"bumped", floor, index, 2)


# -- the proposer's own rules, with a stand-in node ----------------------------------


def stub(role=messages.LEADER, **node):
    """A proposer started over a L{StubNode} given C{node}'s attributes."""
    clock = MemoryReactorClock()
    stand = StubNode(role=role)
    stand.__dict__.update(node)
    proposer = MetadataEpochProposer(stand, stand.store, clock)
    proposer.start()  # its first look is now
    return clock, stand, proposer


def test_only_a_leader_proposes_and_only_while_its_store_needs_one():
    clock, node, proposer = stub(messages.FOLLOWER)
    clock.advance(EPOCH_CHECK_INTERVAL * 5)
    assert node.proposed == [] and proposer.proposals == 0
    node.becomeLeader()
    clock.advance(EPOCH_CHECK_INTERVAL)
    assert node.proposed == [EPOCH] and node.store.metadataFloor == 1
    clock.advance(EPOCH_CHECK_INTERVAL * 5)
    assert node.proposed == [EPOCH] and proposer.proposals == 1


def test_a_failed_proposal_is_tried_again():
    clock, node, proposer = stub(proposeError=messages.CommitUnknown("leadership lost"))
    assert proposer.proposals == 1 and node.store.needsMetadataEpoch()
    clock.advance(EPOCH_CHECK_INTERVAL)
    assert proposer.proposals == 2 and node.store.needsMetadataEpoch()
    node.proposeError = None
    clock.advance(EPOCH_CHECK_INTERVAL)
    assert proposer.proposals == 3 and not node.store.needsMetadataEpoch()


def test_one_attempt_at_a_time_and_none_once_the_log_had_one():
    clock, node, proposer = stub(holdReads=True)  # the ReadIndex round is out
    clock.advance(EPOCH_CHECK_INTERVAL * 3)
    assert len(node.heldReads) == 1 and proposer.proposals == 0
    # meanwhile an earlier leader's epoch is applied: the read finds it
    node.store.apply(1, EPOCH)
    node.heldReads.pop().callback(1)
    clock.advance(EPOCH_CHECK_INTERVAL * 3)
    assert proposer.proposals == 0 and node.proposed == []


def test_stopped_it_looks_no_more():
    clock, node, proposer = stub(messages.FOLLOWER)
    proposer.stop()
    node.becomeLeader()
    clock.advance(EPOCH_CHECK_INTERVAL * 5)
    assert node.proposed == [] and not clock.getDelayedCalls()


# -- the service runs it ---------------------------------------------------------------


def test_the_service_proposes_the_epoch_as_a_single_node_cluster_leader():
    from twisted_raft.config import NodeConfig
    from twisted_raft.service import RaftKVService
    from twisted_raft.storage.memory import MemoryStorage

    class Storage(MemoryStorage):
        def __init__(self, *a):
            super().__init__()

        def start(self):
            pass

    reactor = MemoryReactorClock()
    config = NodeConfig(1, [("127.0.0.1", 7001)], "unused",
                        listen="tcp:7001:interface=127.0.0.1")
    svc = RaftKVService(config, reactor=reactor, storageFactory=Storage, exitOnFailure=False)
    svc.startService()
    store = svc.stateMachine
    for _ in range(200):
        reactor.advance(0.01)
    assert svc.node.role == messages.LEADER
    proposer = svc.metadataEpoch
    assert not store.needsMetadataEpoch() and proposer.proposals == 1
    assert store.metadataFloor == epochEntries(svc.node)[0]
    done = []
    svc.stopService().addBoth(done.append)
    reactor.advance(1)
    assert done == [None] and svc.metadataEpoch is None
    assert not proposer.running
