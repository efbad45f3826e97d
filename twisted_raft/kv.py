"""
The key-value state machine and the encoding of its commands in log entries.

A command is C{op (1 byte) | key length (u32) | key (UTF-8) | rest}; for a
put the rest is the value, for a compare-and-set it is
C{has expected (1 byte) | expected length (u32) | expected | value}.
"""

import struct

from zope.interface import implementer

from twisted_raft.raft.interfaces import IStateMachine

PUT = 1
DELETE = 2
CAS = 3

MAX_KEY_BYTES = 4096
MAX_VALUE_BYTES = 1024 * 1024

_HEAD = struct.Struct(">BI")
_LEN = struct.Struct(">I")


class CommandError(ValueError):
    """A command could not be decoded: the log entry is not a KV command."""


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


def decode(data: bytes):
    """
    @return: C{(op, key, expected, value)}; C{expected} is C{None} unless op is
        CAS with an expected value; C{value} is C{None} for a delete.
    """
    try:
        op, klen = _HEAD.unpack_from(data, 0)
        pos = _HEAD.size
        key = data[pos : pos + klen].decode("utf-8")
        pos += klen
        if op == PUT:
            return op, key, None, data[pos:]
        if op == DELETE:
            return op, key, None, None
        if op == CAS:
            has = data[pos]
            (elen,) = _LEN.unpack_from(data, pos + 1)
            pos += 1 + _LEN.size
            expected = data[pos : pos + elen] if has else None
            return op, key, expected, data[pos + elen :]
    except (struct.error, IndexError, UnicodeDecodeError) as e:
        raise CommandError(f"malformed command: {e}") from e
    raise CommandError(f"unknown command op {op}")


@implementer(IStateMachine)
class KVStore:
    """
    An in-memory dict of C{str} keys to C{bytes} values.

    Results of L{apply}: C{None} for a put, whether the key existed for a
    delete, whether the swap happened for a compare-and-set.
    """

    def __init__(self):
        self.data = {}

    def apply(self, index, data):
        op, key, expected, value = decode(data)
        if op == PUT:
            self.data[key] = value
            return None
        if op == DELETE:
            return self.data.pop(key, None) is not None
        current = self.data.get(key)
        if (expected is None and current is None) or (
            expected is not None and current == expected
        ):
            self.data[key] = value
            return True
        return False

    def get(self, key):
        """@return: the value, or C{None} if the key does not exist."""
        return self.data.get(key)
