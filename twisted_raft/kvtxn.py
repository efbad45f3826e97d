"""
Transactions (etcd's Txn) as one log entry kind, C{TXN}: the operation
records, their binary encoding, and the binary encoding of their results
(for the snapshot's session section).

An entry, all integers big-endian (see docs/design.rst, "The KV model")::

  TXN (u8 = 4) | compare count u16 | success count u16 | failure count u16
  compares     target u8 | op u8 | key length u16 | key (UTF-8) | operand
                 operand: target VALUE: length u32 | bytes; else u64
  operations   kind u8 | flags u8 | key length u16 | key, then by kind:
                 PUT:    value length u32 | value
                 DELETE: [END: end length u16 | end]
                 RANGE:  [END: end length u16 | end]
                         [AFTER: after length u16 | after]
                         limit u32 | max bytes u32
  flags        0x01 prev_kv (PUT, DELETE) or keys_only (RANGE), 0x02 prefix,
               0x04 END present, 0x08 count_only, 0x10 AFTER present

Encoders check everything against L{twisted_raft.kvlimits} and raise
C{ValueError}; L{decodeTxn} checks only the structure (limits may change,
old logs must still apply) and raises L{CommandError} on malformed bytes.
No pickle, no JSON.
"""

import struct

from twisted_raft.kvlimits import (
    MAX_KEY_BYTES,
    MAX_TXN_BYTES,
    MAX_TXN_COMPARES,
    MAX_TXN_OPS,
    MAX_TXN_RANGE_BYTES,
    MAX_VALUE_BYTES,
)
from twisted_raft.kvrecords import (
    ALL_KEYS_END,
    CommandError,
    DeleteResult,
    KeyValue,
    PutResult,
    RangeResult,
    TxnResult,
    _Record,
)

TXN = 4

# compare targets and operators, as encoded
VALUE, VERSION, CREATE_REVISION, MOD_REVISION = 1, 2, 3, 4
TARGETS = {
    "value": VALUE,
    "version": VERSION,
    "create_revision": CREATE_REVISION,
    "mod_revision": MOD_REVISION,
}
EQUAL, NOT_EQUAL, LESS, GREATER = 1, 2, 3, 4
OPERATORS = {"==": EQUAL, "!=": NOT_EQUAL, "<": LESS, ">": GREATER}

# operation kinds and flags, as encoded
OP_PUT, OP_DELETE, OP_RANGE = 1, 2, 3
_F_PREV_KV = _F_KEYS_ONLY = 0x01
_F_PREFIX = 0x02
_F_END = 0x04
_F_COUNT_ONLY = 0x08
_F_AFTER = 0x10

_TXN_HEAD = struct.Struct(">BHHH")
_CMP_HEAD = struct.Struct(">BBH")
_OP_HEAD = struct.Struct(">BBH")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_RANGE_TAIL = struct.Struct(">II")


# -- the records a transaction is made of -----------------------------------------


class Compare(_Record):
    """
    C{key}'s C{target} (C{"value"}, C{"version"}, C{"create_revision"},
    C{"mod_revision"}) compared with C{op} (C{"=="}, C{"!="}, C{"<"},
    C{">"}) to C{value} (bytes for C{"value"}, else an int).

    A missing key has version and revisions 0, and I{every} value compare
    on it is false (etcd's rule: C{!=} too).  Values compare as bytes.
    """

    __slots__ = ("key", "target", "op", "value")

    def __init__(self, key, target, op, value):
        self.key = key
        self.target = target
        self.op = op
        self.value = value


class Put(_Record):
    __slots__ = ("key", "value", "prevKv")

    def __init__(self, key, value, prevKv=False):
        self.key = key
        self.value = value
        self.prevKv = prevKv


class Delete(_Record):
    """One key (C{end} C{None}), a prefix, or C{[key, end)}, as in L{KeyRange}."""

    __slots__ = ("key", "end", "prefix", "prevKv")

    def __init__(self, key, end=None, prefix=False, prevKv=False):
        self.key = key
        self.end = end
        self.prefix = prefix
        self.prevKv = prevKv


