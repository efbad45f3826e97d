"""
The KV store against a simple model (a dict of key -> [value, create, mod,
version], scanned and sorted by UTF-8 bytes for every read): random old and
new entry kinds, session-wrapped or not, the metadata epoch (most scripts
begin with it; some apply it later, over keys already written, or never, so
transactions are refused), with snapshots taken, folded and restored in
between, and after every step the ranges, the metadata and the event
history must agree with the model.
"""

import copy
import io

from hypothesis import given, settings, strategies as st
from twisted.internet.task import Clock

from twisted_raft import kv
from twisted_raft.kvlimits import MAX_TXN_RANGE_BYTES
from twisted_raft.kvrecords import (
    DeleteResult,
    Event,
    KeyValue,
    MetadataUnavailable,
    PutResult,
    RangeResult,
    TxnResult,
)

ALPHABET = "ab\u00e9\u4e16\U0001f600\x00"
# few keys, so that writes, compares and ranges meet; prefixes of each other
# and characters of 1 to 4 bytes of UTF-8
KEYS = ["a", "a\x00", "ab", "abc", "b", "\u00e9", "\u4e16", "\U0001f600"]
keys = st.sampled_from(KEYS) | st.text(alphabet=ALPHABET, min_size=1, max_size=3)
anyKeys = st.sampled_from(KEYS + [""]) | st.text(alphabet=ALPHABET, max_size=3)
values = st.binary(max_size=6)


def selects(k, key, end=None, prefix=False):
    """Whether a read of key/end/prefix selects C{k}, by UTF-8 bytes."""
    if prefix:
        return k.encode().startswith(key.encode())
    if end is None:
        return k == key
    if end == "\0":
        return k.encode() >= key.encode()
    return key.encode() <= k.encode() < end.encode()


class Model:
    def __init__(self):
        self.data = {}  # key -> [value, create, mod, version]
        self.events = []  # (revision, Event)
        self.floor = 0  # the history's
        self.metaFloor = 0
        self.sessions = {}  # (cid, seq) -> (result, index)
        self.applied = 0

    # -- reads, by scanning ---------------------------------------------------------

    def ordered(self):
        return sorted(self.data, key=lambda k: k.encode("utf-8"))

    def select(self, key, end=None, prefix=False, after=None, among=None):
        chosen = [k for k in (self.ordered() if among is None else among)
                  if selects(k, key, end, prefix)]
        if after is not None:
            chosen = [k for k in chosen if k.encode() > after.encode()]
        return chosen

    def meta(self, k):
        """(create, mod, version) as read: below the metadata floor, the floor's."""
        _, create, mod, version = self.data[k]
        if mod < self.metaFloor:
            return self.metaFloor, self.metaFloor, 1
        return create, mod, version

    def kv(self, k, keysOnly=False):
        return KeyValue(k, None if keysOnly else self.data[k][0], *self.meta(k))

    def range(self, key, end=None, prefix=False, limit=0, after=None, keysOnly=False,
              countOnly=False, maxBytes=0):
        chosen = self.select(key, end, prefix, after)
        if countOnly:
            return RangeResult([], False, len(chosen), self.applied)
        out, size = [], 0
        for k in chosen:
            if limit and len(out) == limit:
                break
            n = len(k.encode()) + (0 if keysOnly else len(self.data[k][0]))
            if maxBytes and out and size + n > maxBytes:
                break
            size += n
            out.append(self.kv(k, keysOnly))
        return RangeResult(out, len(out) < len(chosen), len(chosen), self.applied)

    # -- writes ----------------------------------------------------------------------

    def put(self, index, k, value):
        old = self.data.get(k)
        prev = None if old is None else self.kv(k)
        if old is None:
            self.data[k] = [value, index, index, 1]
        else:
            create, _, version = self.meta(k)
            self.data[k] = [value, create, index, version + 1]
        self.events.append((index, Event("put", k, value, *self.data[k][1:])))
        return prev

    def delete(self, index, k):
        if k not in self.data:
            return None
        prev = self.kv(k)
        del self.data[k]
        self.events.append((index, Event("delete", k, None, 0, index, 0)))
        return prev

    def compare(self, c):
        record = self.data.get(c.key)
        if c.target == "value" and record is None:
            return False
        meta = self.meta(c.key) if record else (0, 0, 0)
        have = {
            "value": lambda: record[0],
            "version": lambda: meta[2],
            "create_revision": lambda: meta[0],
            "mod_revision": lambda: meta[1],
        }[c.target]()
        return {
            "==": have == c.value, "!=": have != c.value,
            "<": have < c.value, ">": have > c.value,
        }[c.op]

    def txn(self, index, txn):
        ok = all(self.compare(c) for c in txn.compares)
        responses = []
        for op in txn.success if ok else txn.failure:
            if isinstance(op, kv.Put):
                prev = self.put(index, op.key, op.value)
                responses.append(PutResult(prev if op.prevKv else None))
            elif isinstance(op, kv.Delete):
                prevs = [self.delete(index, k) for k in self.select(op.key, op.end, op.prefix)]
                responses.append(DeleteResult(len(prevs), prevs if op.prevKv else None))
            else:
                responses.append(self.range(
                    op.key, op.end, op.prefix, op.limit, op.after, op.keysOnly,
                    op.countOnly, op.maxBytes or MAX_TXN_RANGE_BYTES,
                ))
        return TxnResult(ok, responses)

    def apply(self, index, command, session):
        self.applied = index
        if session is not None and session in self.sessions:
            result, at = self.sessions[session]
            return kv.Applied(result, at, duplicate=True)
        kind = command[0]
        if kind == "epoch":
            self.metaFloor = self.metaFloor or index
            return self.metaFloor
        if kind == "txn" and not self.metaFloor:
            return MetadataUnavailable()  # not remembered by the session
        if kind == "put":
            self.put(index, command[1], command[2])
            result = None
        elif kind == "delete":
            result = self.delete(index, command[1]) is not None
        elif kind == "cas":
            _, k, expected, value = command
            current = self.data.get(k)
            if (expected is None and current is None) or (
                expected is not None and current is not None and current[0] == expected
            ):
                self.put(index, k, value)
                result = True
            else:
                result = False
        else:
            result = self.txn(index, command[1])
        if session is None:
            return result
        self.sessions[session] = (result, index)
        return kv.Applied(result, index)


