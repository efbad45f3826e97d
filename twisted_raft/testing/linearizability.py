"""
A linearizability checker for raftkv client histories.

(Over 600 lines on purpose: the history model, the search and its memo are
one algorithm, and most of the length is this explanation of it.)

Model
=====

A history is a list of L{Op}s, each one client operation on one key with an
invocation time C{start}, a completion time C{end} and the C{result} the
client saw.  Every key is an independent register whose state is either
absent (C{None}) or some C{bytes}; it starts absent unless C{initial} says
otherwise.  The sequential specification, per operation kind:

  - C{put(value)}: state := value; the result is not checked;
  - C{get()}: result must equal the state (C{None} = not found);
  - C{delete()}: result must be C{state is not None}; state := absent;
  - C{cas(expected, value)}: swapped := (state == expected), where an
    C{expected} of C{None} means "must be absent" (so C{b""} and absent
    differ); result must equal swapped; if swapped, state := value.

A history is linearizable (Herlihy & Wing 1990) if every operation can be
given a linearization point between its invocation and its completion such
that the operations, executed in the order of those points, satisfy the
sequential specification.  Two ops are ordered in real time only if one's
C{end} is strictly less than the other's C{start}: on equal timestamps the
ops are treated as concurrent (the lenient choice: a clock tie is never
taken as evidence of ordering).

Operations with C{end=None} have an unknown outcome (a timeout, a lost
connection): they may take effect at any point after C{start}, or never, and
their result is not checked.  An unknown-outcome C{get} has no effect, so it
is dropped before the search.  Operations that failed with a definite "not
applied" error must not be recorded at all.

Since every op touches a single key, linearizability is local (Herlihy &
Wing's locality / Porcupine's "P-compositionality"): the history is
linearizable iff each key's sub-history is, so L{check} checks key by key,
which is what keeps it fast.

Algorithm
=========

Per key, the Wing & Gong search (J. M. Wing and C. Gong, "Testing and
verifying concurrent objects", J. Parallel Distrib. Comput. 17(1), 1993)
with Lowe's memoisation (G. Lowe, "Testing for linearizability",
Concurrency and Computation: Practice and Experience 29(4), 2017) -- the
"WGL" algorithm also used by Knossos and Porcupine:

  1. Build a doubly linked list of call and return events sorted by time
     (calls before returns on a tie, see above); an unknown-outcome op's
     return is placed at +infinity.
  2. Scan from the head.  The calls met before the first return are exactly
     the minimal ops (nothing still pending must precede them).  For a call,
     apply its op to the current state; if the spec allows it and the
     configuration (set of linearized ops, new state) has not been seen
     before, record it in the cache, push (entry, old state) on an explicit
     stack, unlink the op's call and return from the list, and restart the
     scan from the head.  Otherwise move on to the next entry.
  3. Reaching a return means that op should have been linearized by now but
     no choice works: pop the stack, relink that op, restore the state, and
     continue the scan after its call.  An empty stack means the history is
     not linearizable.
  4. Success as soon as every op with a known outcome is linearized: the
     unknown-outcome ops still pending simply never took effect.

The linearized set is an C{int} bitmask; the cache makes the search visit
each (set, state) configuration at most once.  It also prunes by dominance
over unknown-outcome ops: if (S, state) was visited, then (S + U, state),
where U holds only unknown-outcome ops, has no completion that (S, state)
lacks (those ops are optional and never precede anything), so it is
skipped.  The cache therefore maps (known-outcome ops linearized, state) to
the unknown-outcome sets seen with it, and a configuration is new only if
none of those is a subset of its own.  In particular an unknown-outcome op
that would not change the state (a failing cas, a delete of an absent key)
is never tried.  The stack is explicit, so
long histories do not hit Python's recursion limit.  The worst case is
still exponential (the problem is NP-complete): many concurrent clients, or
many unknown-outcome ops (each one stays a candidate forever), can blow up a
failing search, hence C{timeLimit}.  Measured: 2000 ops on one key from 5
clients take well under a second either way, but a *failing* 2000-op
history with ~3% unknown-outcome ops can exceed 30 s (a linearizable one
stays fast), because the set of unknown ops used so far differs between
otherwise equal configurations.

Usage::

    result = check(history, initial={"k": b"v"}, timeLimit=30)
    if result.timedOut: ...           # inconclusive
    assert result.ok, describe(result)
"""

import time
from dataclasses import dataclass, field

