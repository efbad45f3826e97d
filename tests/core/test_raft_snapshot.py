"""
Snapshots and log compaction in the consensus core (§7), deterministically:
whole clusters on one task.Clock with small snapshot thresholds.
"""

import pytest
from twisted.internet.defer import Deferred

from twisted_raft import kv
from twisted_raft.raft.messages import InstallSnapshot
from twisted_raft.testing.cluster import SimCluster
from twisted_raft.testing.invariants import RandomRun

SMALL = dict(snapshotEntries=50, snapshotKeep=10, snapshotChunk=512)


def put(node, key, value=b"v"):
    results = []
    node.propose(kv.encodePut(key, value)).addBoth(results.append)
    return results


def writeMany(cluster, leader, count, prefix="k"):
    results = []
    for n in range(count):
        results += put(leader, f"{prefix}{n % 97}", b"%d" % n)
        if n % 25 == 24:
            cluster.advance(0.02)
    cluster.advance(0.5)
    return results


def countInstalls(cluster):
    """Count InstallSnapshot chunks delivered, by wrapping every node's handler."""
    seen = []
    for node in cluster.nodes.values():
        original = node.handleInstallSnapshot

        def counting(request, original=original):
            seen.append(request)
            return original(request)

        node.handleInstallSnapshot = counting
    return seen


def test_snapshot_taken_and_log_compacted():
    cluster = SimCluster(3, seed=1, **SMALL)
    leader = cluster.waitForLeader()
    writeMany(cluster, leader, 300)
    for nodeId, node in cluster.nodes.items():
        assert node.snapshot is not None and node.snapshot.lastIndex >= 250
        assert node.raftLog.startIndex >= node.snapshot.lastIndex - SMALL["snapshotKeep"]
        storage = cluster.storages[nodeId]
        # The stored log holds only what follows the snapshot.
        assert all(e.index > storage.snapshot[0].lastIndex for e in storage.entries)
        assert len(storage.entries) < 60
    data = cluster.machines[leader.nodeId].data
    assert all(m.data == data for m in cluster.machines.values())


def test_follower_down_for_ten_thresholds_catches_up_by_snapshot():
    cluster = SimCluster(3, seed=2, **SMALL)
    leader = cluster.waitForLeader()
    follower = next(i for i in cluster.ids if i != leader.nodeId)
    cluster.crash(follower)
    writeMany(cluster, leader, 10 * SMALL["snapshotEntries"])
    assert leader.raftLog.startIndex > 100  # its next index was compacted away
    cluster.restart(follower)
    installs = countInstalls(cluster)
    node = cluster.nodes[follower]
    cluster.runUntil(lambda: node.lastApplied == leader.lastApplied)
    assert installs and installs[-1].done
    assert len(installs) > 1  # chunked: the snapshot is larger than one chunk
    assert cluster.machines[follower].data == cluster.machines[leader.nodeId].data
    # And it keeps replicating normally afterwards.
    put(leader, "after", b"x")
    cluster.advance(0.5)
    assert cluster.machines[follower].get("after") == b"x"


def test_brand_new_empty_node_catches_up_by_snapshot():
    """A node first started after the cluster has compacted its log."""
    cluster = SimCluster(3, seed=3, **SMALL)
    late = 3
    cluster.crash(late)  # never got anything: its storage is empty
    leader = cluster.waitForLeader()
    writeMany(cluster, leader, 200)
    assert leader.raftLog.startIndex > 0
    node = cluster.restart(late)
    assert node.lastApplied == 0 and node.raftLog.lastIndex == 0
    cluster.runUntil(lambda: node.lastApplied == leader.lastApplied)
    assert node.snapshot is not None
    assert cluster.machines[late].data == cluster.machines[leader.nodeId].data


def test_restart_restores_state_from_snapshot_and_tail():
    cluster = SimCluster(3, seed=4, **SMALL)
    leader = cluster.waitForLeader()
    writeMany(cluster, leader, 180)
    victim = next(i for i in cluster.ids if i != leader.nodeId)
    before = dict(cluster.machines[victim].data)
    applied = cluster.nodes[victim].lastApplied
    cluster.crash(victim)
    node = cluster.restart(victim)
    # Right after start, before hearing from anyone: the snapshot's state.
    assert node.snapshot is not None and node.lastApplied == node.snapshot.lastIndex
    assert 0 < node.snapshot.lastIndex <= applied
    cluster.runUntil(lambda: node.lastApplied == leader.lastApplied)
    assert cluster.machines[victim].data == before == cluster.machines[leader.nodeId].data


