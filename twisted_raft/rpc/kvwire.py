"""
The KV model on the wire: what L{commands.Range}, L{commands.Txn} and the
C{prev_kv}, C{end} and C{prefix} arguments of L{commands.Put} and
L{commands.Delete} carry, the checks a request passes before anything is
read or proposed, and the bounds on an answer.  Both ends use it: the
server to check requests and shape answers, the client to encode requests
and decode answers.

Key-values travel as one L{BigBytes} value in the layout of
L{kvtxn.encodeKeyValues} (C{count u32}, then per key-value C{key length
u16 | key | has value u8 | [value length u32 | value] | create_revision u64
| mod_revision u64 | version u64}, big-endian); a transaction as
L{kvtxn.encodeTxn}'s bytes, its responses as L{kvtxn.encodeResult}'s.  So
a value over 64 KiB is chunked exactly as a C{Get}'s is.

Bounds (every request is bounded in CPU and memory whatever it asks):

  - A range answers one page: at most L{RANGE_PAGE_KEYS} keys and about
    L{RANGE_PAGE_BYTES} of keys and values (at least one key), however
    large its C{limit}; C{more} says keys were left out, and the client
    goes on with C{after}.  Counting is O(log n) and never limited.
  - A transaction is checked before it is proposed: its counts from its
    header first (no decoding of 65,535 operations), then every rule of
    L{kvtxn.encodeTxn}; what is proposed is the server's own encoding of
    what it decoded, never the client's bytes.
  - The key-values of a write's answer (a transaction's responses, a put's
    or delete's previous key-values) are at most L{ANSWER_KV_BYTES}
    encoded.  Over that, the answer carries the results without their
    key-values (L{kvtxn.reducedResult}: counts, flags and revisions;
    C{complete} false) -- as a retried write whose result was too large
    to keep for retries does.  The write itself is applied either way:
    the bound is on what the answer carries, decided after the apply,
    because only then are the sizes known (a range delete's previous
    values, a range's page).  Reads of more than that are made with
    L{commands.Range} pages.
"""

import struct
from typing import NamedTuple, Optional

from twisted_raft import kvtxn
from twisted_raft.kvlimits import (
    MAX_TXN_BYTES,
    MAX_TXN_COMPARES,
    MAX_TXN_OPS,
    MAX_VALUE_BYTES,
    MiB,
)
from twisted_raft.kvrecords import CommandError, KeyValue, RangeResult, TxnResult
from twisted_raft.rpc.commands import InvalidArgument, NotProposed, ValueTooLarge

RANGE_PAGE_KEYS = 1000
"""The most keys one L{commands.Range} answer carries, whatever its limit:
about 1.5 ms of the node's reactor to read and encode (keys of 11 bytes,
values of 100, measured in process), and a few on the client to decode."""

RANGE_PAGE_BYTES = 1 * MiB
"""About the most bytes of keys and values one range answer carries (the
store's C{maxBytes}): one key over it still comes alone.  With
L{RANGE_PAGE_KEYS} keys' framing the largest answer is about 1.04 MiB, a
quarter of what a box may hold (L{boxguard.MAX_BOX_BYTES})."""

ANSWER_KV_BYTES = 2 * MiB
"""The most bytes of encoded key-values a write's answer carries (see the
module docstring); the largest write answer then stays under half of what
a box may hold."""

_DESCRIBED = 300  # characters of an encoder's complaint quoted in an error


def _brief(error):
    text = str(error)
    return text if len(text) <= _DESCRIBED else text[:_DESCRIBED] + "..."


def _malformed(what, error):
    return InvalidArgument(f"malformed {what}: {_brief(error)}")


# -- ranges -------------------------------------------------------------------


