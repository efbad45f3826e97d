"""
The key-value state machine's snapshot payload: its format, the frozen view
that writes it (L{SnapshotView}) and its parser (L{parsePayload}).

The payload is what L{twisted_raft.kv.KVStore} hands the storage to write,
and gets back from it, inside the storage's own snapshot file
(L{twisted_raft.storage.snapshot}, which adds the header with the Raft meta
and checks the whole file's checksum).  Kept apart from the store: the format is a contract with every
data dir already written, the store's in-memory structures are not.
"""

import heapq
import struct
import zlib
from collections import OrderedDict
from operator import itemgetter

from sortedcontainers import SortedList

from twisted_raft import kvstored
from twisted_raft.kvrecords import TxnResult
from twisted_raft.kvtxn import decodeResult, encodeResult, resultBytes

# Version 2, all integers big-endian:
#
#   header    b"RKVSNAP\0" | version u16 (2) | reserved u16 (0) | applied index u64 |
#             metadata floor u64 (the index of the cluster's metadata epoch,
#             0 if none was applied yet)
#   data      b"D" | count u64, then count records in strictly increasing key
#             order (code points, which is the keys' UTF-8 byte order):
#                 key length u32 | value length u32 | create revision u64 |
#                 mod revision u64 | version u64 | key (UTF-8) | value
#             The metadata is as reads see it: a key last written below the
#             floor has create = mod = the floor and version 1, so two nodes
#             with the same log prefix write the same bytes.
#   sessions  b"S" | count u32, then count sessions in LRU order (oldest first):
#                 client id length u16 | highest u64 | last index u64 |
#                 result count u32 | client id (UTF-8), then result count
#                 results in the order applied: sequence u64 | index u64 |
#                 result u8 (0 None, 1 False, 2 True, 3 a transaction's,
#                 followed by length u32 | kvtxn.encodeResult bytes)
#   trailer   b"E" | CRC-32 u32 of every byte before it
#
# Version 1 (still read) differs in three places: the header has no
# metadata floor (there is none: version 1 predates the epoch), a data
# record is only key length u32 | value length u32 | key | value, in any
# order, and a result is only codes 0 to 2.  Its keys are given create
# revision = mod revision = the snapshot's applied index and version 1 (the
# history that made them is gone): node-local, provisional metadata until
# the metadata epoch, which normalises it (see KVStore).
#
# The payload is self-delimiting: nothing after the trailer is read as part of it.

SNAPSHOT_MAGIC = b"RKVSNAP\x00"
SNAPSHOT_VERSION = 2
READABLE_VERSIONS = (1, 2)
_SNAP_HEAD = struct.Struct(">8sHHQ")
_FLOOR = struct.Struct(">Q")
_SNAP_DATA = struct.Struct(">cQ")
_SNAP_SESSIONS = struct.Struct(">cI")
_SNAP_TRAILER = struct.Struct(">cI")
_REC_V1 = struct.Struct(">II")
_REC = struct.Struct(">IIQQQ")
_SESS = struct.Struct(">HQQI")
_RESULT = struct.Struct(">QQB")
_U32 = struct.Struct(">I")
_RESULT_CODES = {None: 0, False: 1, True: 2}
_RESULT_VALUES = (None, False, True)
_TXN_RESULT = 3
SNAPSHOT_CHUNK = 1 << 20
"""The writer hands the file object chunks of about this many bytes."""


_first = itemgetter(0)


class MalformedSnapshotPayload(ValueError):
    """
    The key-value state machine's snapshot payload (what L{parsePayload}
    reads for C{KVStore.parseSnapshot}) is truncated, garbled or of an
    unknown version.  Not the storage's
    L{twisted_raft.storage.errors.CorruptSnapshotError}, which is a damaged
    snapshot I{file} (path and byte offset): the payload is what that file
    carries once its own checksum has been verified.
    """


