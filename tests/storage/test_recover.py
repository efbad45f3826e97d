"""
Offline recovery from a lost quorum: L{twisted_raft.storage.recover} and
C{raftkv recover} (L{twisted_raft.tools.recover}), on data dirs written by
L{FileStorage} under C{tmp_path}.
"""

import io
import os
import struct
import zlib

import pytest
import pytest_twisted
from twisted.internet import defer

from twisted_raft import cli
from twisted_raft.raft.membership import Configuration, Member, decodeMembers, encodeMembers
from twisted_raft.raft.messages import CONFIGURATION, Entry, HardState, SnapshotMeta
from twisted_raft.storage import snapshot as snapfile
from twisted_raft.storage import wal
from twisted_raft.storage.errors import (
    CorruptLogError,
    CorruptSnapshotError,
    DataDirLocked,
)
from twisted_raft.storage.recover import NotADataDir, NothingToRecover, recover
from twisted_raft.tools.recover import RecoverOptions, run

from tests.storage.support import opened, reload

BOOT = Configuration.ofVoters((1, 2, 3), {1: "10.0.0.1:8001", 2: "10.0.0.2:8002", 3: "10.0.0.3:8003"})
WITH_LEARNER = BOOT.withMember(Member(4, "10.0.0.4:8004", False))


def data(i):
    return b"put %d" % i


def log(last, configAt=None, configuration=WITH_LEARNER):
    """Entries 1..last (terms 1, then 2 from index 8), a configuration at C{configAt}."""
    entries = []
    for i in range(1, last + 1):
        term = 1 if i < 8 else 2
        if i == configAt:
            entries.append(Entry(i, term, encodeMembers(configuration), CONFIGURATION))
        else:
            entries.append(Entry(i, term, data(i)))
    return entries


@defer.inlineCallbacks
def makeDataDir(path, entries, boot=BOOT, snapshotAt=None, snapshotConfig=BOOT, segmentBytes=300):
    storage, _ = yield opened(path, segmentBytes=segmentBytes)
    try:
        if boot is not None:
            yield storage.bootstrap(boot)
        yield storage.saveHardState(HardState(5, 2))
        if entries:
            yield storage.append(entries)
        if snapshotAt is not None:
            term = [e.term for e in entries if e.index == snapshotAt][0]
            meta = SnapshotMeta(snapshotAt, term, snapshotConfig)
            yield storage.saveSnapshot(meta, lambda f: f.write(b"state machine"))
    finally:
        yield storage.close()


def contents(path):
    """Every file's bytes under C{path}, but the lock file's (its holder's pid)."""
    found = {}
    for root, _, names in os.walk(path):
        for name in names:
            full = os.path.join(root, name)
            if os.path.relpath(full, path) != "lock":
                with open(full, "rb") as f:
                    found[os.path.relpath(full, path)] = f.read()
    return found


def yes(recovery):
    return True


def options(*argv):
    o = RecoverOptions()
    o.parseOptions(list(argv))
    return o


def runCli(*argv, answer=""):
    stdout, stderr = io.StringIO(), io.StringIO()
    code = run(options(*argv), io.StringIO(answer), stdout, stderr)
    return code, stdout.getvalue(), stderr.getvalue()


