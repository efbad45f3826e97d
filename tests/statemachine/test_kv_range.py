"""
Range reads on the store (KVStore.range) and its ordered key index
(kvindex.SortedKeys): what a key, a prefix and [start, end) select, paging,
the byte budget, counts without materialising, and the index through
snapshots' copy-on-write.
"""

import io
import tracemalloc

import pytest
from hypothesis import given, settings, strategies as st

from twisted_raft import kv
from twisted_raft.kvindex import SortedKeys
from twisted_raft.kvrecords import KeyRange, KeyValue, prefixEnd


def filled(keys, value=b"v"):
    store = kv.KVStore()
    for i, key in enumerate(keys):
        store.apply(i + 1, kv.encodePut(key, value))
    return store


def names(result):
    return [item.key for item in result.kvs]


KEYS = ["a", "a\x00", "ab", "abc", "abd", "b", "ba", "\u00e9", "\u4e16", "\U0001f600"]


def test_single_key():
    store = filled(KEYS)
    r = store.range("ab")
    assert r.kvs == [KeyValue("ab", b"v", 3, 3, 1)] and r.count == 1 and not r.more
    assert r.revision == len(KEYS)
    assert store.range("zz") == kv.RangeResult([], False, 0, len(KEYS))
    # "a" alone, not "a\0" that sorts right after it
    assert names(store.range("a")) == ["a"]


def test_prefix():
    store = filled(KEYS)
    assert names(store.range("a", prefix=True)) == ["a", "a\x00", "ab", "abc", "abd"]
    assert names(store.range("ab", prefix=True)) == ["ab", "abc", "abd"]
    assert names(store.range("", prefix=True)) == sorted(KEYS)
    assert names(store.range("\U0001f600", prefix=True)) == ["\U0001f600"]
    assert store.range("c", prefix=True).count == 0


def test_start_end_and_to_the_last_key():
    store = filled(KEYS)
    assert names(store.range("ab", "b")) == ["ab", "abc", "abd"]
    assert names(store.range("b", "\u4e16")) == ["b", "ba", "\u00e9"]
    assert names(store.range("b", kv.ALL_KEYS_END)) == ["b", "ba", "\u00e9", "\u4e16", "\U0001f600"]
    assert names(store.range("", "a\x01")) == ["a", "a\x00"]
    assert store.range("b", "a").count == 0  # end before start: nothing
    assert store.range("b", "b").count == 0


def test_str_order_is_utf8_byte_order():
    store = filled(KEYS + ["\uffff", "\ud7ff", "\ue000", "\U00010000"])
    got = names(store.range("", prefix=True))
    assert got == sorted(got, key=lambda k: k.encode("utf-8"))


def test_prefix_end():
    assert prefixEnd("ab") == "ac"
    assert prefixEnd("a\U0010ffff") == "b"
    assert prefixEnd("\U0010ffff\U0010ffff") is None
    assert prefixEnd("") is None
    assert KeyRange.of("a\U0010ffff", prefix=True).contains("a\U0010ffff\U0010ffffz")
    with pytest.raises(ValueError):
        KeyRange.of("a", "b", prefix=True)


def test_limit_after_and_paging():
    store = filled(KEYS)
    first = store.range("", prefix=True, limit=3)
    assert names(first) == ["a", "a\x00", "ab"] and first.more and first.count == len(KEYS)
    second = store.range("", prefix=True, limit=3, after="ab")
    assert names(second) == ["abc", "abd", "b"] and second.more
    assert second.count == len(KEYS) - 3  # what is left, from after on
    # repeating the last key as the start works too (it is then returned again)
    assert names(store.range("ab", kv.ALL_KEYS_END, limit=2)) == ["ab", "abc"]
    last = store.range("", prefix=True, after="\u4e16")
    assert names(last) == ["\U0001f600"] and not last.more
    assert store.range("", prefix=True, after="\U0001f600").kvs == []
    # after before the start changes nothing; after a single key: nothing
    assert names(store.range("b", prefix=True, after="a")) == ["b", "ba"]
    assert store.range("b", after="b").count == 0
    assert store.range("b", after="c").count == 0


def test_paging_under_writes_sees_each_key_once():
    store = filled([f"k{i:03d}" for i in range(100)])
    seen, after, index = [], None, 100
    while True:
        page = store.range("k", prefix=True, limit=7, after=after)
        seen += names(page)
        if not page.more:
            break
        after = page.kvs[-1].key
        index += 1
        store.apply(index, kv.encodePut("k000", b"again"))  # behind the pager
        store.apply(index + 1, kv.encodePut("j", b"elsewhere"))
        index += 1
    assert seen == [f"k{i:03d}" for i in range(100)]