def encode(command):
    kind = command[0]
    if kind == "epoch":
        return kv.encodeMetadataEpoch()
    if kind == "put":
        return kv.encodePut(command[1], command[2])
    if kind == "delete":
        return kv.encodeDelete(command[1])
    if kind == "cas":
        return kv.encodeCompareAndSet(*command[1:])
    return kv.encodeTxn(command[1])


compares = st.one_of(
    st.builds(kv.Compare, keys, st.just("value"), st.sampled_from(["==", "!=", "<", ">"]), values),
    st.builds(
        kv.Compare, keys,
        st.sampled_from(["version", "create_revision", "mod_revision"]),
        st.sampled_from(["==", "!=", "<", ">"]), st.integers(0, 40),
    ),
)
ranges = st.fixed_dictionaries({
    "key": anyKeys,
    "end": st.none() | st.just("\0") | keys,
    "prefix": st.booleans(),
    "limit": st.integers(0, 3),
    "after": st.none() | anyKeys,
    "keysOnly": st.booleans(),
    "countOnly": st.booleans(),
    "maxBytes": st.integers(0, 8),
}).map(lambda d: dict(d, end=None) if d["prefix"] else d).map(
    lambda d: dict(d, key=d["key"] or "a") if d["end"] is None and not d["prefix"] else d
)
operations = st.one_of(
    st.builds(kv.Put, keys, values, st.booleans()),
    ranges.map(lambda d: kv.Delete(d["key"], d["end"], d["prefix"], d["keysOnly"])),
    ranges.map(lambda d: kv.Range(**dict(d, maxBytes=d["maxBytes"] or 0))),
)
txns = st.builds(
    kv.Txn,
    st.lists(compares, max_size=3),
    st.lists(operations, max_size=4),
    st.lists(operations, max_size=3),
)
commands = st.one_of(
    st.tuples(st.just("put"), keys, values),
    st.tuples(st.just("delete"), keys),
    st.tuples(st.just("cas"), keys, st.none() | values, values),
    st.tuples(st.just("txn"), txns),
)
apply = st.tuples(
    st.just("apply"), commands,
    st.none() | st.tuples(st.sampled_from(["c1", "c2"]), st.integers(1, 6)),
)
EPOCH = ("apply", ("epoch",), None)  # never session-wrapped
steps = st.builds(
    lambda first, rest: first + rest,
    st.sampled_from([[EPOCH], [EPOCH], [EPOCH], []]),
    st.lists(
        st.one_of(
            apply, apply, apply, apply, apply, apply, apply, apply, st.just(EPOCH),
            st.tuples(st.sampled_from(["freeze", "write", "fold", "restore"])),
        ),
        max_size=40,
    ),
)