class RangeQuery:
    """
    A checked L{commands.Range} request: what it reads, and how a node
    forwards it.  Made by L{rangeQuery}.
    """

    __slots__ = ("key", "end", "prefix", "limit", "after", "keysOnly", "countOnly")

    def __init__(self, key, end, prefix, limit, after, keysOnly, countOnly):
        self.key = key
        self.end = end
        self.prefix = prefix
        self.limit = limit
        self.after = after
        self.keysOnly = keysOnly
        self.countOnly = countOnly

    def read(self, store):
        """The answer, read from C{store} at one instant (one call, no
        yielding to the reactor): consistent at its C{revision}."""
        limit = min(self.limit, RANGE_PAGE_KEYS) if self.limit else RANGE_PAGE_KEYS
        result = store.range(
            self.key, self.end, self.prefix, limit, self.after, self.keysOnly,
            self.countOnly, RANGE_PAGE_BYTES,
        )
        return rangeAnswer(result)

    def arguments(self):
        """The L{commands.Range} arguments that ask for this (forwarding)."""
        kwargs = {"key": self.key}
        if self.end is not None:
            kwargs["end"] = self.end
        if self.prefix:
            kwargs["prefix"] = True
        if self.limit:
            kwargs["limit"] = self.limit
        if self.after is not None:
            kwargs["after"] = self.after
        if self.keysOnly:
            kwargs["keys_only"] = True
        if self.countOnly:
            kwargs["count_only"] = True
        return kwargs


def rangeQuery(key, end=None, prefix=None, limit=None, after=None, keysOnly=None, countOnly=None):
    """
    Check a range request.  The rules are those of a range inside a
    transaction, checked by the one encoder (L{kvtxn.encodeTxn}): C{key}
    is non-empty unless C{end} or C{prefix} is given, C{end} non-empty and
    not with C{prefix}, each key at most 4,096 bytes of UTF-8; C{limit}
    0 (none) or positive -- a limit over L{RANGE_PAGE_KEYS} is allowed and
    answered a page at a time.

    @rtype: L{RangeQuery}
    @raise InvalidArgument: naming what is wrong.
    """
    if key is None:
        raise InvalidArgument("missing key")
    limit = 0 if limit is None else limit
    if limit < 0:
        raise InvalidArgument("limit must be 0 (none) or positive")
    query = RangeQuery(
        key, end, bool(prefix), limit, after, bool(keysOnly), bool(countOnly)
    )
    try:
        kvtxn.encodeTxn(kvtxn.Txn(success=[kvtxn.Range(
            key, end, query.prefix, min(limit, RANGE_PAGE_KEYS), after, query.keysOnly,
            query.countOnly,
        )]))
    except ValueError as e:
        raise InvalidArgument(f"range: {_brief(e)}") from None
    return query


def rangeAnswer(result):
    """The L{commands.Range} answer for the store's L{RangeResult}."""
    return {
        "revision": result.revision,
        "more": result.more,
        "count": result.count,
        "kvs": kvtxn.encodeKeyValues(result.kvs),
    }


def rangeResult(answer):
    """
    The L{RangeResult} of a L{commands.Range} answer (the client's side).

    @raise InvalidArgument: its key-values do not decode.
    """
    return RangeResult(
        _keyValues("Range answer", answer["kvs"]), answer["more"], answer["count"],
        answer["revision"],
    )


def _keyValues(what, data):
    try:
        return kvtxn.decodeKeyValues(data)
    except CommandError as e:
        raise _malformed(what, e) from None


# -- transactions ---------------------------------------------------------------

_TXN_HEAD = struct.Struct(">BHHH")


def encodeTxn(txn):
    """
    L{kvtxn.encodeTxn}, its complaints as the contract's errors: a value
    over 1 MiB or a transaction over L{MAX_TXN_BYTES} encoded is
    VALUE_TOO_LARGE, anything else INVALID_ARGUMENT.  The client encodes
    with it, and the server re-encodes what it decoded with it.

    @raise InvalidArgument, ValueTooLarge:
    """
    if isinstance(txn, kvtxn.Txn):
        for c in txn.compares:
            if isinstance(c, kvtxn.Compare) and c.target == "value":
                _checkValue("compare value", c.value)
        for op in list(txn.success) + list(txn.failure):
            if isinstance(op, kvtxn.Put):
                _checkValue("put value", op.value)
    try:
        data = kvtxn.encodeTxn(txn)
    except ValueError as e:
        if str(e).startswith("transaction is"):
            raise ValueTooLarge(_brief(e)) from None
        raise InvalidArgument(f"transaction: {_brief(e)}") from None
    return data


def _checkValue(name, value):
    if isinstance(value, (bytes, bytearray)) and len(value) > MAX_VALUE_BYTES:
        raise ValueTooLarge(f"{name} is {len(value)} bytes, over {MAX_VALUE_BYTES} (1 MiB)")