__all__ = ["Op", "CheckResult", "check", "checkKey", "describe", "KINDS"]

KINDS = ("put", "get", "delete", "cas")

_INF = float("inf")

# How many search steps between two looks at the clock.
_CLOCK_EVERY = 1024


@dataclass
class Op:
    """
    One client operation on one key.

    @ivar client: who issued it.
    @ivar kind: C{"put"}, C{"get"}, C{"delete"} or C{"cas"}.
    @ivar key: the key.
    @ivar value: put: the value written; cas: the new value; else C{None}.
    @ivar expected: cas only: the expected current value, C{None} meaning the
        key must be absent.
    @ivar start: invocation time.
    @ivar end: completion time, or C{None} if the outcome is unknown (the op
        may take effect at any time after C{start}, or never, and its result
        is not checked).
    @ivar result: get: C{bytes} or C{None} (not found); delete: C{bool}
        (existed); cas: C{bool} (swapped); put: ignored.
    """

    client: int
    kind: str
    key: str
    value: bytes | None = None
    expected: bytes | None = None
    start: float = 0.0
    end: float | None = None
    result: object = None


@dataclass
class CheckResult:
    """
    The verdict of L{check} / L{checkKey}.

    @ivar ok: C{True} only if the history was proven linearizable.
    @ivar key: the first key found not linearizable (or, if C{timedOut}, the
        first key whose search was cut short).
    @ivar message: a human-readable explanation.
    @ivar ops: all the ops of that key, as given (the C{#n} in C{message}
        index this list).
    @ivar timedOut: the time limit ran out before a verdict: C{ok} is then
        C{False} but the result is inconclusive, not a violation.
    @ivar linearization: when a key failed, the longest linearization the
        search reached, as indices into C{ops}.
    @ivar involved: when a key failed, indices into C{ops} of the ops at the
        point where the search got stuck (the op that had to be linearized
        next and the other candidates).
    @ivar steps: search steps taken (summed over the keys checked), a
        machine-independent measure of the work done.
    """

    ok: bool
    key: str | None = None
    message: str = ""
    ops: list = field(default_factory=list)
    timedOut: bool = False
    linearization: list = field(default_factory=list)
    involved: list = field(default_factory=list)
    steps: int = 0


# -- the sequential specification ---------------------------------------------


def _step(state, kind, value, expected, result, known):
    """
    Apply one op to the register state.

    @return: C{(allowed, newState)}; C{allowed} is whether the op's recorded
        result is what the spec gives in C{state} (always true when the
        outcome is unknown).
    """
    if kind == "put":
        return True, value
    if kind == "get":
        return (not known or result == state), state
    if kind == "delete":
        return (not known or bool(result) == (state is not None)), None
    # cas
    swapped = state == expected
    if known and bool(result) != swapped:
        return False, state
    return True, (value if swapped else state)


def _explain(state, op):
    """
    Why a known-outcome op cannot be linearized in C{state} (or C{None}).
    """
    allowed, _ = _step(state, op.kind, op.value, op.expected, op.result, True)
    if allowed:
        return None
    return f"its result is impossible in state {_fmtValue(state)}"


# -- formatting ---------------------------------------------------------------


def _fmtValue(v):
    if v is None:
        return "<absent>"
    if v is _UNREAD:
        return repr(v)
    r = repr(v)
    return r if len(r) <= 40 else r[:37] + "..."


def _fmtTime(t):
    return "?" if t is None else f"{t:.6g}"


def _fmtOp(op, n=None):
    if op.kind == "put":
        what = f"put({_fmtValue(op.value)})"
    elif op.kind == "get":
        what = "get()"
    elif op.kind == "delete":
        what = "delete()"
    else:
        what = f"cas({_fmtValue(op.expected)} -> {_fmtValue(op.value)})"
    if op.end is None:
        res = " -> unknown outcome"
    elif op.kind == "get":
        res = f" -> {_fmtValue(op.result)}"
    elif op.kind in ("delete", "cas"):
        res = f" -> {bool(op.result)}"
    else:
        res = ""
    prefix = "" if n is None else f"#{n} "
    return (f"{prefix}client {op.client} {what}{res} "
            f"[{_fmtTime(op.start)}, {_fmtTime(op.end)}]")


# -- the search ---------------------------------------------------------------


