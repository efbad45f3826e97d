"""
What membership change stores (issue 11): configuration entries in the
write-ahead log (record type 2), the whole configuration in a snapshot's
header (format version 2, version 1 still read), and the C{bootstrap}
file; each refused by name and offset when damaged.  Real files under
C{tmp_path}; L{FileStorage} on the real reactor where it is used.
"""

import os
import struct
import threading
import zlib

import pytest
import pytest_twisted

from twisted_raft.raft.membership import (
    MAX_ADDRESS,
    MAX_MEMBERS,
    Configuration,
    Member,
    encodeMembers,
)
from twisted_raft.raft.messages import (
    CONFIGURATION,
    DATA,
    Entry,
    HardState,
    SnapshotMeta,
    StorageFailed,
)
from twisted_raft.storage import bootstrap, smallfile, wal
from twisted_raft.storage import snapshot as snapfile
from twisted_raft.storage.errors import (
    CorruptLogError,
    CorruptSnapshotError,
    DataDirError,
    FsyncError,
)
from twisted_raft.storage.memory import MemoryStorage

from tests.storage.support import loadFails, opened, reload
from tests.support import failureOf


def noSync(fd):
    pass


CONFIG = Configuration(
    (
        Member(1, "10.0.0.1:8001", True),
        Member(2, "node-2.example:8002", True),
        Member(4, "[::1]:8004", False),
    ),
    index=6,
)


def configEntry(index, term, configuration=CONFIG):
    return Entry(index, term, encodeMembers(configuration), CONFIGURATION)


def mixedLog():
    return [
        Entry(1, 1, b"a"),
        Entry(2, 1, b""),
        configEntry(3, 2),
        Entry(4, 2, b"b" * 300),
        configEntry(5, 2, CONFIG.without(4)),
    ]


def oldRecord(index, term, data):
    """A record exactly as raftkv wrote it before membership change."""
    payload = struct.pack(">QQ", index, term) + data
    crc = zlib.crc32(payload, zlib.crc32(b"\x01"))
    head = struct.pack(">IIB3x", len(payload), crc, 1)
    return head + struct.pack(">I", zlib.crc32(head)) + payload


def record(rtype, index, term, data):
    """A well-checksummed record of any type."""
    payload = struct.pack(">QQ", index, term) + data
    crc = zlib.crc32(payload, zlib.crc32(bytes([rtype])))
    head = struct.pack(">IIB3x", len(payload), crc, rtype)
    return head + struct.pack(">I", zlib.crc32(head)) + payload


def writeSegmentFile(path, firstIndex, records):
    directory = os.path.join(path, "wal")
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, wal.segmentName(firstIndex)), "wb") as f:
        f.write(wal.encodeSegmentHeader(firstIndex) + b"".join(records))


# -- the write-ahead log ----------------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_configuration_entries_round_trip_through_the_wal(tmp_path):
    path = str(tmp_path / "n1")
    storage, _ = yield opened(path, segmentBytes=200)
    entries = mixedLog()
    yield storage.append(entries[:2])
    yield storage.append(entries[2:])
    yield storage.close()
    state = yield reload(path)
    assert state.entries == entries
    assert [e.kind for e in state.entries] == [DATA, DATA, CONFIGURATION, DATA, CONFIGURATION]


def test_record_type_is_the_entry_kind_and_data_records_are_unchanged():
    data = Entry(7, 3, b"payload")
    assert wal.encodeRecord(data) == oldRecord(7, 3, b"payload")
    conf = configEntry(8, 3)
    encoded = wal.encodeRecord(conf)
    assert encoded[8] == 2  # the type byte
    assert encoded == record(2, 8, 3, conf.data)


@pytest_twisted.inlineCallbacks
def test_a_data_dir_written_before_membership_change_reads_back(tmp_path):
    path = str(tmp_path / "old")
    yield reload(path)  # identity and an empty wal
    writeSegmentFile(path, 1, [oldRecord(1, 1, b"x"), oldRecord(2, 2, b"y" * 50)])
    state = yield reload(path)
    assert state.entries == [Entry(1, 1, b"x"), Entry(2, 2, b"y" * 50)]
    assert all(e.kind is DATA for e in state.entries)