def checkTxn(data):
    """
    The server's check of a L{commands.Txn}'s C{txn}: its size, its counts
    (from the header, before decoding anything), its structure
    (L{kvtxn.decodeTxn}), then every rule and limit (L{encodeTxn}).

    @return: the bytes to propose: the server's own encoding of what it
        decoded.
    @raise InvalidArgument, ValueTooLarge:
    """
    if len(data) > MAX_TXN_BYTES:
        raise ValueTooLarge(f"transaction is {len(data)} bytes, over {MAX_TXN_BYTES}")
    if len(data) < _TXN_HEAD.size:
        raise InvalidArgument("malformed transaction: truncated")
    op, compares, success, failure = _TXN_HEAD.unpack_from(data)
    if op != kvtxn.TXN:
        raise InvalidArgument(f"malformed transaction: not a transaction (op {op})")
    if compares > MAX_TXN_COMPARES:
        raise InvalidArgument(f"transaction: {compares} compares, over {MAX_TXN_COMPARES}")
    if max(success, failure) > MAX_TXN_OPS:
        raise InvalidArgument(
            f"transaction: {max(success, failure)} operations in a branch, over {MAX_TXN_OPS}"
        )
    try:
        txn = kvtxn.decodeTxn(data)
    except CommandError as e:
        raise InvalidArgument(_brief(e)) from None  # "malformed transaction: ..."
    except (ValueError, IndexError, struct.error) as e:  # never, unless the decoder has a bug
        raise _malformed("transaction", e) from None
    return encodeTxn(txn)


def appliedTxn(result):
    """
    C{result}, what applying a transaction entry returned, if it is a
    L{TxnResult}.

    @raise NotProposed: the store refused the entry, returning an exception
        instead of a result (L{kvrecords.MetadataUnavailable}: a
        transaction before the cluster's metadata epoch).  Every node
        refuses it alike and changes nothing, so, as for a write that was
        never proposed, a retry anywhere is safe: UNAVAILABLE, "not
        proposed: transaction refused: ...".
    @raise TypeError: anything else (an internal error).
    """
    if isinstance(result, TxnResult):
        return result
    if isinstance(result, Exception):
        raise NotProposed(f"transaction refused: {_brief(result)}")
    raise TypeError(f"a transaction entry returned {type(result).__name__}, not a TxnResult")


def boundedResult(result):
    """
    C{(result, encoded)}: C{result} and its L{kvtxn.encodeResult} bytes, or,
    if those are over L{ANSWER_KV_BYTES}, its reduced form and that's.
    """
    encoded = kvtxn.encodeResult(result)
    if len(encoded) > ANSWER_KV_BYTES:
        result = kvtxn.reducedResult(result)
        encoded = kvtxn.encodeResult(result)
    return result, encoded


def txnAnswer(revision, result):
    """The L{commands.Txn} answer for a transaction applied at C{revision}."""
    result, encoded = boundedResult(appliedTxn(result))
    return {"succeeded": result.succeeded, "revision": revision, "responses": encoded}


class TxnResponse(NamedTuple):
    """
    What L{RaftKVClient.txn} returns.

    @ivar succeeded: whether every compare held (the success branch ran).
    @ivar revision: the log index the transaction was applied at.
    @ivar responses: per operation of the branch that ran, in order, a
        L{PutResult} (C{prev_kv}), a L{DeleteResult} (C{deleted},
        C{prev_kvs}) or a L{RangeResult} (C{kvs}, C{more}, C{count},
        C{revision}).
    @ivar complete: C{False} if the key-values were left out (over
        L{ANSWER_KV_BYTES}, or a retry of a transaction whose result was
        too large to keep): counts, flags and revisions only.
    """

    succeeded: bool
    revision: int
    responses: list
    complete: bool = True


def txnResponse(answer):
    """The L{TxnResponse} of a L{commands.Txn} answer (the client's side)."""
    try:
        result = kvtxn.decodeResult(answer["responses"])
    except CommandError as e:
        raise _malformed("Txn answer", e) from None
    return TxnResponse(answer["succeeded"], answer["revision"], result.responses, result.complete)


# -- put and delete with prev_kv, end, prefix -----------------------------------------


def putPrevKv(key, value):
    """
    The log entry of a put of C{key} that returns its previous key-value.

    @raise InvalidArgument: C{key} breaks a rule (the caller checked the
        value's size).
    """
    try:
        return kvtxn.encodePutPrevKv(key, value)
    except ValueError as e:
        raise InvalidArgument(f"put: {_brief(e)}") from None