class Range(_Record):
    """
    A read inside a transaction, with C{KVStore.range}'s options;
    C{maxBytes} 0 is L{MAX_TXN_RANGE_BYTES} (the encoder writes the number).
    """

    __slots__ = ("key", "end", "prefix", "limit", "after", "keysOnly", "countOnly", "maxBytes")

    def __init__(self, key, end=None, prefix=False, limit=0, after=None,
                 keysOnly=False, countOnly=False, maxBytes=0):
        self.key = key
        self.end = end
        self.prefix = prefix
        self.limit = limit
        self.after = after
        self.keysOnly = keysOnly
        self.countOnly = countOnly
        self.maxBytes = maxBytes


class Txn(_Record):
    __slots__ = ("compares", "success", "failure")

    def __init__(self, compares=(), success=(), failure=()):
        self.compares = list(compares)
        self.success = list(success)
        self.failure = list(failure)


# -- encoding ---------------------------------------------------------------------


def _keyBytes(name, key, allowEmpty=False):
    if not isinstance(key, str):
        raise ValueError(f"{name} must be a str, not {type(key).__name__}")
    try:
        b = key.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"{name} is not valid Unicode: {e}") from None
    if not b and not allowEmpty:
        raise ValueError(f"empty {name}")
    if len(b) > MAX_KEY_BYTES:
        raise ValueError(f"{name} is {len(b)} bytes of UTF-8, over {MAX_KEY_BYTES}")
    return b


def _valueBytes(name, value):
    if not isinstance(value, bytes):
        raise ValueError(f"{name} must be bytes, not {type(value).__name__}")
    if len(value) > MAX_VALUE_BYTES:
        raise ValueError(f"{name} is {len(value)} bytes, over {MAX_VALUE_BYTES}")
    return value


def _checkRangeShape(what, key, end, prefix):
    """The key selection rules shared by delete and range operations."""
    if not isinstance(prefix, bool):
        raise ValueError(f"{what}: prefix must be a bool")
    if prefix and end is not None:
        raise ValueError(f"{what}: give an end key or prefix, not both")
    # an empty start key selects from the first key: only with an end or prefix
    k = _keyBytes(f"{what} key", key, allowEmpty=prefix or end is not None)
    e = None if end is None else _keyBytes(f"{what} end", end)
    return k, e


def _encodeCompare(c, out):
    if not isinstance(c, Compare):
        raise ValueError(f"not a Compare: {c!r}")
    target = TARGETS.get(c.target)
    if target is None:
        raise ValueError(f"compare target {c.target!r} is not one of {sorted(TARGETS)}")
    op = OPERATORS.get(c.op)
    if op is None:
        raise ValueError(f"compare op {c.op!r} is not one of {sorted(OPERATORS)}")
    k = _keyBytes("compare key", c.key)
    out += _CMP_HEAD.pack(target, op, len(k))
    out += k
    if target == VALUE:
        v = _valueBytes("compare value", c.value)
        out += _U32.pack(len(v))
        out += v
    else:
        if isinstance(c.value, bool) or not isinstance(c.value, int) or not 0 <= c.value < 2**64:
            raise ValueError(f"a {c.target} compare takes an int 0 to 2**64 - 1, not {c.value!r}")
        out += _U64.pack(c.value)


def _encodeOp(op, out):
    if isinstance(op, Put):
        k = _keyBytes("put key", op.key)
        v = _valueBytes("put value", op.value)
        out += _OP_HEAD.pack(OP_PUT, _F_PREV_KV if op.prevKv else 0, len(k))
        out += k
        out += _U32.pack(len(v))
        out += v
    elif isinstance(op, Delete):
        k, e = _checkRangeShape("delete", op.key, op.end, op.prefix)
        flags = (_F_PREV_KV if op.prevKv else 0) | (_F_PREFIX if op.prefix else 0)
        flags |= 0 if e is None else _F_END
        out += _OP_HEAD.pack(OP_DELETE, flags, len(k))
        out += k
        if e is not None:
            out += _U16.pack(len(e)) + e
    elif isinstance(op, Range):
        k, e = _checkRangeShape("range", op.key, op.end, op.prefix)
        a = None if op.after is None else _keyBytes("range after", op.after, allowEmpty=True)
        if not isinstance(op.limit, int) or not 0 <= op.limit < 2**32:
            raise ValueError(f"range limit {op.limit!r} is not 0 to 2**32 - 1")
        maxBytes = op.maxBytes or MAX_TXN_RANGE_BYTES
        if not isinstance(maxBytes, int) or not 0 < maxBytes <= MAX_TXN_RANGE_BYTES:
            raise ValueError(f"range maxBytes {op.maxBytes!r} is not 1 to {MAX_TXN_RANGE_BYTES}")
        flags = (_F_KEYS_ONLY if op.keysOnly else 0) | (_F_PREFIX if op.prefix else 0)
        flags |= (0 if e is None else _F_END) | (_F_COUNT_ONLY if op.countOnly else 0)
        flags |= 0 if a is None else _F_AFTER
        out += _OP_HEAD.pack(OP_RANGE, flags, len(k))
        out += k
        if e is not None:
            out += _U16.pack(len(e)) + e
        if a is not None:
            out += _U16.pack(len(a)) + a
        out += _RANGE_TAIL.pack(op.limit, maxBytes)
    else:
        raise ValueError(f"not a Put, Delete or Range: {op!r}")


