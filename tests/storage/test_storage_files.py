"""
Tests for L{twisted_raft.storage.files.FileStorage}: real files under
C{tmp_path}, the real reactor (obtained inside each test), real threads.
"""

import errno
import os
import random
import shutil
import threading

import pytest
import pytest_twisted
from twisted.internet import defer

from twisted_raft.raft.interfaces import IStorage
from twisted_raft.raft.messages import Entry, HardState, PersistentState, StorageFailed
from twisted_raft.storage import smallfile, wal
from twisted_raft.storage.files import CorruptLogError, DataDirError, FileStorage

from tests.storage.support import getReactor, loadFails, opened, reload


def noSync(fd):
    pass


def ents(first, last, term=1):
    return [
        Entry(i, term, b"entry %d of term %d" % (i, term) * (i % 3)) for i in range(first, last + 1)
    ]


def walFiles(path):
    return sorted(os.listdir(os.path.join(path, "wal")))


def lastSegment(path):
    return os.path.join(path, "wal", walFiles(path)[-1])


def recordOffsets(entries, firstIndex):
    """Byte offsets of C{entries}' records in a segment starting at them."""
    offset = wal.SEGMENT_HEADER.size
    offsets = []
    for e in entries:
        offsets.append(offset)
        offset += len(wal.encodeRecord(e))
    return offsets, offset


@pytest.fixture
def gatedFsync():
    """
    An fsync that counts its calls and, once armed, blocks on its next call
    until released, first firing C{entered} on the reactor thread.
    """

    class Gate:
        calls = 0
        armed = False
        entered = None
        release = threading.Event()

        def arm(self):
            self.armed = True
            self.entered = defer.Deferred()
            self.release.clear()
            return self.entered

        def __call__(self, fd):
            self.calls += 1
            if self.armed:
                self.armed = False
                getReactor().callFromThread(self.entered.callback, None)
                self.release.wait(30)
            os.fsync(fd)

    gate = Gate()
    yield gate
    gate.release.set()


# -- round trips ----------------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_roundtrip(tmp_path):
    path = str(tmp_path / "nested" / "node1")
    storage, state = yield opened(path)
    assert IStorage.providedBy(storage)
    assert state == PersistentState(HardState(), [])
    assert os.path.exists(os.path.join(path, "identity"))
    entries = ents(1, 5) + [Entry(6, 2, b""), Entry(7, 2, bytes(range(256)) * 100)]
    yield storage.saveHardState(HardState(term=2, votedFor=3))
    yield storage.append(entries[:3])
    yield storage.append(entries[3:])
    yield storage.close()
    state = yield reload(path)
    assert state == PersistentState(HardState(2, 3), entries)


@pytest_twisted.inlineCallbacks
def test_segmentRoll(tmp_path):
    path = str(tmp_path)
    storage, _ = yield opened(path, segmentBytes=200)
    entries = ents(1, 40)
    for e in entries[:10]:
        yield storage.append([e])
    yield storage.append(entries[10:])
    yield storage.close()
    names = walFiles(path)
    assert len(names) > 5
    assert names[0] == "%020d.log" % 1
    assert all(n.endswith(".log") for n in names)
    sizes = [os.path.getsize(os.path.join(path, "wal", n)) for n in names]
    assert max(sizes[:-1]) < 200 + 200
    state = yield reload(path, segmentBytes=200)
    assert state.entries == entries
    # Reopened, it goes on appending to the last segment.
    storage, _ = yield opened(path, segmentBytes=200)
    yield storage.append(ents(41, 50, term=2))
    yield storage.close()
    state = yield reload(path, segmentBytes=200)
    assert state.entries == entries + ents(41, 50, term=2)