def putAnswer(revision, result):
    """
    The L{commands.Put} answer of a put with C{prev_kv}: C{prev_kv} is the
    previous key-value as a list of none (the key did not exist) or one,
    left out when the result does not carry it (C{complete} false).
    """
    result = appliedTxn(result)
    answer = {"revision": revision}
    if result.complete:
        prev = result.responses[0].prev_kv
        answer["prev_kv"] = kvtxn.encodeKeyValues([] if prev is None else [prev])
    return answer


def putResponse(answer):
    """C{(revision, prev_kv, complete)} of a put-with-C{prev_kv} answer."""
    encoded = answer.get("prev_kv")
    if encoded is None:
        return PutResponse(answer["revision"], None, False)
    kvs = _keyValues("Put answer", encoded)
    if len(kvs) > 1:
        raise InvalidArgument(f"malformed Put answer: {len(kvs)} previous key-values")
    return PutResponse(answer["revision"], kvs[0] if kvs else None, True)


def deleteRange(key, end=None, prefix=False, prevKv=False):
    """
    The log entry of a delete of C{key}, C{[key, end)} or the prefix
    C{key}, checked as L{rangeQuery} checks a range.

    @raise InvalidArgument: naming what is wrong.
    """
    try:
        return kvtxn.encodeDeleteRange(key, end, bool(prefix), bool(prevKv))
    except ValueError as e:
        raise InvalidArgument(f"delete: {_brief(e)}") from None


def deleteAnswer(revision, result):
    """
    The L{commands.Delete} answer of a delete with C{end}, C{prefix} or
    C{prev_kv}: C{deleted} (any key deleted), C{revision}, C{deleted_count},
    and, if asked for and carried, C{prev_kvs}.
    """
    result = appliedTxn(result)
    response = result.responses[0]
    answer = {
        "deleted": bool(response.deleted),
        "revision": revision,
        "deleted_count": response.deleted,
    }
    if result.complete and response.prev_kvs is not None:
        encoded = kvtxn.encodeKeyValues(response.prev_kvs)
        if len(encoded) <= ANSWER_KV_BYTES:
            answer["prev_kvs"] = encoded
    return answer


def deleteResponse(answer, prevKvAsked):
    """
    The L{DeleteResponse} of a delete-with-C{end}/C{prefix}/C{prev_kv}
    answer: C{complete} false if C{prev_kv} was asked for but not carried.
    """
    deleted = answer.get("deleted_count")
    if deleted is None:  # a node older than range deletes
        deleted = int(answer["deleted"])
    encoded = answer.get("prev_kvs")
    if encoded is None:
        return DeleteResponse(deleted, answer["revision"], None, not prevKvAsked)
    return DeleteResponse(deleted, answer["revision"], _keyValues("Delete answer", encoded), True)


class PutResponse(NamedTuple):
    """
    What L{RaftKVClient.put} returns with C{prevKV=True}: C{revision}, and
    C{prev_kv}, the L{KeyValue} the key had (C{None}: it did not exist).
    C{complete} is C{False} when the answer did not carry it (a retry of a
    put whose previous value was too large to keep for retries).
    """

    revision: int
    prev_kv: Optional[KeyValue]
    complete: bool = True


class DeleteResponse(NamedTuple):
    """
    What L{RaftKVClient.delete} returns with C{end}, C{prefix} or
    C{prevKV}: C{deleted}, how many keys; C{revision}; C{prev_kvs}, the
    L{KeyValue}s deleted as they were, if asked for (else C{None});
    C{complete} C{False} when they were asked for but not carried (over
    L{ANSWER_KV_BYTES}, or a retry of a delete whose result was too large
    to keep for retries).
    """

    deleted: int
    revision: int
    prev_kvs: Optional[list] = None
    complete: bool = True


__all__ = [
    "RANGE_PAGE_KEYS", "RANGE_PAGE_BYTES", "ANSWER_KV_BYTES", "RangeQuery", "rangeQuery",
    "rangeAnswer", "rangeResult", "encodeTxn", "checkTxn", "appliedTxn", "boundedResult",
    "txnAnswer", "TxnResponse", "txnResponse", "putPrevKv", "putAnswer", "putResponse",
    "PutResponse", "deleteRange", "deleteAnswer", "deleteResponse", "DeleteResponse",
]
