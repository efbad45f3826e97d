"""
The snapshot file (Raft section 7): C{<dir>/snapshot}, its format, and the
blocking code that writes, reads, receives and installs it.

Layout (big-endian), written and read as a stream::

    header (format version 2):
        magic        8 bytes  b"RKVSNAP\\n"
        version      u32      2
        lastIndex    u64      last log index the snapshot covers
        lastTerm     u64      its term
        configIndex  u64      the log index of the configuration in force
                              at lastIndex (0: the bootstrap configuration)
        configLength u32      (at most MAX_CONFIG_BYTES)
        configuration         configLength bytes: every member's id, address
                              and voter flag, as encoded by
                              L{twisted_raft.raft.membership.encodeMembers}
                              (the bytes a configuration entry holds)
        headerCrc    u32      zlib.crc32 of the header bytes before it
    payload:         the state machine's bytes, as written by its C{write}
    trailer, 12 bytes:
        payloadLength u64
        crc           u32     zlib.crc32 of every byte before it (header,
                              payload and payloadLength)

Format version 1, written before membership change, is still read: its
header has C{memberCount u32} (at most 65535) and that many u64 node ids
where version 2 has C{configIndex}, C{configLength} and the configuration;
its members read back as voters without addresses, as of index 0.  Only
version 2 is written.

The header has its own checksum so that the metadata can be trusted from a
small read (L{readHeader}, used by L{SnapshotFiles.read}); the trailer's
covers the whole file and is computed while the file is written, checked
while it is read (L{SnapshotReader}: one streaming pass) or while it is
received (L{_Transfer}, chunk by chunk: installing needs no second pass).
Any failed check -- truncated file, bad magic, unknown version, a bad
checksum, a payload length that disagrees with the file size -- raises
L{CorruptSnapshotError} naming the file and the byte offset where it was
detected (0 for the header -- 8 for an unknown version, the field's for a
configuration that does not decode or postdates lastIndex behind a valid
checksum --, the trailer's offset for the payload length, the trailer
checksum's offset for a whole-file checksum mismatch).  Every length in a
header is checked against its bound before anything is read by it, so a
damaged one costs an error, never a huge allocation.

Files in the data dir::

    snapshot       the current snapshot; only ever replaced by a rename
    snapshot.tmp   a snapshot being written locally (L{SnapshotFiles.save})
    snapshot.recv  a snapshot being received from the leader

Leftover C{.tmp} and C{.recv} files are removed at start-up (an interrupted
write or transfer).  The stored snapshot never goes backwards: a rename
happens only under a lock and only if no newer snapshot (higher
C{lastIndex}) is in place.

Every method of L{SnapshotFiles} blocks: C{save}, C{read}, C{receive},
C{loadPayload} run on the storage's snapshot thread, C{install} on its WAL
writer thread, C{claim} on the reactor thread (no I/O but a close).

Why one module of over 600 lines: it is one file format and the only code
that touches those three files; the checks of the reader, the writer and
the receiver share its header, trailer and checksum code, and the
lock that keeps the stored snapshot from going backwards.
"""

import io
import os
import struct
import threading
import zlib

from twisted_raft.raft.membership import Configuration, decodeMembers, encodeMembers
from twisted_raft.raft.messages import SnapshotChanged, SnapshotMeta
from twisted_raft.storage.errors import CorruptSnapshotError
from twisted_raft.storage.smallfile import discardPartial, fsyncDir, writeAll

MAGIC = b"RKVSNAP\n"
FORMAT_VERSION = 2
V1 = 1

MAX_CONFIG_BYTES = 1 << 18
"""The longest configuration a header may hold: more than the largest
L{encodeMembers} can write (64 members whose 255-character addresses are
all escaped non-ASCII: under 200,000 bytes)."""
MAX_V1_MEMBERS = 0xFFFF

HEAD_START = struct.Struct(">8sI")  # magic, version: says which layout follows
HEAD_FIXED = struct.Struct(">8sIQQQI")  # ..., lastIndex, lastTerm, configIndex, length
HEAD_FIXED_V1 = struct.Struct(">8sIQQI")  # ..., lastIndex, lastTerm, memberCount
MEMBER_V1 = struct.Struct(">Q")
CRC = struct.Struct(">I")
TRAILER = struct.Struct(">QI")  # payload length, crc of everything before