@pytest_twisted.inlineCallbacks
def test_truncateWithinSegment(tmp_path):
    path = str(tmp_path)
    storage, _ = yield opened(path)
    yield storage.append(ents(1, 10))
    yield storage.truncateSuffix(6)
    yield storage.truncateSuffix(50)  # past the end: nothing to do
    yield storage.close()
    state = yield reload(path)
    assert state.entries == ents(1, 5)
    storage, _ = yield opened(path)
    yield storage.append(ents(6, 8, term=2))
    yield storage.close()
    state = yield reload(path)
    assert state.entries == ents(1, 5) + ents(6, 8, term=2)


@pytest_twisted.inlineCallbacks
def test_truncateAcrossSegments(tmp_path):
    path = str(tmp_path)
    storage, _ = yield opened(path, segmentBytes=150)
    yield storage.append(ents(1, 30))
    before = walFiles(path)
    yield storage.truncateSuffix(7)
    after = walFiles(path)
    assert len(after) < len(before)
    assert all(int(n[:20]) <= 7 for n in after)
    # Appends continue after the cut, in the same session...
    yield storage.append(ents(7, 12, term=3))
    yield storage.close()
    state = yield reload(path, segmentBytes=150)
    assert state.entries == ents(1, 6) + ents(7, 12, term=3)
    # ...and after a restart.
    storage, _ = yield opened(path, segmentBytes=150)
    yield storage.truncateSuffix(10)
    yield storage.append(ents(10, 25, term=4))
    yield storage.close()
    state = yield reload(path, segmentBytes=150)
    assert state.entries == ents(1, 6) + ents(7, 9, term=3) + ents(10, 25, term=4)


@pytest_twisted.inlineCallbacks
def test_truncateSegmentBoundaryAndEverything(tmp_path):
    path = str(tmp_path)
    storage, _ = yield opened(path, segmentBytes=100)
    yield storage.append(ents(1, 20))
    firsts = [int(n[:20]) for n in walFiles(path)]
    boundary = firsts[2]
    yield storage.truncateSuffix(boundary)
    yield storage.close()
    state = yield reload(path, segmentBytes=100)
    assert state.entries == ents(1, boundary - 1)
    storage, _ = yield opened(path, segmentBytes=100)
    yield storage.truncateSuffix(1)
    yield storage.close()
    state = yield reload(path, segmentBytes=100)
    assert state.entries == []
    storage, _ = yield opened(path, segmentBytes=100)
    yield storage.append(ents(1, 3, term=9))
    yield storage.close()
    state = yield reload(path, segmentBytes=100)
    assert state.entries == ents(1, 3, term=9)


@pytest_twisted.inlineCallbacks
def test_randomisedAgainstModel(tmp_path):
    """
    Random appends, truncations, hard states and restarts, with tiny
    segments, always read back what a plain list says.
    """
    for seed in range(3):
        rng = random.Random(seed)
        path = str(tmp_path / str(seed))
        log, hard, term = [], HardState(), 1
        storage, _ = yield opened(path, segmentBytes=rng.choice([64, 300, 4096]), fsync=noSync)
        for step in range(60):
            action = rng.random()
            if action < 0.5:
                n = rng.randint(1, 6)
                new = [
                    Entry(len(log) + i + 1, term, os.urandom(rng.randint(0, 50)))
                    for i in range(n)
                ]
                log += new
                storage.append(new)
            elif action < 0.65 and log:
                cut = rng.randint(1, len(log) + 1)
                del log[cut - 1 :]
                storage.truncateSuffix(cut)
            elif action < 0.75:
                term += 1
                hard = HardState(term, rng.randint(0, 3))
                storage.saveHardState(hard)
            elif action < 0.85:
                yield storage.close()
                segmentBytes = rng.choice([64, 300, 4096])
                storage, state = yield opened(path, segmentBytes=segmentBytes, fsync=noSync)
                assert state == PersistentState(hard, log)
        yield storage.close()
        state = yield reload(path)
        assert state == PersistentState(hard, log)


# -- group commit, ordering, failures ------------------------------------


