"""
The segmented write-ahead log of Raft entries.

Segments are C{wal/<index of their first entry, 20 digits>.log}.  Only the
last segment is ever written; it is rolled (a new one started) before an
entry is written once it holds C{segmentBytes} or more.  Layout (big-endian)::

    segment header, 24 bytes:
        magic       8 bytes  b"RKVWAL\\r\\n"
        version     u32      1
        firstIndex  u64      index of the segment's first entry (= file name)
        headerCrc   u32      zlib.crc32 of the 20 bytes before it

    then records, back to back, each a 16-byte header and a payload:
        length      u32      payload length
        crc         u32      zlib.crc32(type byte + payload)
        type        u8       1 = entry, 2 = configuration entry
        (padding)   3 bytes  zero
        headerCrc   u32      zlib.crc32 of the 12 header bytes before it
        payload     length bytes; for either kind of entry:
            index   u64
            term    u64
            data    the rest

The record type is the entry's kind
(L{twisted_raft.raft.messages.EntryKind}): type 1 is a C{DATA}
entry, type 2 a C{CONFIGURATION} entry, whose data is the configuration as
L{twisted_raft.raft.membership.encodeMembers} wrote it (stored as it is,
not checked here: the core decodes it).  Segments written before
membership change hold type 1 only and read back unchanged; a raftkv that
predates type 2 refuses a segment holding one as an unknown record type,
naming the file and offset, rather than misreading it.

The header checksum means a damaged length is detected instead of being
taken for a record torn at the end of the file.  Entries are contiguous
across all segments, from index 1 -- or, once a snapshot (L{snapshot})
covers a prefix of the log, from the first segment's first index, which is
at most the snapshot's C{lastIndex + 1}.

Compaction (L{WriteAheadLog.compact}) deletes the sealed segments whose
entries the snapshot covers, oldest first; recovery finishes a compaction a
crash interrupted (a segment whose successor starts at or before the
snapshot's C{lastIndex + 1} holds only covered entries and is deleted
unread).  Discarding the whole log for an installed snapshot
(L{WriteAheadLog.discard}) deletes the segments newest first, so a crash
leaves a prefix of the old log, which recovery handles: entries up to the
snapshot's C{lastIndex} are dropped; if the log holds C{lastIndex} with
another term than the snapshot's, everything after it is a divergent
uncommitted suffix and the whole log is discarded; if the log ends before
C{lastIndex} it is discarded too.  After either, the log is empty and the
next entry is the snapshot's C{lastIndex + 1} (L{WriteAheadLog.base}).

Recovery treats damage at the very end of the last segment as a crash
mid-write and cuts it off: a record header or payload running past the end
of the file, a last record whose payload checksum fails and that ends
exactly at the end of the file, or a tail that is all zeros (also a
last segment shorter than its header or all zeros).  Anything else is
corruption and raises L{CorruptLogError}.

Running out of space while appending (C{ENOSPC}/C{EDQUOT} from a write,
the creation of a segment or its header, never from an fsync) undoes the
append: segments it created are removed (and the directory synced), the
segment it was writing is cut back to its length before the append, so no
partial record remains, and L{DiskFull} is raised; the same append may then
be retried.

Every method blocks and must run on the storage's writer thread.
"""

import bisect
import os
import re
import struct
import time
import zlib
from array import array

from twisted_raft.raft.messages import CONFIGURATION, DATA, Entry
from twisted_raft.storage.errors import CorruptLogError, DataDirError, DiskFull, isDiskFull
from twisted_raft.storage.smallfile import fsyncDir, writeAll

MAGIC = b"RKVWAL\r\n"
FORMAT_VERSION = 1
ENTRY = 1
CONFIGURATION_ENTRY = 2

# record type <-> entry kind
_TYPE_OF_KIND = {DATA: ENTRY, CONFIGURATION: CONFIGURATION_ENTRY}
_KIND_OF_TYPE = {t: k for k, t in _TYPE_OF_KIND.items()}

SEGMENT_HEADER = struct.Struct(">8sIQI")
RECORD_HEADER = struct.Struct(">IIB3xI")
ENTRY_HEAD = struct.Struct(">QQ")

_NAME = re.compile(r"^(\d{20})\.log$")


def segmentName(firstIndex):
    return f"{firstIndex:020d}.log"