class _Entry:
    __slots__ = ("n", "kind", "time", "match", "prev", "next")

    def __init__(self, n, kind, time):
        self.n = n            # index into the live ops
        self.kind = kind      # _CALL, _RETURN or _OPTIONAL
        self.time = time
        self.match = None     # a known-outcome call's return entry
        self.prev = None
        self.next = None


_CALL, _RETURN, _OPTIONAL = 0, 1, 2


class _Unread:
    """
    The abstract value standing for any value never read or compared.
    """

    def __repr__(self):
        return "<a value never read>"


_UNREAD = _Unread()


class _TimedOut(Exception):
    pass


def _asBytes(v):
    if v is None or isinstance(v, bytes):
        return v
    return bytes(v)


def _validate(op):
    if op.kind not in KINDS:
        raise ValueError(f"unknown op kind {op.kind!r} in {op!r}")
    if op.end is not None and op.end < op.start:
        raise ValueError(f"op ends before it starts: {op!r}")
    if op.kind in ("put", "cas") and op.value is None:
        raise ValueError(f"{op.kind} without a value: {op!r}")


def _linkAll(entries):
    head = _Entry(-1, _RETURN, None)
    last = head
    for e in entries:
        e.prev = last
        last.next = e
        last = e
    return head


def _search(key, ops, initialState, deadline):
    """
    Run WGL over one key's ops (already validated).

    @return: C{(result, steps)}.
    @raise _TimedOut: if C{deadline} passes.
    """
    # The ops that take part in the search: unknown-outcome gets have no
    # effect and an unchecked result, so they are dropped.
    live = [n for n, op in enumerate(ops)
            if not (op.end is None and op.kind == "get")]
    # Abstraction: a value that no known get returned and no cas expects
    # can never be told apart from another such value (only its presence
    # shows), so all of them become one token.  Fewer distinct states, more
    # cache hits, and the symmetry classes below merge.
    observed = set()
    for n in live:
        op = ops[n]
        if op.kind == "get":
            observed.add(_asBytes(op.result))
        elif op.kind == "cas":
            observed.add(_asBytes(op.expected))

    def abstract(v):
        return v if v is None or v in observed else _UNREAD

    realInitial = initialState
    initialState = abstract(initialState)
    kinds, values, expecteds, results, knowns = [], [], [], [], []
    for n in live:
        op = ops[n]
        kinds.append(op.kind)
        values.append(abstract(_asBytes(op.value)))
        expecteds.append(_asBytes(op.expected))
        results.append(_asBytes(op.result) if op.kind == "get" else op.result)
        knowns.append(op.end is not None)
    remaining = sum(knowns)
    if remaining == 0:
        return CheckResult(ok=True), 0

    # The main list: known-outcome calls and returns by time, calls before
    # returns on a tie (so an op ending at t and one starting at t are
    # concurrent).  The optional list: unknown-outcome calls by start time
    # (their returns would all be at +infinity).
    events = []
    optional = []
    bits = [0] * len(live)
    nKnown = nUnknown = 0
    for i, n in enumerate(live):
        op = ops[n]
        if knowns[i]:
            call = _Entry(i, _CALL, op.start)
            call.match = _Entry(i, _RETURN, op.end)
            events.append((op.start, 0, i, call))
            events.append((op.end, 1, i, call.match))
            bits[i] = 1 << nKnown
            nKnown += 1
        else:
            optional.append((op.start, i, _Entry(i, _OPTIONAL, op.start)))
            bits[i] = 1 << nUnknown
            nUnknown += 1
    events.sort(key=lambda e: e[:3])
    optional.sort(key=lambda e: e[:2])
    # Symmetry: unknown-outcome ops with the same effect (kind, value,
    # expected) form a class; once invoked they are interchangeable, so only
    # the earliest-invoked pending member of a class is ever tried: a
    # member is a candidate only if its rank is the number used so far.
    classOf = [0] * len(live)
    rank = [0] * len(live)
    classes = {}
    sizes = []
    for _t, i, _e in optional:
        c = classes.setdefault((kinds[i], values[i], expecteds[i]), len(classes))
        if c == len(sizes):
            sizes.append(0)
        classOf[i] = c
        rank[i] = sizes[c]
        sizes[c] += 1
    used = [0] * len(classes)
    head = _linkAll([e[3] for e in events])
    optHead = _linkAll([e[2] for e in optional])

    # (known mask, state) -> the unknown masks seen with it.
    cache = {(0, initialState): [0]}
    # Before each lifted op: (its entry, state, known mask, unknown mask,
    # the blocking return at that point).
    stack = []
    state = initialState
    kmask = umask = 0
    steps = 0
    # The furthest point reached, in known-outcome ops linearized:
    # (count, [i...] linearized, state, blocking return entry).
    best = None

    entry = head.next
    blocking = None  # the first pending return, once the scan reached it
    while True:
        steps += 1
        if deadline is not None and steps % _CLOCK_EVERY == 0:
            if time.monotonic() > deadline:
                raise _TimedOut(steps)
        if entry is not None and entry.kind == _RETURN:
            # The known-outcome candidates are exhausted; the unknown-outcome
            # ops invoked by then are tried last (which lets the dominance
            # pruning work: configurations without them come first).
            blocking = entry
            entry = optHead.next
            continue
        if entry is not None and (entry.kind == _CALL
                                  or entry.time <= blocking.time):
            i = entry.n
            if entry.kind == _OPTIONAL and rank[i] != used[classOf[i]]:
                entry = entry.next
                continue
            allowed, newState = _step(state, kinds[i], values[i], expecteds[i],
                                      results[i], knowns[i])
            if allowed:
                if knowns[i]:
                    newK, newU = kmask | bits[i], umask
                else:
                    newK, newU = kmask, umask | bits[i]
                seen = cache.get((newK, newState))
                if seen is None:
                    cache[newK, newState] = [newU]
                    fresh = True
                else:
                    # Dominated if some seen unknown mask is a subset of newU.
                    fresh = True
                    for m in seen:
                        if m & newU == m:
                            fresh = False
                            break
                    if fresh:
                        seen.append(newU)
                if fresh:
                    stack.append((entry, state, kmask, umask, blocking))
                    state = newState
                    kmask, umask = newK, newU
                    # Lift the op: unlink its call (and return).
                    entry.prev.next = entry.next
                    if entry.next is not None:
                        entry.next.prev = entry.prev
                    ret = entry.match
                    if ret is not None:
                        ret.prev.next = ret.next
                        if ret.next is not None:
                            ret.next.prev = ret.prev
                        remaining -= 1
                        if remaining == 0:
                            return CheckResult(ok=True), steps
                    else:
                        used[classOf[i]] += 1
                    entry = head.next
                    continue
            entry = entry.next
        else:
            # Nothing pending can be linearized before the blocking return:
            # backtrack.
            progress = kmask.bit_count()
            if best is None or progress > best[0]:
                best = (progress, [e[0].n for e in stack], state, blocking)
            if not stack:
                return _failure(key, ops, live, best, knowns, realInitial), steps
            entry, state, kmask, umask, blocking = stack.pop()
            # Unlift: relink the return, then the call (reverse order).
            ret = entry.match
            if ret is not None:
                ret.prev.next = ret
                if ret.next is not None:
                    ret.next.prev = ret
                remaining += 1
            else:
                used[classOf[entry.n]] -= 1
            entry.prev.next = entry
            if entry.next is not None:
                entry.next.prev = entry
            entry = entry.next


