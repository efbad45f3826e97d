"""
Binary encoding of a batch of log entries for L{commands.AppendEntries}.

The batch is C{count (u32)} then, per entry, C{term (u64) | length (u32) |
data}; indexes are implicit (C{prevLogIndex + 1} onwards).  No pickle.
"""

import struct

from twisted_raft.raft.messages import Entry

_COUNT = struct.Struct(">I")
_ENTRY = struct.Struct(">QI")


def encodeEntries(entries):
    parts = [_COUNT.pack(len(entries))]
    for e in entries:
        parts.append(_ENTRY.pack(e.term, len(e.data)))
        parts.append(e.data)
    return b"".join(parts)


def decodeEntries(blob, firstIndex):
    """
    @raise ValueError: if C{blob} is truncated or has trailing bytes.
    """
    try:
        (count,) = _COUNT.unpack_from(blob, 0)
        pos = _COUNT.size
        entries = []
        for i in range(count):
            term, length = _ENTRY.unpack_from(blob, pos)
            pos += _ENTRY.size
            data = blob[pos : pos + length]
            if len(data) != length:
                raise ValueError("entry batch truncated")
            pos += length
            entries.append(Entry(firstIndex + i, term, data))
    except struct.error as e:
        raise ValueError(f"entry batch truncated: {e}") from e
    if pos != len(blob):
        raise ValueError("trailing bytes after entry batch")
    return entries