@pytest_twisted.inlineCallbacks
def test_unknown_record_type_is_corruption_named_by_file_and_offset(tmp_path):
    path = str(tmp_path / "n1")
    yield reload(path)
    first = oldRecord(1, 1, b"x")
    writeSegmentFile(path, 1, [first, record(3, 2, 1, b"?"), oldRecord(3, 1, b"z")])
    error = yield loadFails(path)
    assert isinstance(error, CorruptLogError)
    assert error.path.endswith(wal.segmentName(1))
    assert error.offset == wal.SEGMENT_HEADER.size + len(first)
    assert "unknown record type 3" in str(error)


@pytest_twisted.inlineCallbacks
def test_a_configuration_record_with_a_flipped_type_byte_is_refused(tmp_path):
    """The type byte is checksummed: a 2 turned into a 1 is not read as data."""
    path = str(tmp_path / "n1")
    storage, _ = yield opened(path)
    yield storage.append(mixedLog())
    yield storage.close()
    segment = os.path.join(path, "wal", wal.segmentName(1))
    offset = wal.SEGMENT_HEADER.size + sum(len(wal.encodeRecord(e)) for e in mixedLog()[:2])
    with open(segment, "r+b") as f:
        f.seek(offset + 8)
        assert f.read(1) == b"\x02"
        f.seek(offset + 8)
        f.write(b"\x01")
    error = yield loadFails(path)
    assert isinstance(error, CorruptLogError) and error.offset == offset


@pytest_twisted.inlineCallbacks
def test_append_refuses_an_entry_of_no_known_kind(tmp_path):
    storage, _ = yield opened(str(tmp_path / "n1"))
    try:
        for bad in (Entry(1, 1, b"x", kind=2), Entry(1, 1, b"x", kind=None)):
            with pytest.raises(ValueError):
                yield storage.append([bad])
        yield storage.append([configEntry(1, 1)])  # the storage still works
    finally:
        yield storage.close()


def test_a_dry_run_recovery_changes_nothing_and_cannot_write(tmp_path):
    directory = str(tmp_path / "wal")
    log = wal.WriteAheadLog(directory, 1 << 20, noSync)
    log.recover()
    log.append(mixedLog())
    log.sync()
    log.close()
    segment = os.path.join(directory, wal.segmentName(1))
    with open(segment, "ab") as f:
        f.write(b"\x00\x00\x01\x00torn")  # a torn tail
    before = open(segment, "rb").read()
    dry = wal.WriteAheadLog(directory, 1 << 20, noSync)
    entries, warnings = dry.recover(repair=False)
    assert entries == mixedLog() and dry.lastIndex == 5
    assert len(warnings) == 1 and "torn" in warnings[0][0]
    assert open(segment, "rb").read() == before
    for write in (
        lambda: dry.append([Entry(6, 2, b"x")]),
        lambda: dry.truncateSuffix(3),
        lambda: dry.compact(2),
        lambda: dry.discard(9),
    ):
        with pytest.raises(DataDirError):
            write()
    assert open(segment, "rb").read() == before
    real = wal.WriteAheadLog(directory, 1 << 20, noSync)
    assert real.recover() == (entries, warnings)
    assert len(open(segment, "rb").read()) < len(before)  # the repair is real
    real.close()


# -- the snapshot header ------------------------------------------------------------


def encodeV1(meta, payload, members=None):
    """A whole snapshot file in format version 1 (written before issue 11)."""
    members = tuple(meta.members if members is None else members)
    head = struct.pack(">8sIQQI", b"RKVSNAP\n", 1, meta.lastIndex, meta.lastTerm, len(members))
    head += b"".join(struct.pack(">Q", m) for m in members)
    head += struct.pack(">I", zlib.crc32(head))
    body = head + payload + struct.pack(">Q", len(payload))
    return body + struct.pack(">I", zlib.crc32(body))


def writeFile(path, data):
    with open(path, "wb") as f:
        f.write(data)
    return path


def withHeaderCrc(header):
    """C{header} (without its checksum) made whole: damage behind a valid crc."""
    return header + struct.pack(">I", zlib.crc32(header))


def test_version_2_header_carries_the_whole_configuration(tmp_path):
    meta = SnapshotMeta(40, 7, CONFIG)
    data = snapfile.encode(meta, b"state")
    header = snapfile.encodeHeader(meta)
    version, = struct.unpack_from(">I", header, 8)
    configIndex, length = struct.unpack_from(">QI", header, 28)
    assert (version, configIndex) == (2, 6)
    assert header[40 : 40 + length] == encodeMembers(CONFIG)
    found = snapfile.verifyFile(writeFile(str(tmp_path / "s"), data))
    assert found == meta
    assert found.configuration.member(4) == Member(4, "[::1]:8004", False)
    assert found.configuration.index == 6