class ParsedSnapshot:
    """What L{parsePayload} returns, for C{KVStore.restoreSnapshot}."""

    __slots__ = (
        "appliedIndex", "data", "keys", "sessions", "sessionIndex", "cachedResults",
        "cachedResultBytes", "metadataFloor",
    )

    def __init__(self, appliedIndex, data, keys, sessions, sessionIndex, cachedResults,
                 cachedResultBytes=0, metadataFloor=0):
        self.appliedIndex = appliedIndex
        self.metadataFloor = metadataFloor
        self.data = data  # key -> the stored form (kvstored)
        self.keys = keys  # a SortedList of the keys
        self.sessions = sessions
        self.sessionIndex = sessionIndex
        self.cachedResults = cachedResults
        self.cachedResultBytes = cachedResultBytes


class _Reader:
    """Buffered reads from a file object, failing clearly on truncation."""

    def __init__(self, fileobj, crc=0):
        self.fileobj = fileobj
        self.buf = b""
        self.pos = 0
        self.crc = crc  # over the bytes consumed before self.buf[self.crcFrom:]
        self.crcFrom = 0

    def fill(self, n):
        """Make sure C{n} bytes are available at C{self.pos}; return C{self.buf}."""
        buf = self.buf
        if len(buf) - self.pos >= n:
            return buf
        self.crc = zlib.crc32(memoryview(buf)[self.crcFrom : self.pos], self.crc)
        parts = [buf[self.pos :]]
        have = len(parts[0])
        while have < n:
            more = self.fileobj.read(max(SNAPSHOT_CHUNK, n - have))
            if not more:
                raise MalformedSnapshotPayload(
                    f"snapshot payload truncated: needed {n} more bytes, got {have}"
                )
            parts.append(more)
            have += len(more)
        self.buf = buf = b"".join(parts)
        self.pos = self.crcFrom = 0
        return buf

    def consumedCrc(self):
        return zlib.crc32(memoryview(self.buf)[self.crcFrom : self.pos], self.crc)


class SnapshotView:
    """
    A frozen view of a L{twisted_raft.kv.KVStore} (its frozen data, sorted
    keys and session index), serialised by L{write} on any thread.
    """

    def __init__(self, data, keys, sessionIndex, appliedIndex, metadataFloor=0):
        self.data = data
        self.keys = keys
        self.sessionIndex = sessionIndex
        self.appliedIndex = appliedIndex
        self.metadataFloor = metadataFloor
        self.released = False

    def write(self, fileobj):
        """
        Write the view to C{fileobj} in chunks of about L{SNAPSHOT_CHUNK}
        bytes.  Must be done before the store's C{snapshotDone()}: after it
        the frozen dicts may change again.
        """
        crc = 0
        floor = self.metadataFloor
        buf = bytearray(
            _SNAP_HEAD.pack(SNAPSHOT_MAGIC, SNAPSHOT_VERSION, 0, self.appliedIndex)
        )
        buf += _FLOOR.pack(floor)
        data = self.data
        buf += _SNAP_DATA.pack(b"D", len(data))
        rec = _REC.pack
        headerAndMeta = kvstored.headerAndMeta
        limit = SNAPSHOT_CHUNK
        # In key order, so the parser builds the key index without sorting.
        for key in self.keys:
            record = data[key]
            h, create, mod, version = headerAndMeta(record, floor)
            vlen = len(record) - h
            k = key.encode("utf-8", "surrogatepass")
            buf += rec(len(k), vlen, create, mod, version)
            buf += k
            buf += record[h:] if vlen < kvstored.VIEW_FROM else memoryview(record)[h:]
            if len(buf) >= limit:
                if self.released:
                    raise RuntimeError("snapshot view released before write finished")
                chunk = bytes(buf)
                crc = zlib.crc32(chunk, crc)
                fileobj.write(chunk)
                buf.clear()
        # LRU order is lastIndex order.  Sorted in runs merged by heapq.merge
        # (Python code): one sort of 100,000 sessions would hold the GIL,
        # stalling the reactor, for tens of milliseconds.
        index = self.sessionIndex
        runs, run = [], []
        for item in index.items():
            run.append((item[1].lastIndex, item))
            if len(run) == 2048:
                run.sort(key=_first)
                runs.append(run)
                run = []
        run.sort(key=_first)
        runs.append(run)
        sessions = (item for _, item in heapq.merge(*runs, key=_first))
        buf += _SNAP_SESSIONS.pack(b"S", len(index))
        sess = _SESS.pack
        res = _RESULT.pack
        codes = _RESULT_CODES
        for clientId, session in sessions:
            c = clientId.encode("utf-8", "surrogatepass")
            results = session.results
            buf += sess(len(c), session.highest, session.lastIndex, len(results))
            buf += c
            for sequence, (result, index) in results.items():
                if type(result) is TxnResult:
                    blob = encodeResult(result)
                    buf += res(sequence, index, _TXN_RESULT)
                    buf += _U32.pack(len(blob))
                    buf += blob
                else:
                    buf += res(sequence, index, codes[result])
            if len(buf) >= limit:
                chunk = bytes(buf)
                crc = zlib.crc32(chunk, crc)
                fileobj.write(chunk)
                buf.clear()
        if self.released:
            raise RuntimeError("snapshot view released before write finished")
        crc = zlib.crc32(buf, crc)
        buf += _SNAP_TRAILER.pack(b"E", crc)
        fileobj.write(bytes(buf))


