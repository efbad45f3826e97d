"""
Snapshot transfer (twisted_raft.raft.snapshots), each side alone: §7 and
Figure 13 (InstallSnapshot), with fake storage and transport.
"""

from twisted.internet import defer, task

from twisted_raft.raft.config import RaftConfig
from twisted_raft.raft.messages import (
    InstallSnapshot,
    InstallSnapshotResult,
    SnapshotChanged,
    SnapshotMeta,
)
from twisted_raft.raft.progress import PROBE, SNAPSHOT, Progress
from twisted_raft.raft.snapshots import SKIP_TRANSFER, SnapshotReceiver, SnapshotSender
from twisted_raft.testing.scripted import ScriptedTransport

META = SnapshotMeta(10, 2, (1, 2, 3))
DATA = b"0123456789" * 5


class Disk:
    """Storage's snapshot calls, answered at once or by hand."""

    def __init__(self):
        self.received = []
        self.pending = None

    def receiveSnapshot(self, meta, offset, data):
        self.received.append((meta, offset, data))
        self.pending = defer.Deferred()
        return self.pending

    def readSnapshot(self, meta, offset, size):
        return defer.succeed((DATA[offset : offset + size], len(DATA)))


def receiver(install=lambda meta: True):
    disk = Disk()
    installed = []

    def installing(meta):
        installed.append(meta)
        return install(meta)

    return SnapshotReceiver(disk, installing, lambda: defer.succeed(None)), disk, installed


def answer(d):
    answers = []
    d.addBoth(answers.append)
    return answers


def test_figure_13_chunks_answered_with_the_next_offset():
    r, disk, installed = receiver()
    first = answer(r.receive(InstallSnapshot(3, 2, META, 0, DATA[:20], False), 3, 0, False))
    assert r.receiving and first == []
    disk.pending.callback(20)
    assert first == [InstallSnapshotResult(3, True, 20)] and not r.receiving
    last = answer(r.receive(InstallSnapshot(3, 2, META, 20, DATA[20:], True), 3, 0, False))
    disk.pending.callback(len(DATA))
    assert installed == [META]
    assert last == [InstallSnapshotResult(3, True, len(DATA))]


def test_a_refused_install_restarts_the_transfer():
    r, disk, installed = receiver(install=lambda meta: False)
    last = answer(r.receive(InstallSnapshot(3, 2, META, 0, DATA, True), 3, 0, False))
    disk.pending.callback(len(DATA))
    assert installed == [META] and last == [InstallSnapshotResult(3, False, 0)]


def test_a_retransmitted_chunk_is_answered_with_where_the_transfer_is():
    # The answer to the chunk at 10 was lost and the leader sends it again:
    # the storage holds 30 bytes, so go on from there, not from 0.
    r, disk, installed = receiver()
    again = answer(r.receive(InstallSnapshot(3, 2, META, 10, DATA[10:20], False), 3, 0, False))
    disk.pending.callback(30)
    assert again == [InstallSnapshotResult(3, True, 30)] and installed == []


def test_a_write_that_lost_the_transfer_restarts_it():
    r, disk, _ = receiver()
    answers = answer(r.receive(InstallSnapshot(3, 2, META, 20, DATA[20:30], False), 3, 0, False))
    disk.pending.errback(SnapshotChanged("no transfer under way"))
    assert answers == [InstallSnapshotResult(3, False, 0)] and not r.receiving


def test_one_chunk_at_a_time():
    r, disk, _ = receiver()
    r.receive(InstallSnapshot(3, 2, META, 0, DATA[:20], False), 3, 0, False)
    again = answer(r.receive(InstallSnapshot(3, 2, META, 0, DATA[:20], False), 3, 0, False))
    assert again == [InstallSnapshotResult(3, False, 0)] and len(disk.received) == 1


def test_the_last_chunk_waits_while_we_snapshot():
    r, disk, installed = receiver()
    later = answer(r.receive(InstallSnapshot(3, 2, META, 20, DATA[20:], True), 3, 0, True))
    assert later == [InstallSnapshotResult(3, False, 20)] and disk.received == []


def test_a_snapshot_we_already_hold_ends_the_transfer():
    r, disk, installed = receiver()
    skip = answer(r.receive(InstallSnapshot(3, 2, META, 0, DATA[:20], False), 3, 10, False))
    assert skip == [InstallSnapshotResult(3, True, SKIP_TRANSFER)] and disk.received == []


def sender(leading=True):
    wire, answers = ScriptedTransport(), []
    config = RaftConfig(snapshotChunk=20)
    s = SnapshotSender(
        1, Disk(), wire, task.Clock(), config,
        lambda *args: answers.append(args), lambda term: leading,
    )
    return s, wire, answers


def test_sender_sends_the_next_chunk_from_the_progress_offset():
    s, wire, answers = sender()
    progress = Progress(3, 0.0, 4, 1000)
    progress.becomeSnapshot(META)
    progress.chunkAnswered(META, True, False, 40)
    s.send(2, progress, META, 5, 7)
    assert progress.state is SNAPSHOT
    [(peerId, request, d)] = wire.sent
    assert peerId == 2
    assert request == InstallSnapshot(5, 1, META, 40, DATA[40:], True)
    d.callback(InstallSnapshotResult(5, True, len(DATA)))
    assert answers == [(InstallSnapshotResult(5, True, len(DATA)), 2, request, 7)]


def test_sender_a_newer_snapshot_starts_at_zero():
    s, wire, _ = sender()
    progress = Progress(3, 0.0, 4, 1000)
    progress.becomeSnapshot(SnapshotMeta(5, 1))
    progress.chunkAnswered(SnapshotMeta(5, 1), True, False, 40)
    s.send(2, progress, META, 5, 0)
    assert wire.sent[0][1].offset == 0 and not wire.sent[0][1].done


def test_sender_a_lost_chunk_leaves_snapshot_state():
    s, wire, answers = sender()
    progress = Progress(3, 0.0, 4, 1000)
    s.send(2, progress, META, 5, 0)
    wire.sent[0][2].errback(SnapshotChanged("replaced"))
    assert progress.state is PROBE and progress.snapshotMeta is None and answers == []


def test_sender_ignores_failures_of_an_old_term():
    s, wire, _ = sender(leading=False)
    progress = Progress(3, 0.0, 4, 1000)
    s.send(2, progress, META, 5, 0)
    wire.sent[0][2].errback(ConnectionError("down"))
    assert progress.state is SNAPSHOT