def test_a_version_1_file_reads_as_voters_without_addresses(tmp_path):
    path = writeFile(str(tmp_path / "s"), encodeV1(SnapshotMeta(9, 2), b"old state", (3, 1, 2)))
    meta = snapfile.verifyFile(path)
    assert meta == SnapshotMeta(9, 2, Configuration.ofVoters((1, 2, 3)))
    assert meta.configuration.index == 0
    assert all(m.voter and m.address == "" for m in meta.configuration.members)
    with snapfile.SnapshotReader(path) as reader:
        assert reader.payload.read() == b"old state"
        reader.finish()


@pytest_twisted.inlineCallbacks
def test_snapshot_configuration_survives_save_and_restart(tmp_path):
    path = str(tmp_path / "n1")
    storage, _ = yield opened(path)
    yield storage.append([Entry(i, 1, b"x") for i in range(1, 41)])
    meta = SnapshotMeta(40, 1, CONFIG)
    yield storage.saveSnapshot(meta, lambda f: f.write(b"state"))
    yield storage.close()
    storage, state = yield opened(path)
    try:
        assert state.snapshot == meta
        assert state.snapshot.configuration.member(2).address == "node-2.example:8002"
        assert (yield storage.loadSnapshot(lambda f: f.read())) == (meta, b"state")
        data, total = yield storage.readSnapshot(meta, 0, 1 << 20)
        assert data == snapfile.encode(meta, b"state") and total == len(data)
    finally:
        yield storage.close()


@pytest_twisted.inlineCallbacks
def test_a_data_dir_with_a_version_1_snapshot_loads(tmp_path):
    path = str(tmp_path / "n1")
    yield reload(path)
    old = SnapshotMeta(12, 3, (1, 2, 3))
    writeFile(os.path.join(path, "snapshot"), encodeV1(old, b"v1 payload"))
    storage, state = yield opened(path)
    try:
        assert state.snapshot == SnapshotMeta(12, 3, Configuration.ofVoters((1, 2, 3)))
        assert (yield storage.loadSnapshot(lambda f: f.read()))[1] == b"v1 payload"
        # a leader on this dir sends the file as it is, meta and all
        data, _ = yield storage.readSnapshot(state.snapshot, 0, 1 << 20)
        assert data == encodeV1(old, b"v1 payload")
    finally:
        yield storage.close()


@pytest.mark.parametrize("chunk", [1, 7, 4096])
@pytest_twisted.inlineCallbacks
def test_received_snapshots_of_either_version_install(tmp_path, chunk):
    """The receiver finds the header's end chunk by chunk, whatever its layout."""
    path = str(tmp_path / "n1")
    storage, _ = yield opened(path)
    try:
        for meta, data in [
            (SnapshotMeta(10, 1, (1, 2)), encodeV1(SnapshotMeta(10, 1, (1, 2)), b"one")),
            (SnapshotMeta(20, 2, CONFIG), snapfile.encode(SnapshotMeta(20, 2, CONFIG), b"two")),
        ]:
            for offset in range(0, len(data), chunk):
                yield storage.receiveSnapshot(meta, offset, data[offset : offset + chunk])
            yield storage.installSnapshot(meta, discardLog=True)
            assert (yield storage.loadSnapshot(lambda f: f.read()))[0] == meta
    finally:
        yield storage.close()
    state = yield reload(path)
    assert state.snapshot == SnapshotMeta(20, 2, CONFIG)


@pytest_twisted.inlineCallbacks
def test_a_received_snapshot_whose_configuration_differs_is_refused(tmp_path):
    storage, _ = yield opened(str(tmp_path / "n1"))
    try:
        sent = SnapshotMeta(20, 2, CONFIG)
        claimed = SnapshotMeta(20, 2, CONFIG.without(4))  # what the wire said
        data = snapfile.encode(sent, b"x")
        yield storage.receiveSnapshot(claimed, 0, data)
        with pytest.raises(CorruptSnapshotError) as info:
            yield storage.installSnapshot(claimed, discardLog=True)
        assert info.value.offset == 0 and "header describes" in str(info.value)
    finally:
        yield storage.close()


