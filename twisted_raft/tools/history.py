"""
The history of a C{raftkv chaos} run, pure: its operations to and from
JSON lines (C{--history}, C{--check-history}), and what the operations say
about availability under the injected faults.
"""

import bisect

from twisted_raft.testing.linearizability import Op

WINDOW = 1.0


def opToJSON(op, t0):
    def b(v):
        return None if v is None else v.decode("utf-8", "backslashreplace")

    result = op.result
    if isinstance(result, bytes):
        result = {"bytes": b(result)}
    return {
        "type": "op", "client": op.client, "kind": op.kind, "key": op.key,
        "value": b(op.value), "expected": b(op.expected),
        "start": round(op.start - t0, 6),
        "end": None if op.end is None else round(op.end - t0, 6),
        "result": result,
    }


def opFromJSON(d):
    def b(v):
        return None if v is None else v.encode("utf-8")

    result = d.get("result")
    if isinstance(result, dict):
        result = b(result.get("bytes"))
    return Op(client=d["client"], kind=d["kind"], key=d["key"], value=b(d.get("value")),
              expected=b(d.get("expected")), start=d["start"], end=d.get("end"),
              result=result)


def availability(successes, start, end, faults, window=WINDOW):
    """
    C{successes}: sorted completion times of successful ops.  Split
    C{[start, end)} into windows; a window is "faulty" if a fault was active
    during any of it.  @return: dict with counts and fractions.
    """
    stats = {"all": [0, 0], "faulty": [0, 0], "healthy": [0, 0]}
    t = start
    while t + window <= end + 1e-9:
        lo = bisect.bisect_left(successes, t)
        ok = lo < len(successes) and successes[lo] < t + window
        faulty = any(
            f.injected is not None and f.injected < t + window and (f.healed or end) > t
            for f in faults
        )
        for name in ("all", "faulty" if faulty else "healthy"):
            stats[name][0] += ok
            stats[name][1] += 1
        t += window
    return {k: (ok, n, (ok / n if n else None)) for k, (ok, n) in stats.items()}


def firstSuccessAfter(ops, t, writesOnly=False):
    """Seconds from C{t} to the end of the first successful op started at or after C{t}."""
    best = None
    for op in ops:
        if op.end is None or op.start < t or op.client < 0:
            continue
        if writesOnly and op.kind == "get":
            continue
        if best is None or op.end < best:
            best = op.end
    return None if best is None else best - t


def longestGap(times, start, end):
    """
    The longest stretch of C{[start, end]} with none of C{times} (sorted)
    in it: how long writes stalled while something happened.
    """
    lo = bisect.bisect_left(times, start)
    hi = bisect.bisect_right(times, end)
    marks = [start] + times[lo:hi] + [end]
    return max(b - a for a, b in zip(marks, marks[1:]))