def test_interrupted_install_restarts_cleanly():
    cluster = SimCluster(3, seed=5, **dict(SMALL, snapshotChunk=64))
    leader = cluster.waitForLeader()
    follower = next(i for i in cluster.ids if i != leader.nodeId)
    cluster.crash(follower)
    writeMany(cluster, leader, 300)
    cluster.restart(follower)
    installs = countInstalls(cluster)
    cluster.runUntil(lambda: len(installs) >= 3)
    # Cut it off mid-transfer, long enough for the leader's RPCs to time out.
    cluster.network.isolate(follower)
    cluster.advance(3.0)
    assert not any(r.done for r in installs)
    cluster.network.heal()
    node = cluster.nodes[follower]
    cluster.runUntil(lambda: node.lastApplied == leader.lastApplied, timeout=30)
    assert cluster.machines[follower].data == cluster.machines[leader.nodeId].data


def test_crash_before_snapshot_durable_keeps_old_state():
    """A crash while the snapshot is not yet durable restarts from the log."""
    cluster = SimCluster(3, seed=6, diskDelay=0.01, **SMALL)
    leader = cluster.waitForLeader()
    follower = next(i for i in cluster.ids if i != leader.nodeId)
    storage = cluster.storages[follower]
    node = cluster.nodes[follower]
    cluster.runUntil(lambda: node.snapshot is None and node.snapshots.taking or (
        put(leader, "x%d" % len(storage.entries)) and False), timeout=20, step=0.002)
    assert storage.durableSnapshot is None or storage.durableSnapshot[0] != storage.snapshot[0]
    cluster.crash(follower)
    node = cluster.restart(follower)
    cluster.runUntil(lambda: node.lastApplied == leader.lastApplied)
    assert cluster.machines[follower].data == cluster.machines[leader.nodeId].data


@pytest.mark.parametrize("size", [3, 5])
@pytest.mark.parametrize("seed", range(3000, 3030))
def test_simulation_with_small_thresholds(size, seed):
    """Snapshots and installs in most seeds, every invariant still checked."""
    run = RandomRun(seed, size, duration=3.0, timers=True, stable=0.5,
                    nodeOptions=dict(snapshotEntries=15, snapshotKeep=3, snapshotChunk=200),
                    network=dict(dropRate=0.03, duplicateRate=0.02, latency=(0.001, 0.01)))
    run.run()


def test_simulation_snapshot_and_install_happen():
    """Across seeds, snapshots are taken and installed (the tests exercise §7)."""
    installs = snapshots = 0
    for seed in range(3000, 3010):
        run = RandomRun(seed, 3, duration=3.0,
                        nodeOptions=dict(snapshotEntries=15, snapshotKeep=3, snapshotChunk=200))
        seen = []
        original = type(run.cluster.nodes[1]).handleInstallSnapshot

        def counting(self, request, seen=seen, original=original):
            seen.append(request)
            return original(self, request)

        type(run.cluster.nodes[1]).handleInstallSnapshot = counting
        try:
            run.run()
        finally:
            type(run.cluster.nodes[1]).handleInstallSnapshot = original
        installs += any(isinstance(r, InstallSnapshot) and r.done for r in seen)
        snapshots += any(n.snapshot is not None for n in run.cluster.incarnations)
    assert snapshots >= 8 and installs >= 3


def _follower():
    import random

    from twisted.internet import task

    from twisted_raft.raft.node import RaftNode
    from twisted_raft.storage.memory import MemoryStorage
    from twisted_raft.testing.scripted import ScriptedTransport

    clock = task.Clock()
    storage = MemoryStorage()
    node = RaftNode(1, [1, 2, 3], storage, ScriptedTransport(), kv.KVStore(), clock,
                    rng=random.Random(0))
    node.start()
    return node, storage