def check(store, model, probes):
    assert store.metadataFloor == model.metaFloor
    everything = store.range("", prefix=True)
    assert everything == model.range("", prefix=True)
    assert store.range("", prefix=True, countOnly=True).count == len(model.data) == everything.count
    for k in model.data:
        assert store.getKeyValue(k) == model.kv(k)
    for probe in probes:
        assert store.range(**probe) == model.range(**probe), probe
    # the history: every change after the floor, in order, whole revisions
    assert store.history.floor == model.floor
    got = store.watchEvents(model.floor + 1, "", prefix=True)
    assert got.events == [e for _, e in model.events]
    assert got.next_revision == model.applied + 1
    for probe in probes:
        where = dict(key=probe["key"], end=probe["end"], prefix=probe["prefix"])
        wanted = [(r, e) for r, e in model.events if selects(e.key, **where)]
        # paged one revision at a time (maxEvents=1 never splits a revision)
        pages, at = [], model.floor + 1
        while True:
            page = store.watchEvents(at, maxEvents=1, **where)
            if not page.events:
                break
            assert len({e.mod_revision for e in page.events}) == 1
            pages.extend(page.events)
            at = page.next_revision
        assert pages == [e for _, e in wanted], probe
        assert page.next_revision == model.applied + 1


@settings(max_examples=400, deadline=None)
@given(steps, st.lists(ranges, max_size=6))
def test_store_matches_the_model(script, probes):
    run(script, probes)


applies = st.lists(apply, min_size=1, max_size=12)


@settings(max_examples=300, deadline=None)
@given(applies, applies, applies, st.lists(ranges, max_size=4))
def test_a_snapshot_cycle_matches_the_model(before, during, after, probes):
    """Writes before a snapshot, while it is open, and while its overlays
    fold (one slice per write), then a restore and the same writes again."""
    folding = [s for step in after for s in (step, ("fold",))]
    run([EPOCH] + before + [("freeze",)] + during + [("write",)] + folding + [("restore",)]
        + during, probes)


def run(script, probes):
    clock = Clock()
    store = kv.KVStore(clock=clock, foldSlice=2)
    model = Model()
    index = 0
    write = frozen = saved = None
    for step in script:
        kind = step[0]
        if kind == "apply":
            _, command, session = step
            index += 1
            data = encode(command)
            if session is not None:
                data = kv.encodeSession(session[0], session[1], data)
            assert store.apply(index, data) == model.apply(index, command, session)
        elif kind == "freeze":
            write = store.snapshotWriter()
            frozen = copy.deepcopy((model.data, model.sessions, model.applied, model.metaFloor))
        elif kind == "write" and write is not None:
            out = io.BytesIO()
            write(out)
            store.snapshotDone()
            write = None
            saved = (out.getvalue(), frozen)
            # what was written is the state at the freeze
            copyStore = kv.KVStore()
            copyStore.restoreSnapshot(copyStore.parseSnapshot(io.BytesIO(saved[0])))
            shadow = Model()
            shadow.data, shadow.sessions, shadow.applied, shadow.metaFloor = copy.deepcopy(frozen)
            shadow.floor = shadow.applied
            check(copyStore, shadow, probes)
        elif kind == "fold":
            clock.advance(0)
        elif kind == "restore" and saved is not None:
            store.restoreSnapshot(store.parseSnapshot(io.BytesIO(saved[0])))
            write = None
            model.data, model.sessions, model.applied, model.metaFloor = copy.deepcopy(saved[1])
            model.floor = model.applied
            model.events = []
            index = max(index, model.applied)
        check(store, model, probes)
