"""
The linearizability checker: hand-written histories, a brute-force oracle on
small random histories, histories generated from a sequential register (so
linearizable by construction) and their mutations, and a 2000-op history.
"""

import random
import time

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from twisted_raft.testing.linearizability import (
    CheckResult, Op, check, checkKey, describe,
)


def put(c, v, s, e, key="k"):
    return Op(c, "put", key, value=v, start=s, end=e)


def get(c, r, s, e, key="k"):
    return Op(c, "get", key, start=s, end=e, result=r)


def delete(c, r, s, e, key="k"):
    return Op(c, "delete", key, start=s, end=e, result=r)


def cas(c, exp, v, r, s, e, key="k"):
    return Op(c, "cas", key, value=v, expected=exp, start=s, end=e, result=r)


def assertOk(ops, **kw):
    result = check(ops, **kw)
    assert result.ok and not result.timedOut, describe(result)
    return result


def assertNotLinearizable(ops, key="k", **kw):
    result = check(ops, **kw)
    assert not result.ok and not result.timedOut
    assert result.key == key
    text = describe(result)
    assert "NOT LINEARIZABLE" in text and repr(key) in text
    return result


# -- hand-written histories ---------------------------------------------------


def test_empty_history():
    assertOk([])
    assert describe(check([])) == "linearizable"


def test_sequential_put_get():
    assertOk([put(1, b"a", 0, 1), get(1, b"a", 2, 3), put(2, b"b", 4, 5),
              get(1, b"b", 6, 7)])


def test_get_of_never_written_key_is_absent():
    assertOk([get(1, None, 0, 1)])
    assertNotLinearizable([get(1, b"a", 0, 1)])


@pytest.mark.parametrize("seen", [None, b"a"])
def test_concurrent_put_and_get_sees_either(seen):
    assertOk([put(1, b"a", 0, 10), get(2, seen, 1, 2)])


def test_concurrent_get_cannot_see_unwritten_value():
    assertNotLinearizable([put(1, b"a", 0, 10), get(2, b"b", 1, 2)])


def test_stale_read():
    # The get starts after the second put completed yet returns the first.
    assertNotLinearizable([put(1, b"old", 0, 1), put(1, b"new", 2, 3),
                           get(2, b"old", 4, 5)])


def test_stale_read_is_fine_when_concurrent():
    assertOk([put(1, b"old", 0, 1), put(1, b"new", 2, 5), get(2, b"old", 4, 6)])


def test_reads_cannot_go_backwards():
    # Two concurrent-with-the-put reads: once one sees the new value, a
    # later one (after it completed) cannot see the old one.
    assertOk([put(1, b"new", 0, 10), get(2, None, 1, 2), get(2, b"new", 3, 4)])
    assertNotLinearizable([put(1, b"new", 0, 10), get(2, b"new", 1, 2),
                           get(3, None, 3, 4)])


def test_lost_write():
    assertNotLinearizable([put(1, b"a", 0, 1), put(2, b"b", 2, 3),
                           get(3, b"a", 4, 5), get(3, b"a", 6, 7)])
    assertNotLinearizable([put(1, b"a", 0, 1), get(2, None, 2, 3),
                           get(3, None, 4, 5)])


def test_cas_applied_twice():
    assertNotLinearizable([cas(1, None, b"x", True, 0, 1),
                           cas(2, None, b"y", True, 2, 3)])
    # Concurrent: still only one can win from absent.
    assertNotLinearizable([cas(1, None, b"x", True, 0, 3),
                           cas(2, None, b"y", True, 1, 2)])
    # One wins, the other fails: fine either way round when concurrent.
    assertOk([cas(1, None, b"x", True, 0, 3), cas(2, None, b"y", False, 1, 2)])
    assertOk([cas(1, None, b"x", False, 0, 3), cas(2, None, b"y", True, 1, 2)])
    # With a delete in between both may succeed.
    assertOk([cas(1, None, b"x", True, 0, 1), delete(3, True, 2, 3),
              cas(2, None, b"y", True, 4, 5)])