def v2Header(lastIndex=9, lastTerm=2, configIndex=3, config=None, length=None):
    config = encodeMembers(Configuration.ofVoters((1, 2, 3))) if config is None else config
    length = len(config) if length is None else length
    return struct.pack(">8sIQQQI", b"RKVSNAP\n", 2, lastIndex, lastTerm, configIndex, length) + config


@pytest.mark.parametrize(
    "name,header,offset,words",
    [
        # lengths are checked before anything is read by them
        ("huge configuration length", v2Header(length=0xFFFFFFFF) + b"\0" * 4, 0,
         "implausible configuration length 4294967295"),
        ("huge v1 member count",
         struct.pack(">8sIQQI", b"RKVSNAP\n", 1, 9, 2, 0xFFFFFFFF) + b"\0" * 4, 0,
         "implausible member count"),
        # behind a valid header checksum (a bug, or a crafted file)
        ("configuration not JSON", withHeaderCrc(v2Header(config=b"\xff{")), 40,
         "bad configuration"),
        ("configuration nested too deep", withHeaderCrc(v2Header(config=b"[" * 100000)), 40,
         "bad configuration"),
        ("member with id 0",
         withHeaderCrc(v2Header(config=b'[{"address":"","id":0,"voter":true}]')), 40,
         "bad configuration"),
        ("configuration after lastIndex", withHeaderCrc(v2Header(lastIndex=9, configIndex=10)),
         28, "index 10 is after the snapshot's last index 9"),
        ("configuration length past the file", v2Header(length=5000)[:60], 72,
         "truncated inside the 5044-byte header"),
    ],
)
def test_damaged_headers_are_refused_by_name_and_offset(tmp_path, name, header, offset, words):
    path = writeFile(str(tmp_path / "snap"), header + bytes(12))
    with pytest.raises(CorruptSnapshotError) as info:
        snapfile.verifyFile(path)
    assert info.value.path == path and info.value.offset == offset, (name, info.value)
    assert words in str(info.value) and f"offset {offset}" in str(info.value)


def test_every_configuration_fits_a_header(tmp_path):
    """The largest configuration encodeMembers can write is within the bound."""
    address = "\U0001F600" * MAX_ADDRESS  # escaped to 12 bytes a character
    widest = Configuration(
        tuple(Member((1 << 63) - 1 - i, address, False) for i in range(MAX_MEMBERS)),
        index=(1 << 63),
    )
    assert len(encodeMembers(widest)) <= snapfile.MAX_CONFIG_BYTES
    meta = SnapshotMeta(1 << 63, 1, widest)
    snapfile.checkMeta(meta)
    path = writeFile(str(tmp_path / "s"), snapfile.encode(meta, b""))
    assert snapfile.verifyFile(path) == meta


@pytest.mark.parametrize(
    "meta",
    [
        SnapshotMeta(5, 1, Configuration.ofVoters((1,), index=6)),  # postdates the snapshot
        SnapshotMeta(5, 1, Configuration.ofVoters((0, 1))),  # id 0
        SnapshotMeta(5, 1, Configuration((Member(1, "x" * (MAX_ADDRESS + 1)),))),
    ],
)
@pytest_twisted.inlineCallbacks
def test_unstorable_snapshot_meta_is_refused(tmp_path, meta):
    with pytest.raises(ValueError):
        snapfile.checkMeta(meta)
    storage, _ = yield opened(str(tmp_path / "n1"))
    try:
        yield storage.append([Entry(i, 1, b"x") for i in range(1, 6)])
        with pytest.raises(ValueError):
            yield storage.saveSnapshot(meta, lambda f: f.write(b"x"))
        assert not os.path.exists(os.path.join(storage.path, "snapshot"))
    finally:
        yield storage.close()


# -- the bootstrap file -------------------------------------------------------------


BOOT = Configuration.ofVoters((1, 2, 3), {1: "a:1", 2: "b:2", 3: "c:3"})


