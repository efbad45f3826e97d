"""
Disk faults: a full disk (ENOSPC/EDQUOT from a write: writes wait, nothing
acknowledged is lost, the node recovers by itself) and a failing fsync
(fatal: the storage fails for good and the node stops), at the storage,
WAL, node, service and client-server levels.  Real files under C{tmp_path}
and the real reactor (obtained inside each test); faults are injected
through FileStorage's C{pwrite} and C{fsync} parameters.
"""

import errno
import os
import shutil
from types import SimpleNamespace

import pytest
import pytest_twisted
from twisted.internet import defer, task
from twisted.protocols import amp
from twisted.test import iosim

from twisted_raft import kv
from twisted_raft.kv import KVStore
from twisted_raft.raft import messages
from twisted_raft.raft.messages import (
    LEADER,
    Entry,
    HardState,
    CommitUnknown,
    PersistentState,
    StorageFailed,
)
from twisted_raft.config import NodeConfig
from twisted_raft.raft.config import RaftConfig
from twisted_raft.raft.node import RaftNode
from twisted_raft.rpc import commands
from twisted_raft.rpc.commands import NOT_PROPOSED, Unavailable
from twisted_raft.rpc.peers import AMPTransport
from twisted_raft.rpc.server import NodeServerFactory
from twisted_raft.storage import wal
from twisted_raft.storage.errors import DiskFull, FsyncError
from twisted_raft.storage.files import FileStorage

from tests.storage.support import getReactor, waitUntil
from tests.support import PumpEndpoint, Pumps, StubNode, authority, captured, failureOf, result


def ents(first, last, term=1):
    return [
        Entry(i, term, b"entry %d of term %d" % (i, term) * (1 + i % 3))
        for i in range(first, last + 1)
    ]


def walFiles(path):
    return sorted(os.listdir(os.path.join(path, "wal")))


def lastSegment(path):
    return os.path.join(path, "wal", walFiles(path)[-1])


def segmentBytes(entries):
    """The exact bytes of a segment holding C{entries}."""
    return wal.encodeSegmentHeader(entries[0].index) + b"".join(
        wal.encodeRecord(e) for e in entries
    )


def fdPath(fd):
    return os.readlink(f"/proc/self/fd/{fd}")


class Faults:
    """
    Injectable C{pwrite} and C{fsync}.

    L{full} makes writes fail with C{ENOSPC} (optionally after C{budget}
    more bytes were written, like a file system filling up mid-record),
    only for files whose path contains C{only}, or all but C{exceptPaths};
    L{space} ends that.  C{fsyncErrno} makes every fsync fail.
    """

    def __init__(self):
        self.isFull = False
        self.budget = 0
        self.only = None
        self.exceptPaths = ()
        self.code = errno.ENOSPC
        self.refused = 0
        self.fsyncErrno = None
        self.fsyncs = 0

    def full(self, budget=0, only=None, exceptPaths=(), code=errno.ENOSPC):
        self.isFull = True
        self.budget = budget
        self.only = only
        self.exceptPaths = tuple(exceptPaths)
        self.code = code

    def space(self):
        self.isFull = False

    def _applies(self, fd):
        if not self.isFull:
            return False
        path = fdPath(fd)
        if self.only is not None and self.only not in path:
            return False
        return path not in self.exceptPaths

    def pwrite(self, fd, data, offset):
        if self._applies(fd):
            if self.budget > 0:
                n = min(self.budget, len(data))
                self.budget -= n
                return os.pwrite(fd, bytes(data[:n]), offset)
            self.refused += 1
            raise OSError(self.code, os.strerror(self.code))
        return os.pwrite(fd, data, offset)

    def fsync(self, fd):
        self.fsyncs += 1
        if self.fsyncErrno is not None:
            raise OSError(self.fsyncErrno, "injected: " + os.strerror(self.fsyncErrno))
        os.fsync(fd)