def encodeTxn(txn):
    """
    @param txn: a L{Txn}.
    @return: the log entry's bytes.
    @raise ValueError: naming what breaks the rules or a limit.
    """
    if not isinstance(txn, Txn):
        raise ValueError(f"not a Txn: {txn!r}")
    if len(txn.compares) > MAX_TXN_COMPARES:
        raise ValueError(f"{len(txn.compares)} compares, over {MAX_TXN_COMPARES}")
    for name, ops in (("success", txn.success), ("failure", txn.failure)):
        if len(ops) > MAX_TXN_OPS:
            raise ValueError(f"{len(ops)} {name} operations, over {MAX_TXN_OPS}")
    out = bytearray(_TXN_HEAD.pack(TXN, len(txn.compares), len(txn.success), len(txn.failure)))
    for c in txn.compares:
        _encodeCompare(c, out)
    for op in txn.success:
        _encodeOp(op, out)
    for op in txn.failure:
        _encodeOp(op, out)
    if len(out) > MAX_TXN_BYTES:
        raise ValueError(f"transaction is {len(out)} bytes encoded, over {MAX_TXN_BYTES}")
    return bytes(out)


def encodePutPrevKv(key, value):
    """A put that returns the previous key-value: a one-operation L{Txn}."""
    return encodeTxn(Txn(success=[Put(key, value, prevKv=True)]))


def encodeDeleteRange(key, end=None, prefix=False, prevKv=False):
    """Delete a key, a prefix or C{[key, end)}: a one-operation L{Txn}; its
    result's only response is a L{DeleteResult} with the count."""
    return encodeTxn(Txn(success=[Delete(key, end, prefix, prevKv)]))


# -- decoding ---------------------------------------------------------------------


class _Cursor:
    __slots__ = ("data", "pos")

    def __init__(self, data, pos=0):
        self.data = data
        self.pos = pos

    def take(self, n):
        end = self.pos + n
        if end > len(self.data):
            raise CommandError("malformed transaction: truncated")
        b = self.data[self.pos : end]
        self.pos = end
        return b

    def unpack(self, s):
        if self.pos + s.size > len(self.data):
            raise CommandError("malformed transaction: truncated")
        values = s.unpack_from(self.data, self.pos)
        self.pos += s.size
        return values

    def text(self, n):
        try:
            return bytes(self.take(n)).decode("utf-8")
        except UnicodeDecodeError as e:
            raise CommandError(f"malformed transaction: key is not UTF-8 ({e})") from None


def _decodeOp(cur):
    kind, flags, klen = cur.unpack(_OP_HEAD)
    key = cur.text(klen)
    if kind == OP_PUT:
        if flags & ~_F_PREV_KV:
            raise CommandError(f"malformed transaction: put flags {flags:#x}")
        (vlen,) = cur.unpack(_U32)
        return Put(key, bytes(cur.take(vlen)), bool(flags & _F_PREV_KV))
    if kind not in (OP_DELETE, OP_RANGE):
        raise CommandError(f"malformed transaction: unknown operation {kind}")
    allowed = _F_PREV_KV | _F_PREFIX | _F_END
    if kind == OP_RANGE:
        allowed |= _F_COUNT_ONLY | _F_AFTER
    if flags & ~allowed or (flags & _F_PREFIX and flags & _F_END):
        raise CommandError(f"malformed transaction: operation flags {flags:#x}")
    end = after = None
    if flags & _F_END:
        end = cur.text(cur.unpack(_U16)[0])
    prefix = bool(flags & _F_PREFIX)
    if kind == OP_DELETE:
        return Delete(key, end, prefix, bool(flags & _F_PREV_KV))
    if flags & _F_AFTER:
        after = cur.text(cur.unpack(_U16)[0])
    limit, maxBytes = cur.unpack(_RANGE_TAIL)
    return Range(key, end, prefix, limit, after, bool(flags & _F_KEYS_ONLY),
                 bool(flags & _F_COUNT_ONLY), maxBytes)