def test_cas_semantics():
    assertOk([put(1, b"a", 0, 1), cas(1, b"a", b"b", True, 2, 3),
              get(1, b"b", 4, 5), cas(1, b"a", b"c", False, 6, 7),
              get(1, b"b", 8, 9)])
    # A failed cas must not have written.
    assertNotLinearizable([put(1, b"a", 0, 1), cas(1, b"z", b"b", False, 2, 3),
                           get(1, b"b", 4, 5)])
    # A cas that reports failure although the expected value was there.
    assertNotLinearizable([put(1, b"a", 0, 1), cas(1, b"a", b"b", False, 2, 3)])
    # Expected empty bytes is not "absent".
    assertNotLinearizable([cas(1, b"", b"v", True, 0, 1)])
    assertOk([put(1, b"", 0, 1), cas(1, None, b"v", False, 2, 3),
              cas(1, b"", b"v", True, 4, 5), get(1, b"v", 6, 7)])


def test_delete_semantics():
    assertOk([delete(1, False, 0, 1), put(1, b"a", 2, 3), delete(1, True, 4, 5),
              get(1, None, 6, 7), delete(1, False, 8, 9)])
    assertNotLinearizable([delete(1, True, 0, 1)])
    assertNotLinearizable([put(1, b"a", 0, 1), delete(1, True, 2, 3),
                           get(1, b"a", 4, 5)])
    assertNotLinearizable([put(1, b"a", 0, 1), delete(1, False, 2, 3)])
    # Two concurrent deletes of a present key: exactly one saw it.
    assertOk([put(1, b"a", 0, 1), delete(1, True, 2, 5), delete(2, False, 3, 4)])
    assertNotLinearizable([put(1, b"a", 0, 1), delete(1, True, 2, 5),
                           delete(2, True, 3, 4)])


def test_unknown_put_later_visible():
    assertOk([put(1, b"a", 0, None), get(2, None, 1, 2), get(2, b"a", 3, 4),
              get(3, b"a", 5, 6)])


def test_unknown_put_never_visible():
    assertOk([put(1, b"a", 0, None), get(2, None, 1, 2), get(2, None, 3, 4)])


def test_unknown_put_visible_before_it_started():
    assertNotLinearizable([get(2, b"a", 0, 1), put(1, b"a", 2, None)])


def test_unknown_put_flip_flop():
    assertNotLinearizable([put(1, b"a", 0, None), get(2, b"a", 1, 2),
                           get(2, None, 3, 4), get(2, b"a", 5, 6)])


def test_unknown_ops_results_are_unchecked():
    # An unknown get is dropped, whatever it claims; an unknown cas/delete
    # may or may not have taken effect, and its result is not checked.
    assertOk([get(1, b"nonsense", 0, None), get(2, None, 1, 2)])
    assertOk([put(1, b"a", 0, 1), delete(2, False, 2, None),
              get(1, None, 3, 4)])
    assertOk([put(1, b"a", 0, 1), delete(2, False, 2, None),
              get(1, b"a", 3, 4)])
    assertOk([cas(1, None, b"x", False, 0, None), get(2, b"x", 1, 2)])
    # ...but an unknown cas only writes if its expectation held.
    assertNotLinearizable([put(1, b"a", 0, 1), cas(1, b"z", b"x", True, 2, None),
                           get(2, b"x", 3, 4)])


def test_only_unknown_ops():
    assertOk([put(1, b"a", 0, None), delete(2, True, 1, None)])


def test_initial_map():
    assertOk([get(1, b"v", 0, 1)], initial={"k": b"v"})
    assertNotLinearizable([get(1, None, 0, 1)], initial={"k": b"v"})
    assertOk([delete(1, True, 0, 1), get(1, None, 2, 3)], initial={"k": b"v"})
    assertOk([cas(1, b"v", b"w", True, 0, 1)], initial={"k": b"v"})
    # Other keys still start absent.
    assertNotLinearizable([get(1, b"v", 0, 1, key="other")],
                          key="other", initial={"k": b"v"})


