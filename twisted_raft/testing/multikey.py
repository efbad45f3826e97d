"""
A linearizability checker for histories with ranges and transactions: ops
that are not local to one key, so the per-key decomposition of
L{twisted_raft.testing.linearizability} no longer holds.

Model
=====

The state is every key's record, C{None} (absent) or
C{(value, create_revision, mod_revision, version)}, as L{KVStore} keeps it,
and the revision C{at} of the last op linearized that carries one.  An op
(L{KvOp}) is one of the single-key kinds of L{linearizability.Op}
(C{put}, C{get}, C{delete}, C{cas}) or:

  - C{range}: a L{kvtxn.Range} read; its result is a L{RangeResult};
  - C{txn}: a L{kvtxn.Txn}; its result is a L{TxnResult}, or a
    L{MetadataUnavailable} if it was refused (put with C{prev_kv} and range
    deletes are one-operation transactions).

Revisions.  Every write (put, delete, cas, txn) carries C{revision}, the log
index it took effect at; a range carries the revision its answer gives.  The
revisions are a total order that the answers make visible, so they constrain
the linearization: writes are linearized in revision order, a range at C{R}
between the last write at or below C{R} and the next, and an op invoked
after another returned has a revision at least as high (higher, if it is a
write).  Put and create revisions, versions, and the C{revision} inside a
transaction's ranges, all come from the op's revision.  A write whose
outcome the client did not learn (C{end} C{None}) must still have a
revision: the caller finds it in the committed log (the sim does; one that
is not there never took effect and is left out), and its result is not
checked.

The metadata floor (L{KVStore}): with C{floor} F (the index of the first
C{METADATA_EPOCH} entry, 0 if none), a transaction at a revision below F is
refused, and at or above it, a key last written below F reads as
C{(F, F, 1)}.  A range below F is checked on keys, values and counts only
(the metadata there is provisional by contract).

Decomposition
=============

A range touches every key of the universe it spans (the C{keys} given, plus
every key an op names), a transaction every key it compares or writes and
every key its ranges and deletes span.  Ops that touch a common key are
joined (union-find) into a component; components share no key, so the
history is linearizable iff each component's sub-history is (Herlihy &
Wing's locality, applied to the objects "set of keys of a component").  The
revision order across components is checked apart, in one pass over the
whole history.  Each component is then searched as WGL does (see
L{linearizability}), with the choices the revisions leave it, which make
the search linear: see L{_search}.  C{timeLimit} bounds the whole check;
running out is inconclusive, as in L{linearizability.check}.
"""

import time
from dataclasses import dataclass

from twisted_raft.kvrecords import (
    DeleteResult,
    KeyRange,
    KeyValue,
    MetadataUnavailable,
    PutResult,
    RangeResult,
    TxnResult,
)
from twisted_raft.kvtxn import Delete, Put, Range, Txn
from twisted_raft.testing.linearizability import CheckResult

__all__ = ["KvOp", "check", "describe", "WRITES"]

WRITES = frozenset(("put", "delete", "cas", "txn"))
_KINDS = WRITES | {"get", "range"}
_INF = float("inf")
_CLOCK_EVERY = 1024


@dataclass(eq=False)
class KvOp:
    """
    One client operation: the fields of L{linearizability.Op}, plus
    C{request} (the L{Range} of a C{range}, the L{Txn} of a C{txn}) and
    C{revision} (see the module docstring).  Compared by identity.
    """

    client: int
    kind: str
    key: str = ""
    value: bytes | None = None
    expected: bytes | None = None
    start: float = 0.0
    end: float | None = None
    result: object = None
    request: object = None
    revision: int | None = None


# -- which keys an op touches -------------------------------------------------


def _spanned(request, universe):
    r = KeyRange.of(request.key, request.end, request.prefix)
    return {k for k in universe if r.contains(k)}


def _named(op):
    """The keys an op names outright (the universe is built from them)."""
    if op.kind == "range":
        return set()
    if op.kind != "txn":
        return {op.key}
    txn = op.request
    named = {c.key for c in txn.compares}
    for o in txn.success + txn.failure:
        if type(o) is Put or (type(o) is Delete and o.end is None and not o.prefix):
            named.add(o.key)
    return named


def _touched(op, universe):
    if op.kind == "range":
        return _spanned(op.request, universe)
    if op.kind != "txn":
        return {op.key}
    touched = _named(op)
    for o in op.request.success + op.request.failure:
        if type(o) is not Put:
            touched |= _spanned(o, universe)
    return touched


# -- the sequential specification ---------------------------------------------