def encodeSegmentHeader(firstIndex):
    head = SEGMENT_HEADER.pack(MAGIC, FORMAT_VERSION, firstIndex, 0)[:-4]
    return head + struct.pack(">I", zlib.crc32(head))


def encodeRecord(entry):
    rtype = _TYPE_OF_KIND[entry.kind]
    payload = ENTRY_HEAD.pack(entry.index, entry.term) + entry.data
    crc = zlib.crc32(payload, zlib.crc32(bytes([rtype])))
    head = RECORD_HEADER.pack(len(payload), crc, rtype, 0)[:12]
    return head + struct.pack(">I", zlib.crc32(head)) + payload


class _Torn(Exception):
    def __init__(self, offset, reason):
        self.offset = offset
        self.reason = reason


class Segment:
    """
    One segment file: C{offsets[i]} is where the record of entry
    C{firstIndex + i} starts, C{size} where the next record goes.
    """

    def __init__(self, firstIndex, path, size):
        self.firstIndex = firstIndex
        self.path = path
        self.size = size
        self.offsets = array("Q")

    @property
    def lastIndex(self):
        return self.firstIndex + len(self.offsets) - 1


class WriteAheadLog:
    onFsync = None
    """C{None}, or called on the writer thread with the seconds each
    fsync of a batch's appends took (L{sync}; the node's metrics)."""

    def __init__(self, directory, segmentBytes, fsync, pwrite=os.pwrite):
        self.directory = directory
        self.segmentBytes = segmentBytes
        self.fsync = fsync
        self.pwrite = pwrite
        self.segments = []
        self._firsts = []  # segment firstIndex values, for bisect
        self._fd = None  # open fd of the last segment
        self._dirty = False  # unsynced writes to the last segment
        self._dirDirty = False  # unsynced segment creation
        # With no segments, the index after which the next entry goes.
        self.base = 0
        self._probeIndex = 0  # during recovery: the snapshot's lastIndex ...
        self._probeTerm = None  # ... and the term the log holds there
        self._readOnly = False  # recovered without repairing: never written

    @property
    def lastIndex(self):
        return self.segments[-1].lastIndex if self.segments else self.base

    # -- recovery ---------------------------------------------------------

    def recover(self, snapshot=None, repair=True):
        """
        Read and check every segment, cutting off a torn tail.

        @param snapshot: the L{SnapshotMeta} of the stored snapshot, or
            C{None}.
        @param repair: if false, a dry run that changes nothing on disk:
            the entries and warnings are those a repairing recovery would
            give (the warnings name what it would repair, in the words of
            having done it), and this log refuses to be written afterwards (for L{twisted_raft.storage.recover},
            which asks before it changes anything).
        @return: C{(entries, warnings)}: the entries after the snapshot;
            each warning is C{(format, fields)} for the caller to log on the
            reactor thread.
        @raise CorruptLogError: on damage that is not a torn tail, or a gap
            (between the snapshot, or index 1, and the first segment).
        """
        self._readOnly = not repair
        if repair:
            os.makedirs(self.directory, exist_ok=True)
        names = []
        listed = os.listdir(self.directory) if os.path.isdir(self.directory) else []
        for name in listed:
            m = _NAME.match(name)
            if m:
                names.append((int(m.group(1)), name))
        names.sort()
        entries = []
        warnings = []
        expected = 1
        snapLast = 0
        if snapshot is not None:
            snapLast = snapshot.lastIndex
            # Finish a compaction a crash interrupted.
            covered = []
            while len(names) > 1 and names[1][0] <= snapLast + 1:
                covered.append(names.pop(0)[1])
            if covered:
                if repair:
                    for name in covered:
                        os.unlink(os.path.join(self.directory, name))
                    fsyncDir(self.directory, self.fsync)
                warnings.append(
                    (
                        "removed {count} write-ahead log segment(s) ({names}) covered by the"
                        " snapshot up to index {lastIndex}: finishing an interrupted compaction",
                        dict(count=len(covered), names=", ".join(covered), lastIndex=snapLast),
                    )
                )
            if names:
                first, name = names[0]
                if first > snapLast + 1:
                    raise CorruptLogError(
                        os.path.join(self.directory, name),
                        0,
                        f"segment starts at index {first}, but the snapshot ends at index"
                        f" {snapLast}: entries {snapLast + 1}-{first - 1} are missing",
                    )
                expected = first
        self._probeIndex = snapLast
        self._probeTerm = None
        self.base = snapLast
        for i, (first, name) in enumerate(names):
            path = os.path.join(self.directory, name)
            isLast = i == len(names) - 1
            with open(path, "rb") as f:
                data = f.read()
            try:
                segment = self._scan(
                    path, first, data, expected, isLast, entries, snapLast + 1
                )
            except _Torn as torn:
                if torn.offset is None:
                    if repair:
                        os.unlink(path)
                        fsyncDir(self.directory, self.fsync)
                    warnings.append(
                        (
                            "removed torn write-ahead log segment {path} at offset {offset}"
                            " ({reason}); assuming a crash while it was created",
                            dict(path=path, offset=0, reason=torn.reason),
                        )
                    )
                    break
                segment = torn.segment
                if repair:
                    fd = os.open(path, os.O_RDWR)
                    try:
                        os.ftruncate(fd, torn.offset)
                        self.fsync(fd)
                    finally:
                        os.close(fd)
                warnings.append(
                    (
                        "truncated torn tail of write-ahead log segment {path} at offset"
                        " {offset} ({reason}, {dropped} bytes dropped); assuming a crash"
                        " mid-write",
                        dict(
                            path=path,
                            offset=torn.offset,
                            reason=torn.reason,
                            dropped=len(data) - torn.offset,
                        ),
                    )
                )
            self.segments.append(segment)
            self._firsts.append(segment.firstIndex)
            expected = segment.lastIndex + 1
        if snapshot is not None and self.segments:
            last = self.segments[-1].lastIndex
            if last < snapLast:
                warnings.append(
                    (
                        "discarded the write-ahead log (entries {first}-{last}): it ends before"
                        " the snapshot's last index {lastIndex}, which covers it",
                        dict(first=self.segments[0].firstIndex, last=last, lastIndex=snapLast),
                    )
                )
                self._removeAll()
                entries = []
            elif self._probeTerm is not None and self._probeTerm != snapshot.lastTerm:
                warnings.append(
                    (
                        "discarded the write-ahead log: it holds index {lastIndex} with term"
                        " {term}, but the snapshot has term {snapTerm} there, so entries"
                        " {after}-{last} are a divergent uncommitted suffix (a crash while a"
                        " snapshot was installed)",
                        dict(
                            lastIndex=snapLast,
                            term=self._probeTerm,
                            snapTerm=snapshot.lastTerm,
                            after=snapLast + 1,
                            last=last,
                        ),
                    )
                )
                self._removeAll()
                entries = []
        self.base = self.segments[0].firstIndex - 1 if self.segments else snapLast
        if self.segments and repair:
            self._fd = os.open(self.segments[-1].path, os.O_RDWR)
        return entries, warnings

    def _scan(self, path, first, data, expected, isLast, entries, keepFrom=1):
        size = len(data)
        h = SEGMENT_HEADER.size
        if first != expected:
            raise CorruptLogError(
                path, 0, f"segment starts at index {first}, expected {expected} (missing entries)"
            )
        if size < h or not any(data[:h]):
            if isLast and not any(data):
                raise _Torn(None, "segment header incomplete or zero")
            if isLast and size < h:
                raise _Torn(None, "segment header incomplete")
            raise CorruptLogError(path, 0, "segment header missing or zero")
        magic, version, hFirst, hCrc = SEGMENT_HEADER.unpack_from(data)
        if magic != MAGIC:
            raise CorruptLogError(path, 0, f"bad segment magic {magic!r}")
        if zlib.crc32(data[: h - 4]) != hCrc:
            raise CorruptLogError(path, 0, "segment header checksum mismatch")
        if version != FORMAT_VERSION:
            raise CorruptLogError(
                path, 0, f"unknown segment format version {version} (supported: {FORMAT_VERSION})"
            )
        if hFirst != first:
            raise CorruptLogError(
                path, 0, f"header says first index {hFirst}, file name says {first}"
            )
        segment = Segment(first, path, h)
        offset = h
        rh = RECORD_HEADER.size
        index = first
        while offset < size:

            def torn(reason):
                if not isLast:
                    raise CorruptLogError(
                        path, offset, reason + " in a segment that is not the last"
                    )
                t = _Torn(offset, reason)
                t.segment = segment
                raise t

            if size - offset < rh:
                if not any(data[offset:]):
                    torn("zero-filled tail")
                torn("incomplete record header")
            length, crc, rtype, hCrc = RECORD_HEADER.unpack_from(data, offset)
            if zlib.crc32(data[offset : offset + 12]) != hCrc:
                if not any(data[offset:]):
                    torn("zero-filled tail")
                if not any(data[offset + rh :]):
                    torn("torn record header")
                raise CorruptLogError(path, offset, "record header checksum mismatch")
            end = offset + rh + length
            if end > size:
                torn(f"record of {length} bytes runs past the end of the file")
            payload = data[offset + rh : end]
            if zlib.crc32(payload, zlib.crc32(bytes([rtype]))) != crc:
                if end == size:
                    torn("checksum mismatch in the last record")
                if not any(data[end:]):
                    torn("checksum mismatch in a record followed by zeros")
                raise CorruptLogError(path, offset, "record checksum mismatch")
            kind = _KIND_OF_TYPE.get(rtype)
            if kind is None:
                raise CorruptLogError(path, offset, f"unknown record type {rtype}")
            if length < ENTRY_HEAD.size:
                raise CorruptLogError(path, offset, f"entry record too short ({length} bytes)")
            eIndex, eTerm = ENTRY_HEAD.unpack_from(payload)
            if eIndex != index:
                raise CorruptLogError(path, offset, f"entry index {eIndex}, expected {index}")
            if eIndex >= keepFrom:
                entries.append(Entry(eIndex, eTerm, payload[ENTRY_HEAD.size :], kind))
            elif eIndex == self._probeIndex:
                self._probeTerm = eTerm
            segment.offsets.append(offset)
            index += 1
            offset = end
            segment.size = end
        return segment

    # -- writing ----------------------------------------------------------

    def _refuseIfReadOnly(self):
        if self._readOnly:
            raise DataDirError(
                f"the write-ahead log in {self.directory} was read without repair;"
                " it cannot be written"
            )

    def _newSegment(self, firstIndex):
        if self._fd is not None:
            if self._dirty:
                # Make the old segment durable before the new one can
                # appear: only the last segment may ever have a torn tail.
                self.fsync(self._fd)
                self._dirty = False
            os.close(self._fd)
            self._fd = None
        path = os.path.join(self.directory, segmentName(firstIndex))
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        self._fd = fd
        # Known before its header is written, so a failed append removes it.
        segment = Segment(firstIndex, path, SEGMENT_HEADER.size)
        self.segments.append(segment)
        self._firsts.append(firstIndex)
        self._dirty = True
        self._dirDirty = True
        writeAll(fd, encodeSegmentHeader(firstIndex), 0, self.pwrite)
        return segment

    def append(self, entries):
        """
        Write C{entries} after the last one (not yet durable: see L{sync}).

        @raise DiskFull: out of space; nothing of C{entries} remains written,
            and the same call may be repeated.
        """
        self._refuseIfReadOnly()
        if not entries:
            return
        if entries[0].index != self.lastIndex + 1:
            raise DataDirError(
                f"append at index {entries[0].index}, but the log ends at {self.lastIndex}"
            )
        mark = self._mark()
        try:
            self._append(entries)
        except BaseException as e:
            if not isDiskFull(e):
                raise
            self._rollback(mark)
            raise DiskFull(
                e.errno,
                f"no space left to append entries {entries[0].index}-{entries[-1].index}"
                f" to the write-ahead log in {self.directory}: {e.strerror}",
            ) from e

    def _mark(self):
        """Where the log ends now, for L{_rollback}."""
        if not self.segments:
            return (0, 0, 0)
        last = self.segments[-1]
        return (len(self.segments), last.size, len(last.offsets))

    def _rollback(self, mark):
        """
        Undo a failed append back to C{mark}: remove the segments it created
        (newest first, then sync the directory, so a crash never leaves a
        later segment after a gap), then cut the last segment back.  Not
        synced further: what remains past the cut is, at worst, a torn tail
        of the last segment, which recovery removes.
        """
        count, size, records = mark
        created = self.segments[count:]
        if created or self._fd is None:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
            for segment in reversed(created):
                try:
                    os.unlink(segment.path)
                except FileNotFoundError:
                    pass
            del self.segments[count:]
            del self._firsts[count:]
            fsyncDir(self.directory, self.fsync)
            self._dirDirty = False
            if self.segments:
                self._fd = os.open(self.segments[-1].path, os.O_RDWR)
        if self.segments:
            last = self.segments[-1]
            last.size = size
            del last.offsets[records:]
            os.ftruncate(self._fd, size)
            self._dirty = True

    def _append(self, entries):
        segment = self.segments[-1] if self.segments else None
        buf = []
        start = segment.size if segment else 0
        for entry in entries:
            if segment is None or (segment.size >= self.segmentBytes and len(segment.offsets)):
                if buf:
                    writeAll(self._fd, b"".join(buf), start, self.pwrite)
                    buf = []
                segment = self._newSegment(entry.index)
                start = segment.size
            record = encodeRecord(entry)
            segment.offsets.append(segment.size)
            segment.size += len(record)
            buf.append(record)
        if buf:
            writeAll(self._fd, b"".join(buf), start, self.pwrite)
        self._dirty = True

    def sync(self):
        """
        Make every write so far durable.
        """
        if self._dirty:
            observe = self.onFsync
            if observe is None:
                self.fsync(self._fd)
            else:
                started = time.monotonic()
                self.fsync(self._fd)
                observe(time.monotonic() - started)
            self._dirty = False
        if self._dirDirty:
            fsyncDir(self.directory, self.fsync)
            self._dirDirty = False

    def truncateSuffix(self, fromIndex):
        """
        Durably (fsyncs done before returning) remove the entries from
        C{fromIndex} on.  Later segments are deleted first, last to first,
        syncing the directory after each, so that a crash never leaves a gap
        in the indexes; then the segment holding C{fromIndex} is cut.
        """
        self._refuseIfReadOnly()
        fromIndex = max(fromIndex, 1)
        if fromIndex > self.lastIndex:
            return
        if not self.segments:
            self.base = fromIndex - 1
            return
        if fromIndex <= self.segments[0].firstIndex:
            # Everything goes (only possible once a snapshot compacted the
            # start of the log).
            self._removeAll()
            self.base = fromIndex - 1
            return
        k = bisect.bisect_right(self._firsts, fromIndex) - 1
        if k + 1 < len(self.segments):
            os.close(self._fd)
            self._fd = None
            # Last first, each removal made durable before the next, so a
            # crash leaves a contiguous prefix of the old log.
            while len(self.segments) > k + 1:
                os.unlink(self.segments.pop().path)
                self._firsts.pop()
                fsyncDir(self.directory, self.fsync)
            self._dirDirty = False
            self._fd = os.open(self.segments[k].path, os.O_RDWR)
            self._dirty = False
        segment = self.segments[k]
        cut = fromIndex - segment.firstIndex
        segment.size = segment.offsets[cut]
        del segment.offsets[cut:]
        os.ftruncate(self._fd, segment.size)
        self.fsync(self._fd)
        self._dirty = False
        if self._dirDirty:
            fsyncDir(self.directory, self.fsync)
            self._dirDirty = False

    def _removeAll(self):
        """
        Durably delete every segment, newest first, syncing the directory
        after each, so that a crash leaves a prefix of the log.  (Read
        without repair: only forget them.)
        """
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        while self.segments:
            path = self.segments.pop().path
            self._firsts.pop()
            if not self._readOnly:
                os.unlink(path)
                fsyncDir(self.directory, self.fsync)
        self._dirty = False
        self._dirDirty = False

    def compact(self, lastIndex):
        """
        Delete, oldest first, the sealed segments holding only entries
        C{<= lastIndex} (never the last one), then sync the directory.  A
        crash in between leaves segments that recovery recognises as covered.

        @return: how many segments were deleted.
        """
        self._refuseIfReadOnly()
        count = 0
        while len(self.segments) > 1 and self.segments[1].firstIndex <= lastIndex + 1:
            os.unlink(self.segments[0].path)
            del self.segments[0]
            del self._firsts[0]
            count += 1
        if count:
            self.base = self.segments[0].firstIndex - 1
            fsyncDir(self.directory, self.fsync)
            self._dirDirty = False
        return count

    def discard(self, lastIndex):
        """
        Durably delete the whole log (newest segment first) and start an
        empty segment at C{lastIndex + 1}, the next entry's index.  If that
        segment cannot be created for lack of space, the log stays empty:
        the first append creates it.
        """
        self._refuseIfReadOnly()
        self._removeAll()
        self.base = lastIndex
        try:
            self._newSegment(lastIndex + 1)
        except BaseException as e:
            if not isDiskFull(e):
                raise
            self._rollback((0, 0, 0))
            return
        self.sync()

    def close(self):
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