def _snapshotOf(store):
    import io

    buffer = io.BytesIO()
    store.snapshotWriter()(buffer)
    store.snapshotDone()
    return buffer.getvalue()


def test_refused_install_restarts_the_transfer_and_the_node_keeps_running():
    """A transfer the storage will not install (e.g. reset by a retransmitted
    first chunk) is started over; it is not a storage failure."""
    from twisted.internet import defer

    from twisted_raft.raft.messages import (
        InstallSnapshot, InstallSnapshotResult, SnapshotChanged, SnapshotMeta,
    )

    node, storage = _follower()
    source = kv.KVStore()
    source.apply(1, kv.encodePut("a", b"1"))
    data = _snapshotOf(source)
    meta = SnapshotMeta(5, 1, (1, 2, 3))
    storage.installSnapshot = lambda meta, discard: defer.fail(SnapshotChanged("reset"))
    answers = []
    node.handleInstallSnapshot(InstallSnapshot(1, 2, meta, 0, data, True)).addBoth(answers.append)
    assert answers == [InstallSnapshotResult(1, False, 0)]
    assert node.running and node.failed is None
    assert node.commitIndex == 0 and node.raftLog.startIndex == 0 and node.snapshot is None


def test_a_chunk_arriving_while_another_is_written_is_deferred():
    from twisted.internet import defer

    from twisted_raft.raft.messages import InstallSnapshot, InstallSnapshotResult, SnapshotMeta

    node, storage = _follower()
    meta = SnapshotMeta(5, 1, (1, 2, 3))
    held = []
    storage.receiveSnapshot = lambda *args: held.append(defer.Deferred()) or held[-1]
    first, second = [], []
    node.handleInstallSnapshot(InstallSnapshot(1, 2, meta, 0, b"x" * 10, False)).addBoth(first.append)
    node.handleInstallSnapshot(InstallSnapshot(1, 2, meta, 0, b"x" * 10, False)).addBoth(second.append)
    assert len(held) == 1 and second == [InstallSnapshotResult(1, False, 0)]
    held[0].callback(10)
    assert first == [InstallSnapshotResult(1, True, 10)]


def test_a_new_leader_does_not_send_a_snapshot_to_a_follower_that_has_the_log():
    """
    Found by bench/memory.py: after the leader was restarted, the new leader
    sent it the whole snapshot although its log was complete.  The new
    leader's sends to it had failed while it was down, and a failed send
    reset its next index to matchIndex + 1, which a new leader does not know
    yet (0): below the compacted log, so a snapshot.
    """
    cluster = SimCluster(3, seed=5, **SMALL)
    old = cluster.waitForLeader()
    writeMany(cluster, old, 200)
    cluster.crash(old.nodeId)
    new = cluster.waitForLeader()
    assert new.nodeId != old.nodeId and new.raftLog.startIndex > 100
    cluster.advance(1.0)  # its AppendEntries to the crashed node fail meanwhile
    node = cluster.restart(old.nodeId)
    installs = countInstalls(cluster)
    cluster.runUntil(lambda: node.lastApplied == new.lastApplied)
    assert installs == []
    assert cluster.machines[old.nodeId].data == cluster.machines[new.nodeId].data


def test_final_chunk_is_answered_success_once_installed():
    """
    §7 / Figure 13: the follower answers the final chunk C{success=True}
    (with the next offset, past the data) once it has made the snapshot its
    own, so the leader's transfer ends there, rather than being told
    C{success=False, nextOffset=0} and ending only on a later round through
    the "already have it" path.
    """
    from twisted_raft.raft.messages import InstallSnapshot, InstallSnapshotResult, SnapshotMeta

    node, storage = _follower()
    source = kv.KVStore()
    source.apply(5, kv.encodePut("a", b"1"))
    data = _snapshotOf(source)
    meta = SnapshotMeta(5, 1, (1, 2, 3))
    answers = []
    half = len(data) // 2
    node.handleInstallSnapshot(InstallSnapshot(1, 2, meta, 0, data[:half], False)).addBoth(
        answers.append
    )
    node.handleInstallSnapshot(InstallSnapshot(1, 2, meta, half, data[half:], True)).addBoth(
        answers.append
    )
    node.clock.advance(0)
    assert answers == [
        InstallSnapshotResult(1, True, half),
        InstallSnapshotResult(1, True, len(data)),
    ]
    assert node.snapshot == meta and node.commitIndex == 5
    assert node.lastApplied == 5 and node.stateMachine.get("a") == b"1"