@defer.inlineCallbacks
def opened(path, faults, clock=None, **kw):
    storage = FileStorage(
        path, 1, "cluster-a", getReactor(), fsync=faults.fsync, pwrite=faults.pwrite,
        clock=clock, **kw,
    )
    storage.start()
    state = yield storage.load()
    return storage, state


@defer.inlineCallbacks
def reload(path, **kw):
    storage = FileStorage(path, 1, "cluster-a", getReactor(), **kw)
    storage.start()
    try:
        state = yield storage.load()
    finally:
        yield storage.close()
    return state


@defer.inlineCallbacks
def crashCopy(path, where):
    """What a crash now would leave: a copy of the data dir, recovered."""
    shutil.copytree(path, where)
    state = yield reload(where)
    return state


def warnings(events, word):
    return [
        e for e in events
        if e.get("log_level") is not None and e["log_level"].name == "warn"
        and word in e.get("log_format", "")
    ]


# -- disk full: storage level -----------------------------------------------


@pytest_twisted.inlineCallbacks
def test_enospcDuringAppend(tmp_path, logged):
    """
    A batch that runs out of space mid-record is cut back and waits; later
    calls queue behind it; when space returns everything completes in order
    and the log holds exactly the expected records.
    """
    path = str(tmp_path / "data")
    faults = Faults()
    clock = task.Clock()
    storage, _ = yield opened(path, faults, clock=clock)
    acked = ents(1, 3)
    yield storage.append(acked)
    segment = lastSegment(path)
    sizeBefore = os.path.getsize(segment)

    faults.full(budget=20)  # 20 bytes of the next record fit, then ENOSPC
    fired = []
    first = storage.append(ents(4, 6))
    first.addCallback(lambda _: fired.append("append 4-6"))
    yield waitUntil(lambda: storage.diskFull)
    assert not first.called  # not acknowledged
    assert os.path.getsize(segment) == sizeBefore  # no partial record left
    assert [c.getTime() for c in clock.getDelayedCalls()] == [0.5]
    assert faults.refused == 1

    # Later calls queue behind the waiting batch, in order.
    later = [
        storage.saveHardState(HardState(2, 1)),
        storage.append(ents(7, 7, term=2)),
    ]
    later[0].addCallback(lambda _: fired.append("hardState"))
    later[1].addCallback(lambda _: fired.append("append 7"))

    # A crash now loses nothing acknowledged, and has no partial record.
    state = yield crashCopy(path, str(tmp_path / "crash1"))
    assert state == PersistentState(HardState(), acked)

    # Still full: the retry fails again, still pending, no second warning.
    clock.advance(0.5)
    yield waitUntil(lambda: faults.refused == 2 and len(clock.getDelayedCalls()) == 1)
    assert storage.diskFull and storage.diskFullRetries == 2
    assert not first.called and not any(d.called for d in later)
    assert os.path.getsize(segment) == sizeBefore

    faults.space()
    clock.advance(0.5)
    yield defer.gatherResults([first] + later)
    assert fired == ["append 4-6", "hardState", "append 7"]
    assert not storage.diskFull
    assert len(warnings(logged, "disk full")) == 1
    assert len(warnings(logged, "space available again")) == 1

    expected = ents(1, 6) + ents(7, 7, term=2)
    with open(segment, "rb") as f:
        assert f.read() == segmentBytes(expected)  # no partial record, no duplicate
    yield storage.close()
    state = yield reload(path)
    assert state == PersistentState(HardState(2, 1), expected)


@pytest_twisted.inlineCallbacks
def test_edquotAndRealDelay(tmp_path):
    """EDQUOT counts as disk full too; the retry runs on the reactor by default."""
    path = str(tmp_path)
    faults = Faults()
    storage, _ = yield opened(path, faults, diskFullRetryDelay=0.01)
    yield storage.append(ents(1, 2))
    faults.full(code=errno.EDQUOT)
    d = storage.append(ents(3, 4))
    yield waitUntil(lambda: faults.refused >= 3)  # retried every 10 ms
    assert storage.diskFull and not d.called
    faults.space()
    yield d
    assert not storage.diskFull
    yield storage.close()
    state = yield reload(path)
    assert state.entries == ents(1, 4)