def test_equal_timestamps_are_concurrent():
    # The get starts exactly when the put ends: concurrent, so it may read
    # the old value; a strictly later get may not.
    assertOk([put(1, b"a", 0, 5), get(2, None, 5, 6)])
    assertNotLinearizable([put(1, b"a", 0, 5), get(2, None, 5.5, 6)])
    # Zero-length ops.
    assertOk([put(1, b"a", 3, 3), get(2, b"a", 3, 3), get(3, None, 3, 3)])
    assertNotLinearizable([put(1, b"a", 3, 3), get(2, b"a", 4, 4),
                           get(3, None, 5, 5)])


def test_keys_are_independent():
    ops = [put(1, b"a", 0, 1, key="x"), put(1, b"b", 0, 1, key="y"),
           get(2, b"a", 2, 3, key="x"), get(2, b"b", 2, 3, key="y")]
    assertOk(ops)
    ops.append(get(3, b"a", 4, 5, key="y"))
    result = assertNotLinearizable(ops, key="y")
    assert len(result.ops) == 3 and all(op.key == "y" for op in result.ops)


def test_first_failing_key_in_order_of_appearance():
    ops = [get(1, b"z", 0, 1, key="b"), get(1, b"z", 0, 1, key="a")]
    assert check(ops).key == "b"


def test_checkKey():
    ops = [put(1, b"a", 0, 1), get(2, b"a", 2, 3), get(2, b"q", 2, 3, key="o")]
    assert checkKey("k", ops).ok
    assert not checkKey("o", ops).ok
    assert checkKey("o", ops, initial=b"q").ok
    assert checkKey("o", ops, initial={"o": b"q"}).ok
    assert checkKey("k", ops, initial={"k": b"q"}).ok  # the put overwrites it
    assert not checkKey("k", [get(1, None, 0, 1)], initial={"k": b"q"}).ok


def test_failure_report():
    ops = [put(1, b"a", 0, 1), put(2, b"b", 2, 3), get(3, b"a", 4, 5)]
    result = check(ops)
    assert not result.ok
    assert result.ops == ops
    # The search linearizes both puts, then the stale get can't go next.
    assert result.linearization == [0, 1]
    assert result.involved == [2]
    assert "#2 client 3 get() -> b'a'" in result.message
    assert "State after it: b'b'" in result.message
    text = describe(result)
    assert text.startswith("NOT LINEARIZABLE: key 'k'")
    assert "* #2 client 3" in text


def test_invalid_ops():
    with pytest.raises(ValueError):
        check([Op(1, "increment", "k", start=0, end=1)])
    with pytest.raises(ValueError):
        check([get(1, None, 5, 4)])
    with pytest.raises(ValueError):
        check([Op(1, "put", "k", start=0, end=1)])


# -- a brute-force oracle on small random histories ---------------------------


def _precedes(a, b):
    return a.end is not None and a.end < b.start


def _bruteApply(state, op):
    """
    Independent restatement of the spec: (allowed, newState).
    """
    known = op.end is not None
    if op.kind == "put":
        return True, op.value
    if op.kind == "get":
        return (not known or op.result == state), state
    if op.kind == "delete":
        return (not known or op.result == (state is not None)), None
    hit = (state is None and op.expected is None) or (
        state is not None and op.expected is not None and state == op.expected)
    if known and op.result != hit:
        return False, state
    return True, op.value if hit else state


def bruteForce(ops, state=None):
    """
    Linearizable iff some order of a subset of the ops, containing every
    known-outcome op and respecting real-time order among the chosen ones,
    satisfies the spec.  Exhaustive, no memoisation: tiny histories only.
    """
    if all(op.end is None for op in ops):
        return True
    for n, op in enumerate(ops):
        rest = ops[:n] + ops[n + 1:]
        if any(_precedes(other, op) for other in rest):
            continue
        allowed, newState = _bruteApply(state, op)
        if allowed and bruteForce(rest, newState):
            return True
        # An unknown op may also never happen at all.
        if op.end is None and bruteForce(rest, state):
            return True
    return False


VALUES = [b"a", b"b", b""]


