"""
Property tests of the write-ahead log's recovery, run synchronously on
L{twisted_raft.storage.wal.WriteAheadLog} (no reactor, no thread).
"""

import os
import tempfile

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from twisted_raft.raft.messages import Entry
from twisted_raft.storage import wal
from twisted_raft.storage.errors import CorruptLogError


def noSync(fd):
    pass


entryLists = st.lists(st.binary(max_size=40), min_size=1, max_size=8).map(
    lambda datas: [Entry(i + 1, 1 + i // 3, d) for i, d in enumerate(datas)]
)


def writeSegment(directory, entries):
    log = wal.WriteAheadLog(directory, 1 << 20, noSync)
    log.recover()
    log.append(entries)
    log.sync()
    log.close()
    path = os.path.join(directory, wal.segmentName(1))
    with open(path, "rb") as f:
        return path, f.read()


def recover(directory):
    log = wal.WriteAheadLog(directory, 1 << 20, noSync)
    try:
        return log.recover()[0]
    finally:
        log.close()


def boundaries(entries):
    ends = []
    offset = wal.SEGMENT_HEADER.size
    for e in entries:
        offset += len(wal.encodeRecord(e))
        ends.append(offset)
    return ends


@settings(max_examples=60, deadline=None)
@given(entryLists, st.data())
def test_cutAnywhereRecoversTheWholeRecords(entries, data):
    """
    Cutting the only segment anywhere after its header keeps exactly the
    entries whose records are whole, and appending afterwards works.
    """
    with tempfile.TemporaryDirectory() as directory:
        path, content = writeSegment(directory, entries)
        cut = data.draw(st.integers(wal.SEGMENT_HEADER.size, len(content)))
        zeros = data.draw(st.sampled_from([0, 0, 7, 4096]))
        with open(path, "wb") as f:
            f.write(content[:cut] + b"\0" * zeros)
        kept = sum(1 for end in boundaries(entries) if end <= cut)
        assert recover(directory) == entries[:kept]
        log = wal.WriteAheadLog(directory, 1 << 20, noSync)
        log.recover()
        log.append([Entry(kept + 1, 9, b"after")])
        log.sync()
        log.close()
        assert recover(directory) == entries[:kept] + [Entry(kept + 1, 9, b"after")]


@settings(max_examples=80, deadline=None)
@given(entryLists, st.data())
def test_bitFlipIsCorruptionUnlessInTheLastPayload(entries, data):
    """
    A flipped bit is reported as corruption (naming file and offset), except
    in the payload of the last record, which looks like a torn write.
    """
    with tempfile.TemporaryDirectory() as directory:
        path, content = writeSegment(directory, entries)
        position = data.draw(st.integers(0, len(content) - 1))
        bit = data.draw(st.integers(0, 7))
        flipped = bytearray(content)
        flipped[position] ^= 1 << bit
        with open(path, "wb") as f:
            f.write(bytes(flipped))
        ends = boundaries(entries)
        lastStart = ends[-2] if len(ends) > 1 else wal.SEGMENT_HEADER.size
        if position >= lastStart + wal.RECORD_HEADER.size:
            assert recover(directory) == entries[:-1]
        else:
            with pytest.raises(CorruptLogError) as info:
                recover(directory)
            assert path in str(info.value)
            starts = [wal.SEGMENT_HEADER.size] + ends[:-1]
            recordStart = max([0] + [s for s in starts if s <= position])
            assert info.value.offset == recordStart
            assert f"offset {recordStart}" in str(info.value)