@pytest_twisted.inlineCallbacks
def test_groupCommit(tmp_path, gatedFsync):
    path = str(tmp_path)
    storage, _ = yield opened(path, fsync=gatedFsync)
    yield storage.append(ents(1, 1))  # creates the first segment
    calls, batches = gatedFsync.calls, storage.batches
    entered = gatedFsync.arm()
    first = storage.append(ents(2, 2))
    yield entered  # the writer now sits in a slow fsync
    assert not first.called  # not acknowledged before fsync returns
    n = 50
    rest = [storage.append([e]) for e in ents(3, n + 2)]
    assert not any(d.called for d in rest)
    gatedFsync.release.set()
    yield defer.gatherResults([first] + rest)
    assert gatedFsync.calls - calls == 2  # one per batch, not one per append
    assert storage.batches - batches == 2
    yield storage.close()
    state = yield reload(path)
    assert state.entries == ents(1, n + 2)


@pytest_twisted.inlineCallbacks
def test_completionOrder(tmp_path, gatedFsync):
    path = str(tmp_path)
    storage, _ = yield opened(path, segmentBytes=120, fsync=gatedFsync)
    fired = []
    calls = []
    entered = gatedFsync.arm()
    calls.append(storage.saveHardState(HardState(1, 1)))
    yield entered
    calls += [
        storage.append(ents(1, 5)),
        storage.saveHardState(HardState(2, 0)),
        storage.append(ents(6, 9)),
        storage.truncateSuffix(4),
        storage.append(ents(4, 7, term=2)),
        storage.saveHardState(HardState(3, 2)),
        storage.append(ents(8, 8, term=3)),
        storage.append([]),
    ]
    for i, d in enumerate(calls):
        d.addCallback(lambda _, i=i: fired.append(i))
    gatedFsync.release.set()
    yield defer.gatherResults(calls)
    assert fired == list(range(len(calls)))
    # Later calls, in separate batches, keep the order too.
    more = [storage.append(ents(9, 9, term=3)), storage.truncateSuffix(9), storage.append([])]
    for i, d in enumerate(more, len(calls)):
        d.addCallback(lambda _, i=i: fired.append(i))
    yield defer.gatherResults(more)
    assert fired == list(range(len(calls) + len(more)))
    yield storage.close()
    state = yield reload(path)
    expected = ents(1, 3) + ents(4, 7, term=2) + ents(8, 8, term=3)
    assert state == PersistentState(HardState(3, 2), expected)


@pytest_twisted.inlineCallbacks
def test_fsyncFailure(tmp_path):
    path = str(tmp_path)
    fail = []

    def fsync(fd):
        if fail:
            raise OSError(errno.EIO, "injected fsync failure")
        os.fsync(fd)

    storage, _ = yield opened(path, fsync=fsync)
    yield storage.append(ents(1, 3))
    fail.append(True)
    failing = storage.append(ents(4, 4))
    queued = storage.saveHardState(HardState(5, 1))
    with pytest.raises(OSError) as info:
        yield failing
    assert info.value.errno == errno.EIO
    with pytest.raises(StorageFailed):
        yield queued
    # From now on everything is refused at once.
    for d in [
        storage.append(ents(5, 5)),
        storage.saveHardState(HardState(6, 0)),
        storage.truncateSuffix(1),
    ]:
        assert d.called
        with pytest.raises(StorageFailed):
            yield d
    yield storage.close()
    fail.clear()
    state = yield reload(path)
    assert state.entries[:3] == ents(1, 3)