def test_byte_budget():
    store = kv.KVStore()
    store.apply(1, kv.encodePut("a", b"x" * 10))
    store.apply(2, kv.encodePut("b", b"x" * 10))
    store.apply(3, kv.encodePut("\u00e9", b"x" * 10))  # 2 bytes of UTF-8
    r = store.range("", prefix=True, maxBytes=22)
    assert names(r) == ["a", "b"] and r.more and r.count == 3
    assert names(store.range("", prefix=True, maxBytes=21)) == ["a"]
    # at least one key, however small the budget
    assert names(store.range("", prefix=True, maxBytes=1)) == ["a"]
    # keys only: the values do not count
    assert names(store.range("", prefix=True, maxBytes=3, keysOnly=True)) == ["a", "b"]
    assert names(store.range("", prefix=True, maxBytes=3, keysOnly=True, after="a")) == [
        "b", "\u00e9"]


def test_keys_only_and_count_only():
    store = filled(KEYS)
    r = store.range("a", prefix=True, keysOnly=True)
    assert all(item.value is None for item in r.kvs) and r.kvs[0] == KeyValue("a", None, 1, 1, 1)
    c = store.range("a", prefix=True, countOnly=True)
    assert c == kv.RangeResult([], False, 5, len(KEYS))


def test_count_only_does_not_touch_the_keys(monkeypatch):
    store = filled([f"k{i:05d}" for i in range(20_000)])
    monkeypatch.setattr(store, "_data", None)  # any record read would fail
    monkeypatch.setattr(store, "_kv", None)
    assert store.range("k", prefix=True, countOnly=True).count == 20_000
    assert store.range("k01", "k02", countOnly=True).count == 1000


def test_a_page_does_not_copy_the_store():
    store = filled([f"k{i:06d}" for i in range(100_000)], value=b"x" * 10)
    store.range("k", prefix=True, limit=10)  # warm the index's positions
    tracemalloc.start()
    try:
        page = store.range("k05", prefix=True, limit=10)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(page.kvs) == 10 and page.count == 10_000
    # a list of the 100,000 keys alone would be 800 KB
    assert peak < 40_000


def test_ranges_while_a_snapshot_is_open_and_folding():
    store = filled(KEYS)
    write = store.snapshotWriter()
    store.apply(20, kv.encodeDelete("ab"))
    store.apply(21, kv.encodePut("aa", b"new"))
    store.apply(22, kv.encodeDelete("aa"))
    store.apply(23, kv.encodePut("abb", b"new"))
    store.apply(24, kv.encodeDelete("abb"))
    store.apply(25, kv.encodePut("abb", b"again"))
    store.apply(26, kv.encodePut("ab", b"back"))
    store.apply(27, kv.encodeDelete("b"))
    want = ["a", "a\x00", "ab", "abb", "abc", "abd"]
    assert names(store.range("a", prefix=True)) == want
    assert store.range("a", prefix=True, countOnly=True).count == 6
    assert store.range("ab", prefix=True, after="ab", limit=1).kvs[0].key == "abb"
    assert store.getKeyValue("ab") == KeyValue("ab", b"back", 26, 26, 1)
    out = io.BytesIO()
    write(out)
    copy = kv.KVStore()
    copy.restoreSnapshot(copy.parseSnapshot(io.BytesIO(out.getvalue())))
    assert names(copy.range("", prefix=True)) == sorted(KEYS)  # as at the freeze
    store.snapshotDone()
    assert store._keys.pending() == 0
    assert names(store.range("", prefix=True)) == sorted(set(KEYS) - {"b"} | {"abb"})


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.sampled_from(KEYS)), max_size=30),
       st.lists(st.tuples(st.booleans(), st.sampled_from(KEYS)), max_size=30),
       st.integers(0, 40))
def test_sorted_keys_against_a_set(before, during, foldSlice):
    """SortedKeys through freeze, changes, thaw and folds in slices, against
    a plain set: the frozen base never changes, the logical set is right."""
    index, model = SortedKeys(), set()

    def change(ops):
        for add, key in ops:
            if add and key not in model:
                index.insert(key)
                model.add(key)
            elif not add and key in model:
                index.remove(key)
                model.discard(key)

    change(before)
    frozen = index.freeze()
    captured = list(frozen)
    change(during)
    assert list(frozen) == captured == sorted(set(captured))
    assert list(index.irange("", None)) == sorted(model) and len(index) == len(model)
    index.thaw()
    while index.foldSome(foldSlice or None):
        assert list(index.irange("", None)) == sorted(model)
        change(during[:3])
    assert index.added is None and list(index.base) == sorted(model)
    for lo in KEYS:
        for hi in KEYS + [None]:
            want = [k for k in sorted(model) if lo <= k and (hi is None or k < hi)]
            assert index.count(lo, hi) == len(want)
            assert index.count(lo, hi, False) == len([k for k in want if k != lo])