def parsePayload(fileobj, newSession):
    """
    Parse a payload written by L{SnapshotView.write}.

    @param newSession: makes an empty session record of the store's (with
        C{results}, C{highest}, C{lastIndex}); the codec only fills it.
    @return: a L{ParsedSnapshot}.
    @raise MalformedSnapshotPayload: if the payload is truncated, garbled or
        of another version.
    """
    try:
        return _parse(fileobj, newSession)
    except MalformedSnapshotPayload:
        raise
    except (struct.error, UnicodeDecodeError, ValueError, IndexError) as e:  # CommandError too
        raise MalformedSnapshotPayload(f"malformed snapshot payload: {e}") from e


def _parse(fileobj, newSession):
    r = _Reader(fileobj)
    buf = r.fill(_SNAP_HEAD.size)
    magic, version, _, appliedIndex = _SNAP_HEAD.unpack_from(buf, 0)
    if magic != SNAPSHOT_MAGIC:
        raise MalformedSnapshotPayload(f"not a KV snapshot payload (magic {magic!r})")
    if version not in READABLE_VERSIONS:
        raise MalformedSnapshotPayload(f"unsupported KV snapshot version {version}")
    r.pos = _SNAP_HEAD.size
    floor = 0
    if version >= 2:
        buf = r.fill(_FLOOR.size)
        (floor,) = _FLOOR.unpack_from(buf, r.pos)
        r.pos += _FLOOR.size
        if floor > appliedIndex:
            raise MalformedSnapshotPayload(
                f"metadata floor {floor} above the applied index {appliedIndex}"
            )
    buf = r.fill(_SNAP_DATA.size)
    tag, count = _SNAP_DATA.unpack_from(buf, r.pos)
    if tag != b"D":
        raise MalformedSnapshotPayload(f"expected the data section, found {tag!r}")
    r.pos += _SNAP_DATA.size
    if version == 1:
        data, keys = _parseDataV1(r, count, appliedIndex)
    else:
        data, keys = _parseData(r, count, floor)
    buf = r.fill(_SNAP_SESSIONS.size)
    tag, nsessions = _SNAP_SESSIONS.unpack_from(buf, r.pos)
    if tag != b"S":
        raise MalformedSnapshotPayload(f"expected the sessions section, found {tag!r}")
    r.pos += _SNAP_SESSIONS.size
    sessions = OrderedDict()
    index = {}
    cachedResults = cachedResultBytes = 0
    values = _RESULT_VALUES
    for _ in range(nsessions):
        buf = r.fill(_SESS.size)
        clen, highest, lastIndex, nresults = _SESS.unpack_from(buf, r.pos)
        r.pos += _SESS.size
        buf = r.fill(clen)
        clientId = buf[r.pos : r.pos + clen].decode("utf-8", "surrogatepass")
        r.pos += clen
        session = newSession()
        session.highest = highest
        session.lastIndex = lastIndex
        results = session.results
        for _ in range(nresults):
            buf = r.fill(_RESULT.size)
            sequence, at, code = _RESULT.unpack_from(buf, r.pos)
            r.pos += _RESULT.size
            if code == _TXN_RESULT and version >= 2:
                buf = r.fill(_U32.size)
                (n,) = _U32.unpack_from(buf, r.pos)
                r.pos += _U32.size
                buf = r.fill(n)
                result = decodeResult(buf[r.pos : r.pos + n])
                r.pos += n
                cachedResultBytes += resultBytes(result)
            else:
                result = values[code]
            results[sequence] = (result, at)
        if len(results) != nresults or clientId in index:
            raise MalformedSnapshotPayload("snapshot payload repeats a session or sequence")
        cachedResults += nresults
        sessions[clientId] = index[clientId] = session
    crc = r.consumedCrc()
    buf = r.fill(_SNAP_TRAILER.size)
    tag, stored = _SNAP_TRAILER.unpack_from(buf, r.pos)
    if tag != b"E":
        raise MalformedSnapshotPayload(f"expected the trailer, found {tag!r}")
    if stored != crc:
        raise MalformedSnapshotPayload(
            f"snapshot payload checksum mismatch (stored {stored:#010x}, computed {crc:#010x})"
        )
    return ParsedSnapshot(
        appliedIndex, data, keys, sessions, index, cachedResults, cachedResultBytes, floor
    )