@pytest_twisted.inlineCallbacks
def test_badCalls(tmp_path):
    path = str(tmp_path)
    storage = FileStorage(path, 1, "cluster-a", getReactor())
    with pytest.raises(RuntimeError):
        yield storage.load()  # not started
    storage.start()
    with pytest.raises(RuntimeError):
        yield storage.append(ents(1, 1))  # not loaded
    yield storage.load()
    with pytest.raises(RuntimeError):
        yield storage.load()
    with pytest.raises(ValueError):
        yield storage.append(ents(2, 3))  # gap
    with pytest.raises(ValueError):
        yield storage.append([Entry(1, 1), Entry(3, 1)])
    # A refused call does not fail the storage.
    yield storage.append(ents(1, 2))
    yield storage.close()
    yield storage.close()
    with pytest.raises(StorageFailed):
        yield storage.append(ents(3, 3))
    with pytest.raises(ValueError):
        FileStorage(path, 0, "cluster-a", getReactor())
    state = yield reload(path)
    assert state.entries == ents(1, 2)


# -- recovery: torn tails -------------------------------------------------


@defer.inlineCallbacks
def writeLog(path, entries, **kw):
    storage, _ = yield opened(path, fsync=noSync, **kw)
    yield storage.saveHardState(HardState(4, 1))
    yield storage.append(entries)
    yield storage.close()


@pytest_twisted.inlineCallbacks
def test_tornTailAtEveryOffset(tmp_path, logged):
    reference = str(tmp_path / "reference")
    entries = ents(1, 5)
    yield writeLog(reference, entries)
    segment = lastSegment(reference)
    size = os.path.getsize(segment)
    start = size - len(wal.encodeRecord(entries[-1]))
    replacement = Entry(5, 7, b"written after recovery")
    for cut in range(start, size):
        path = str(tmp_path / ("cut%d" % cut))
        shutil.copytree(reference, path)
        os.truncate(lastSegment(path), cut)
        del logged[:]
        storage, state = yield opened(path, fsync=noSync)
        assert state == PersistentState(HardState(4, 1), entries[:4]), cut
        assert os.path.getsize(lastSegment(path)) == start
        warnings = [e for e in logged if e.get("log_level") and e["log_level"].name == "warn"]
        if cut > start:
            assert len(warnings) == 1, cut
            assert warnings[0]["offset"] == start
            assert warnings[0]["path"] == lastSegment(path)
        else:
            assert warnings == []
        yield storage.append([replacement])
        yield storage.close()
        state = yield reload(path, fsync=noSync)
        assert state.entries == entries[:4] + [replacement], cut


@pytest_twisted.inlineCallbacks
def test_tornTailAfterAcknowledgedAppends(tmp_path, gatedFsync):
    """
    After a series of acknowledged (= fsynced) appends, some across segment
    rolls, a crash while the next append is written but not yet fsynced
    leaves its record torn at any byte: recovery keeps every acknowledged
    entry, and the unacknowledged one only if its record is whole.
    """
    live = str(tmp_path / "live")
    storage, _ = yield opened(live, segmentBytes=450, fsync=gatedFsync)
    acknowledged = []
    for first, last in [(1, 3), (4, 4), (5, 9), (10, 12), (13, 13), (14, 16)]:
        batch = ents(first, last)
        yield storage.append(batch)  # fired: fsynced
        acknowledged += batch
    names = walFiles(live)
    assert len(names) > 1
    segment = lastSegment(live)
    start = os.path.getsize(segment)
    assert start < 450  # the next append goes into this segment
    inflight = Entry(17, 2, b"in flight when the power went" * 3)
    entered = gatedFsync.arm()
    d = storage.append([inflight])
    yield entered  # written, not yet fsynced: the writer waits in fsync
    assert not d.called
    reference = str(tmp_path / "crash")
    shutil.copytree(live, reference)
    gatedFsync.release.set()
    yield d
    yield storage.close()
    assert walFiles(reference) == names
    end = os.path.getsize(lastSegment(reference))
    assert end == start + len(wal.encodeRecord(inflight))
    for cut in range(start, end + 1):
        path = str(tmp_path / ("cut%d" % cut))
        shutil.copytree(reference, path)
        os.truncate(lastSegment(path), cut)
        state = yield reload(path, fsync=noSync)
        assert state.entries[: len(acknowledged)] == acknowledged, cut
        if cut == end:
            assert state.entries == acknowledged + [inflight]
        else:
            assert state.entries == acknowledged, cut
        shutil.rmtree(path)