@pytest_twisted.inlineCallbacks
def test_enospcDuringHardStateSave(tmp_path, logged):
    path = str(tmp_path)
    faults = Faults()
    clock = task.Clock()
    storage, _ = yield opened(path, faults, clock=clock)
    yield storage.saveHardState(HardState(1, 1))
    yield storage.append(ents(1, 2))
    faults.full(budget=5, only="state.tmp")
    hard = storage.saveHardState(HardState(2, 2))
    queued = storage.append(ents(3, 3, term=2))
    yield waitUntil(lambda: storage.diskFull)
    assert not hard.called and not queued.called
    assert not os.path.exists(os.path.join(path, "state.tmp"))  # partial tmp removed
    state = yield crashCopy(path, str(tmp_path / "crash"))
    assert state == PersistentState(HardState(1, 1), ents(1, 2))
    faults.space()
    clock.advance(0.5)
    yield defer.gatherResults([hard, queued])
    assert not storage.diskFull
    yield storage.close()
    state = yield reload(path)
    assert state == PersistentState(HardState(2, 2), ents(1, 2) + ents(3, 3, term=2))


@pytest_twisted.inlineCallbacks
def test_enospcDuringSegmentRoll(tmp_path):
    """
    A batch that fills the last segment and must start a new one, with no
    space for the new one: the new segment is removed and the old one cut
    back to where the batch started.
    """
    path = str(tmp_path / "data")
    faults = Faults()
    clock = task.Clock()
    storage, _ = yield opened(path, faults, clock=clock, segmentBytes=300)
    yield storage.append(ents(1, 3))
    names = walFiles(path)
    segment = lastSegment(path)
    sizeBefore = os.path.getsize(segment)
    assert sizeBefore < 300
    # Writes to the current segment succeed, to any new one fail.
    faults.full(exceptPaths=[segment])
    d = storage.append(ents(4, 20))
    yield waitUntil(lambda: storage.diskFull)
    assert not d.called
    assert walFiles(path) == names
    assert os.path.getsize(segment) == sizeBefore
    state = yield crashCopy(path, str(tmp_path / "crash"))
    assert state.entries == ents(1, 3)
    faults.space()
    clock.advance(0.5)
    yield d
    assert len(walFiles(path)) > len(names)
    more = storage.append(ents(21, 22))
    yield more
    yield storage.close()
    state = yield reload(path, segmentBytes=300)
    assert state.entries == ents(1, 22)


@pytest_twisted.inlineCallbacks
def test_enospcCreatingFirstSegment(tmp_path):
    """No space for the very first segment's header: it is removed."""
    path = str(tmp_path)
    faults = Faults()
    clock = task.Clock()
    storage, _ = yield opened(path, faults, clock=clock)
    faults.full(budget=7)
    d = storage.append(ents(1, 2))
    yield waitUntil(lambda: storage.diskFull)
    assert walFiles(path) == []
    faults.space()
    clock.advance(0.5)
    yield d
    yield storage.close()
    state = yield reload(path)
    assert state.entries == ents(1, 2)


def test_walRollbackWhenSegmentCannotBeCreated(tmp_path, monkeypatch):
    """
    The WAL on its own (blocking): creating the new segment file fails
    with ENOSPC (no inodes left); the append is undone and can be repeated.
    """
    directory = str(tmp_path / "wal")
    log = wal.WriteAheadLog(directory, 250, os.fsync)
    log.recover()
    log.append(ents(1, 3))
    log.sync()
    first = os.path.join(directory, wal.segmentName(1))
    size = os.path.getsize(first)
    realOpen = os.open

    def noInodes(p, flags, *a):
        if flags & os.O_CREAT:
            raise OSError(errno.ENOSPC, "No space left on device")
        return realOpen(p, flags, *a)

    monkeypatch.setattr(wal.os, "open", noInodes)
    with pytest.raises(DiskFull):
        log.append(ents(4, 12))
    monkeypatch.undo()
    assert os.listdir(directory) == [wal.segmentName(1)]
    assert os.path.getsize(first) == size
    assert log.lastIndex == 3
    log.append(ents(4, 12))
    log.sync()
    log.close()
    entries, _ = wal.WriteAheadLog(directory, 250, os.fsync).recover()
    assert entries == ents(1, 12)


