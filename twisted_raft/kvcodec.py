"""
The encoding of the key-value store's commands in log entries.

A command is C{op (1 byte) | key length (u32) | key (UTF-8) | rest}; for a
put the rest is the value, for a compare-and-set it is
C{has expected (1 byte) | expected length (u32) | expected | value}.  A
transaction (op C{TXN}) has its own layout, in L{twisted_raft.kvtxn}.

A command sent with a client session (exactly-once writes, Raft thesis
§6.3) is wrapped as
C{SESSION (1 byte) | client id length (u16) | client id (UTF-8) |
sequence (u64) | the command above}.  Unwrapped commands are encoded exactly
as before sessions existed, so old logs still apply.

A C{METADATA_EPOCH} entry is the op byte alone (L{encodeMetadataEpoch}).

L{twisted_raft.kv} re-exports every name here: what applies the commands
and what writes them import them from there.
"""

import struct

from twisted_raft.kvrecords import CommandError
from twisted_raft.kvtxn import TXN, decodeTxn

PUT = 1
DELETE = 2
CAS = 3
METADATA_EPOCH = 5  # 4 is kvtxn.TXN
SESSION = 0x10

MAX_CLIENT_ID_BYTES = 128
"""A client id is 1 to 128 bytes of UTF-8 (sessions are kept in memory)."""
MAX_SEQUENCE = 2**64 - 1
"""Sequences are 1 to 2**64 - 1 (a u64 in the log entry)."""

TXN_BYTE = bytes([TXN])
SESSION_BYTE = bytes([SESSION])
EPOCH_BYTE = bytes([METADATA_EPOCH])
"""An entry's first byte, by kind (any other: a put, delete or compare-and-set)."""

_HEAD = struct.Struct(">BI")
_HEAD_SIZE = _HEAD.size
_LEN = struct.Struct(">I")
_SESSION_HEAD = struct.Struct(">BH")
_SEQUENCE = struct.Struct(">Q")
_SESSION_HEAD_SIZE = _SESSION_HEAD.size
_SEQUENCE_SIZE = _SEQUENCE.size


def encodePut(key: str, value: bytes) -> bytes:
    k = key.encode("utf-8")
    return _HEAD.pack(PUT, len(k)) + k + value


def encodeDelete(key: str) -> bytes:
    k = key.encode("utf-8")
    return _HEAD.pack(DELETE, len(k)) + k


def encodeCompareAndSet(key: str, expected, value: bytes) -> bytes:
    """C{expected} is C{None} when the key must not exist."""
    k = key.encode("utf-8")
    if expected is None:
        mid = b"\x00" + _LEN.pack(0)
    else:
        mid = b"\x01" + _LEN.pack(len(expected)) + expected
    return _HEAD.pack(CAS, len(k)) + k + mid + value


def encodeMetadataEpoch() -> bytes:
    """
    The entry that sets the metadata floor (C{KVStore.metadataFloor}, in
    L{twisted_raft.kv}): the op byte alone.  A leader proposes it while its
    store needs one (C{KVStore.needsMetadataEpoch}, L{twisted_raft.kvepoch});
    another one later changes nothing.  Never wrapped in a session.
    """
    return EPOCH_BYTE


def checkSession(clientId, sequence):
    """
    @raise ValueError: unless C{clientId} is 1 to L{MAX_CLIENT_ID_BYTES}
        bytes of UTF-8 and C{sequence} is 1 to L{MAX_SEQUENCE}.
    """
    if not isinstance(clientId, str) or not clientId:
        raise ValueError("empty client_id")
    # a code point is at most 4 bytes of UTF-8: a short id (the client
    # library's are 32) needs no encoding to be counted, once per write
    if len(clientId) > MAX_CLIENT_ID_BYTES // 4:
        n = len(clientId.encode("utf-8", "surrogatepass"))
        if n > MAX_CLIENT_ID_BYTES:
            raise ValueError(
                f"client_id is {n} bytes of UTF-8, over {MAX_CLIENT_ID_BYTES}"
            )
    if not isinstance(sequence, int) or not 1 <= sequence <= MAX_SEQUENCE:
        raise ValueError(f"sequence {sequence!r} is not between 1 and 2**64 - 1")