CHUNK = 1 << 20

FILE_NAME = "snapshot"

_CONFIG_INDEX_OFFSET = HEAD_START.size + 16  # after lastIndex and lastTerm


def _layout(version):
    """
    C{(fixed part, bytes per unit of its last field, most units)} of a
    header of format C{version}: version 1's, or else version 2's (also
    the guess for an unknown version, whose header checksum then decides
    between damage and a newer raftkv).
    """
    if version == V1:
        return HEAD_FIXED_V1, MEMBER_V1.size, MAX_V1_MEMBERS
    return HEAD_FIXED, 1, MAX_CONFIG_BYTES


def encodeHeader(meta):
    configuration = meta.configuration
    data = encodeMembers(configuration)
    body = HEAD_FIXED.pack(
        MAGIC, FORMAT_VERSION, meta.lastIndex, meta.lastTerm, configuration.index, len(data)
    ) + data
    return body + CRC.pack(zlib.crc32(body))


def encode(meta, payload):
    """The whole file for C{meta} and C{payload} (for tests and tools)."""
    body = encodeHeader(meta) + payload + struct.pack(">Q", len(payload))
    return body + CRC.pack(zlib.crc32(body))


def checkMeta(meta):
    """
    @raise ValueError: if C{meta} is not a storable L{SnapshotMeta}.
    """
    if not isinstance(meta, SnapshotMeta):
        raise ValueError(f"not a SnapshotMeta: {meta!r}")
    configuration = meta.configuration
    ok = (
        isinstance(meta.lastIndex, int)
        and isinstance(meta.lastTerm, int)
        and 0 < meta.lastIndex < 1 << 64
        and 0 <= meta.lastTerm < 1 << 64
        and isinstance(configuration.index, int)
        and 0 <= configuration.index <= meta.lastIndex
    )
    if ok:
        # Storable means: read back as the very same configuration.
        try:
            data = encodeMembers(configuration)
            ok = (
                len(data) <= MAX_CONFIG_BYTES
                and decodeMembers(data, configuration.index) == configuration
            )
        except (TypeError, ValueError):
            ok = False
    if not ok:
        raise ValueError(f"not a valid snapshot meta: {meta!r}")


def _wantedHeaderBytes(head):
    """
    How many leading bytes the header needs, judging from C{head}: read
    that many and ask again until the answer is no more than C{len(head)}
    (each answer is bounded, however damaged C{head} is).
    """
    if len(head) < HEAD_START.size:
        return HEAD_START.size
    fixed, unit, most = _layout(HEAD_START.unpack_from(head)[1])
    if len(head) < fixed.size:
        return fixed.size
    (count,) = struct.unpack_from(">I", head, fixed.size - 4)
    return fixed.size + unit * min(count, most) + CRC.size


