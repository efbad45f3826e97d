"""
Snapshots of the KV state machine (Raft §7): the copy-on-write view, the
payload format, restore.
"""

import io

import pytest
from hypothesis import given, settings, strategies as st
from twisted.internet.task import Clock

from twisted_raft import kv, kvsnapshot


def sput(seq, key, value, cid="c1"):
    return kv.encodeSession(cid, seq, kv.encodePut(key, value))


def sdelete(seq, key, cid="c1"):
    return kv.encodeSession(cid, seq, kv.encodeDelete(key))


def scas(seq, key, expected, value, cid="c1"):
    return kv.encodeSession(cid, seq, kv.encodeCompareAndSet(key, expected, value))


def payload(store):
    """Take a whole snapshot of C{store} synchronously; return its bytes."""
    write = store.snapshotWriter()
    out = io.BytesIO()
    write(out)
    store.snapshotDone()
    return out.getvalue()


def restored(blob, **kw):
    new = kv.KVStore(**kw)
    new.restoreSnapshot(new.parseSnapshot(io.BytesIO(blob)))
    return new


def state(store):
    """Everything observable about a store, for comparisons: every key with
    its metadata, in key order (through the key index, so the index and the
    dict must agree), the sessions, the applied index."""
    everything = store.range("", prefix=True)
    assert everything.count == len(everything.kvs) == len(store.data)
    return (
        everything.kvs,
        [
            (cid, s.highest, s.lastIndex, list(s.results.items()))
            for cid, s in store.sessions.items()
        ],
        store.cachedResults,
        store.appliedIndex,
    )


def populated():
    store = kv.KVStore(window=4)
    store.apply(1, kv.encodePut("plain", b"p"))
    store.apply(2, sput(1, "a", b"1", cid="alice"))
    store.apply(3, sdelete(2, "plain", cid="alice"))
    store.apply(4, scas(1, "b", None, b"2", cid="bob"))
    store.apply(5, scas(2, "b", b"nope", b"3", cid="bob"))
    store.apply(6, sput(3, "", b"", cid="alice"))  # empty key and value
    store.apply(7, kv.encodePut("ünï\u2603", b"\x00\xff" * 300))
    store.apply(8, sput(1, "x", b"x", cid="carol"))
    store.apply(9, sput(4, "a", b"again", cid="alice"))  # alice most recent
    return store


def test_roundtrip_data_and_sessions():
    store = populated()
    blob = payload(store)
    new = restored(blob, window=4)
    assert state(new) == state(store)
    assert list(new.sessions) == ["bob", "carol", "alice"]  # LRU order kept
    # a duplicate retried after the restore answers exactly like before
    for machine in (store, new):
        assert machine.apply(10, sput(1, "a", b"1", cid="alice")) == kv.Applied(None, 2, duplicate=True)
        assert machine.apply(11, scas(2, "b", b"nope", b"3", cid="bob")) == kv.Applied(False, 5, duplicate=True)
        assert isinstance(machine.apply(12, sput(1, "zz", b"", cid="alice9")), kv.Applied)
    assert state(new) == state(store)
    # and the restored store snapshots identically
    assert payload(new) == payload(store)


def test_restore_replaces_everything():
    target = populated()
    target.apply(20, sput(1, "gone", b"v", cid="dave"))
    empty = payload(kv.KVStore())
    target.restoreSnapshot(target.parseSnapshot(io.BytesIO(empty)))
    assert target.data == {} and target.sessions == {} and target.cachedResults == 0
    assert target.get("gone") is None and target.appliedIndex == 0


def test_writes_during_snapshot_visible_to_get_not_to_view():
    store = populated()
    before = state(store)
    write = store.snapshotWriter()
    store.apply(10, kv.encodePut("a", b"new"))
    store.apply(11, kv.encodeDelete("b"))
    store.apply(12, kv.encodePut("fresh", b"f"))
    store.apply(13, kv.encodeDelete("fresh"))
    store.apply(14, kv.encodePut("fresh2", b"f2"))
    store.apply(15, sput(5, "c", b"c", cid="alice"))  # a captured session changes
    store.apply(16, sput(1, "d", b"d", cid="erin"))  # a new session
    assert store.apply(17, kv.encodeDelete("b")) is False  # already deleted
    assert store.apply(18, kv.encodeDelete("fresh")) is False
    assert store.apply(19, scas(2, "fresh2", b"f2", b"f3", cid="erin")).result is True
    assert store.get("a") == b"new" and store.get("b") is None
    assert store.get("fresh") is None and store.get("fresh2") == b"f3"
    assert store.get("c") == b"c" and store.get("plain") is None
    assert list(store.sessions) == ["bob", "carol", "alice", "erin"]
    during = state(store)
    out = io.BytesIO()
    write(out)
    # the view is the state as of snapshotWriter()
    assert state(restored(out.getvalue(), window=4)) == before
    assert state(store) == during
    store.snapshotDone()
    assert state(store) == during
    assert store._data.overlay is None and store._sessionIndex.overlay is None
    # folded back: no copy any more
    assert store._data.logical() is store._data.base and store._keys.added is None