def _parseData(r, count, floor):
    """Version 2 records: in strictly increasing key order, with metadata."""
    data = {}
    order = []
    unrec = _REC.unpack_from
    recsize = _REC.size
    pack, viewFrom = kvstored.pack, kvstored.VIEW_FROM
    buf, pos = r.buf, r.pos
    previous = None
    for _ in range(count):
        if pos + recsize > len(buf):
            r.pos = pos
            buf, pos = r.fill(recsize), r.pos
        klen, vlen, create, mod, version = unrec(buf, pos)
        end = pos + recsize + klen + vlen
        if end > len(buf):
            r.pos = pos
            buf, pos = r.fill(recsize + klen + vlen), r.pos
            end = pos + recsize + klen + vlen
        kstart = pos + recsize
        key = buf[kstart : kstart + klen].decode("utf-8", "surrogatepass")
        if previous is not None and key <= previous:
            raise MalformedSnapshotPayload("snapshot payload keys out of order or repeated")
        if create > mod or not version:
            raise MalformedSnapshotPayload(
                f"snapshot payload metadata of {key!r} is impossible"
                f" (create {create}, mod {mod}, version {version})"
            )
        vstart = kstart + klen
        value = buf[vstart:end] if end - vstart < viewFrom else memoryview(buf)[vstart:end]
        data[key] = pack(value, create, mod, version)
        order.append(key)
        previous = key
        pos = end
    r.pos = pos
    # Sorting input that is already sorted is one linear pass (Timsort).
    return data, SortedList(order)


def _parseDataV1(r, count, appliedIndex):
    """Version 1 records: any order, no metadata (see the format above)."""
    data = {}
    unrec = _REC_V1.unpack_from
    recsize = _REC_V1.size
    header, viewFrom = kvstored.header(appliedIndex, appliedIndex, 1), kvstored.VIEW_FROM
    buf, pos = r.buf, r.pos
    for _ in range(count):
        if pos + recsize > len(buf):
            r.pos = pos
            buf, pos = r.fill(recsize), r.pos
        klen, vlen = unrec(buf, pos)
        end = pos + recsize + klen + vlen
        if end > len(buf):
            r.pos = pos
            buf, pos = r.fill(recsize + klen + vlen), r.pos
            end = pos + recsize + klen + vlen
        kstart = pos + recsize
        key = buf[kstart : kstart + klen].decode("utf-8", "surrogatepass")
        vstart = kstart + klen
        value = buf[vstart:end] if end - vstart < viewFrom else memoryview(buf)[vstart:end]
        data[key] = header + value
        pos = end
    if len(data) != count:
        raise MalformedSnapshotPayload("snapshot payload repeats a key")
    r.pos = pos
    return data, SortedList(data)