def encodeSession(clientId: str, sequence: int, command: bytes) -> bytes:
    """Wrap an encoded put, delete, compare-and-set or transaction in a client session."""
    checkSession(clientId, sequence)
    return wrapSession(clientId, sequence, command)


def wrapSession(clientId: str, sequence: int, command: bytes) -> bytes:
    """
    L{encodeSession} for a caller that checked C{clientId} and C{sequence}
    with L{checkSession} already (the node, once per client write, whose
    arguments' check answers INVALID_ARGUMENT): not twice.
    """
    if command[:1] == SESSION_BYTE:
        raise ValueError("a session command cannot wrap another")
    c = clientId.encode()  # UTF-8
    return _SESSION_HEAD.pack(SESSION, len(c)) + c + _SEQUENCE.pack(sequence) + command


def decodeSession(data: bytes):
    """
    @return: C{(clientId, sequence, command)} of a session-wrapped command;
        C{command} is the inner command's bytes (see L{decode}).
    @raise CommandError: if C{data} is not a well-formed session command.
    """
    clientId, sequence, pos = sessionHead(data)
    return clientId, sequence, data[pos:]


def sessionHead(data: bytes):
    """
    L{decodeSession} without the copy of the inner command: C{(clientId,
    sequence, pos)}, the inner command being C{data[pos:]} (what the store
    applies with C{decode(data, viewFrom, pos)}, once per client write).
    @raise CommandError: if C{data} is not a well-formed session command.
    """
    try:
        op, clen = _SESSION_HEAD.unpack_from(data, 0)
        if op != SESSION:
            raise CommandError(f"not a session command (op {op})")
        pos = _SESSION_HEAD_SIZE
        if len(data) < pos + clen:
            raise CommandError("malformed session command: truncated client id")
        clientId = data[pos : pos + clen].decode()  # UTF-8
        pos += clen
        (sequence,) = _SEQUENCE.unpack_from(data, pos)
        pos += _SEQUENCE_SIZE
    except (struct.error, UnicodeDecodeError) as e:
        raise CommandError(f"malformed session command: {e}") from e
    if data[pos : pos + 1] == SESSION_BYTE:
        raise CommandError("malformed session command: nested session")
    if not clientId or sequence < 1:
        raise CommandError("malformed session command: empty client id or sequence 0")
    return clientId, sequence, pos


def decode(data: bytes, viewFrom=0, start=0):
    """
    Decode an unwrapped put, delete or compare-and-set (see
    L{decodeSession} for session commands, L{kvtxn.decodeTxn} for a
    transaction).

    @param viewFrom: a value at least this long (0: none) is a
        C{memoryview} of C{data}, not a copy (the store, applying a put,
        copies it once into its own record).
    @param start: where in C{data} the command starts (L{sessionHead}'s
        C{pos}; it runs to the end).
    @return: C{(op, key, expected, value)}; C{expected} is C{None} unless op is
        CAS with an expected value; C{value} is C{None} for a delete.
    """
    try:
        op, klen = _HEAD.unpack_from(data, start)
        pos = start + _HEAD_SIZE
        key = data[pos : pos + klen].decode()  # UTF-8
        pos += klen
        if op == PUT:
            if viewFrom and len(data) - pos >= viewFrom:
                return op, key, None, memoryview(data)[pos:]
            return op, key, None, data[pos:]
        if op == DELETE:
            return op, key, None, None
        if op == CAS:
            has = data[pos]
            (elen,) = _LEN.unpack_from(data, pos + 1)
            pos += 1 + _LEN.size
            expected = data[pos : pos + elen] if has else None
            pos += elen
            if viewFrom and len(data) - pos >= viewFrom:
                return op, key, expected, memoryview(data)[pos:]
            return op, key, expected, data[pos:]
    except (struct.error, IndexError, UnicodeDecodeError) as e:
        raise CommandError(f"malformed command: {e}") from e
    raise CommandError(f"unknown command op {op}")


def decodeCommand(data, viewFrom=0):
    """An unwrapped command: a L{kvtxn.Txn}, or the tuple of L{decode}."""
    if data[:1] == TXN_BYTE:
        return decodeTxn(data)
    return decode(data, viewFrom)
