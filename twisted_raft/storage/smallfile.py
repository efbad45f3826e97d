"""
Small checksummed files replaced atomically (the C{identity} and C{state}
files), and the directory fsync that makes creations, renames and deletions
durable.

Layout of a small file (big-endian)::

    magic    8 bytes   names the kind of file (b"RKVIDENT", b"RKVSTATE")
    version  u32       format version of the payload
    length   u32       payload length in bytes
    payload  length bytes
    crc      u32       zlib.crc32 of every byte before it

Every function here blocks: call them on the storage's writer thread only.
"""

import os
import struct
import zlib

from twisted_raft.storage.errors import DataDirError, DiskFull, isDiskFull

_HEAD = struct.Struct(">8sII")
_CRC = struct.Struct(">I")
_LENGTH_OFFSET = 12


def writeAll(fd, data, offset, pwrite=os.pwrite):
    """
    Write all of C{data} at C{offset} of C{fd}, looping over short writes.

    @param pwrite: L{os.pwrite} or a stand-in (tests inject C{ENOSPC}).
    """
    view = memoryview(data)
    while view:
        written = pwrite(fd, view, offset)
        view = view[written:]
        offset += written


def fsyncDir(path, fsync):
    """
    fsync the directory C{path}, making entries created, renamed or removed
    in it durable.
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        fsync(fd)
    finally:
        os.close(fd)


def encode(magic, version, payload):
    body = _HEAD.pack(magic, version, len(payload)) + payload
    return body + _CRC.pack(zlib.crc32(body))


def decode(path, magic, data):
    """
    Check and unpack the bytes C{data} read from C{path}.

    @return: C{(version, payload)}
    @raise DataDirError: naming C{path} and the byte offset where the
        damage was found, if C{data} is not an intact file of kind C{magic}.
    """
    if len(data) < _HEAD.size + _CRC.size:
        raise DataDirError(
            f"{path} is damaged at byte offset {len(data)}: only {len(data)} bytes long"
        )
    gotMagic, version, length = _HEAD.unpack_from(data)
    if gotMagic != magic:
        raise DataDirError(
            f"{path} is damaged or not a raftkv file at byte offset 0: bad magic {gotMagic!r}"
        )
    if len(data) != _HEAD.size + length + _CRC.size:
        raise DataDirError(
            f"{path} is damaged at byte offset {_LENGTH_OFFSET}: {len(data)} bytes long,"
            f" its length field says {_HEAD.size + length + _CRC.size}"
        )
    (crc,) = _CRC.unpack_from(data, len(data) - _CRC.size)
    if zlib.crc32(data[: -_CRC.size]) != crc:
        raise DataDirError(
            f"{path} is damaged at byte offset {len(data) - _CRC.size}: checksum mismatch"
        )
    return version, data[_HEAD.size : _HEAD.size + length]


def read(path, magic):
    """
    Read the small file C{path}.

    @return: C{(version, payload)}, or C{None} if C{path} does not exist.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return None
    return decode(path, magic, data)


def discardPartial(path, error, doing):
    """
    Remove the partly written C{path} after C{error}; if C{error} is a full
    disk, raise L{DiskFull} (chained) so that the caller can retry later,
    else return for the caller to re-raise C{error}.

    @param doing: what was being done, for the message (say, "write snapshot ...").
    """
    try:
        os.unlink(path)
    except OSError:
        pass
    if isDiskFull(error):
        raise DiskFull(error.errno, f"no space left to {doing}: {error.strerror}") from error


def replace(path, magic, version, payload, fsync, pwrite=os.pwrite):
    """
    Atomically and durably replace C{path}: write C{path + ".tmp"}, fsync it,
    rename it over C{path}, fsync the directory.

    If anything fails before the rename, the tmp file is removed and C{path}
    is untouched.  Running out of space (C{ENOSPC}/C{EDQUOT} from anything
    but an fsync) raises L{DiskFull}: the call may simply be repeated later.
    """
    tmp = path + ".tmp"
    try:
        # 0600: the identity file holds the cluster token
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            writeAll(fd, encode(magic, version, payload), 0, pwrite)
            fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException as e:
        discardPartial(tmp, e, f"write {path}")
        raise
    fsyncDir(os.path.dirname(path) or ".", fsync)