def test_session_objects_in_the_view_never_change():
    store = populated()
    alice = store.sessions["alice"]
    results = list(alice.results.items())
    store.snapshotWriter()
    store.apply(10, sput(5, "k", b"v", cid="alice"))
    store.apply(11, sput(6, "k", b"v", cid="alice"))
    assert store.sessions["alice"] is not alice  # copied once, on first change
    assert list(alice.results.items()) == results and alice.lastIndex == 9
    assert sorted(store.sessions["alice"].results) == [3, 4, 5, 6]
    store.snapshotDone()
    # after the snapshot, no more copies
    live = store.sessions["alice"]
    store.apply(12, sput(7, "k", b"v", cid="alice"))
    assert store.sessions["alice"] is live


def test_sessions_dropped_during_snapshot():
    store = kv.KVStore(expiryEntries=10)
    store.apply(1, sput(1, "a", b"1", cid="old"))
    store.apply(5, sput(1, "b", b"1", cid="young"))
    write = store.snapshotWriter()
    store.apply(12, kv.encodePut("x", b"1"))  # "old" expires
    assert list(store.sessions) == ["young"]
    out = io.BytesIO()
    write(out)
    assert list(restored(out.getvalue()).sessions) == ["old", "young"]
    store.snapshotDone()
    assert list(store.sessions) == ["young"] and store._sessionIndex.base.keys() == {"young"}
    assert list(restored(payload(store)).sessions) == ["young"]


def test_two_snapshots_in_a_row():
    store = populated()
    first = store.snapshotWriter()
    store.apply(10, kv.encodePut("a", b"v2"))
    store.apply(11, sput(5, "a", b"v3", cid="alice"))
    out1 = io.BytesIO()
    first(out1)
    store.snapshotDone()
    mid = state(store)
    second = store.snapshotWriter()
    store.apply(12, kv.encodeDelete("a"))
    store.apply(13, sput(6, "q", b"q", cid="alice"))
    out2 = io.BytesIO()
    second(out2)
    store.snapshotDone()
    assert state(restored(out1.getvalue(), window=4)) == state(restored(payload(populated()), window=4))
    assert state(restored(out2.getvalue(), window=4)) == mid
    assert store.get("a") is None and store.get("q") == b"q"


def test_a_new_snapshot_releases_the_previous_view():
    store = populated()
    first = store.snapshotWriter()
    store.apply(10, kv.encodePut("a", b"v2"))
    second = store.snapshotWriter()  # the node never does this, but it is safe
    with pytest.raises(RuntimeError, match="released"):
        first(io.BytesIO())
    out = io.BytesIO()
    second(out)
    store.snapshotDone()
    assert restored(out.getvalue(), window=4).get("a") == b"v2"


class StepClock:
    """callLater(0, ...) calls, run one at a time by L{step}."""

    def __init__(self):
        self.calls = []

    def callLater(self, delay, f, *a):
        call = Clock().callLater(delay, f, *a)  # an IDelayedCall to cancel
        self.calls.append(call)
        return call

    def step(self):
        call = self.calls.pop(0)
        assert call.active()
        call.func(*call.args)

    def getDelayedCalls(self):
        return [c for c in self.calls if c.active()]


def test_incremental_fold_with_a_clock():
    clock = StepClock()
    store = kv.KVStore(clock=clock, foldSlice=3)
    for i in range(10):
        store.apply(i + 1, kv.encodePut(f"k{i}", b"old"))
    write = store.snapshotWriter()
    for i in range(10):
        store.apply(20 + i, kv.encodePut(f"k{i}", b"new") if i % 2 else kv.encodeDelete(f"k{i}"))
    expected = {f"k{i}": b"new" for i in range(1, 10, 2)}
    write(io.BytesIO())
    store.snapshotDone()
    assert store._data.pending() == 10
    clock.step()  # one slice
    assert store._data.pending() == 7
    # writes and reads while folding
    assert store.apply(40, kv.encodeDelete("k1")) is True
    store.apply(41, kv.encodePut("k2", b"back"))
    assert store.apply(42, kv.encodeDelete("k4")) is False
    expected.pop("k1")
    expected["k2"] = b"back"
    assert store.data == expected
    while clock.calls:
        clock.step()
    assert store._data.overlay is None and not clock.getDelayedCalls()
    assert store.data == expected and store._data.logical() is store._data.base
    assert store._keys.pending() == 0 and list(store._keys.base) == sorted(expected)
    # a snapshot started mid-fold finishes the fold first
    store.snapshotWriter()
    store.apply(50, kv.encodePut("z", b"z"))
    store.snapshotDone()
    store.snapshotWriter()
    assert store._data.overlay == {} and not clock.getDelayedCalls()
    store.snapshotDone()
    assert store.get("z") == b"z"