def _meta(record, floor):
    """(create, mod, version) as read under the metadata floor."""
    _, create, mod, version = record
    if mod < floor:
        return floor, floor, 1
    return create, mod, version


def _floorAt(floor, revision):
    return floor if floor and revision is not None and revision > floor else 0


class _Machine:
    """The model of one component: its keys in order, and the spec."""

    def __init__(self, keys, floor):
        self.keys = sorted(keys)
        self.position = {k: i for i, k in enumerate(self.keys)}
        self.floor = floor

    def _kv(self, state, i, floor, keysOnly=False):
        record = state[i]
        create, mod, version = _meta(record, floor)
        return KeyValue(self.keys[i], None if keysOnly else record[0], create, mod, version)

    def _put(self, state, key, value, revision, floor):
        i = self.position[key]
        old = state[i]
        if old is None:
            state[i] = (value, revision, revision, 1)
        else:
            create, _, version = _meta(old, floor)
            state[i] = (value, create, revision, version + 1)
        return old

    def _range(self, state, o, revision, floor):
        r = KeyRange.of(o.key, o.end, o.prefix)
        present = [i for i, k in enumerate(self.keys) if state[i] is not None and r.contains(k)
                   and (o.after is None or o.after < r.lo or k > o.after)]
        if o.countOnly:
            return RangeResult([], False, len(present), revision)
        shown = present[:o.limit] if o.limit else present
        kvs = [self._kv(state, i, floor, o.keysOnly) for i in shown]
        return RangeResult(kvs, len(kvs) < len(present), len(present), revision)

    def _compare(self, state, c, floor):
        i = self.position[c.key]
        record = state[i]
        if c.target == "value":
            if record is None:
                return False
            have = record[0]
        elif record is None:
            have = 0
        else:
            create, mod, version = _meta(record, floor)
            have = {"version": version, "create_revision": create, "mod_revision": mod}[c.target]
        want = c.value
        if c.op == "==":
            return have == want
        if c.op == "!=":
            return have != want
        return have < want if c.op == "<" else have > want

    def step(self, state, op, known):
        """
        Apply C{op}; @return: C{(allowed, newState)}, C{allowed} whether
        its recorded result is the spec's (always, if not C{known}).
        """
        kind = op.kind
        revision = op.revision
        floor = _floorAt(self.floor, revision)
        if kind == "get":
            i = self.position[op.key]
            value = None if state[i] is None else state[i][0]
            return (not known or op.result == value), state
        if kind == "range":
            want = self._range(state, op.request, revision, floor)
            return (not known or _sameRange(op.result, want, bool(floor))), state
        new = list(state)
        if kind == "put":
            self._put(new, op.key, op.value, revision, floor)
            return True, tuple(new)
        if kind == "delete":
            i = self.position[op.key]
            existed = new[i] is not None
            new[i] = None
            return (not known or bool(op.result) == existed), tuple(new)
        if kind == "cas":
            i = self.position[op.key]
            current = None if new[i] is None else new[i][0]
            swapped = current == op.expected
            if known and bool(op.result) != swapped:
                return False, state
            if swapped:
                self._put(new, op.key, op.value, revision, floor)
            return True, tuple(new)
        # txn
        if not floor:
            return (not known or type(op.result) is MetadataUnavailable), state
        txn = op.request
        succeeded = all(self._compare(new, c, floor) for c in txn.compares)
        responses = []
        for o in txn.success if succeeded else txn.failure:
            t = type(o)
            if t is Put:
                old = self._put(new, o.key, o.value, revision, floor)
                prev = None
                if o.prevKv and old is not None:
                    prev = KeyValue(o.key, old[0], *_meta(old, floor))
                responses.append(PutResult(prev))
            elif t is Delete:
                r = KeyRange.of(o.key, o.end, o.prefix)
                gone = [i for i, k in enumerate(self.keys) if new[i] is not None and r.contains(k)]
                prev = [self._kv(new, i, floor) for i in gone]
                for i in gone:
                    new[i] = None
                responses.append(DeleteResult(len(prev), prev if o.prevKv else None))
            else:
                responses.append(self._range(new, o, revision, floor))
        want = TxnResult(succeeded, responses)
        return (not known or op.result == want), tuple(new)


def _sameRange(got, want, withMeta):
    if not isinstance(got, RangeResult):
        return False
    if withMeta:
        return got == want
    strip = [(kv.key, kv.value) for kv in want.kvs]
    return ([(kv.key, kv.value) for kv in got.kvs] == strip and got.more == want.more
            and got.count == want.count and got.revision == want.revision)


# -- the search ---------------------------------------------------------------


class _TimedOut(Exception):
    pass


