"""
Binary encoding of a batch of log entries for L{commands.AppendEntries}.

The batch is C{count (u32)} then, per entry, C{term (u64) | length (u32) |
data}; indexes are implicit (C{prevLogIndex + 1} onwards).  No pickle.

The top bit of C{length} is the entry's kind: clear for a C{DATA} entry
(so a batch of data entries is byte for byte what raftkv sent before
membership change), set for a C{CONFIGURATION} entry, whose data is a
configuration as L{twisted_raft.raft.membership.encodeMembers} wrote it;
the other 31 bits are the data's length.  A configuration entry whose data
does not decode makes the whole batch malformed: it never reaches the log.
"""

import struct

from twisted_raft.raft.membership import decodeMembers
from twisted_raft.raft.messages import CONFIGURATION, DATA, Entry

_COUNT = struct.Struct(">I")
_ENTRY = struct.Struct(">QI")

CONFIGURATION_BIT = 1 << 31
MAX_DATA = CONFIGURATION_BIT - 1
"""The longest entry a batch can carry (the client contract's 1 MiB values
are far below it)."""


def encodeEntries(entries):
    """
    @raise ValueError: an entry is longer than L{MAX_DATA} or of no known
        kind.
    """
    parts = [_COUNT.pack(len(entries))]
    for e in entries:
        length = len(e.data)
        if length > MAX_DATA:
            raise ValueError(f"entry {e.index} is {length} bytes, over {MAX_DATA}")
        if e.kind is CONFIGURATION:
            length |= CONFIGURATION_BIT
        elif e.kind is not DATA:
            raise ValueError(f"entry {e.index} is of no known kind: {e.kind!r}")
        parts.append(_ENTRY.pack(e.term, length))
        parts.append(e.data)
    return b"".join(parts)


def decodeEntries(blob, firstIndex):
    """
    @raise ValueError: if C{blob} is truncated or has trailing bytes, or a
        configuration entry's data is not a configuration.
    """
    try:
        (count,) = _COUNT.unpack_from(blob, 0)
        pos = _COUNT.size
        entries = []
        for i in range(count):
            term, length = _ENTRY.unpack_from(blob, pos)
            pos += _ENTRY.size
            kind = DATA
            if length & CONFIGURATION_BIT:
                kind = CONFIGURATION
                length &= MAX_DATA
            data = blob[pos : pos + length]
            if len(data) != length:
                raise ValueError("entry batch truncated")
            pos += length
            if kind is CONFIGURATION:
                _checkConfiguration(firstIndex + i, data)
            entries.append(Entry(firstIndex + i, term, data, kind))
    except struct.error as e:
        raise ValueError(f"entry batch truncated: {e}") from e
    if pos != len(blob):
        raise ValueError("trailing bytes after entry batch")
    return entries


def _checkConfiguration(index, data):
    try:
        decodeMembers(data, index)
    except ValueError as e:
        raise ValueError(f"entry {index} is not a configuration: {str(e)[:200]}") from None
