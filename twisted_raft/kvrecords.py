"""
The key-value store's public records (what ranges, transactions and the
event history return) and L{KeyRange}, the one definition of which keys a
key, a prefix or C{[start, end)} selects.

Field names are those of the client contract's JSON (C{create_revision},
C{mod_revision}, C{prev_kv}, ...), so the wire layers copy them as they are.

Key order is Python's C{str} order, by code point, which for valid Unicode
is exactly the byte order of the keys' UTF-8 (UTF-8 was designed so): a
range read here and a client sorting UTF-8 bytes agree.

How the store keeps a key is internal to it: L{twisted_raft.kvstored}.
"""

_MAX_CODE_POINT = 0x10FFFF


class CommandError(ValueError):
    """A command could not be decoded: the log entry is not a KV command."""


class MetadataUnavailable(Exception):
    """
    A transaction applied before the cluster's metadata epoch (see
    C{KVStore.metadataFloor}): until then the key metadata it could compare
    or return may differ between nodes, so every node refuses it, changing
    nothing.  C{KVStore.apply} I{returns} (does not raise) an instance; the
    server answers it as UNAVAILABLE, and the client retries (a session
    write keeps its sequence: the refusal is not remembered as its result).
    """

    def __init__(self, message="the cluster is upgrading its key metadata; retry"):
        super().__init__(message)

    def __eq__(self, other):
        if type(other) is not type(self):
            return NotImplemented
        return self.args == other.args

    __hash__ = None


class _Record:
    """Equality and repr from C{__slots__}: the records are plain data."""

    __slots__ = ()

    def _values(self):
        return tuple(getattr(self, name) for name in self.__slots__)

    def __eq__(self, other):
        if type(other) is not type(self):
            return NotImplemented
        return self._values() == other._values()

    def __ne__(self, other):
        equal = self.__eq__(other)
        return equal if equal is NotImplemented else not equal

    __hash__ = None

    def __repr__(self):
        fields = ", ".join(f"{n}={getattr(self, n)!r}" for n in self.__slots__)
        return f"{type(self).__name__}({fields})"


class KeyValue(_Record):
    """
    A key as read: C{value} is C{None} for a keys-only read.  C{version}
    counts the writes since the key was created (1 for the creating write);
    the revisions are log indexes.
    """

    __slots__ = ("key", "value", "create_revision", "mod_revision", "version")

    def __init__(self, key, value, create_revision, mod_revision, version):
        self.key = key
        self.value = value
        self.create_revision = create_revision
        self.mod_revision = mod_revision
        self.version = version


PUT_EVENT = "put"
DELETE_EVENT = "delete"


class Event(_Record):
    """
    One change a log entry made to one key.  A C{"delete"} event has
    C{value} C{None}, C{create_revision} and C{version} 0, and
    C{mod_revision} the index of the deleting entry.
    """

    __slots__ = ("type", "key", "value", "create_revision", "mod_revision", "version")

    def __init__(self, type, key, value, create_revision, mod_revision, version):
        self.type = type
        self.key = key
        self.value = value
        self.create_revision = create_revision
        self.mod_revision = mod_revision
        self.version = version


class RangeResult(_Record):
    """
    @ivar kvs: the L{KeyValue}s returned, in key order (empty for a
        count-only read).
    @ivar more: whether keys of the range were left out (by C{limit} or the
        byte budget).
    @ivar count: how many keys the range holds (from C{after} on, if given),
        whatever C{limit}.
    @ivar revision: the store's revision (last applied index) it was read at.
    """

    __slots__ = ("kvs", "more", "count", "revision")

    def __init__(self, kvs, more, count, revision):
        self.kvs = kvs
        self.more = more
        self.count = count
        self.revision = revision


class PutResult(_Record):
    """C{prev_kv}: the key as it was before, if asked and it existed."""

    __slots__ = ("prev_kv",)

    def __init__(self, prev_kv=None):
        self.prev_kv = prev_kv


class DeleteResult(_Record):
    """C{deleted}: how many keys; C{prev_kvs}: them as they were, if asked
    (else C{None})."""

    __slots__ = ("deleted", "prev_kvs")

    def __init__(self, deleted, prev_kvs=None):
        self.deleted = deleted
        self.prev_kvs = prev_kvs


class TxnResult(_Record):
    """
    @ivar succeeded: whether every compare held (the success branch ran).
    @ivar responses: one L{PutResult}, L{DeleteResult} or L{RangeResult}
        per operation of the branch that ran, in order.
    @ivar complete: C{False} for a result kept for duplicates in reduced
        form (see C{KVStore}): its key-values were dropped, counts kept.
    """

    __slots__ = ("succeeded", "responses", "complete")

    def __init__(self, succeeded, responses, complete=True):
        self.succeeded = succeeded
        self.responses = responses
        self.complete = complete


class WatchBatch(_Record):
    """
    What a read of the event history returns: C{events} (L{Event}s, whole
    revisions only, in revision order) and C{next_revision}, where the next
    read goes on (every revision below it was looked at).
    """

    __slots__ = ("events", "next_revision")

    def __init__(self, events, next_revision):
        self.events = events
        self.next_revision = next_revision


class Compacted(Exception):
    """
    The event history no longer holds the revision asked for.
    C{compact_revision} is the oldest revision it can serve: a watch from
    there works.
    """

    def __init__(self, compact_revision):
        super().__init__(
            f"revision compacted: the oldest revision held is {compact_revision}"
        )
        self.compact_revision = compact_revision


def prefixEnd(prefix):
    """
    The smallest key after every key starting with C{prefix}, or C{None}
    when there is none (an empty prefix, or one of only U+10FFFF).
    """
    stripped = prefix.rstrip(chr(_MAX_CODE_POINT))
    if not stripped:
        return None
    return stripped[:-1] + chr(ord(stripped[-1]) + 1)


ALL_KEYS_END = "\0"
"""As C{end}, means no upper bound (etcd's convention: C{[start, "\\0")}
would otherwise hold only the empty key, which clients cannot write)."""


class KeyRange:
    """
    Which keys a request selects: C{[lo, hi)} in key order, C{hi} C{None}
    for no upper bound.  A single key C{k} is C{[k, k + "\\0")}: nothing
    sorts between them.
    """

    __slots__ = ("lo", "hi")

    def __init__(self, lo, hi):
        self.lo = lo
        self.hi = hi

    @classmethod
    def of(cls, key, end=None, prefix=False):
        """
        C{key} alone (C{end} C{None}), every key starting with C{key}
        (C{prefix}), or C{[key, end)} (C{end} L{ALL_KEYS_END}: every key from
        C{key} on).
        """
        if prefix:
            if end is not None:
                raise ValueError("a prefix range takes no end key")
            return cls(key, prefixEnd(key))
        if end is None:
            return cls(key, key + "\0")
        if end == ALL_KEYS_END:
            return cls(key, None)
        return cls(key, end)

    def contains(self, key):
        return self.lo <= key and (self.hi is None or key < self.hi)

    def __eq__(self, other):
        if not isinstance(other, KeyRange):
            return NotImplemented
        return (self.lo, self.hi) == (other.lo, other.hi)

    __hash__ = None

    def __repr__(self):
        return f"KeyRange({self.lo!r}, {self.hi!r})"