def decodeHeader(path, head, fileSize):
    """
    Check the header at the start of C{head} (the file's first bytes, at
    least L{_wantedHeaderBytes} of them unless the file is shorter) of a
    file of C{fileSize} bytes.

    @return: C{(meta, headerLength)}
    @raise CorruptSnapshotError: if the header is damaged or the file too
        short to hold it and a trailer.
    """
    if len(head) < HEAD_START.size:
        raise CorruptSnapshotError(
            path, len(head), f"truncated: {fileSize} bytes, shorter than a snapshot header"
        )
    magic, version = HEAD_START.unpack_from(head)
    if magic != MAGIC:
        raise CorruptSnapshotError(path, 0, f"bad magic {magic!r}: not a raftkv snapshot")
    fixed, unit, most = _layout(version)
    if len(head) < fixed.size:
        raise CorruptSnapshotError(
            path, len(head), f"truncated: {fileSize} bytes, shorter than a snapshot header"
        )
    (count,) = struct.unpack_from(">I", head, fixed.size - 4)
    if count > most:
        what = "member count" if version == V1 else "configuration length"
        raise CorruptSnapshotError(path, 0, f"header damaged: implausible {what} {count}")
    n = fixed.size + unit * count + CRC.size
    if len(head) < n:
        raise CorruptSnapshotError(
            path, len(head), f"truncated inside the {n}-byte header (file of {fileSize} bytes)"
        )
    (crc,) = CRC.unpack_from(head, n - CRC.size)
    if zlib.crc32(head[: n - CRC.size]) != crc:
        raise CorruptSnapshotError(path, 0, f"header checksum mismatch (header bytes 0-{n - 1})")
    if version not in (V1, FORMAT_VERSION):
        raise CorruptSnapshotError(
            path,
            8,
            f"unknown snapshot format version {version}"
            f" (supported: {V1} and {FORMAT_VERSION})",
        )
    if fileSize < n + TRAILER.size:
        raise CorruptSnapshotError(
            path, fileSize, f"truncated: {fileSize} bytes, no room for the trailer"
        )
    if version == V1:
        _, _, lastIndex, lastTerm, _ = fixed.unpack_from(head)
        members = (
            MEMBER_V1.unpack_from(head, fixed.size + MEMBER_V1.size * i)[0] for i in range(count)
        )
        return SnapshotMeta(lastIndex, lastTerm, Configuration.ofVoters(members)), n
    _, _, lastIndex, lastTerm, configIndex, _ = fixed.unpack_from(head)
    try:
        configuration = decodeMembers(head[fixed.size : fixed.size + count], configIndex)
    except ValueError as e:
        raise CorruptSnapshotError(
            path, fixed.size, f"bad configuration in the header: {e}"
        ) from None
    if configIndex > lastIndex:
        raise CorruptSnapshotError(
            path,
            _CONFIG_INDEX_OFFSET,
            f"the configuration's index {configIndex} is after the snapshot's last"
            f" index {lastIndex}",
        )
    return SnapshotMeta(lastIndex, lastTerm, configuration), n


def _checkTrailer(path, trailer, crcBefore, fileSize, headerLength):
    """
    Check the 12-byte C{trailer} of a file of C{fileSize} bytes, given the
    crc32 C{crcBefore} of every byte before the trailer.
    """
    if len(trailer) != TRAILER.size:
        raise CorruptSnapshotError(path, fileSize, "truncated: trailer incomplete")
    length, crc = TRAILER.unpack(trailer)
    payloadSize = fileSize - headerLength - TRAILER.size
    trailerAt = fileSize - TRAILER.size
    if zlib.crc32(trailer[:8], crcBefore) != crc:
        raise CorruptSnapshotError(
            path,
            trailerAt + 8,
            f"checksum mismatch over bytes 0-{trailerAt + 7}"
            " (damaged, or truncated/incomplete)",
        )
    if length != payloadSize:
        raise CorruptSnapshotError(
            path,
            trailerAt,
            f"trailer says the payload has {length} bytes, the file holds {payloadSize}",
        )


def readHeader(f, path):
    """
    Read and check the header of the open snapshot file C{f} (positioned at
    0; left after the header).

    @return: C{(meta, headerLength, fileSize, headerBytes)}
    """
    size = os.fstat(f.fileno()).st_size
    head = b""
    while True:
        wanted = _wantedHeaderBytes(head)
        more = f.read(wanted - len(head)) if wanted > len(head) else b""
        if not more:
            break
        head += more
    meta, n = decodeHeader(path, head, size)
    return meta, n, size, head[:n]


class _PayloadStream(io.RawIOBase):
    """
    The payload of a snapshot being read: at most its bytes, each added to
    the running checksum as it is read.
    """

    def __init__(self, f, path, start, length, crc):
        self._f = f
        self._path = path
        self.position = start
        self.remaining = length
        self.crc = crc

    def readable(self):
        return True

    def readinto(self, b):
        n = min(len(b), self.remaining)
        if n <= 0:
            return 0
        data = self._f.read(n)
        if not data:
            raise CorruptSnapshotError(self._path, self.position, "truncated while reading")
        k = len(data)
        b[:k] = data
        self.crc = zlib.crc32(data, self.crc)
        self.remaining -= k
        self.position += k
        return k

    def drain(self):
        buf = bytearray(CHUNK)
        while self.readinto(buf):
            pass