@pytest_twisted.inlineCallbacks
def test_zeroFilledTail(tmp_path, logged):
    path = str(tmp_path)
    entries = ents(1, 6)
    yield writeLog(path, entries)
    segment = lastSegment(path)
    size = os.path.getsize(segment)
    with open(segment, "ab") as f:
        f.write(b"\0" * 4096)
    state = yield reload(path)
    assert state.entries == entries
    assert os.path.getsize(segment) == size
    assert any("torn" in e.get("log_format", "") and e.get("offset") == size for e in logged)


@pytest_twisted.inlineCallbacks
def test_zerosOverLastRecord(tmp_path):
    """A last record whose payload never reached the disk (zeros), then zeros."""
    path = str(tmp_path)
    entries = ents(1, 6)
    yield writeLog(path, entries)
    segment = lastSegment(path)
    offsets, end = recordOffsets(entries, 1)
    with open(segment, "r+b") as f:
        f.seek(offsets[-1] + wal.RECORD_HEADER.size)
        f.write(b"\0" * 4096)
    state = yield reload(path)
    assert state.entries == entries[:5]
    assert os.path.getsize(segment) == offsets[-1]


@pytest_twisted.inlineCallbacks
def test_badChecksumInLastRecordAtEOF(tmp_path):
    path = str(tmp_path)
    entries = ents(1, 6)
    yield writeLog(path, entries)
    segment = lastSegment(path)
    with open(segment, "r+b") as f:
        f.seek(-1, os.SEEK_END)
        byte = f.read(1)
        f.seek(-1, os.SEEK_END)
        f.write(bytes([byte[0] ^ 0x40]))
    state = yield reload(path)
    assert state.entries == entries[:5]


@pytest_twisted.inlineCallbacks
def test_tornNewSegment(tmp_path):
    """A crash just after a roll leaves a short last segment: it is removed."""
    for junk in [b"", wal.encodeSegmentHeader(9)[:10], b"\0" * 100]:
        path = str(tmp_path / str(len(junk)))
        entries = ents(1, 8)
        yield writeLog(path, entries)
        with open(os.path.join(path, "wal", wal.segmentName(9)), "wb") as f:
            f.write(junk)
        state = yield reload(path)
        assert state.entries == entries
        assert walFiles(path) == [wal.segmentName(1)]
        storage, _ = yield opened(path)
        yield storage.append(ents(9, 9))
        yield storage.close()
        state = yield reload(path)
        assert state.entries == ents(1, 9)


# -- recovery: corruption -------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_bitFlipInMiddleRecord(tmp_path):
    path = str(tmp_path)
    entries = ents(1, 6)
    yield writeLog(path, entries)
    segment = lastSegment(path)
    offsets, _ = recordOffsets(entries, 1)
    for where in [offsets[2] + wal.RECORD_HEADER.size + 3, offsets[2] + 1]:  # payload, length
        shutil.copy(segment, segment + ".orig")
        with open(segment, "r+b") as f:
            f.seek(where)
            byte = f.read(1)
            f.seek(where)
            f.write(bytes([byte[0] ^ 0x01]))
        error = yield loadFails(path)
        assert isinstance(error, CorruptLogError)
        assert wal.segmentName(1) in str(error)
        assert str(offsets[2]) in str(error)
        assert error.offset == offsets[2]
        os.replace(segment + ".orig", segment)
    state = yield reload(path)
    assert state.entries == entries


@pytest_twisted.inlineCallbacks
def test_bitFlipInLastRecordOfEarlierSegment(tmp_path):
    path = str(tmp_path)
    yield writeLog(path, ents(1, 20), segmentBytes=100)
    first = os.path.join(path, "wal", walFiles(path)[0])
    with open(first, "r+b") as f:
        f.seek(-1, os.SEEK_END)
        byte = f.read(1)
        f.seek(-1, os.SEEK_END)
        f.write(bytes([byte[0] ^ 0x80]))
    error = yield loadFails(path)
    assert isinstance(error, CorruptLogError)
    assert first in str(error)