def test_restore_while_a_snapshot_is_open():
    store = populated()
    write = store.snapshotWriter()
    store.apply(10, kv.encodePut("a", b"changed"))
    other = kv.KVStore()
    other.apply(1, kv.encodePut("only", b"o"))
    store.restoreSnapshot(store.parseSnapshot(io.BytesIO(payload(other))))
    out = io.BytesIO()
    write(out)  # the old view is intact
    assert restored(out.getvalue(), window=4).get("a") == b"again"
    store.snapshotDone()
    assert store.data == {"only": b"o"}
    store.apply(2, kv.encodePut("more", b"m"))
    assert store.data == {"only": b"o", "more": b"m"}


def test_chunks_are_bounded(monkeypatch):
    monkeypatch.setattr(kvsnapshot, "SNAPSHOT_CHUNK", 4096)
    store = kv.KVStore()
    for i in range(2000):
        store.apply(i + 1, kv.encodePut(f"key{i}", b"v" * 50))

    class Recorder(io.BytesIO):
        sizes = []

        def write(self, b):
            self.sizes.append(len(b))
            return super().write(b)

    out = Recorder()
    store.snapshotWriter()(out)
    store.snapshotDone()
    assert len(out.sizes) > 20 and max(out.sizes) < 4096 + 200
    assert restored(out.getvalue()).data == store.data


@pytest.mark.parametrize("cut", [0, 1, 10, 20, 21, 40, -6, -5, -1])
def test_truncated_payload_raises(cut):
    blob = payload(populated())
    with pytest.raises(kv.MalformedSnapshotPayload):
        kv.KVStore().parseSnapshot(io.BytesIO(blob[:cut]))


def test_garbled_payload_raises_and_touches_nothing():
    store = populated()
    blob = payload(store)
    before = state(store)
    for i in range(len(blob)):
        garbled = bytearray(blob)
        garbled[i] ^= 0x41
        with pytest.raises(kv.MalformedSnapshotPayload):
            store.parseSnapshot(io.BytesIO(bytes(garbled)))
    assert state(store) == before
    with pytest.raises(kv.MalformedSnapshotPayload, match="version"):
        store.parseSnapshot(io.BytesIO(blob[:8] + b"\x00\x03" + blob[10:]))
    with pytest.raises(kv.MalformedSnapshotPayload, match="not a KV snapshot"):
        store.parseSnapshot(io.BytesIO(b"PK\x03\x04" + blob[4:]))
    with pytest.raises(TypeError):
        store.restoreSnapshot(object())


def test_trailing_bytes_after_payload_are_not_read_as_payload():
    store = populated()
    blob = payload(store)
    assert state(restored(blob + b"storage trailer", window=4)) == state(store)


keys = st.text(max_size=12)
values = st.binary(max_size=40)
commands = st.one_of(
    st.builds(kv.encodePut, keys, values),
    st.builds(kv.encodeDelete, keys),
    st.builds(kv.encodeCompareAndSet, keys, st.none() | values, values),
)
ops = st.lists(
    st.tuples(
        st.none() | st.tuples(st.sampled_from(["a", "b", "c", "d"]), st.integers(1, 12)),
        commands,
    ),
    max_size=40,
)


def run(store, start, batch):
    for i, (session, command) in enumerate(batch):
        data = command if session is None else kv.encodeSession(session[0], session[1], command)
        store.apply(start + i, data)


@settings(max_examples=150, deadline=None)
@given(ops, ops)
def test_hypothesis_roundtrip(before, during):
    config = dict(window=3, maxSessions=3, expiryEntries=25)
    store = kv.KVStore(**config)
    run(store, 1, before)
    captured = state(store)
    write = store.snapshotWriter()
    run(store, 100, during)
    live = state(store)
    out = io.BytesIO()
    write(out)
    store.snapshotDone()
    assert state(store) == live
    copy = restored(out.getvalue(), **config)
    assert state(copy) == captured
    # the copy and a store that replayed the same log stay in step
    replayed = kv.KVStore(**config)
    run(replayed, 1, before)
    results = []
    for machine in (copy, replayed):
        out = []
        for i, (session, command) in enumerate(during):
            data = command if session is None else kv.encodeSession(session[0], session[1], command)
            r = machine.apply(100 + i, data)
            out.append(str(r) if isinstance(r, kv.SequenceTooOld) else r)
        results.append(out)
    assert results[0] == results[1]
    assert state(copy) == state(replayed) == live