class SnapshotReader:
    """
    An open, header-checked snapshot file.  C{payload} is a buffered binary
    file object over the payload only; L{finish} reads whatever the reader
    left of it and checks the trailer, i.e. the whole file's checksum, so
    that one pass both parses and verifies.

    @raise FileNotFoundError: if there is no file at C{path}.
    @raise CorruptSnapshotError: if its header is damaged.
    """

    def __init__(self, path):
        self.path = path
        self._f = open(path, "rb")
        try:
            self.meta, self.headerLength, self.size, head = readHeader(self._f, path)
        except BaseException:
            self._f.close()
            raise
        self.payloadSize = self.size - self.headerLength - TRAILER.size
        self._raw = _PayloadStream(
            self._f, path, self.headerLength, self.payloadSize, zlib.crc32(head)
        )
        self.payload = io.BufferedReader(self._raw, CHUNK)

    def finish(self):
        """
        @raise CorruptSnapshotError: if the file is damaged anywhere.
        """
        self._raw.drain()
        trailer = self._f.read(TRAILER.size)
        _checkTrailer(self.path, trailer, self._raw.crc, self.size, self.headerLength)

    def close(self):
        self._f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def verifyFile(path):
    """
    Check a whole snapshot file in one streaming pass.

    @return: its L{SnapshotMeta}
    @raise CorruptSnapshotError: if it is damaged.
    """
    with SnapshotReader(path) as reader:
        reader.finish()
        return reader.meta


class _CrcWriter(io.BufferedIOBase):
    """
    The binary file object a state machine's C{write(fileobj)} writes its
    payload into: buffered, written with C{pwrite} at increasing offsets,
    checksummed as it goes.  C{tell()} is the payload's length so far.
    """

    def __init__(self, fd, pwrite, header):
        self._fd = fd
        self._pwrite = pwrite
        self._buf = bytearray()
        self._offset = 0
        self.crc = 0
        self.payloadLength = 0
        self._put(header)
        self.payloadLength = 0

    def writable(self):
        return True

    def _put(self, data):
        self.crc = zlib.crc32(data, self.crc)
        self._buf += data
        self.payloadLength += len(data)
        if len(self._buf) >= CHUNK:
            self._flushBuffer()

    def _flushBuffer(self):
        if self._buf:
            writeAll(self._fd, self._buf, self._offset, self._pwrite)
            self._offset += len(self._buf)
            self._buf = bytearray()

    def write(self, data):
        if self.closed:
            raise ValueError("write to a finished snapshot")
        data = bytes(data) if not isinstance(data, bytes) else data
        self._put(data)
        return len(data)

    def tell(self):
        return self.payloadLength

    def flush(self):
        pass  # written at finish(); nothing is durable before the fsync anyway

    def finish(self):
        """Write the trailer and everything still buffered."""
        length = struct.pack(">Q", self.payloadLength)
        self.crc = zlib.crc32(length, self.crc)
        self._buf += length + CRC.pack(self.crc)
        self._flushBuffer()
        self.close()


class _Transfer:
    """
    A snapshot being received into C{snapshot.recv}: C{crc} covers every
    byte received except the last 12 (C{tail}, the trailer once complete);
    C{head} holds the first bytes, up to the end of the header.
    """

    def __init__(self, meta, fd):
        self.meta = meta
        self.fd = fd
        self.received = 0
        self.crc = 0
        self.tail = b""
        self.head = b""
        self.installing = False

    def add(self, data):
        n = len(data)
        if n >= TRAILER.size:
            self.crc = zlib.crc32(data[: n - TRAILER.size], zlib.crc32(self.tail, self.crc))
            self.tail = bytes(data[n - TRAILER.size :])
        else:
            combined = self.tail + bytes(data)
            cut = max(0, len(combined) - TRAILER.size)
            self.crc = zlib.crc32(combined[:cut], self.crc)
            self.tail = combined[cut:]
        taken = 0
        while taken < n:
            wanted = _wantedHeaderBytes(self.head)
            if len(self.head) >= wanted:
                break
            more = bytes(data[taken : taken + wanted - len(self.head)])
            self.head += more
            taken += len(more)
        self.received += n

    def verify(self, path):
        """
        @raise CorruptSnapshotError: unless the bytes received so far are a
            complete, intact snapshot file for C{self.meta}.
        """
        found, n = decodeHeader(path, self.head, self.received)
        if found != self.meta:
            raise CorruptSnapshotError(
                path, 0, f"header describes {found}, but {self.meta} was being received"
            )
        _checkTrailer(path, self.tail, self.crc, self.received, n)