def _search(machine, ops, deadline, counter):
    """
    The search over one component's ops (every one must be linearized: see
    the module docstring).  @return: C{None}, or (linearized op indexes,
    state, the blocking op, the candidates) where it got stuck.

    WGL's search, with the choices revisions leave it: a candidate is an op
    invoked before the earliest return still pending (real time), and

      - a read (get, range) that the current state answers (a range: its
        revision in the gap between the last write linearized and the
        next) is linearized at once, never undone: it changes no state,
        and every op that must precede it is linearized already, so a
        linearization with it later exists only if one with it now does;
      - otherwise the next write in revision order, if invoked, is the only
        op that can go; if its result is not the spec's, or it is not
        invoked yet, the op with the earliest pending return can never be
        linearized: the history is not linearizable (no other choice was
        ever open, so there is nothing to backtrack to).

    So the search is linear in the history (times the candidates looked at).
    """
    order = sorted(range(len(ops)), key=lambda i: (ops[i].start, i))
    ends = sorted((_INF if op.end is None else op.end, i) for i, op in enumerate(ops))
    writes = sorted((op.revision, i) for i, op in enumerate(ops) if op.kind in WRITES)
    done = [False] * len(ops)
    state = (None,) * len(machine.keys)
    linearized = []
    invoked = 0  # ops in `order` whose call is before the earliest pending return
    firstEnd = 0  # position in `ends` of the earliest pending return
    k = 0  # writes linearized
    reads = []  # invoked reads not linearized
    while len(linearized) < len(ops):
        counter[0] += 1
        if deadline is not None and counter[0] % _CLOCK_EVERY == 0 and time.monotonic() > deadline:
            raise _TimedOut()
        while done[ends[firstEnd][1]]:
            firstEnd += 1
        horizon = ends[firstEnd][0]
        while invoked < len(order) and ops[order[invoked]].start <= horizon:
            i = order[invoked]
            if ops[i].kind not in WRITES:
                reads.append(i)
            invoked += 1
        low = writes[k - 1][0] if k else -1
        high = writes[k][0] if k < len(writes) else _INF
        waiting = []
        for i in reads:
            op = ops[i]
            fits = op.revision is None or low <= op.revision < high
            if fits and machine.step(state, op, op.end is not None)[0]:
                done[i] = True
                linearized.append(i)
            else:
                waiting.append(i)
        if len(waiting) < len(reads):
            reads = waiting
            continue
        if k < len(writes):
            i = writes[k][1]
            op = ops[i]
            if op.start <= horizon:
                allowed, newState = machine.step(state, op, op.end is not None)
                if allowed:
                    state = newState
                    done[i] = True
                    linearized.append(i)
                    k += 1
                    continue
        candidates = reads + ([writes[k][1]] if k < len(writes) else [])
        return linearized, state, ends[firstEnd][1], candidates
    return None


def _revisionOrder(ops):
    """
    The revision order respects real time: @return: C{None}, or a pair of
    ops C{(a, b)} where C{a} returned before C{b} was invoked but C{b}'s
    revision is below C{a}'s (or equal, for a write C{b}).
    """
    dated = [op for op in ops if op.revision is not None]
    byEnd = sorted((op for op in dated if op.end is not None), key=lambda op: op.end)
    top = None
    n = 0
    for b in sorted(dated, key=lambda op: op.start):
        while n < len(byEnd) and byEnd[n].end < b.start:
            if top is None or byEnd[n].revision > top.revision:
                top = byEnd[n]
            n += 1
        if top is not None and (b.revision < top.revision
                                or (b.kind in WRITES and b.revision == top.revision)):
            return top, b
    return None


def _validate(op):
    if op.kind not in _KINDS:
        raise ValueError(f"unknown op kind {op.kind!r} in {op!r}")
    if op.end is not None and op.end < op.start:
        raise ValueError(f"op ends before it starts: {op!r}")
    if op.kind in WRITES and op.revision is None:
        raise ValueError(f"a write needs its revision (find it in the log): {op!r}")
    if op.kind == "range" and (op.revision is None or not isinstance(op.request, Range)):
        raise ValueError(f"a range needs a Range request and a revision: {op!r}")
    if op.kind == "txn" and not isinstance(op.request, Txn):
        raise ValueError(f"a txn needs a Txn request: {op!r}")