# -- what it writes -----------------------------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_recover_keeps_every_entry_and_appends_this_node_alone(tmp_path):
    path = str(tmp_path / "n1")
    entries = log(20, configAt=10)
    yield makeDataDir(path, entries, snapshotAt=8, snapshotConfig=BOOT)
    before = yield reload(path)
    fsynced = []

    def fsync(fd):
        fsynced.append(os.readlink(f"/proc/self/fd/{fd}"))
        os.fsync(fd)

    recovery = recover(path, yes, fsync=fsync)
    assert recovery.written and recovery.nodeId == 1
    assert (recovery.lastIndex, recovery.lastTerm) == (20, 2)
    assert recovery.old == WITH_LEARNER.at(10) and recovery.oldSource == "log entry 10"
    assert [m.id for m in recovery.dropped] == [2, 3, 4]

    after = yield reload(path)
    alone = Configuration((Member(1, "10.0.0.1:8001", True),), 21)
    assert after.entries == before.entries + [
        Entry(21, 2, encodeMembers(alone), CONFIGURATION)
    ]
    assert decodeMembers(after.entries[-1].data, 21) == alone
    assert after.snapshot == before.snapshot == SnapshotMeta(8, 2, BOOT)
    assert after.hardState == before.hardState == HardState(5, 2)
    assert after.bootstrap == before.bootstrap == BOOT

    # one checksummed record at the end of the last segment, fsynced
    segment = os.path.join(path, "wal", sorted(os.listdir(os.path.join(path, "wal")))[-1])
    raw = open(segment, "rb").read()
    record = wal.encodeRecord(after.entries[-1])
    assert raw.endswith(record)
    length, crc, rtype, headCrc = struct.unpack_from(">IIB3xI", record)
    assert rtype == 2 and headCrc == zlib.crc32(record[:12])
    assert crc == zlib.crc32(record[16:], zlib.crc32(b"\x02")) and length == len(record) - 16
    assert segment in fsynced


@pytest_twisted.inlineCallbacks
def test_the_configuration_in_force_comes_from_the_log_then_snapshot_then_bootstrap(tmp_path):
    cases = {
        "bootstrap": dict(entries=log(9), boot=BOOT),
        "snapshot": dict(entries=log(9), snapshotAt=9, snapshotConfig=WITH_LEARNER.at(4)),
        "nothing recorded": dict(entries=log(9), boot=None),
    }
    found = {}
    for name, kw in cases.items():
        path = str(tmp_path / name.replace(" ", "_"))
        yield makeDataDir(path, **kw)
        found[name] = recover(path, yes)
    assert found["bootstrap"].old == BOOT
    assert found["bootstrap"].oldSource == "the bootstrap record"
    snap = found["snapshot"]
    assert snap.old == WITH_LEARNER.at(4) and "snapshot" in snap.oldSource
    assert (snap.lastIndex, snap.lastTerm) == (9, 2)  # from the snapshot: no entry after it
    none = found["nothing recorded"]
    assert none.old is None and none.written
    assert none.new == Configuration((Member(1, "", True),), 10)  # no address known
    assert "--peers decided" in none.describe()


@pytest_twisted.inlineCallbacks
def test_a_version_1_snapshot_gives_voters_without_addresses(tmp_path):
    path = str(tmp_path / "n1")
    yield makeDataDir(path, log(9), boot=None)
    old = SnapshotMeta(9, 2, (1, 2, 3))
    head = struct.pack(">8sIQQI", b"RKVSNAP\n", 1, 9, 2, 3) + struct.pack(">QQQ", 1, 2, 3)
    head += struct.pack(">I", zlib.crc32(head))
    body = head + b"p" + struct.pack(">Q", 1)
    with open(os.path.join(path, "snapshot"), "wb") as f:
        f.write(body + struct.pack(">I", zlib.crc32(body)))
    recovery = recover(path, yes)
    assert recovery.old == old.configuration and recovery.written
    assert recovery.new == Configuration((Member(1, "", True),), 10)


@pytest_twisted.inlineCallbacks
def test_a_dir_already_recovered_is_left_alone(tmp_path):
    path = str(tmp_path / "n1")
    yield makeDataDir(path, log(5))
    code, out, _ = runCli("--data", path, "--yes")
    assert code == 0 and "Wrote configuration entry 6" in out
    before = contents(path)
    code, out, _ = runCli("--data", path, "--yes")
    assert code == 0 and "already the only member: nothing to do" in out
    assert contents(path) == before