@st.composite
def smallOps(draw, keys=("k",)):
    kind = draw(st.sampled_from(["put", "get", "delete", "cas"]))
    key = draw(st.sampled_from(keys))
    start = draw(st.integers(0, 8))
    unknown = draw(st.integers(0, 4)) == 0
    end = None if unknown else draw(st.integers(start, start + 4))
    value = expected = result = None
    maybeValue = st.one_of(st.none(), st.sampled_from(VALUES))
    if kind == "put":
        value = draw(st.sampled_from(VALUES))
    elif kind == "get":
        result = draw(maybeValue)
    elif kind == "delete":
        result = draw(st.booleans())
    else:
        expected = draw(maybeValue)
        value = draw(st.sampled_from(VALUES))
        result = draw(st.booleans())
    return Op(draw(st.integers(1, 3)), kind, key, value=value,
              expected=expected, start=start, end=end, result=result)


@settings(max_examples=400, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(smallOps(), max_size=6), st.one_of(st.none(), st.sampled_from(VALUES)))
def test_agrees_with_brute_force(ops, initial):
    expected = bruteForce(ops, initial)
    result = check(ops, initial={"k": initial} if initial is not None else None)
    assert result.ok == expected, (expected, describe(result))
    assert not result.timedOut


@settings(max_examples=100, deadline=None)
@given(st.lists(smallOps(keys=("x", "y")), max_size=8))
def test_multi_key_agrees_with_brute_force(ops):
    expected = all(bruteForce([op for op in ops if op.key == key])
                   for key in ("x", "y"))
    assert check(ops).ok == expected


# -- histories generated from a sequential register ---------------------------


def simulate(rng, nOps, nClients, keys, values, unknownRate=0.0,
             minGap=0.0, maxGap=3.0, maxLen=5.0, unique=False):
    """
    Generate a history that is linearizable by construction: each client
    issues ops back to back with random durations; each op gets a random
    linearization point inside its interval, and the results come from
    applying the ops to a real register in the order of those points.

    With C{unknownRate}, some ops get an unknown outcome: half of those take
    effect (at their point), half never do.  With C{unique}, every put and
    cas writes a fresh value and a cas expects one written earlier (or
    absence), as a chaos client would do; else values come from C{values}.
    """
    written = list(values)
    clock = [rng.uniform(0, maxGap) for _ in range(nClients)]
    planned = []
    for n in range(nOps):
        c = rng.randrange(nClients)
        start = clock[c]
        end = start + rng.uniform(0, maxLen)
        clock[c] = end + rng.uniform(minGap, maxGap)
        kind = rng.choice(["put", "put", "get", "get", "get", "delete", "cas"])
        op = Op(c, kind, rng.choice(keys), start=start, end=end)
        if kind == "put":
            op.value = b"v%d" % n if unique else rng.choice(values)
        elif kind == "cas":
            op.expected = rng.choice(written[-20:] + [None])
            op.value = b"v%d" % n if unique else rng.choice(values)
        if unique and op.value is not None:
            written.append(op.value)
        applied = True
        if rng.random() < unknownRate:
            op.end = None
            applied = rng.random() < 0.5
        planned.append((rng.uniform(start, end), applied, op))
    store = {}
    for _point, applied, op in sorted(planned, key=lambda p: p[0]):
        if not applied:
            continue
        state = store.get(op.key)
        if op.kind == "put":
            store[op.key] = op.value
        elif op.kind == "get":
            op.result = state
        elif op.kind == "delete":
            op.result = state is not None
            store.pop(op.key, None)
        else:
            op.result = state == op.expected
            if op.result:
                store[op.key] = op.value
    return [op for _p, _a, op in planned]


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32), st.integers(1, 6), st.integers(1, 3),
       st.sampled_from([0.0, 0.1]))
def test_generated_histories_are_linearizable(seed, nClients, nKeys, unknownRate):
    rng = random.Random(seed)
    keys = [f"k{n}" for n in range(nKeys)]
    ops = simulate(rng, 120, nClients, keys, [b"a", b"b", b"c"], unknownRate)
    assertOk(ops)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32), st.integers(1, 6), st.sampled_from([0.0, 0.1]),
       st.data())