def _failure(key, ops, live, best, knowns, state):
    _progress, order, _abstractState, blocking = best
    depth = len(order)
    # Replay the linearization with the real values (the search abstracts
    # values nobody reads).
    for i in order:
        op = ops[live[i]]
        _, state = _step(state, op.kind, _asBytes(op.value),
                         _asBytes(op.expected), None, False)
    done = set(order)
    # The candidates at the stuck point: the calls still pending that were
    # invoked before the blocking op returned.
    blocked = live[blocking.n]
    blockOp = ops[blocked]
    candidates = [i for i in range(len(live))
                  if i not in done and ops[live[i]].start <= blockOp.end]
    lines = [
        f"key {key!r}: history of {len(ops)} ops is not linearizable.",
        f"Longest linearization found: {depth} of {len(live)} ops"
        + (f" ({len(ops) - len(live)} unknown-outcome get(s) dropped)"
           if len(live) < len(ops) else "") + ":",
    ]
    shown = order if len(order) <= 20 else order[-20:]
    if len(order) > len(shown):
        lines.append(f"  ... {len(order) - len(shown)} earlier ops")
    for pos, i in enumerate(shown, len(order) - len(shown) + 1):
        lines.append(f"  {pos}. {_fmtOp(ops[live[i]], live[i])}")
    lines.append(f"State after it: {_fmtValue(state)}")
    lines.append(f"Then {_fmtOp(blockOp, blocked)} must be linearized by "
                 f"{_fmtTime(blockOp.end)}, but no pending op can go next:")
    for i in candidates:
        op = ops[live[i]]
        why = _explain(state, op) if knowns[i] else None
        if why is None:
            why = "leads to a dead end later"
        lines.append(f"  {_fmtOp(op, live[i])}: {why}")
    return CheckResult(
        ok=False, key=key, message="\n".join(lines), ops=list(ops),
        linearization=[live[i] for i in order],
        involved=[live[i] for i in candidates],
    )