# -- asking ------------------------------------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_it_says_what_may_be_lost_before_asking(tmp_path):
    path = str(tmp_path / "n1")
    yield makeDataDir(path, log(20, configAt=10))
    code, out, err = runCli("--data", path, answer="n\n")
    assert code == 1 and err == ""
    assert "last entry:    index 20, term 2" in out
    assert "current term:  5, voted for node 2" in out
    assert "configuration: log entry 10: voters node 1 (10.0.0.1:8001)" in out
    text = " ".join(out.split())  # as read, whatever the line breaks
    assert "appends configuration entry 21 (term 2): node 1 (10.0.0.1:8001) alone" in text
    assert (
        "node 2 (10.0.0.2:8002), node 3 (10.0.0.3:8003) and node 4 (10.0.0.4:8004) leave"
        " the cluster. Never start them again on their old data dirs" in text
    )
    assert "entries after index 20 that other nodes had are lost for good" in text
    assert "entries up to index 20 that were never committed" in text
    assert f"Rewrite the configuration of {path}? [y/N] \nNot changed.\n" in out


@pytest.mark.parametrize("answer", ["n\n", "\n", "", "yess\n", "no\n"])
@pytest_twisted.inlineCallbacks
def test_anything_but_yes_leaves_the_dir_byte_identical(tmp_path, answer):
    path = str(tmp_path / "n1")
    yield makeDataDir(path, log(20, configAt=10), snapshotAt=12)
    segment = os.path.join(path, "wal", sorted(os.listdir(os.path.join(path, "wal")))[-1])
    with open(segment, "ab") as f:
        f.write(b"\x00\x00\x00\x40torn")  # a crash mid-write: start-up would cut it
    with open(os.path.join(path, "snapshot.tmp"), "wb") as f:
        f.write(b"half a snapshot")
    before = contents(path)
    code, out, _ = runCli("--data", path, answer=answer)
    assert code == 1
    assert "truncated torn tail of write-ahead log segment" in " ".join(out.split())
    assert contents(path) == before


@pytest_twisted.inlineCallbacks
def test_yes_at_the_prompt_writes_and_makes_the_start_up_repairs(tmp_path):
    path = str(tmp_path / "n1")
    yield makeDataDir(path, log(20, configAt=10))
    segment = os.path.join(path, "wal", sorted(os.listdir(os.path.join(path, "wal")))[-1])
    with open(segment, "ab") as f:
        f.write(b"\x00\x00\x00\x40torn")
    code, out, _ = runCli("--data", path, answer="Yes\n")
    assert code == 0 and "Wrote configuration entry 21" in out
    state = yield reload(path)
    assert [e.index for e in state.entries] == list(range(1, 22))
    assert b"torn" not in open(segment, "rb").read()


@pytest_twisted.inlineCallbacks
def test_yes_flag_does_not_ask(tmp_path):
    path = str(tmp_path / "n1")
    yield makeDataDir(path, log(3))

    class NoTerminal(io.StringIO):
        def readline(self, *args):
            raise AssertionError("asked despite --yes")

    stdout = io.StringIO()
    code = run(options("--data", path, "--yes"), NoTerminal(), stdout, io.StringIO())
    assert code == 0 and "[y/N]" not in stdout.getvalue()
    assert "lost for good" in stdout.getvalue()  # still says what it does
    state = yield reload(path)
    assert state.entries[-1].kind is CONFIGURATION and state.entries[-1].index == 4


@pytest_twisted.inlineCallbacks
def test_a_learner_is_told_what_it_may_lack(tmp_path):
    path = str(tmp_path / "n1")
    learner = BOOT.without(1).withMember(Member(1, "10.0.0.1:8001", False))
    yield makeDataDir(path, log(9, configAt=5, configuration=learner))
    code, out, _ = runCli("--data", path, answer="n\n")
    text = " ".join(out.split())
    assert code == 1
    assert "node 1 is a learner in that configuration: the voters may have committed" in text