@pytest_twisted.inlineCallbacks
def test_closeWhileDiskFull(tmp_path):
    """
    Closing (e.g. at shutdown) while waiting for space tries once more and,
    still without space, fails the waiting and queued writes instead of
    hanging.
    """
    path = str(tmp_path)
    faults = Faults()
    clock = task.Clock()
    storage, _ = yield opened(path, faults, clock=clock)
    yield storage.append(ents(1, 2))
    faults.full()
    waiting = storage.append(ents(3, 3))
    yield waitUntil(lambda: storage.diskFull)
    queued = storage.saveHardState(HardState(3, 1))
    yield storage.close()
    for d in (waiting, queued):
        with pytest.raises(StorageFailed):
            yield d
    assert not clock.getDelayedCalls()
    faults.space()
    state = yield reload(path)
    assert state == PersistentState(HardState(), ents(1, 2))


@pytest_twisted.inlineCallbacks
def test_closeWhileDiskFullThenSpace(tmp_path):
    """If the last attempt at close succeeds, the writes are done."""
    path = str(tmp_path)
    faults = Faults()
    clock = task.Clock()
    storage, _ = yield opened(path, faults, clock=clock)
    faults.full()
    waiting = storage.append(ents(1, 3))
    yield waitUntil(lambda: storage.diskFull)
    faults.space()
    yield storage.close()
    yield waiting
    state = yield reload(path)
    assert state.entries == ents(1, 3)


# -- failing fsync: storage level -------------------------------------------


@pytest_twisted.inlineCallbacks
def test_fsyncEnospcIsFatal(tmp_path):
    """
    ENOSPC from fsync is not "disk full": the data may already be lost from
    the page cache, so the storage fails for good (never retried).
    """
    path = str(tmp_path)
    faults = Faults()
    clock = task.Clock()
    storage, _ = yield opened(path, faults, clock=clock)
    yield storage.append(ents(1, 2))
    faults.fsyncErrno = errno.ENOSPC
    calls = faults.fsyncs
    d = storage.append(ents(3, 3))
    with pytest.raises(FsyncError) as info:
        yield d
    assert info.value.errno == errno.ENOSPC
    assert isinstance(info.value, OSError)
    assert not storage.diskFull
    assert not clock.getDelayedCalls()
    assert faults.fsyncs == calls + 1  # exactly one attempt
    with pytest.raises(StorageFailed):
        yield storage.append(ents(3, 3))
    yield storage.close()


@pytest_twisted.inlineCallbacks
def test_fsyncFailureOfHardState(tmp_path):
    path = str(tmp_path)
    faults = Faults()
    storage, _ = yield opened(path, faults)
    yield storage.saveHardState(HardState(1, 1))
    faults.fsyncErrno = errno.EIO
    with pytest.raises(OSError) as info:
        yield storage.saveHardState(HardState(2, 1))
    assert info.value.errno == errno.EIO
    assert not os.path.exists(os.path.join(path, "state.tmp"))
    with pytest.raises(StorageFailed):
        yield storage.saveHardState(HardState(3, 1))
    yield storage.close()
    faults.fsyncErrno = None
    state = yield reload(path)
    assert state.hardState == HardState(1, 1)


# -- node level ---------------------------------------------------------------


