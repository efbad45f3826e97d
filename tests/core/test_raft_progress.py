"""
The leader's per-follower state machine (twisted_raft.raft.progress), alone:
probe / replicate / snapshot (§5.3, §7), the in-flight window (thesis
§10.2.1), and the tracker's quorum questions (§5.3, thesis §6.2).
"""

from twisted_raft.raft.messages import Entry, SnapshotMeta
from twisted_raft.raft.progress import (
    PROBE,
    REPLICATE,
    SNAPSHOT,
    ChunkOutcome,
    Progress,
    ProgressTracker,
    batchSize,
)
from twisted_raft.raft.quorum import MajorityConfig


def entries(first, count, size=10):
    return [Entry(i, 1, b"x" * size) for i in range(first, first + count)]


def progress(nextIndex=5, maxInflight=3, maxInflightBytes=10_000):
    return Progress(nextIndex, 0.0, maxInflight, maxInflightBytes)


def test_a_new_follower_is_probed():
    p = progress()
    assert p.state is PROBE and p.nextIndex == 5 and p.matchIndex == 0
    assert p.canSend() and not p.busy


def test_5_3_probe_sends_one_batch_at_a_time_and_does_not_advance():
    p = progress()
    batch = entries(5, 2)
    p.sent(4, batch, batchSize(batch))
    assert p.inflight == 1 and p.inflightBytes == batchSize(batch)
    assert p.nextIndex == 5, "a probe does not assume the follower matches"
    assert not p.canSend() and p.busy


def test_accepted_batch_moves_probe_to_replicate():
    p = progress()
    batch = entries(5, 2)
    p.sent(4, batch, batchSize(batch))
    p.landed(batchSize(batch))
    p.accepted(6, batch=True)
    assert p.state is REPLICATE
    assert (p.matchIndex, p.nextIndex, p.inflight, p.inflightBytes) == (6, 7, 0, 0)


def test_accepted_heartbeat_does_not_leave_probe():
    p = progress()
    p.accepted(3, batch=False)
    assert p.state is PROBE and p.matchIndex == 3 and p.nextIndex == 5


def test_match_never_goes_back():
    p = progress()
    p.accepted(6, batch=True)
    p.accepted(2, batch=False)
    assert p.matchIndex == 6 and p.nextIndex == 7


def test_10_2_1_replicate_pipelines_up_to_the_window():
    p = progress(nextIndex=1, maxInflight=2)
    p.becomeReplicate()
    for first in (1, 3):
        assert p.canSend()
        batch = entries(first, 2)
        p.sent(first - 1, batch, batchSize(batch))
    assert p.nextIndex == 5, "optimistically past every batch sent"
    assert p.inflight == 2 and not p.canSend()
    p.landed(batchSize(entries(1, 2)))
    assert p.canSend()


def test_replicate_window_in_bytes():
    p = progress(nextIndex=1, maxInflight=100, maxInflightBytes=100)
    p.becomeReplicate()
    batch = entries(1, 2, size=60)
    p.sent(0, batch, batchSize(batch))
    assert not p.canSend()


def test_5_3_rejection_moves_replicate_back_to_probe():
    p = progress(nextIndex=1)
    p.becomeReplicate()
    p.accepted(4, batch=True)
    p.rejected(2)
    assert p.state is PROBE
    assert p.nextIndex == 5, "never below what is known to match"
    p.rejected(9)
    assert p.nextIndex == 9


def test_rejection_never_below_index_one():
    p = progress()
    p.rejected(0)
    assert p.nextIndex == 1


def test_a_lost_batch_is_resent_from_itself_while_probing():
    p = progress(nextIndex=1)
    p.becomeReplicate()
    first, second = entries(1, 2), entries(3, 2)
    p.sent(0, first, batchSize(first))
    p.sent(2, second, batchSize(second))
    assert p.nextIndex == 5
    p.landed(batchSize(second))
    p.lost(2)
    assert p.state is PROBE and p.nextIndex == 3
    p.landed(batchSize(first))
    p.lost(0)
    assert p.nextIndex == 1


def test_lost_does_not_go_below_match():
    p = progress()
    p.accepted(6, batch=True)
    p.lost(2)
    assert p.nextIndex == 7