# -- refusals ----------------------------------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_a_dir_locked_by_a_running_node_is_refused(tmp_path):
    path = str(tmp_path / "n1")
    yield makeDataDir(path, log(5))
    storage, _ = yield opened(path)  # the node is running
    try:
        before = contents(path)
        with pytest.raises(DataDirLocked):
            recover(path, yes)
        code, out, err = runCli("--data", path, "--yes")
        assert code == 7 and out == ""
        assert f"data dir {path} is locked by a running raftkv process (pid {os.getpid()})" in err
        assert "stop the node first" in err
        assert contents(path) == before
    finally:
        yield storage.close()


def test_what_is_not_a_data_dir_is_refused_untouched(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    for path in (str(empty), str(tmp_path / "missing")):
        with pytest.raises(NotADataDir):
            recover(path, yes)
        code, _, err = runCli("--data", path, "--yes")
        assert code == 7 and "not a" in err
    assert os.listdir(empty) == []  # not even a lock file
    assert not os.path.exists(tmp_path / "missing")


@pytest_twisted.inlineCallbacks
def test_a_dir_with_nothing_to_keep_is_refused(tmp_path):
    path = str(tmp_path / "n1")
    yield makeDataDir(path, [], boot=BOOT)
    with pytest.raises(NothingToRecover):
        recover(path, yes)
    code, _, err = runCli("--data", path, "--yes")
    assert code == 7 and "nothing to recover" in err


@pytest_twisted.inlineCallbacks
def test_a_corrupt_log_is_refused_by_name_and_offset_not_repaired(tmp_path):
    path = str(tmp_path / "n1")
    entries = log(20)
    yield makeDataDir(path, entries, segmentBytes=1 << 20)
    segment = os.path.join(path, "wal", wal.segmentName(1))
    offset = wal.SEGMENT_HEADER.size + sum(len(wal.encodeRecord(e)) for e in entries[:5])
    with open(segment, "r+b") as f:
        f.seek(offset + 20)
        byte = f.read(1)
        f.seek(offset + 20)
        f.write(bytes([byte[0] ^ 0x40]))
    before = contents(path)
    with pytest.raises(CorruptLogError) as info:
        recover(path, yes)
    assert (info.value.path, info.value.offset) == (segment, offset)
    code, _, err = runCli("--data", path, "--yes")
    assert code == 7 and f"{segment} at byte offset {offset}" in err
    assert contents(path) == before


@pytest_twisted.inlineCallbacks
def test_a_corrupt_snapshot_is_refused(tmp_path):
    path = str(tmp_path / "n1")
    yield makeDataDir(path, log(12), snapshotAt=10)
    snap = os.path.join(path, "snapshot")
    raw = bytearray(open(snap, "rb").read())
    raw[-20] ^= 1
    open(snap, "wb").write(bytes(raw))
    before = contents(path)
    with pytest.raises(CorruptSnapshotError) as info:
        recover(path, yes)
    assert info.value.path == snap
    assert contents(path) == before


@pytest_twisted.inlineCallbacks
def test_a_configuration_entry_that_does_not_decode_is_named(tmp_path):
    path = str(tmp_path / "n1")
    entries = log(6) + [Entry(7, 1, b"{not a configuration", CONFIGURATION)]
    yield makeDataDir(path, entries, segmentBytes=1 << 20)
    with pytest.raises(CorruptLogError) as info:
        recover(path, yes)
    offset = wal.SEGMENT_HEADER.size + sum(len(wal.encodeRecord(e)) for e in entries[:6])
    assert info.value.offset == offset and "entry 7 does not decode" in str(info.value)


# -- the raftkv command ---------------------------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_raftkv_recover_subcommand(tmp_path, capsys):
    path = str(tmp_path / "n1")
    yield makeDataDir(path, log(4))
    with pytest.raises(SystemExit) as exit:
        cli.main(["recover", "--data", path, "--yes"])
    assert exit.value.code == 0
    assert "Wrote configuration entry 5" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit:
        cli.main(["recover"])
    assert exit.value.code == cli.EXIT_USAGE
    assert "--data DIR is required" in capsys.readouterr().err