class DummyTransport:
    """A single-node cluster never sends anything."""

    def requestVote(self, peerId, request):
        return defer.fail(ConnectionError("no peers"))

    def appendEntries(self, peerId, request):
        return defer.fail(ConnectionError("no peers"))

    def timeoutNow(self, peerId, request):
        return defer.fail(ConnectionError("no peers"))


@defer.inlineCallbacks
def singleNode(path, faults, **kw):
    reactor = getReactor()
    storage = FileStorage(
        path, 1, "cluster-a", reactor, fsync=faults.fsync, pwrite=faults.pwrite, **kw
    )
    storage.start()
    fatal = []
    machine = KVStore()
    node = RaftNode(
        1, [1], storage, DummyTransport(), machine, reactor,
        config=RaftConfig(electionTimeout=(0.05, 0.1), heartbeatInterval=0.02),
        onFatalError=fatal.append,
    )
    yield node.start()
    yield waitUntil(lambda: node.role == LEADER and node.commitIndex >= 1)
    return node, storage, machine, fatal


@pytest_twisted.inlineCallbacks
def test_nodeStopsWhenFsyncFails(tmp_path):
    path = str(tmp_path)
    faults = Faults()
    node, storage, machine, fatal = yield singleNode(path, faults)
    try:
        index, _ = yield node.propose(kv.encodePut("a", b"1"))
        faults.fsyncErrno = errno.EIO
        d = node.propose(kv.encodePut("b", b"2"))
        with pytest.raises((CommitUnknown, StorageFailed)):
            yield d
        assert not node.running
        # onFatalError runs right after node.stop(), which failed the propose.
        yield waitUntil(lambda: fatal)
        assert len(fatal) == 1
        assert fatal[0].value.errno == errno.EIO
        with pytest.raises(StorageFailed):
            yield node.propose(kv.encodePut("c", b"3"))
    finally:
        node.stop()
        yield storage.close()
    faults.fsyncErrno = None
    state = yield reload(path)
    assert any(e.index == index for e in state.entries)


@pytest_twisted.inlineCallbacks
def test_entryWhoseFsyncFailedIsNeverApplied(tmp_path):
    path = str(tmp_path)
    faults = Faults()
    node, storage, machine, fatal = yield singleNode(path, faults)
    try:
        yield node.propose(kv.encodePut("a", b"1"))
        faults.fsyncErrno = errno.EIO
        d = node.propose(kv.encodePut("b", b"2"))
        d.addErrback(lambda f: None)
        yield waitUntil(lambda: fatal)
        assert machine.get("b") is None
        assert node.commitIndex == node._durableLastIndex
    finally:
        node.stop()
        yield storage.close()


@pytest_twisted.inlineCallbacks
def test_nodeRidesOutDiskFull(tmp_path):
    """
    A full disk does not stop the node: the write waits, nothing fatal
    happens, and it commits once space returns.
    """
    path = str(tmp_path)
    faults = Faults()
    node, storage, machine, fatal = yield singleNode(path, faults, diskFullRetryDelay=0.01)
    try:
        yield node.propose(kv.encodePut("a", b"1"))
        faults.full()
        d = node.propose(kv.encodePut("b", b"2"))
        yield waitUntil(lambda: faults.refused >= 2)
        assert storage.diskFull and not d.called
        assert node.running and node.role == LEADER and not fatal
        faults.space()
        yield d
        assert machine.get("b") == b"2"
        assert not storage.diskFull and node.running and not fatal
    finally:
        node.stop()
        yield storage.close()