_TARGET_NAMES = {v: k for k, v in TARGETS.items()}
_OPERATOR_NAMES = {v: k for k, v in OPERATORS.items()}


def decodeTxn(data):
    """
    @return: the L{Txn} encoded in C{data} (a whole C{TXN} entry).
    @raise CommandError: on anything but well-formed bytes.
    """
    cur = _Cursor(memoryview(data))
    op, ncmp, nsuccess, nfailure = cur.unpack(_TXN_HEAD)
    if op != TXN:
        raise CommandError(f"not a transaction (op {op})")
    compares = []
    for _ in range(ncmp):
        target, operator, klen = cur.unpack(_CMP_HEAD)
        name, opname = _TARGET_NAMES.get(target), _OPERATOR_NAMES.get(operator)
        if name is None or opname is None:
            raise CommandError(
                f"malformed transaction: compare target {target} op {operator}"
            )
        key = cur.text(klen)
        if target == VALUE:
            value = bytes(cur.take(cur.unpack(_U32)[0]))
        else:
            (value,) = cur.unpack(_U64)
        compares.append(Compare(key, name, opname, value))
    success = [_decodeOp(cur) for _ in range(nsuccess)]
    failure = [_decodeOp(cur) for _ in range(nfailure)]
    if cur.pos != len(data):
        raise CommandError(
            f"malformed transaction: {len(data) - cur.pos} bytes after the last operation"
        )
    return Txn(compares, success, failure)


# -- results: their size and their encoding (for the snapshot) ---------------------

KV_OVERHEAD = 200
"""Bytes counted per key-value of a kept result besides its key and value:
about what a L{KeyValue} and its ints cost in memory (measured with
tracemalloc, see docs/design.rst)."""
RESPONSE_OVERHEAD = 100


def _kvsBytes(kvs):
    if not kvs:
        return 0
    return sum(len(kv.key) + (len(kv.value) if kv.value is not None else 0) for kv in kvs) + (
        KV_OVERHEAD * len(kvs)
    )


def resultBytes(result):
    """
    About how much memory keeping C{result} costs: 0 for C{None}, C{True},
    C{False} (counted by number); a L{TxnResult}'s key-values otherwise.
    """
    if not isinstance(result, TxnResult):
        return 0
    n = RESPONSE_OVERHEAD
    for r in result.responses:
        n += RESPONSE_OVERHEAD
        if isinstance(r, PutResult):
            n += _kvsBytes([r.prev_kv] if r.prev_kv is not None else None)
        elif isinstance(r, DeleteResult):
            n += _kvsBytes(r.prev_kvs)
        else:
            n += _kvsBytes(r.kvs)
    return n


def reducedResult(result):
    """C{result} without its key-values (counts, flags and revisions kept)."""
    responses = []
    for r in result.responses:
        if isinstance(r, PutResult):
            responses.append(PutResult(None))
        elif isinstance(r, DeleteResult):
            responses.append(DeleteResult(r.deleted, None))
        else:
            responses.append(RangeResult([], r.more, r.count, r.revision))
    return TxnResult(result.succeeded, responses, complete=False)


# A kept result, in the snapshot's session section:
#   flags u8 (0x01 succeeded, 0x02 complete) | response count u16, then each:
#     PUT:    kind u8 | has prev u8 | [kv]
#     DELETE: kind u8 | deleted u64 | has prevs u8 | [count u32 | kvs]
#     RANGE:  kind u8 | more u8 | count u64 | revision u64 | count u32 | kvs
#   kv: key length u16 | key | has value u8 | value length u32 | value |
#       create revision u64 | mod revision u64 | version u64
_KV_TAIL = struct.Struct(">QQQ")
_RES_HEAD = struct.Struct(">BH")
_RANGE_RES = struct.Struct(">BBQQI")