# -- the API ------------------------------------------------------------------


def checkKey(key, ops, initial=None, timeLimit=None):
    """
    Check the history of one key.

    @param ops: the ops; any op on another key is ignored.
    @param initial: the key's initial value: C{bytes}, C{None} (absent), or
        a C{dict} of initial values as for L{check}.
    @param timeLimit: seconds after which to give up (C{timedOut=True}).
    """
    if isinstance(initial, dict):
        initial = initial.get(key)
    deadline = None if timeLimit is None else time.monotonic() + timeLimit
    return _checkKey(key, [op for op in ops if op.key == key],
                     _asBytes(initial), deadline)


def _checkKey(key, ops, initialState, deadline):
    for op in ops:
        _validate(op)
    try:
        result, steps = _search(key, ops, initialState, deadline)
    except _TimedOut as e:
        return CheckResult(
            ok=False, key=key, ops=list(ops), timedOut=True, steps=e.args[0],
            message=f"key {key!r}: gave up after the time limit "
                    f"({len(ops)} ops, {e.args[0]} search steps): inconclusive")
    result.steps = steps
    return result


def check(ops, initial=None, timeLimit=None):
    """
    Check that a multi-key history is linearizable, key by key.

    @param ops: a list of L{Op}.
    @param initial: initial values of keys (the rest start absent).
    @param timeLimit: seconds for the whole check; if it runs out before a
        verdict the result has C{ok=False, timedOut=True} (inconclusive),
        unless some key was already found not linearizable.
    @return: a L{CheckResult}; on failure, for the first key (in order of
        first appearance in C{ops}) found not linearizable.
    @raise ValueError: on a malformed op.
    """
    initial = initial or {}
    deadline = None if timeLimit is None else time.monotonic() + timeLimit
    byKey = {}
    for op in ops:
        byKey.setdefault(op.key, []).append(op)
    timedOut = None
    steps = 0
    for key, keyOps in byKey.items():
        result = _checkKey(key, keyOps, _asBytes(initial.get(key)), deadline)
        steps += result.steps
        result.steps = steps
        if result.timedOut:
            if timedOut is None:
                timedOut = result
        elif not result.ok:
            return result
    if timedOut is not None:
        timedOut.message += f"; {len(byKey)} key(s) in the history, none found not linearizable"
        timedOut.steps = steps
        return timedOut
    return CheckResult(ok=True, steps=steps)


def describe(result, maxOps=60):
    """
    A multi-line report of a L{CheckResult}: the verdict, the explanation,
    and the key's ops (sorted by start; for a long history, those around
    where the search got stuck).
    """
    if result.ok:
        return "linearizable"
    verdict = "INCONCLUSIVE (timed out)" if result.timedOut else "NOT LINEARIZABLE"
    lines = [f"{verdict}: key {result.key!r}", result.message]
    ops = result.ops
    if not ops:
        return "\n".join(lines)
    order = sorted(range(len(ops)), key=lambda n: (ops[n].start, n))
    if len(order) > maxOps:
        if result.involved:
            lo = min(ops[n].start for n in result.involved)
            pos = next(p for p, n in enumerate(order) if ops[n].start >= lo)
            first = max(0, pos - maxOps // 2)
        else:
            first = 0
        window = order[first:first + maxOps]
        lines.append(f"Ops of key {result.key!r} ({len(window)} of {len(ops)}, "
                     f"by start time):")
        if first:
            lines.append(f"  ... {first} earlier")
    else:
        first = 0
        window = order
        lines.append(f"Ops of key {result.key!r} (by start time):")
    marked = set(result.involved)
    for n in window:
        lines.append(("* " if n in marked else "  ") + _fmtOp(ops[n], n))
    rest = len(order) - first - len(window)
    if rest > 0:
        lines.append(f"  ... {rest} later")
    return "\n".join(lines)