def test_a_transfer_ends_on_its_final_chunk():
    """
    In a cluster, the final chunk of a transfer is answered C{success=True},
    and the transfer is not started over.
    """
    cluster = SimCluster(3, seed=7, **SMALL)
    leader = cluster.waitForLeader()
    follower = next(i for i in cluster.ids if i != leader.nodeId)
    cluster.network.isolate(follower)
    writeMany(cluster, leader, 10 * SMALL["snapshotEntries"])
    cluster.runUntil(lambda: leader.raftLog.startIndex > 0)
    node = cluster.nodes[follower]
    answers = []
    original = type(node).handleInstallSnapshot

    def recording(self, request):
        d = original(self, request)
        if self is node:
            d.addCallback(lambda result: answers.append((request, result)) or result)
        return d

    type(node).handleInstallSnapshot = recording
    try:
        cluster.network.heal()
        cluster.runUntil(
            lambda: node.snapshot is not None and node.lastApplied >= leader.snapshot.lastIndex
        )
        cluster.advance(0.5)
    finally:
        type(node).handleInstallSnapshot = original
    finals = [result for request, result in answers if request.done]
    assert finals and all(result.success for result in finals)
    assert [request.offset for request, _ in answers].count(0) == 1


def test_a_lost_answer_to_a_chunk_costs_that_chunk_not_the_transfer():
    """
    Figure 13 over a lossy network: the follower wrote a chunk but its answer
    was lost, so the leader sends the chunk again after its timeout.  The
    follower answers with where the transfer is, and the leader goes on
    from there; it used to be told to start over at offset 0, so a transfer
    of many chunks over a network that loses a few messages never finished.
    """
    cluster = SimCluster(3, seed=7, **dict(SMALL, snapshotChunk=64))
    leader = cluster.waitForLeader()
    follower = next(i for i in cluster.ids if i != leader.nodeId)
    cluster.network.isolate(follower)
    writeMany(cluster, leader, 10 * SMALL["snapshotEntries"])
    cluster.runUntil(lambda: leader.raftLog.startIndex > 0)
    node = cluster.nodes[follower]
    offsets = []
    original = type(node).handleInstallSnapshot

    def losingAnswers(self, request):
        d = original(self, request)
        if self is not node:
            return d
        offsets.append(request.offset)
        if len(offsets) in (3, 6):
            return Deferred()  # written, but the answer never reaches the leader
        return d

    type(node).handleInstallSnapshot = losingAnswers
    try:
        cluster.network.heal()
        cluster.runUntil(
            lambda: node.snapshot is not None and node.lastApplied >= leader.snapshot.lastIndex,
            timeout=30,
        )
    finally:
        type(node).handleInstallSnapshot = original
    assert offsets.count(0) == 1  # never started over
    assert offsets[3] == offsets[2] and offsets[6] == offsets[5]  # each lost chunk sent again
    assert offsets == sorted(offsets) and len(offsets) > 8
    assert cluster.machines[follower].data == cluster.machines[leader.nodeId].data


def test_entries_kept_behind_a_snapshot_are_bounded_in_bytes():
    # 1,000 entries of 1 KiB each may be kept by count, but only ~4 KiB by size.
    cluster = SimCluster(3, seed=2, snapshotEntries=50, snapshotKeep=1000,
                         snapshotKeepBytes=4096, snapshotChunk=512)
    leader = cluster.waitForLeader()
    for n in range(120):
        put(leader, f"k{n % 7}", b"x" * 1024)
        if n % 10 == 9:
            cluster.advance(0.02)
    cluster.advance(0.5)
    for node in cluster.nodes.values():
        assert node.snapshot is not None
        behind = node.raftLog.slice(node.raftLog.startIndex + 1, node.snapshot.lastIndex + 1)
        assert len(behind) <= 4  # each entry is a little over 1 KiB
        assert sum(len(e.data) for e in behind) <= 4096