@pytest_twisted.inlineCallbacks
def test_serviceExitsWhenFsyncFails(tmp_path):
    from twisted_raft.service import RaftKVService

    reactor = getReactor()
    faults = Faults()

    def storageFactory(path, nodeId, token, reactor):
        return FileStorage(path, nodeId, token, reactor, fsync=faults.fsync)

    config = NodeConfig(
        1, [("127.0.0.1", 1)], str(tmp_path / "data"), "tcp:0:interface=127.0.0.1",
        raft=RaftConfig(electionTimeout=(0.05, 0.1), heartbeatInterval=0.02),
    )
    svc = RaftKVService(
        config, reactor=reactor, storageFactory=storageFactory, exitOnFailure=False,
    )
    svc.startService()
    try:
        yield svc.started
        yield waitUntil(lambda: svc.node.role == LEADER and svc.node.commitIndex >= 1)
        assert svc.exitCode is None
        faults.fsyncErrno = errno.EIO
        d = svc.node.propose(kv.encodePut("k", b"v"))
        d.addErrback(lambda f: None)
        yield waitUntil(lambda: svc.exitCode is not None)
        assert svc.exitCode == 1
        assert not svc.node.running
    finally:
        yield svc.stopService()


# -- the server's fast refusal ---------------------------------------------


def serve(node, clock, peers=None):
    factory = NodeServerFactory(node, node.store, peers, authority(node.nodeId), clock)
    client, _, pump = iosim.connectedServerAndClient(
        lambda: factory.buildProtocol(None), amp.AMP, clock=clock
    )
    return client, pump


def test_serverRefusesWritesWhileDiskFull():
    clock = task.Clock()
    node = StubNode(1)
    node.storage = SimpleNamespace(diskFull=False)
    client, pump = serve(node, clock)
    pumps = Pumps(pump)

    def call(command, **kw):
        d = captured(client.callRemote(command, **kw))
        pumps.flush()
        return d

    assert result(call(commands.Put, key="k", value=b"1"))["revision"] == 1
    node.storage.diskFull = True
    proposed = list(node.proposed)
    for command, kw in [
        (commands.Put, dict(key="k", value=b"2")),
        (commands.Delete, dict(key="k")),
        (commands.CompareAndSet, dict(key="k", expected=b"1", value=b"3")),
    ]:
        f = failureOf(call(command, **kw), Unavailable)  # at once: clock not advanced
        message = str(f.value)
        assert message.startswith(NOT_PROPOSED), message
        assert "disk full on node 1" in message
    assert node.proposed == proposed  # nothing proposed
    # Reads keep working.
    assert result(call(commands.Get, key="k")) == {"found": True, "value": b"1"}
    assert result(call(commands.Get, key="k", stale=True))["value"] == b"1"
    assert result(call(commands.Status))["node_id"] == 1
    node.storage.diskFull = False
    assert result(call(commands.Put, key="k", value=b"4"))["revision"] == 2


def test_serverStubWithoutStorage():
    """A node object without a storage attribute is never taken for full."""
    clock = task.Clock()
    node = StubNode(1)
    client, pump = serve(node, clock)
    d = captured(client.callRemote(commands.Put, key="k", value=b"1"))
    pump.flush()
    assert result(d)["revision"] == 1


def test_followerRelaysLeadersDiskFullAtOnce():
    """
    A follower forwarding to a leader whose disk is full relays the refusal
    at once instead of retrying it as "not the leader".
    """
    clock = task.Clock()
    leader = StubNode(1)
    leader.storage = SimpleNamespace(diskFull=True)
    follower = StubNode(2, role=messages.FOLLOWER, leaderId=1)
    leaderFactory = NodeServerFactory(leader, leader.store, None, authority(1), clock)
    endpoint = PumpEndpoint(leaderFactory, clock)
    peers = AMPTransport({1: endpoint}, authority(2), clock)
    peers.startService()
    Pumps(*endpoint.pumps).flush()  # the peer link's handshake
    try:
        client, pump = serve(follower, clock, peers)
        pumps = Pumps(pump)
        d = captured(client.callRemote(commands.Put, key="k", value=b"v"))
        for _ in range(5):
            pumps.add(*[p for p in endpoint.pumps if p not in pumps.pumps])
            pumps.flush()
        f = failureOf(d, Unavailable)
        assert str(f.value).startswith(NOT_PROPOSED)
        assert "disk full on node 1" in str(f.value)
        assert leader.proposed == [] and follower.proposed == []
    finally:
        peers.stopService()