def test_mutated_read_is_caught(seed, nClients, unknownRate, data):
    rng = random.Random(seed)
    ops = simulate(rng, 120, nClients, ["k"], [b"a", b"b", b"c"], unknownRate)
    reads = [n for n, op in enumerate(ops) if op.kind == "get" and op.end is not None]
    if not reads:
        return
    n = data.draw(st.sampled_from(reads))
    ops[n].result = b"never written"
    result = check(ops, timeLimit=60)
    assert not result.ok and not result.timedOut and result.key == "k"
    # The search never gets past the bad read.
    assert n not in result.linearization


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**32), st.integers(1, 6))
def test_generated_unique_value_histories(seed, nClients):
    # Unique values, many unknown outcomes: as from a chaos run.
    ops = simulate(random.Random(seed), 300, nClients, ["k"], [],
                   unknownRate=0.2, unique=True)
    assertOk(ops)
    reads = [n for n, op in enumerate(ops) if op.kind == "get" and op.end is not None]
    if reads:
        ops[reads[len(reads) // 2]].result = b"never written"
        result = check(ops, timeLimit=60)
        assert not result.ok and not result.timedOut


def test_mutated_read_in_multi_key_history():
    rng = random.Random(7)
    ops = simulate(rng, 600, 5, ["x", "y", "z"], [b"1", b"2"], unknownRate=0.05)
    assertOk(ops)
    victim = [op for op in ops if op.kind == "get" and op.key == "y"
              and op.end is not None][-1]
    victim.result = b"3"
    assertNotLinearizable(ops, key="y")


# -- a long history on one key ------------------------------------------------


def longHistory(seed=2000, unknownRate=0.0):
    return simulate(random.Random(seed), 2000, 5, ["k"], [b"a", b"b", b"c"],
                    unknownRate=unknownRate, maxGap=1.0)


def timed(fn):
    t0 = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - t0


def test_2000_ops_one_key(capsys):
    ops = longHistory()
    result, elapsed = timed(lambda: check(ops, timeLimit=60))
    assert result.ok and not result.timedOut
    with capsys.disabled():
        print(f"\n2000 ops / 5 clients / 1 key, linearizable: {elapsed:.3f}s")

    # Break a read near the end: the search must exhaust everything before.
    reads = [n for n, op in enumerate(ops) if op.kind == "get"]
    ops[reads[-5]].result = b"never written"
    result, elapsed = timed(lambda: check(ops, timeLimit=60))
    assert not result.ok and not result.timedOut
    assert reads[-5] not in result.linearization
    with capsys.disabled():
        print(f"2000 ops / 5 clients / 1 key, violation near the end: {elapsed:.3f}s")


def test_2000_ops_with_unknown_outcomes(capsys):
    ops = longHistory(seed=2001, unknownRate=0.01)
    assert sum(op.end is None for op in ops) > 5
    result, elapsed = timed(lambda: check(ops, timeLimit=60))
    assert result.ok and not result.timedOut
    with capsys.disabled():
        print(f"\n2000 ops incl. {sum(op.end is None for op in ops)} unknown: "
              f"{elapsed:.3f}s")


def test_long_history_no_recursion_limit():
    # 20000 sequential ops: the search depth is 20000.
    ops = []
    for n in range(10000):
        v = str(n).encode()
        ops.append(put(1, v, 4 * n, 4 * n + 1))
        ops.append(get(2, v, 4 * n + 2, 4 * n + 3))
    assertOk(ops)


def test_time_limit():
    ops = longHistory()
    reads = [n for n, op in enumerate(ops) if op.kind == "get"]
    ops[reads[-1]].result = b"never written"
    result = check(ops, timeLimit=0)
    assert isinstance(result, CheckResult)
    assert result.timedOut and not result.ok and result.key == "k"
    assert "INCONCLUSIVE" in describe(result)
    # A key found not linearizable wins over one that timed out.
    ops.append(get(1, b"bad", 0, 1, key="small"))
    result = check(ops, timeLimit=0)
    assert not result.ok and not result.timedOut and result.key == "small"