def test_7_snapshot_blocks_sends_until_the_chunk_is_answered():
    meta = SnapshotMeta(10, 2)
    p = progress(nextIndex=3)
    p.becomeSnapshot(meta)
    assert p.state is SNAPSHOT and p.busy and not p.canSend()
    assert (p.snapshotMeta, p.snapshotOffset) == (meta, 0)
    assert p.chunkAnswered(meta, True, False, 100) is ChunkOutcome.NEXT
    assert p.state is PROBE and p.snapshotOffset == 100
    p.becomeSnapshot(meta)
    assert p.snapshotOffset == 100, "the transfer resumes where it stopped"
    assert p.chunkAnswered(meta, True, True, 180) is ChunkOutcome.DONE
    assert p.state is PROBE and p.snapshotMeta is None
    assert p.matchIndex == 10 and p.nextIndex == 11


def test_a_refused_chunk_waits_and_keeps_its_place():
    meta = SnapshotMeta(10, 2)
    p = progress(nextIndex=3)
    p.becomeSnapshot(meta)
    assert p.chunkAnswered(meta, False, False, 40) is ChunkOutcome.WAIT
    assert p.state is PROBE and p.snapshotMeta == meta and p.snapshotOffset == 40


def test_a_newer_snapshot_restarts_the_transfer():
    old, new = SnapshotMeta(10, 2), SnapshotMeta(20, 2)
    p = progress(nextIndex=3)
    p.becomeSnapshot(old)
    p.chunkAnswered(old, True, False, 100)
    p.becomeSnapshot(new)
    assert (p.snapshotMeta, p.snapshotOffset) == (new, 0)
    assert p.chunkAnswered(old, True, True, 180) is ChunkOutcome.WAIT
    assert p.matchIndex == 0 and p.snapshotMeta == new


def test_a_failed_chunk_leaves_snapshot_and_changed_starts_over():
    meta = SnapshotMeta(10, 2)
    p = progress(nextIndex=3)
    p.becomeSnapshot(meta)
    p.chunkFailed(changed=False)
    assert p.state is PROBE and p.snapshotMeta == meta
    p.becomeSnapshot(meta)
    p.chunkFailed(changed=True)
    assert p.state is PROBE and p.snapshotMeta is None


def test_rejections_and_losses_do_not_end_a_snapshot_in_flight():
    meta = SnapshotMeta(10, 2)
    p = progress(nextIndex=3)
    p.becomeSnapshot(meta)
    p.rejected(2)
    p.lost(1)
    p.accepted(1, batch=True)
    assert p.state is SNAPSHOT and not p.canSend()


def test_tracker_excludes_the_leader_and_starts_probing():
    tracker = ProgressTracker(MajorityConfig([1, 2, 3]), 2)
    tracker.reset(tracker.voters.voters, 8, 5.0, 4, 1000)
    assert sorted(tracker.progress) == [1, 3]
    assert all(p.state is PROBE and p.nextIndex == 8 and p.lastAck == 5.0
               for p in tracker.progress.values())


def test_5_3_tracker_commit_index_counts_the_leaders_durable_log():
    tracker = ProgressTracker(MajorityConfig([1, 2, 3, 4, 5]), 1)
    tracker.reset(tracker.voters.voters, 1, 0.0, 4, 1000)
    for peerId, match in {2: 7, 3: 5, 4: 0, 5: 0}.items():
        tracker.progress[peerId].matchIndex = match
    assert tracker.committedIndex(9) == 5
    assert tracker.committedIndex(6) == 5
    assert tracker.committedIndex(4) == 4, "only what the leader's disk holds counts"


def test_6_2_tracker_quorum_active():
    tracker = ProgressTracker(MajorityConfig([1, 2, 3, 4, 5]), 1)
    tracker.reset(tracker.voters.voters, 1, 0.0, 4, 1000)
    tracker.progress[2].lastAck = 9.5
    assert not tracker.quorumActive(10.0, 1.0)
    tracker.progress[3].lastAck = 9.0
    assert tracker.quorumActive(10.0, 1.0)
    assert not tracker.quorumActive(10.5, 1.0)
