"""
Tests for snapshots and log compaction in
L{twisted_raft.storage.files.FileStorage} and the snapshot file format
(L{twisted_raft.storage.snapshot}): real files under C{tmp_path}, the real
reactor (obtained inside each test), real threads.
"""

import errno
import os
import shutil
import threading
import zlib

import pytest
import pytest_twisted
from twisted.internet import defer, task

from twisted_raft.raft.messages import (
    Entry,
    HardState,
    SnapshotChanged,
    SnapshotMeta,
    StorageFailed,
)
from twisted_raft.storage import snapshot as snapfile
from twisted_raft.storage import wal
from twisted_raft.storage.errors import (
    CorruptLogError,
    CorruptSnapshotError,
    DiskFull,
    FsyncError,
)

from tests.storage.support import getReactor, loadFails, opened, reload, waitUntil


def noSync(fd):
    pass


def ents(first, last, term=1):
    return [Entry(i, term, b"entry %d of term %d" % (i, term)) for i in range(first, last + 1)]


def walFiles(path):
    return sorted(os.listdir(os.path.join(path, "wal")))


def walFirsts(path):
    return [int(name[:20]) for name in walFiles(path)]


def writer(payload, pieces=1):
    def write(f):
        step = max(1, len(payload) // pieces)
        for i in range(0, len(payload), step):
            f.write(payload[i : i + step])

    return write


def parse(f):
    return f.read()


PAYLOAD = b"the state machine's state " * 50


@defer.inlineCallbacks
def failsWith(d, *types):
    try:
        result = yield d
    except types as e:
        return e
    raise AssertionError(f"expected {types}, got result {result!r}")


@defer.inlineCallbacks
def logWith(path, last, segmentBytes=300, term=1, **kw):
    """A data dir holding entries 1..last in several segments."""
    storage, _ = yield opened(path, segmentBytes=segmentBytes, fsync=noSync, **kw)
    for i in range(1, last + 1, 3):
        yield storage.append(ents(i, min(i + 2, last), term))
    return storage


def warned(events, word):
    return [
        e
        for e in events
        if e.get("log_level") is not None
        and e["log_level"].name == "warn"
        and word in e.get("log_format", "")
    ]


def snapPath(path):
    return os.path.join(path, "snapshot")


def writeSnapshotFile(path, meta, payload=PAYLOAD):
    with open(snapPath(path), "wb") as f:
        f.write(snapfile.encode(meta, payload))


def writeWal(path, entries, segmentBytes=300):
    """Replace the data dir's WAL by one holding C{entries} (any first index)."""
    directory = os.path.join(path, "wal")
    shutil.rmtree(directory, ignore_errors=True)
    log = wal.WriteAheadLog(directory, segmentBytes, noSync)
    log.recover()
    log.base = entries[0].index - 1
    for e in entries:
        log.append([e])
    log.sync()
    log.close()


@defer.inlineCallbacks
def emptyDataDir(path):
    yield reload(path)


# -- the file format ----------------------------------------------------------


def test_formatRoundtrip(tmp_path):
    meta = SnapshotMeta(7, 3, (1, 2, 5))
    data = snapfile.encode(meta, b"payload")
    path = str(tmp_path / "s")
    with open(path, "wb") as f:
        f.write(data)
    assert snapfile.verifyFile(path) == meta
    header = snapfile.encodeHeader(meta)
    assert data.startswith(header) and data[len(header) : len(header) + 7] == b"payload"
    assert len(data) == len(header) + 7 + 12
    with snapfile.SnapshotReader(path) as r:
        assert r.meta == meta
        assert r.payload.read(3) == b"pay"  # a partial read, then finish drains
        r.finish()


def corruptions(data, headerLength):
    """(name, damaged bytes, expected offset) for a snapshot file C{data}."""
    size = len(data)

    def flip(at):
        b = bytearray(data)
        b[at] ^= 0x10
        return bytes(b)

    return [
        ("magic", flip(1), 0),
        ("version", flip(11), 0),  # the header checksum catches it first
        ("lastIndex", flip(15), 0),
        ("member", flip(headerLength - 6), 0),
        ("header crc", flip(headerLength - 1), 0),
        ("payload start", flip(headerLength), size - 4),
        ("payload middle", flip((headerLength + size - 12) // 2), size - 4),
        ("trailer length", flip(size - 6 - 4), size - 4),
        ("trailer crc", flip(size - 1), size - 4),
        ("truncated in header", data[:20], 20),
        ("truncated after header", data[: headerLength + 3], headerLength + 3),
        ("truncated by one", data[:-1], size - 5),
        ("truncated trailer", data[:-12], size - 16),
        ("empty", b"", 0),
        ("appended byte", data + b"\0", size - 4 + 1),
    ]


def test_corruptFilesRefusedWithOffset(tmp_path):
    meta = SnapshotMeta(9, 2, (1, 2, 3))
    data = snapfile.encode(meta, PAYLOAD)
    n = len(snapfile.encodeHeader(meta))
    for name, damaged, offset in corruptions(data, n):
        path = str(tmp_path / name.replace(" ", "_"))
        with open(path, "wb") as f:
            f.write(damaged)
        with pytest.raises(CorruptSnapshotError) as info:
            snapfile.verifyFile(path)
        assert info.value.path == path, name
        assert info.value.offset == offset, (name, info.value)
        assert path in str(info.value) and f"offset {offset}" in str(info.value)


def test_versionMismatchNamed(tmp_path):
    meta = SnapshotMeta(9, 2, ())
    header = bytearray(snapfile.encodeHeader(meta))
    header[8:12] = (3).to_bytes(4, "big")
    body = bytes(header[:-4])
    header = body + zlib.crc32(body).to_bytes(4, "big")
    path = str(tmp_path / "v3")
    with open(path, "wb") as f:
        f.write(header + bytes(12))
    with pytest.raises(CorruptSnapshotError) as info:
        snapfile.verifyFile(path)
    assert info.value.offset == 8 and "version 3" in str(info.value)


# -- save, load, compaction -----------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_saveLoadRoundtrip(tmp_path):
    path = str(tmp_path / "n1")
    storage, state = yield opened(path)
    assert state.snapshot is None
    assert (yield storage.loadSnapshot(parse)) is None
    yield storage.append(ents(1, 10))
    yield storage.saveHardState(HardState(3, 1))
    meta = SnapshotMeta(10, 1, (1, 2, 3))
    big = os.urandom(3 * 1024 * 1024 + 17)  # more than the writer's buffer
    yield storage.saveSnapshot(meta, writer(big, pieces=7))
    assert not os.path.exists(snapPath(path) + ".tmp")
    assert (yield storage.loadSnapshot(parse)) == (meta, big)
    yield storage.close()
    state = yield reload(path)
    assert state.snapshot == meta
    assert state.entries == []
    assert state.hardState == HardState(3, 1)
    storage, state = yield opened(path)
    assert (yield storage.loadSnapshot(parse)) == (meta, big)
    yield storage.append(ents(11, 12))  # next after the snapshot and the log
    yield storage.close()
    assert (yield reload(path)).entries == ents(11, 12)


@pytest_twisted.inlineCallbacks
def test_compactionDeletesCoveredSegments(tmp_path):
    path = str(tmp_path / "n1")
    storage = yield logWith(path, 40)
    firsts = walFirsts(path)
    assert len(firsts) >= 5
    lastIndex = 23
    yield storage.saveSnapshot(SnapshotMeta(lastIndex, 1, (1,)), writer(PAYLOAD))
    kept = walFirsts(path)
    # Exactly the segments whose successor starts at or before lastIndex + 1 went.
    expected = [
        f for i, f in enumerate(firsts) if i + 1 == len(firsts) or firsts[i + 1] > lastIndex + 1
    ]
    assert kept == expected
    assert kept[0] <= lastIndex + 1 < firsts[-1] or kept == firsts[-1:]
    # Appends continue on the compacted log (in-memory offsets intact), and
    # a truncation into the remaining segments still works.
    yield storage.append(ents(41, 45))
    yield storage.truncateSuffix(43)
    yield storage.append(ents(43, 44, term=2))
    yield storage.close()
    state = yield reload(path, segmentBytes=300)
    assert state.snapshot == SnapshotMeta(lastIndex, 1, (1,))
    assert state.entries == ents(24, 42) + ents(43, 44, term=2)


@pytest_twisted.inlineCallbacks
def test_snapshotOfWholeLogKeepsActiveSegment(tmp_path):
    path = str(tmp_path / "n1")
    storage = yield logWith(path, 20)
    yield storage.saveSnapshot(SnapshotMeta(20, 1, (1,)), writer(PAYLOAD))
    assert len(walFiles(path)) == 1  # the active segment is never deleted
    yield storage.close()
    storage, state = yield opened(path, segmentBytes=300)
    assert state.entries == []
    yield storage.append(ents(21, 21))
    yield storage.close()
    assert (yield reload(path)).entries == ents(21, 21)


@pytest_twisted.inlineCallbacks
def test_newerSnapshotReplacesOlder(tmp_path):
    path = str(tmp_path / "n1")
    storage = yield logWith(path, 30)
    yield storage.saveSnapshot(SnapshotMeta(10, 1, (1,)), writer(b"ten"))
    yield storage.saveSnapshot(SnapshotMeta(25, 1, (1,)), writer(b"twenty-five"))
    assert (yield storage.loadSnapshot(parse)) == (SnapshotMeta(25, 1, (1,)), b"twenty-five")
    # Never backwards: an older one is refused, nothing changes.
    yield failsWith(storage.saveSnapshot(SnapshotMeta(20, 1, (1,)), writer(b"x")), SnapshotChanged)
    assert not os.path.exists(snapPath(path) + ".tmp")
    assert (yield storage.loadSnapshot(parse))[1] == b"twenty-five"
    yield storage.close()
    state = yield reload(path)
    assert state.snapshot.lastIndex == 25 and state.entries == ents(26, 30)


@pytest_twisted.inlineCallbacks
def test_snapshotThreadDoesNotBlockAppends(tmp_path):
    path = str(tmp_path / "n1")
    storage, _ = yield opened(path)
    yield storage.append(ents(1, 5))
    entered = threading.Event()
    release = threading.Event()

    def slowWrite(f):
        f.write(b"part one")
        entered.set()
        assert release.wait(30)
        f.write(b" part two")

    saved = storage.saveSnapshot(SnapshotMeta(5, 1, (1,)), slowWrite)
    yield waitUntil(entered.is_set)
    try:
        for i in range(6, 10):  # several group commits while write() is stuck
            yield storage.append(ents(i, i))
            yield storage.saveHardState(HardState(i, 1))
        assert not saved.called
    finally:
        release.set()
    yield saved
    assert (yield storage.loadSnapshot(parse))[1] == b"part one part two"
    yield storage.close()
    state = yield reload(path)
    assert state.entries == ents(6, 9) and state.hardState == HardState(9, 1)


@pytest_twisted.inlineCallbacks
def test_closeWaitsForSnapshotWrite(tmp_path):
    path = str(tmp_path / "n1")
    storage = yield logWith(path, 20)
    release = threading.Event()
    entered = threading.Event()

    def slowWrite(f):
        entered.set()
        assert release.wait(30)
        f.write(b"late")

    saved = storage.saveSnapshot(SnapshotMeta(15, 1, (1,)), slowWrite)
    yield waitUntil(entered.is_set)
    closed = storage.close()
    yield task.deferLater(getReactor(), 0.05, lambda: None)
    assert not closed.called
    release.set()
    yield saved  # the snapshot and its compaction still complete
    yield closed
    state = yield reload(path)
    assert state.snapshot.lastIndex == 15 and state.entries == ents(16, 20)


@pytest_twisted.inlineCallbacks
def test_writeRaisingLeavesNothing(tmp_path):
    path = str(tmp_path / "n1")
    storage = yield logWith(path, 20)
    before = walFiles(path)

    def broken(f):
        f.write(b"x" * 100)
        raise ValueError("state machine bug")

    yield failsWith(storage.saveSnapshot(SnapshotMeta(15, 1, (1,)), broken), ValueError)
    assert not os.path.exists(snapPath(path) + ".tmp")
    assert not os.path.exists(snapPath(path))
    assert walFiles(path) == before
    yield storage.append(ents(21, 21))  # not failed
    yield storage.close()
    state = yield reload(path)
    assert state.snapshot is None and state.entries == ents(1, 21)


# -- disk full, fsync failure ---------------------------------------------------


class Faults:
    def __init__(self):
        self.fullFor = None
        self.failFsync = False

    def pwrite(self, fd, data, offset):
        if self.fullFor and self.fullFor in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return os.pwrite(fd, data, offset)

    def fsync(self, fd):
        if self.failFsync:
            raise OSError(errno.EIO, "injected")
        os.fsync(fd)


@pytest_twisted.inlineCallbacks
def test_snapshotDiskFullFailsOnlyItsDeferred(tmp_path):
    path = str(tmp_path / "n1")
    faults = Faults()
    storage = yield logWith(path, 20, pwrite=faults.pwrite)
    yield storage.saveSnapshot(SnapshotMeta(5, 1, (1,)), writer(b"old"))
    before = walFiles(path)
    faults.fullFor = "snapshot.tmp"
    big = b"y" * (2 * 1024 * 1024)
    e = yield failsWith(storage.saveSnapshot(SnapshotMeta(15, 1, (1,)), writer(big)), DiskFull)
    assert e.errno == errno.ENOSPC
    assert not os.path.exists(snapPath(path) + ".tmp")
    assert walFiles(path) == before
    assert not storage.diskFull
    yield storage.append(ents(21, 22))
    assert (yield storage.loadSnapshot(parse)) == (SnapshotMeta(5, 1, (1,)), b"old")
    faults.fullFor = None
    yield storage.saveSnapshot(SnapshotMeta(15, 1, (1,)), writer(big))
    yield storage.close()
    state = yield reload(path)
    assert state.snapshot.lastIndex == 15 and state.entries == ents(16, 22)


@pytest_twisted.inlineCallbacks
def test_snapshotFsyncFailureIsFatal(tmp_path):
    path = str(tmp_path / "n1")
    faults = Faults()
    storage, _ = yield opened(path, fsync=faults.fsync)
    yield storage.append(ents(1, 10))
    faults.failFsync = True
    yield failsWith(storage.saveSnapshot(SnapshotMeta(8, 1, (1,)), writer(b"p")), FsyncError)
    yield failsWith(storage.append(ents(11, 11)), StorageFailed)
    yield failsWith(storage.readSnapshot(SnapshotMeta(8, 1, (1,)), 0, 10), StorageFailed)
    yield storage.close()
    state = yield reload(path)
    assert state.snapshot is None and state.entries == ents(1, 10)


# -- load: snapshot and WAL --------------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_loadWithWalBeforeAndAfterSnapshot(tmp_path):
    meta = SnapshotMeta(10, 2, (1, 2))
    cases = [
        ("wal from 1", ents(1, 10, term=2) + ents(11, 15, term=3), ents(11, 15, term=3)),
        ("wal from 6", ents(6, 10, term=2) + ents(11, 15, term=3), ents(11, 15, term=3)),
        ("wal from lastIndex+1", ents(11, 15, term=3), ents(11, 15, term=3)),
        ("wal ends at lastIndex", ents(1, 10, term=2), []),
        ("wal ends before lastIndex", ents(1, 7, term=2), []),
    ]
    for name, walEntries, expected in cases:
        path = str(tmp_path / name.replace(" ", "_"))
        yield emptyDataDir(path)
        writeSnapshotFile(path, meta)
        writeWal(path, walEntries)
        storage, state = yield opened(path, segmentBytes=300)
        assert state.snapshot == meta, name
        assert state.entries == expected, name
        nextIndex = expected[-1].index + 1 if expected else 11
        yield storage.append([Entry(nextIndex, 4, b"next")])
        yield storage.close()
        state = yield reload(path)
        assert state.entries == expected + [Entry(nextIndex, 4, b"next")], name


@pytest_twisted.inlineCallbacks
def test_gapAfterSnapshotIsCorruption(tmp_path):
    path = str(tmp_path / "n1")
    yield emptyDataDir(path)
    writeSnapshotFile(path, SnapshotMeta(10, 2, ()))
    writeWal(path, ents(12, 15))
    e = yield loadFails(path)
    assert isinstance(e, CorruptLogError)
    assert e.path.endswith(wal.segmentName(12)) and "11-11" in str(e)


@pytest_twisted.inlineCallbacks
def test_walNotFromOneWithoutSnapshotIsCorruption(tmp_path):
    path = str(tmp_path / "n1")
    yield emptyDataDir(path)
    writeWal(path, ents(5, 9))
    e = yield loadFails(path)
    assert isinstance(e, CorruptLogError) and e.path.endswith(wal.segmentName(5))


@pytest_twisted.inlineCallbacks
def test_divergentSuffixDropped(tmp_path, logged):
    path = str(tmp_path / "n1")
    yield emptyDataDir(path)
    meta = SnapshotMeta(10, 3, (1,))
    writeSnapshotFile(path, meta)
    writeWal(path, ents(1, 14, term=2))  # index 10 has term 2, not 3
    storage, state = yield opened(path, segmentBytes=300)
    assert state.snapshot == meta and state.entries == []
    assert warned(logged, "divergent")
    assert walFiles(path) == []  # durable: discarded
    yield storage.append(ents(11, 12, term=4))
    yield storage.close()
    state = yield reload(path)
    assert state.entries == ents(11, 12, term=4)  # not dropped again


@pytest_twisted.inlineCallbacks
def test_corruptSnapshotRefusedAtLoad(tmp_path):
    meta = SnapshotMeta(10, 2, (1, 2, 3))
    good = snapfile.encode(meta, PAYLOAD)
    n = len(snapfile.encodeHeader(meta))
    for name, damaged, offset in corruptions(good, n):
        path = str(tmp_path / name.replace(" ", "_"))
        yield emptyDataDir(path)
        writeWal(path, ents(1, 12, term=2))
        with open(snapPath(path), "wb") as f:
            f.write(damaged)
        e = yield loadFails(path)
        assert isinstance(e, CorruptSnapshotError), (name, e)
        assert e.path == snapPath(path) and e.offset == offset, (name, e)
        # Never silently ignored, and nothing deleted.
        assert walFirsts(path)[0] == 1


@pytest_twisted.inlineCallbacks
def test_corruptSnapshotRefusedByLoadSnapshot(tmp_path):
    path = str(tmp_path / "n1")
    storage = yield logWith(path, 12)
    meta = SnapshotMeta(10, 1, (1,))
    yield storage.saveSnapshot(meta, writer(PAYLOAD))
    with open(snapPath(path), "r+b") as f:
        f.seek(100)
        byte = f.read(1)
        f.seek(100)
        f.write(bytes([byte[0] ^ 1]))

    def strictParse(f):
        f.read(10)
        raise ValueError("cannot parse")

    for p in (parse, strictParse):
        e = yield failsWith(storage.loadSnapshot(p), CorruptSnapshotError)
        assert e.path == snapPath(path)
    yield storage.append(ents(13, 13))  # the storage still works
    yield storage.close()


# -- crash points of saveSnapshot --------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_crashPointsOfSaveSnapshot(tmp_path):
    """
    The data dirs a crash can leave at each step of saveSnapshot all load,
    as the old snapshot with the full log or the new snapshot with the tail,
    never losing an acknowledged entry.
    """
    base = str(tmp_path / "base")
    storage = yield logWith(base, 40)
    old = SnapshotMeta(5, 1, (1,))
    yield storage.saveSnapshot(old, writer(b"old"))
    yield storage.close()
    before = str(tmp_path / "before")
    shutil.copytree(base, before)
    storage, _ = yield opened(base, segmentBytes=300)
    new = SnapshotMeta(30, 1, (1,))
    yield storage.saveSnapshot(new, writer(b"new"))
    yield storage.close()
    after = base
    oldSegments = walFiles(before)
    newSegments = walFiles(after)
    deleted = [s for s in oldSegments if s not in newSegments]
    assert len(deleted) >= 3
    newFile = open(snapPath(after), "rb").read()

    def variant(name, tmp=None, snapshotFrom=before, remove=()):
        path = str(tmp_path / name)
        shutil.copytree(before, path)
        if snapshotFrom is after:
            shutil.copy(snapPath(after), snapPath(path))
        if tmp is not None:
            with open(snapPath(path) + ".tmp", "wb") as f:
                f.write(tmp)
        for seg in remove:
            os.unlink(os.path.join(path, "wal", seg))
        return path

    cases = [
        ("tmp partly written", variant("a", tmp=newFile[:40]), old),
        ("tmp written, not synced", variant("b", tmp=newFile), old),
        ("tmp written and synced", variant("c", tmp=newFile), old),
        ("renamed, nothing deleted", variant("d", snapshotFrom=after), new),
        ("oldest deleted", variant("e", snapshotFrom=after, remove=deleted[:1]), new),
        ("all but one deleted", variant("f", snapshotFrom=after, remove=deleted[:-1]), new),
        # Without the final dir fsync the deletions may persist in any order.
        ("a middle one deleted", variant("g", snapshotFrom=after, remove=deleted[1:2]), new),
        ("all deleted", variant("h", snapshotFrom=after, remove=deleted), new),
    ]
    for name, path, expectedMeta in cases:
        storage, state = yield opened(path, segmentBytes=300)
        assert state.snapshot == expectedMeta, name
        assert state.entries == ents(expectedMeta.lastIndex + 1, 40), name
        assert not os.path.exists(snapPath(path) + ".tmp"), name
        expectedPayload = b"old" if expectedMeta == old else b"new"
        assert (yield storage.loadSnapshot(parse)) == (expectedMeta, expectedPayload)
        yield storage.append(ents(41, 41))
        yield storage.close()
        state = yield reload(path)
        assert state.entries == ents(expectedMeta.lastIndex + 1, 41), name


# -- readSnapshot ---------------------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_readSnapshotChunks(tmp_path):
    path = str(tmp_path / "n1")
    storage = yield logWith(path, 20)
    meta = SnapshotMeta(12, 1, (1, 2, 3))
    yield storage.saveSnapshot(meta, writer(os.urandom(10000)))
    whole = open(snapPath(path), "rb").read()
    chunks = []
    offset = 0
    while True:
        data, total = yield storage.readSnapshot(meta, offset, 777)
        assert total == len(whole)
        if not data:
            break
        chunks.append(data)
        offset += len(data)
    assert b"".join(chunks) == whole
    yield storage.saveSnapshot(SnapshotMeta(18, 1, (1, 2, 3)), writer(b"newer"))
    yield failsWith(storage.readSnapshot(meta, 0, 777), SnapshotChanged)
    yield storage.close()


@pytest_twisted.inlineCallbacks
def test_readSnapshotWithoutSnapshot(tmp_path):
    storage, _ = yield opened(str(tmp_path / "n1"))
    yield failsWith(storage.readSnapshot(SnapshotMeta(1, 1, ()), 0, 10), SnapshotChanged)
    yield storage.close()


# -- receive and install ------------------------------------------------------------


@defer.inlineCallbacks
def leaderSnapshot(tmp_path, lastIndex=25, payload=None):
    """A leader's data dir with a snapshot; returns (meta, file bytes, payload)."""
    path = str(tmp_path / "leader")
    storage = yield logWith(path, 30)
    meta = SnapshotMeta(lastIndex, 1, (1, 2, 3))
    payload = os.urandom(20000) if payload is None else payload
    yield storage.saveSnapshot(meta, writer(payload))
    yield storage.close()
    return meta, open(snapPath(path), "rb").read(), payload


@defer.inlineCallbacks
def send(storage, meta, data, chunk=4096, start=0):
    offset = start
    while offset < len(data):
        got = yield storage.receiveSnapshot(meta, offset, data[offset : offset + chunk])
        offset += len(data[offset : offset + chunk])
        assert got == offset
    return offset


@pytest_twisted.inlineCallbacks
def test_receiveAndInstallDiscardingLog(tmp_path):
    meta, data, payload = yield leaderSnapshot(tmp_path)
    path = str(tmp_path / "follower")
    storage = yield logWith(path, 10, term=7)  # a divergent, shorter log
    yield send(storage, meta, data)
    assert os.path.exists(snapPath(path) + ".recv")
    yield storage.installSnapshot(meta, discardLog=True)
    assert not os.path.exists(snapPath(path) + ".recv")
    assert open(snapPath(path), "rb").read() == data
    assert walFiles(path) == [wal.segmentName(26)]
    assert (yield storage.loadSnapshot(parse)) == (meta, payload)
    yield storage.append(ents(26, 28, term=2))
    yield storage.close()
    state = yield reload(path)
    assert state.snapshot == meta and state.entries == ents(26, 28, term=2)


@pytest_twisted.inlineCallbacks
def test_retransmittedChunksLeaveAnIntactSnapshot(tmp_path):
    # Every chunk twice, and overlapping ones, as a leader sends them when
    # answers are lost: the snapshot installed is byte for byte the leader's.
    meta, data, payload = yield leaderSnapshot(tmp_path)
    path = str(tmp_path / "follower")
    storage = yield logWith(path, 5)
    offset, chunk = 0, 1000
    while offset < len(data):
        got = yield storage.receiveSnapshot(meta, offset, data[offset : offset + chunk])
        again = yield storage.receiveSnapshot(meta, offset, data[offset : offset + chunk])
        assert got == again == min(len(data), offset + chunk)
        if offset:
            overlap = yield storage.receiveSnapshot(
                meta, offset - 7, data[offset - 7 : offset + chunk + 3]
            )
            assert overlap == min(len(data), offset + chunk + 3)
        offset = min(len(data), offset + chunk + (3 if offset else 0))
    yield storage.installSnapshot(meta, discardLog=True)
    assert open(snapPath(path), "rb").read() == data
    assert (yield storage.loadSnapshot(parse)) == (meta, payload)
    yield storage.close()


@pytest_twisted.inlineCallbacks
def test_installWithoutDiscardKeepsTail(tmp_path):
    meta, data, payload = yield leaderSnapshot(tmp_path, lastIndex=20)
    path = str(tmp_path / "follower")
    storage = yield logWith(path, 30)  # same entries as the leader's
    firsts = walFirsts(path)
    yield send(storage, meta, data, chunk=1000)
    yield storage.installSnapshot(meta, discardLog=False)
    kept = walFirsts(path)
    assert kept[0] <= 21 and len(kept) < len(firsts) and kept[-1] == firsts[-1]
    yield storage.append(ents(31, 31))
    yield storage.close()
    state = yield reload(path)
    assert state.snapshot == meta and state.entries == ents(21, 31)


@pytest_twisted.inlineCallbacks
def test_installIsOrderedWithAppends(tmp_path):
    meta, data, _ = yield leaderSnapshot(tmp_path)
    path = str(tmp_path / "follower")
    storage = yield logWith(path, 5)
    yield send(storage, meta, data)
    # Issued together, without waiting: they complete in order.
    d1 = storage.append(ents(6, 7))
    d2 = storage.installSnapshot(meta, discardLog=True)
    d3 = storage.append(ents(26, 27, term=2))
    yield defer.gatherResults([d1, d2, d3])
    yield storage.close()
    state = yield reload(path)
    assert state.snapshot == meta and state.entries == ents(26, 27, term=2)


@pytest_twisted.inlineCallbacks
def test_receiveOffsets(tmp_path):
    meta, data, _ = yield leaderSnapshot(tmp_path)
    path = str(tmp_path / "follower")
    storage, _ = yield opened(path)
    yield storage.receiveSnapshot(meta, 0, data[:1000])
    # A retransmission (its answer was lost) adds only what lies past the end.
    assert (yield storage.receiveSnapshot(meta, 500, data[500:1000])) == 1000
    assert (yield storage.receiveSnapshot(meta, 500, data[500:1500])) == 1500
    # Past the end, or another snapshot's: refused.
    yield failsWith(storage.receiveSnapshot(meta, 2000, data[2000:3000]), SnapshotChanged)
    other = SnapshotMeta(meta.lastIndex + 1, 1, (1,))
    yield failsWith(storage.receiveSnapshot(other, 1500, data[1500:2000]), SnapshotChanged)
    assert (yield storage.receiveSnapshot(meta, 1500, data[1500:2000])) == 2000
    # Incomplete: refused, the transfer must restart.
    yield failsWith(storage.installSnapshot(meta, True), CorruptSnapshotError)
    yield failsWith(storage.receiveSnapshot(meta, 2000, data[2000:3000]), SnapshotChanged)
    # A restart at offset 0 (even of a half-received transfer) works.
    yield storage.receiveSnapshot(meta, 0, data[:3000])
    yield storage.receiveSnapshot(meta, 0, data[:10])
    yield send(storage, meta, data, chunk=3)  # tiny chunks: the crc tail logic
    yield storage.installSnapshot(meta, True)
    yield failsWith(storage.installSnapshot(meta, True), SnapshotChanged)  # nothing left
    yield storage.close()
    state = yield reload(path)
    assert state.snapshot == meta and state.entries == []


@pytest_twisted.inlineCallbacks
def test_corruptReceivedSnapshotRefused(tmp_path):
    meta, data, payload = yield leaderSnapshot(tmp_path)
    path = str(tmp_path / "follower")
    storage = yield logWith(path, 10)
    n = len(snapfile.encodeHeader(meta))
    damagedCases = [(name, d, off) for name, d, off in corruptions(data, n) if len(d) >= 1]
    for name, damaged, offset in damagedCases:
        yield send(storage, meta, damaged, chunk=5000)
        e = yield failsWith(storage.installSnapshot(meta, True), CorruptSnapshotError)
        assert e.path == snapPath(path) + ".recv", name
        assert e.offset == offset, (name, e)
        # The storage still works, the log is intact.
        yield storage.saveHardState(HardState(1, 1))
    # A header for another snapshot than announced.
    wrong = snapfile.encode(SnapshotMeta(meta.lastIndex, 9, meta.members), payload)
    yield send(storage, meta, wrong)
    e = yield failsWith(storage.installSnapshot(meta, True), CorruptSnapshotError)
    assert "header describes" in str(e)
    yield storage.append(ents(11, 11))
    # A clean restart installs.
    yield send(storage, meta, data)
    yield storage.installSnapshot(meta, True)
    yield storage.close()
    state = yield reload(path)
    assert state.snapshot == meta and state.entries == []


@pytest_twisted.inlineCallbacks
def test_installOlderThanCurrentRefused(tmp_path):
    meta, data, _ = yield leaderSnapshot(tmp_path, lastIndex=10)
    path = str(tmp_path / "follower")
    storage = yield logWith(path, 30)
    yield storage.saveSnapshot(SnapshotMeta(20, 1, (1,)), writer(b"mine"))
    yield send(storage, meta, data)
    yield failsWith(storage.installSnapshot(meta, True), SnapshotChanged)
    yield storage.append(ents(31, 31))
    yield storage.close()
    state = yield reload(path)
    assert state.snapshot.lastIndex == 20 and state.entries == ents(21, 31)


@pytest_twisted.inlineCallbacks
def test_receiveDiskFullDropsTransfer(tmp_path):
    meta, data, _ = yield leaderSnapshot(tmp_path)
    path = str(tmp_path / "follower")
    faults = Faults()
    storage = yield logWith(path, 10, pwrite=faults.pwrite)
    yield storage.receiveSnapshot(meta, 0, data[:100])
    faults.fullFor = "snapshot.recv"
    yield failsWith(storage.receiveSnapshot(meta, 100, data[100:200]), DiskFull)
    assert not os.path.exists(snapPath(path) + ".recv")
    yield failsWith(storage.receiveSnapshot(meta, 100, data[100:200]), SnapshotChanged)
    faults.fullFor = None
    yield storage.append(ents(11, 11))
    yield send(storage, meta, data)
    yield storage.installSnapshot(meta, True)
    yield storage.close()


@pytest_twisted.inlineCallbacks
def test_installFsyncFailureIsFatal(tmp_path):
    meta, data, _ = yield leaderSnapshot(tmp_path)
    path = str(tmp_path / "follower")
    faults = Faults()
    storage = yield logWith(path, 10)
    yield storage.close()
    storage, _ = yield opened(path, fsync=faults.fsync)
    yield send(storage, meta, data)
    faults.failFsync = True
    yield failsWith(storage.installSnapshot(meta, True), FsyncError)
    yield failsWith(storage.append(ents(26, 26)), StorageFailed)
    yield storage.close()
    state = yield reload(path)
    # Nothing was renamed: the old log, no snapshot.
    assert state.snapshot is None and state.entries == ents(1, 10)


# -- crash points of installSnapshot ---------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_crashPointsOfInstall(tmp_path, logged):
    """
    Each data dir a crash can leave while installing with discardLog loads:
    the old snapshot and log before the rename, the new snapshot afterwards,
    with the next append at lastIndex + 1 (or after a kept matching tail).
    """
    meta, data, payload = yield leaderSnapshot(tmp_path)  # lastIndex 25, term 1
    before = str(tmp_path / "before")
    storage = yield logWith(before, 40, term=2)  # divergent: term 2 at 25
    yield storage.close()
    segments = walFiles(before)
    assert len(segments) >= 4

    def variant(name, recv=None, renamed=False, keep=None, newSegment=None):
        path = str(tmp_path / name)
        shutil.copytree(before, path)
        if recv is not None:
            with open(snapPath(path) + ".recv", "wb") as f:
                f.write(recv)
        if renamed:
            with open(snapPath(path), "wb") as f:
                f.write(data)
        if keep is not None:  # discard deletes newest first: a prefix remains
            for seg in segments[keep:]:
                os.unlink(os.path.join(path, "wal", seg))
        if newSegment is not None:
            with open(os.path.join(path, "wal", wal.segmentName(26)), "wb") as f:
                f.write(newSegment)
        return path

    header = wal.encodeSegmentHeader(26)
    cases = [
        ("receiving", variant("a", recv=data[:5000]), None),
        ("received, not renamed", variant("b", recv=data), None),
        ("renamed, log intact", variant("c", renamed=True), meta),
        ("renamed, newest segment deleted", variant("d", renamed=True, keep=-1), meta),
        ("renamed, one segment left", variant("e", renamed=True, keep=1), meta),
        ("renamed, log deleted", variant("f", renamed=True, keep=0), meta),
        ("new segment torn", variant("g", renamed=True, keep=0, newSegment=header[:10]), meta),
        ("new segment created", variant("h", renamed=True, keep=0, newSegment=header), meta),
    ]
    for name, path, expectedMeta in cases:
        storage, state = yield opened(path, segmentBytes=300)
        assert state.snapshot == expectedMeta, name
        assert not os.path.exists(snapPath(path) + ".recv"), name
        if expectedMeta is None:
            assert state.entries == ents(1, 40, term=2), name
            nextIndex = 41
        else:
            assert state.entries == [], name
            nextIndex = 26
        yield storage.append([Entry(nextIndex, 3, b"after")])
        yield storage.close()
        state = yield reload(path)
        assert state.snapshot == expectedMeta, name
        assert state.entries[-1] == Entry(nextIndex, 3, b"after"), name
        assert state.entries[0].index == (1 if expectedMeta is None else 26), name
    assert warned(logged, "divergent")