@pytest_twisted.inlineCallbacks
def test_missingSegment(tmp_path):
    path = str(tmp_path)
    yield writeLog(path, ents(1, 20), segmentBytes=100)
    names = walFiles(path)
    os.unlink(os.path.join(path, "wal", names[1]))
    error = yield loadFails(path)
    assert isinstance(error, CorruptLogError)
    assert names[2] in str(error)
    assert "expected" in str(error)


@pytest_twisted.inlineCallbacks
def test_badSegmentHeader(tmp_path):
    path = str(tmp_path)
    yield writeLog(path, ents(1, 5))
    segment = lastSegment(path)
    with open(segment, "r+b") as f:
        f.write(b"NOTAWAL!")
    error = yield loadFails(path)
    assert isinstance(error, CorruptLogError)
    assert segment in str(error) and "offset 0" in str(error)


@pytest_twisted.inlineCallbacks
def test_nonContiguousIndex(tmp_path):
    path = str(tmp_path)
    yield writeLog(path, ents(1, 3))
    segment = lastSegment(path)
    with open(segment, "ab") as f:
        f.write(wal.encodeRecord(Entry(5, 1, b"skips 4")))
        f.write(wal.encodeRecord(Entry(6, 1, b"")))
    error = yield loadFails(path)
    assert isinstance(error, CorruptLogError)
    assert "expected 4" in str(error)


# -- identity and state files ---------------------------------------------


@pytest_twisted.inlineCallbacks
def test_identityMismatch(tmp_path):
    path = str(tmp_path / "data")
    yield writeLog(path, ents(1, 2))
    error = yield loadFails(path, nodeId=2)
    assert type(error) is DataDirError
    message = str(error)
    assert path in message and "node 1" in message and "node 2" in message
    error = yield loadFails(path, token="cluster-b")
    message = str(error)
    assert path in message and "--cluster-token" in message
    # the token is a secret: neither is shown
    assert "cluster-a" not in message and "cluster-b" not in message
    state = yield reload(path)
    assert state.entries == ents(1, 2)


@pytest_twisted.inlineCallbacks
def test_identityUnknownVersion(tmp_path):
    path = str(tmp_path)
    yield writeLog(path, ents(1, 2))
    idPath = os.path.join(path, "identity")
    _, payload = smallfile.read(idPath, b"RKVIDENT")
    smallfile.replace(idPath, b"RKVIDENT", 99, payload, noSync)
    error = yield loadFails(path)
    assert "version 99" in str(error)


@pytest_twisted.inlineCallbacks
def test_corruptIdentityAndState(tmp_path):
    for name in ["identity", "state"]:
        path = str(tmp_path / name)
        yield writeLog(path, ents(1, 2))
        filePath = os.path.join(path, name)
        with open(filePath, "r+b") as f:
            f.seek(17)
            f.write(b"\xff")
        error = yield loadFails(path)
        assert type(error) is DataDirError
        assert filePath in str(error)


@pytest_twisted.inlineCallbacks
def test_dataWithoutIdentity(tmp_path):
    path = str(tmp_path)
    yield writeLog(path, ents(1, 2))
    os.unlink(os.path.join(path, "identity"))
    error = yield loadFails(path)
    assert "identity" in str(error)


@pytest_twisted.inlineCallbacks
def test_a_new_data_dir_and_its_identity_are_private(tmp_path):
    """The identity file holds the cluster token: only the owner may read it."""
    path = str(tmp_path / "data")
    yield writeLog(path, ents(1, 2))
    assert os.stat(path).st_mode & 0o777 == 0o700
    assert os.stat(os.path.join(path, "identity")).st_mode & 0o777 == 0o600