def _encodeKvs(kvs, out):
    for kv in kvs:
        k = kv.key.encode("utf-8", "surrogatepass")
        out += _U16.pack(len(k))
        out += k
        if kv.value is None:
            out += b"\x00"
        else:
            out += b"\x01" + _U32.pack(len(kv.value))
            out += kv.value
        out += _KV_TAIL.pack(kv.create_revision, kv.mod_revision, kv.version)


def encodeResult(result):
    """The bytes of a L{TxnResult} (see the layout above)."""
    out = bytearray(
        _RES_HEAD.pack((0x01 if result.succeeded else 0) | (0x02 if result.complete else 0),
                       len(result.responses))
    )
    for r in result.responses:
        if isinstance(r, PutResult):
            out += bytes([OP_PUT, r.prev_kv is not None])
            if r.prev_kv is not None:
                _encodeKvs([r.prev_kv], out)
        elif isinstance(r, DeleteResult):
            out += bytes([OP_DELETE]) + _U64.pack(r.deleted) + bytes([r.prev_kvs is not None])
            if r.prev_kvs is not None:
                out += _U32.pack(len(r.prev_kvs))
                _encodeKvs(r.prev_kvs, out)
        else:
            out += _RANGE_RES.pack(OP_RANGE, r.more, r.count, r.revision, len(r.kvs))
            _encodeKvs(r.kvs, out)
    return bytes(out)


def _decodeKvs(cur, n):
    kvs = []
    for _ in range(n):
        (klen,) = cur.unpack(_U16)
        try:
            key = bytes(cur.take(klen)).decode("utf-8", "surrogatepass")
        except UnicodeDecodeError as e:
            raise CommandError(f"malformed result: {e}") from None
        has = cur.take(1)[0]
        value = bytes(cur.take(cur.unpack(_U32)[0])) if has else None
        kvs.append(KeyValue(key, value, *cur.unpack(_KV_TAIL)))
    return kvs


def encodeKeyValues(kvs):
    """
    A list of L{KeyValue}s as bytes: C{count u32 | kv ...}, each C{kv} as
    in a result (above).  The wire's one encoding of key-values (a range's
    page, a put's or delete's previous ones).
    """
    out = bytearray(_U32.pack(len(kvs)))
    _encodeKvs(kvs, out)
    return bytes(out)


def decodeKeyValues(data):
    """
    @return: the list L{encodeKeyValues} made.
    @raise CommandError: on malformed bytes (truncated or trailing ones).
    """
    cur = _Cursor(memoryview(data))
    kvs = _decodeKvs(cur, cur.unpack(_U32)[0])
    if cur.pos != len(data):
        raise CommandError("malformed key-values: trailing bytes")
    return kvs


def decodeResult(data):
    """
    @return: the L{TxnResult} L{encodeResult} made.
    @raise CommandError: on malformed bytes.
    """
    cur = _Cursor(memoryview(data))
    flags, n = cur.unpack(_RES_HEAD)
    responses = []
    for _ in range(n):
        kind = cur.data[cur.pos] if cur.pos < len(data) else None
        if kind == OP_PUT:
            cur.take(1)
            has = cur.take(1)[0]
            responses.append(PutResult(_decodeKvs(cur, 1)[0] if has else None))
        elif kind == OP_DELETE:
            cur.take(1)
            (deleted,) = cur.unpack(_U64)
            has = cur.take(1)[0]
            prevs = _decodeKvs(cur, cur.unpack(_U32)[0]) if has else None
            responses.append(DeleteResult(deleted, prevs))
        elif kind == OP_RANGE:
            _, more, count, revision, nkvs = cur.unpack(_RANGE_RES)
            responses.append(RangeResult(_decodeKvs(cur, nkvs), bool(more), count, revision))
        else:
            raise CommandError(f"malformed result: response kind {kind}")
    if cur.pos != len(data) or flags & ~0x03:
        raise CommandError("malformed result: trailing bytes or unknown flags")
    return TxnResult(bool(flags & 0x01), responses, complete=bool(flags & 0x02))


__all__ = [
    "TXN", "Compare", "Put", "Delete", "Range", "Txn", "encodeTxn", "decodeTxn",
    "encodePutPrevKv", "encodeDeleteRange", "CommandError", "ALL_KEYS_END",
    "resultBytes", "reducedResult", "encodeResult", "decodeResult",
]
