"""
How the store keeps a key: one C{bytes} object, a header packing its
C{create_revision}, C{mod_revision} and C{version}, then the value's bytes.
Internal to the store, its snapshot and its history.

A key then costs its dict slot, its slot in the ordered index and a few
header bytes: no Python object of its own besides the one that holds the
value anyway (docs/design.rst, "The KV model", has the bytes).  The price
is a copy of the value when it is read (L{value}); comparing it
(L{valueEquals}) and sizing it (L{valueSize}) copy nothing.

The header's first byte says its layout, all big-endian:

    0  written once (version 1, C{create == mod}), mod u32      5 bytes
    1  written once, mod u64                                    9 bytes
    2  create u32 | mod u32 | version u32                      13 bytes
    3  create u64 | mod u64 | version u64                      25 bytes

The narrow layouts while C{mod} (and C{version}) fit 32 bits: every key of
a cluster below four billion entries.  Log indexes are u64 (in the log and
the snapshot), C{create <= mod}, and a version counts writes, so the wide
layouts always fit.  Never mutated once made
(it is C{bytes}): a snapshot view and the history may share it.
"""

import struct

from twisted_raft.kvrecords import KeyValue

_ONCE = struct.Struct(">BI")
_ONCE_WIDE = struct.Struct(">BQ")
_AGAIN = struct.Struct(">BIII")
_AGAIN_WIDE = struct.Struct(">BQQQ")
_NARROW = 0xFFFFFFFF
_packOnce = _ONCE.pack
_unpackOnce = _ONCE.unpack_from
_unpackAgain = _AGAIN.unpack_from
_packAgain = _AGAIN.pack

HEADER_SIZES = (_ONCE.size, _ONCE_WIDE.size, _AGAIN.size, _AGAIN_WIDE.size)
"""The header's size by its first byte."""

VIEW_FROM = 4096
"""A value at least this long is copied through a C{memoryview} (applying a
put, writing and reading a snapshot), so it is copied once; a shorter one
is sliced, which costs less than making a view."""


def header(create, mod, version):
    """The header of a key with this metadata (see the layouts above)."""
    if version == 1 and create == mod:  # written once
        return _packOnce(0, mod) if mod <= _NARROW else _ONCE_WIDE.pack(1, mod)
    if mod <= _NARROW and version <= _NARROW:
        return _AGAIN.pack(2, create, mod, version)
    return _AGAIN_WIDE.pack(3, create, mod, version)


def pack(value, create, mod, version):
    """The stored form of C{value} (bytes, or any buffer) with this metadata."""
    return header(create, mod, version) + value


def packOnce(value, mod):
    """L{pack} of a key's creating write, at index C{mod}: the common case."""
    return (_packOnce(0, mod) if mod <= _NARROW else _ONCE_WIDE.pack(1, mod)) + value


def packAgain(old, floor, value, mod):
    """
    L{pack} of a write at index C{mod} to a key stored as C{old}, under the
    metadata floor C{floor} (see L{effectiveMeta}): once per overwrite, so
    the narrow layouts are inlined.
    """
    tag = old[0]
    if tag == 2:  # written again: the most common on a key overwritten
        _, create, was, version = _unpackAgain(old)
    elif tag == 0:
        create = was = _unpackOnce(old)[1]
        version = 1
    else:
        create, was, version = meta(old)
    if was < floor:
        create, version = floor, 1
    version += 1
    if mod <= _NARROW and version <= _NARROW:
        return _packAgain(2, create, mod, version) + value
    return _AGAIN_WIDE.pack(3, create, mod, version) + value


def value(stored):
    """The value's bytes (a copy)."""
    return stored[HEADER_SIZES[stored[0]]:]


def valueSize(stored):
    return len(stored) - HEADER_SIZES[stored[0]]


def valueEquals(stored, expected):
    """Whether the value is C{expected} (bytes), without copying it."""
    return len(stored) - HEADER_SIZES[stored[0]] == len(expected) and stored.endswith(expected)


def meta(stored):
    """C{(create_revision, mod_revision, version)}, as stored."""
    tag = stored[0]
    if tag == 0:
        mod = _unpackOnce(stored)[1]
        return mod, mod, 1
    if tag == 2:
        return _unpackAgain(stored)[1:]
    if tag == 1:
        mod = _ONCE_WIDE.unpack_from(stored)[1]
        return mod, mod, 1
    return _AGAIN_WIDE.unpack_from(stored)[1:]


def effectiveMeta(stored, floor):
    """
    C{(create_revision, mod_revision, version)} under the metadata floor
    C{floor}: a key last written below it reads as C{(floor, floor, 1)},
    whatever its node made of it (0: no floor).
    """
    tag = stored[0]
    if tag == 0:  # the narrow layouts inlined: once per write and per key read
        create = mod = _unpackOnce(stored)[1]
        version = 1
    elif tag == 2:
        _, create, mod, version = _unpackAgain(stored)
    else:
        create, mod, version = meta(stored)
    if mod < floor:
        return floor, floor, 1
    return create, mod, version


def headerAndMeta(stored, floor):
    """
    C{(header size, create_revision, mod_revision, version)} under the
    metadata floor (see L{effectiveMeta}): what a snapshot writes, in one
    call per key.
    """
    tag = stored[0]
    if tag == 0:
        create = mod = _unpackOnce(stored)[1]
        version = 1
    elif tag == 2:
        _, create, mod, version = _unpackAgain(stored)
    else:
        create, mod, version = meta(stored)
    if mod < floor:
        return HEADER_SIZES[tag], floor, floor, 1
    return HEADER_SIZES[tag], create, mod, version


def keyValue(key, stored, floor, keysOnly=False):
    """
    The L{KeyValue} of C{key} as read under C{floor} (see L{effectiveMeta}),
    without its value if C{keysOnly}: L{effectiveMeta} and L{value} inlined,
    since a range page makes one per key.
    """
    tag = stored[0]
    if tag == 0:
        create = mod = _unpackOnce(stored)[1]
        version = 1
    elif tag == 2:
        _, create, mod, version = _unpackAgain(stored)
    else:
        create, mod, version = meta(stored)
    if mod < floor:
        create = mod = floor
        version = 1
    return KeyValue(
        key, None if keysOnly else stored[HEADER_SIZES[tag]:], create, mod, version
    )