class SnapshotFiles:
    """
    The snapshot files of the data dir C{directory}.

    @ivar current: the L{SnapshotMeta} of the file C{snapshot}, or C{None};
        known after L{recover}, changed (under a lock) by every rename.
    """

    def __init__(self, directory, fsync, pwrite=os.pwrite):
        self.directory = directory
        self.path = os.path.join(directory, FILE_NAME)
        self.tmpPath = self.path + ".tmp"
        self.recvPath = self.path + ".recv"
        self.fsync = fsync
        self.pwrite = pwrite
        self.current = None
        self._lock = threading.Lock()
        self._transfer = None
        self._garbage = []  # fds of abandoned transfers, closed on the snapshot thread

    def exists(self):
        return os.path.exists(self.path)

    # -- start-up (writer thread, before anything else) -------------------

    def recover(self):
        """
        Remove leftovers of interrupted writes and transfers, and check the
        current snapshot in one streaming pass.

        @return: its L{SnapshotMeta}, or C{None}.
        @raise CorruptSnapshotError: if it is damaged.
        """
        removed = False
        for leftover in (self.tmpPath, self.recvPath):
            try:
                os.unlink(leftover)
                removed = True
            except FileNotFoundError:
                pass
        if removed:
            fsyncDir(self.directory, self.fsync)
        try:
            meta = verifyFile(self.path)
        except FileNotFoundError:
            meta = None
        self.current = meta
        return meta

    # -- local snapshots (snapshot thread) --------------------------------

    def save(self, meta, write):
        """
        Write C{snapshot.tmp} (header, C{write(fileobj)}'s payload, trailer),
        fsync it, rename it to C{snapshot}, fsync the directory.

        @raise DiskFull: out of space (the tmp file is removed; nothing else
            changed).
        @raise SnapshotChanged: a newer snapshot is in place already (nothing
            changed).
        @raise FsyncError: an fsync failed.
        """
        self._collect()
        try:
            fd = os.open(self.tmpPath, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                out = _CrcWriter(fd, self.pwrite, encodeHeader(meta))
                write(out)
                out.finish()
                self.fsync(fd)
            finally:
                os.close(fd)
            with self._lock:
                current = self.current
                if current is not None and current != meta and current.lastIndex >= meta.lastIndex:
                    raise SnapshotChanged(
                        f"snapshot {meta} not stored: the newer {current} is in place"
                    )
                os.replace(self.tmpPath, self.path)
                self.current = meta
        except BaseException as e:
            discardPartial(self.tmpPath, e, f"write snapshot {self.tmpPath}")
            raise
        fsyncDir(self.directory, self.fsync)

    def read(self, meta, offset, size):
        """
        @return: C{(data, totalSize)}: up to C{size} bytes at C{offset} of the
            current snapshot file.
        @raise SnapshotChanged: if that is not C{meta}'s.
        """
        try:
            f = open(self.path, "rb")
        except FileNotFoundError:
            raise SnapshotChanged(f"no snapshot stored (asked for {meta})") from None
        with f:
            found, _, total, _ = readHeader(f, self.path)
            if found != meta:
                raise SnapshotChanged(f"the current snapshot is {found}, not {meta}")
            if offset < 0 or size < 0:
                raise ValueError(f"bad offset/size {offset}/{size}")
            f.seek(offset)
            return f.read(size), total

    def loadPayload(self, parse):
        """
        @return: C{(meta, parse(payload))} with the whole file's checksum
            verified, or C{None} if there is no snapshot.
        @raise CorruptSnapshotError: if the file is damaged (even if C{parse}
            failed first: the damage is the cause).
        """
        try:
            reader = SnapshotReader(self.path)
        except FileNotFoundError:
            return None
        with reader:
            try:
                parsed = parse(reader.payload)
            except Exception:
                reader.finish()  # raises CorruptSnapshotError, chained, if damaged
                raise
            reader.finish()
            return reader.meta, parsed

    # -- received snapshots -----------------------------------------------

    def receive(self, meta, offset, data):
        """
        Write one chunk into C{snapshot.recv} (snapshot thread).

        @return: the number of bytes received so far.
        @raise SnapshotChanged: on an offset past the bytes received so far
            for C{meta} (other than 0, which starts again).  A chunk that
            starts before them (a retransmission) writes only what it adds.
        @raise DiskFull: out of space; the transfer is dropped.
        """
        self._collect()
        with self._lock:
            t = self._transfer
            if offset == 0:
                if t is not None and t.installing:
                    raise SnapshotChanged(
                        f"the received snapshot {t.meta} is being installed; retry later"
                    )
                self._transfer = None
                if t is not None:
                    self._garbage.append(t.fd)
                t = None
            elif t is None or t.meta != meta or t.installing or offset > t.received:
                expected = 0 if t is None or t.meta != meta or t.installing else t.received
                raise SnapshotChanged(
                    f"chunk of {meta} at offset {offset}, but offset {expected} was expected"
                )
            elif offset < t.received:
                # A retransmission (its answer was lost): keep only what it
                # adds.  Only this thread writes the transfer, so its end
                # cannot move until we return.
                data = data[t.received - offset :]
                offset = t.received
                if not data:
                    return t.received
        self._collect()
        if t is None:
            fd = os.open(self.recvPath, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
            t = _Transfer(meta, fd)
            with self._lock:
                self._transfer = t
        try:
            writeAll(t.fd, data, offset, self.pwrite)
        except BaseException as e:
            with self._lock:
                if self._transfer is t:
                    self._transfer = None
            os.close(t.fd)
            discardPartial(self.recvPath, e, f"receive snapshot {meta}")
            raise
        with self._lock:
            if self._transfer is not t:
                raise SnapshotChanged(f"the transfer of {meta} was abandoned")
            t.add(data)
            return t.received

    def claim(self, meta):
        """
        Check that C{snapshot.recv} holds the complete, intact snapshot for
        C{meta}, from the checksum computed while it was received (no I/O),
        and reserve it for L{install}.  Reactor thread.

        @raise SnapshotChanged: no transfer of C{meta} is known, or the
            current snapshot is newer.
        @raise CorruptSnapshotError: what was received is incomplete or
            damaged; the transfer is dropped (restart at offset 0).
        """
        with self._lock:
            t = self._transfer
            if t is None or t.meta != meta or t.installing:
                raise SnapshotChanged(f"no transfer of snapshot {meta} to install")
            current = self.current
            if current is not None and current.lastIndex > meta.lastIndex:
                self._transfer = None
                self._garbage.append(t.fd)
                raise SnapshotChanged(f"snapshot {meta} is older than the current {current}")
            try:
                t.verify(self.recvPath)
            except CorruptSnapshotError:
                self._transfer = None
                self._garbage.append(t.fd)
                raise
            t.installing = True
            return t

    def install(self, transfer):
        """
        Make the claimed C{transfer} the current snapshot: fsync it, rename
        it to C{snapshot}, fsync the directory (writer thread).

        @return: C{True} if it is now current; C{False} if a newer snapshot
            was saved meanwhile and the received one was dropped instead.
        """
        try:
            self.fsync(transfer.fd)
        finally:
            os.close(transfer.fd)
            transfer.fd = None
        with self._lock:
            # Only now may a new transfer reuse the name snapshot.recv.
            if self._transfer is transfer:
                self._transfer = None
            current = self.current
            newer = current is not None and current.lastIndex > transfer.meta.lastIndex
            if newer:
                os.unlink(self.recvPath)
            else:
                os.replace(self.recvPath, self.path)
                self.current = transfer.meta
        fsyncDir(self.directory, self.fsync)
        return not newer

    def _collect(self):
        with self._lock:
            garbage, self._garbage = self._garbage, []
        for fd in garbage:
            os.close(fd)

    def close(self):
        """Release the open files of transfers (once no thread uses them)."""
        with self._lock:
            t, self._transfer = self._transfer, None
            if t is not None and t.fd is not None:
                self._garbage.append(t.fd)
        self._collect()