@pytest_twisted.inlineCallbacks
def test_bootstrap_is_written_once_off_the_reactor_thread_and_loaded(tmp_path):
    path = str(tmp_path / "n1")
    threads = []

    def fsync(fd):
        threads.append(threading.current_thread())
        os.fsync(fd)

    storage, state = yield opened(path, fsync=fsync)
    try:
        assert state.bootstrap is None
        yield storage.bootstrap(BOOT.at(5))  # recorded as the index-0 configuration
        assert threads and threading.main_thread() not in threads
        with pytest.raises(DataDirError) as info:
            yield storage.bootstrap(BOOT.without(3))
        assert "written once" in str(info.value)
        yield storage.append([Entry(1, 1, b"x")])  # the storage still works
    finally:
        yield storage.close()
    state = yield reload(path)
    assert state.bootstrap == BOOT and state.bootstrap.index == 0
    assert state.bootstrap.member(2).address == "b:2"
    assert state.entries == [Entry(1, 1, b"x")]
    # once recorded, a later start with other --peers cannot change it
    storage, _ = yield opened(path)
    try:
        with pytest.raises(DataDirError):
            yield storage.bootstrap(Configuration.ofVoters((1,)))
    finally:
        yield storage.close()
    assert (yield reload(path)).bootstrap == BOOT


@pytest_twisted.inlineCallbacks
def test_bootstrap_refuses_what_it_cannot_store(tmp_path):
    storage, _ = yield opened(str(tmp_path / "n1"))
    try:
        for bad in ((1, 2, 3), Configuration.ofVoters((0,)), None):
            with pytest.raises(ValueError):
                yield storage.bootstrap(bad)
        yield storage.bootstrap(BOOT)  # nothing was recorded by the refusals
    finally:
        yield storage.close()


@pytest_twisted.inlineCallbacks
def test_a_failed_bootstrap_fsync_fails_the_storage(tmp_path):
    def fsync(fd):
        if os.path.basename(os.readlink(f"/proc/self/fd/{fd}")).startswith("bootstrap"):
            raise OSError(5, "EIO")
        os.fsync(fd)

    storage, _ = yield opened(str(tmp_path / "n1"), fsync=fsync)
    try:
        with pytest.raises(FsyncError):
            yield storage.bootstrap(BOOT)
        with pytest.raises(StorageFailed):
            yield storage.append([Entry(1, 1, b"x")])
    finally:
        yield storage.close()


@pytest.mark.parametrize(
    "damage,words",
    [
        ("flip", "checksum mismatch"),
        ("truncate", "byte offset 12"),
        ("bad json", "byte offset 16"),
        ("version", "unknown format version 9"),
    ],
)
@pytest_twisted.inlineCallbacks
def test_a_damaged_bootstrap_file_is_refused_by_name(tmp_path, damage, words):
    path = str(tmp_path / "n1")
    storage, _ = yield opened(path)
    yield storage.bootstrap(BOOT)
    yield storage.close()
    filePath = os.path.join(path, "bootstrap")
    data = open(filePath, "rb").read()
    if damage == "flip":
        data = data[:20] + bytes([data[20] ^ 1]) + data[21:]
    elif damage == "truncate":
        data = data[:-3]
    elif damage == "bad json":
        data = smallfile.encode(bootstrap.MAGIC, 1, b"[{]")
    else:
        data = smallfile.encode(bootstrap.MAGIC, 9, encodeMembers(BOOT))
    writeFile(filePath, data)
    error = yield loadFails(path)
    assert type(error) is DataDirError
    assert filePath in str(error) and words in str(error)
    assert open(filePath, "rb").read() == data  # refused, never repaired


@pytest_twisted.inlineCallbacks
def test_a_bootstrap_file_without_identity_is_not_adopted(tmp_path):
    path = str(tmp_path / "n1")
    storage, _ = yield opened(path)
    yield storage.bootstrap(BOOT)
    yield storage.close()
    os.unlink(os.path.join(path, "identity"))
    error = yield loadFails(path)
    assert "no identity file" in str(error)


def test_memory_storage_bootstrap():
    from twisted.internet.task import Clock

    clock = Clock()
    storage = MemoryStorage(clock, delay=0.01)
    assert storage.load().result.bootstrap is None
    d = storage.bootstrap(BOOT.at(3))
    storage.crash()  # not yet durable: lost
    assert not d.called
    assert storage.load().result.bootstrap is None
    d = storage.bootstrap(BOOT)
    clock.advance(0.01)
    assert d.called
    storage.crash()
    state = storage.load().result
    assert state.bootstrap == BOOT and state.hardState == HardState()
    failureOf(storage.bootstrap(BOOT), AssertionError)  # written once