def components(ops, keys=()):
    """
    Partition C{ops} by the keys they touch: @return: a list of
    C{(keys, ops)}, ops in the given order, each op in exactly one.
    """
    universe = set(keys)
    for op in ops:
        universe |= _named(op)
    parent = {}

    def find(k):
        while parent.setdefault(k, k) != k:
            parent[k] = parent[parent[k]]
            k = parent[k]
        return k

    touched = []
    for op in ops:
        ks = sorted(_touched(op, universe))
        touched.append(ks)
        for k in ks[1:]:
            parent[find(k)] = find(ks[0])
    groups = {}
    for op, ks in zip(ops, touched):
        root = find(ks[0]) if ks else ("nothing", id(op))
        groups.setdefault(root, []).append((op, ks))
    out = []
    for members in groups.values():
        allKeys = set()
        for _, ks in members:
            allKeys.update(ks)
        out.append((sorted(allKeys), [op for op, _ in members]))
    return out


def check(ops, keys=(), floor=0, timeLimit=None):
    """
    Check a history of L{KvOp}s (see the module docstring).

    @param keys: the key universe ranges are matched against (every key an
        op names is in it anyway).
    @param floor: the metadata floor, 0 if no C{METADATA_EPOCH} applied.
    @return: a L{CheckResult}; C{key} names the component's keys.
    @raise ValueError: on a malformed op.
    """
    for op in ops:
        _validate(op)
    ops = [op for op in ops if not (op.end is None and op.kind not in WRITES)]
    wrong = _revisionOrder(ops)
    if wrong is not None:
        a, b = wrong
        return CheckResult(
            ok=False, key="(revision order)", ops=[a, b], involved=[0, 1],
            message=(f"{_fmtOp(b)} was invoked after {_fmtOp(a)} returned, "
                     f"yet its revision is not above it: revisions must follow real time"),
        )
    deadline = None if timeLimit is None else time.monotonic() + timeLimit
    counter = [0]
    for ks, group in sorted(components(ops, keys), key=lambda c: -len(c[1])):
        machine = _Machine(ks, floor)
        try:
            stuck = _search(machine, group, deadline, counter)
        except _TimedOut:
            return CheckResult(
                ok=False, key=",".join(ks), ops=group, timedOut=True, steps=counter[0],
                message=f"keys {ks}: gave up after the time limit ({len(group)} ops): "
                        "inconclusive")
        if stuck is not None:
            return _failure(machine, group, stuck, counter[0])
    return CheckResult(ok=True, steps=counter[0])


# -- reports ------------------------------------------------------------------


def _fmtValue(v):
    r = repr(v)
    return r if len(r) <= 60 else r[:57] + "..."


def _fmtOp(op, n=None):
    if op.kind in ("range", "txn"):
        what = f"{op.kind}({op.request!r})"
    elif op.kind == "put":
        what = f"put({op.key!r}, {op.value!r})"
    elif op.kind == "cas":
        what = f"cas({op.key!r}, {op.expected!r} -> {op.value!r})"
    else:
        what = f"{op.kind}({op.key!r})"
    res = " -> unknown outcome" if op.end is None else (
        "" if op.kind == "put" else f" -> {_fmtValue(op.result)}")
    rev = "" if op.revision is None else f" @{op.revision}"
    end = "?" if op.end is None else f"{op.end:.6g}"
    prefix = "" if n is None else f"#{n} "
    return f"{prefix}client {op.client} {what}{res}{rev} [{op.start:.6g}, {end}]"


def _fmtState(machine, state):
    shown = [f"{k}={'<absent>' if r is None else r!r}" for k, r in zip(machine.keys, state)]
    return "{" + ", ".join(shown) + "}"


def _failure(machine, ops, stuck, steps):
    order, state, blocked, pending = stuck
    depth = len(order)
    lines = [f"keys {machine.keys}: history of {len(ops)} ops is not linearizable.",
             f"Longest linearization found: {depth} of {len(ops)} ops:"]
    shown = order[-20:]
    if len(order) > len(shown):
        lines.append(f"  ... {len(order) - len(shown)} earlier ops")
    for pos, i in enumerate(shown, len(order) - len(shown) + 1):
        lines.append(f"  {pos}. {_fmtOp(ops[i], i)}")
    lines.append(f"State after it: {_fmtState(machine, state)}")
    lines.append(f"Then {_fmtOp(ops[blocked], blocked)} must be linearized by its return, "
                 "but no candidate can go next:")
    for i in pending:
        lines.append(f"  {_fmtOp(ops[i], i)}")
    return CheckResult(ok=False, key=",".join(machine.keys), message="\n".join(lines),
                       ops=list(ops), linearization=order, involved=pending, steps=steps)


def describe(result):
    """A multi-line report of a L{check} result."""
    if result.ok:
        return "linearizable"
    verdict = "INCONCLUSIVE (timed out)" if result.timedOut else "NOT LINEARIZABLE"
    return f"{verdict}: {result.key}\n{result.message}"
