"""
Watch completeness in C{raftkv chaos}, the judging part (pure): what one
watcher of the workload's prefix was handed, checked against what is known
to be true.

Truths, strongest first:

  - The committed log (L{LogWindow}s, read offline from the nodes' data
    dirs by L{twisted_raft.tools.eventlog} after the run): for the revisions
    a node's write-ahead log still holds, the events delivered must be
    exactly the events those entries made, in the same order.  Revisions
    that went into a snapshot can no longer be replayed; what covers them
    is the rest of this list.
  - Acknowledged writes: every write whose answer gave its revision appears
    exactly once, at that revision, with its key and value (a delete that
    deleted: a delete event there; a compare-and-set that did not swap or a
    delete of nothing: no event of that key there).
  - Per key, the metadata chain: a put of an existing key has version + 1
    and the same create revision, a put of a missing key version 1 and
    create revision = its own, a delete only of an existing key.  A missed
    event of a key breaks the chain at its next event (except a missed put
    just before a delete: the log check covers that).
  - The end state: the keys rebuilt from the state at the start (a
    linearizable range read) and the events must equal a final linearizable
    range read of the prefix: values, revisions and versions.

And, on the delivered sequence alone: no event twice, revisions never going
down, none at or before the start.  A watcher refused as COMPACTED (it fell
behind every node's history) or that never caught up with the final read is
reported: the checks then cover only what it was handed.
"""

from collections import Counter

from twisted_raft.kvrecords import DELETE_EVENT, PUT_EVENT

MAX_PROBLEMS = 20
"""Violations listed (each kind stops being listed once this many are)."""


def eventTuple(e):
    """An L{Event} as a comparable tuple."""
    return (e.type, e.key, e.value, e.create_revision, e.mod_revision, e.version)


def describeEvent(e):
    if e.type == DELETE_EVENT:
        return f"delete {e.key!r} @{e.mod_revision}"
    return (f"put {e.key!r}={e.value!r} @{e.mod_revision} (create {e.create_revision},"
            f" version {e.version})")


class LogWindow:
    """
    What one node's data dir says about revisions C{(first - 1, last]}:
    C{events}, every event of the prefix those committed entries made.
    """

    def __init__(self, node, first, last, events, snapshot=0):
        self.node = node
        self.first = first
        self.last = last
        self.events = list(events)
        self.snapshot = snapshot  # the index its snapshot covers

    def toJSON(self):
        return {"node": self.node, "first": self.first, "last": self.last,
                "events": len(self.events), "snapshot": self.snapshot}


class WatchCheck:
    """
    @param startRevision: the revision the watch started from: the initial
        state (C{initial}, L{KeyValue}s by key) was read at
        C{startRevision - 1}.
    """

    def __init__(self, prefix, startRevision, initial=()):
        self.prefix = prefix
        self.startRevision = startRevision
        self.initial = {kv.key: kv for kv in initial}
        self.events = []  # in the order delivered
        self.batches = 0
        self.acks = []  # (kind, key, value, revision)
        self.endRevision = None  # the watcher's next revision when it stopped
        self.compacted = None  # the oldest revision a node could serve, if refused so
        self.failure = None  # how the watch ended otherwise, if it failed
        self.final = None  # (revision, {key: KeyValue}) of the final read
        self.logs = []
        self.logProblems = []  # data dirs that could not be read
        self.resumes = 0
        self.restarts = 0  # watches the run re-opened itself (none: the library follows)

    # -- what happened -------------------------------------------------------------

    def delivered(self, events):
        """A batch handed to the watcher's C{onEvents}."""
        self.batches += 1
        self.events.extend(events)

    def acknowledged(self, kind, key, value, revision):
        """
        An acknowledged write of C{key} at C{revision}: C{kind} C{"put"}
        (with C{value}), C{"delete"} (it deleted the key) or C{"none"} (it
        changed nothing of the key: a compare-and-set that did not swap, a
        delete of a missing key).
        """
        if key.startswith(self.prefix):
            self.acks.append((kind, key, value, revision))

    def finalRead(self, revision, kvs):
        self.final = (revision, {kv.key: kv for kv in kvs})

    def addLog(self, window):
        self.logs.append(window)

    # -- the verdict ------------------------------------------------------------------

    def problems(self):
        """@return: every violation found, one line each (at most
        L{MAX_PROBLEMS} of each kind)."""
        found = []
        for check in (self._sequenceProblems, self._chainProblems, self._ackProblems,
                      self._finalProblems, self._logProblems):
            found.extend(check()[:MAX_PROBLEMS])
        if self.failure is not None:
            found.append(f"the watch failed: {self.failure}")
        return found

    def _sequenceProblems(self):
        found = []
        seen = set()
        last = 0
        for e in self.events:
            at = (e.mod_revision, e.key)
            if at in seen:
                found.append(f"duplicated event: {describeEvent(e)} delivered twice")
            elif e.mod_revision < last:
                found.append(f"out of order: {describeEvent(e)} delivered after revision {last}")
            if e.mod_revision < self.startRevision:
                found.append(f"{describeEvent(e)} is before the watch's start revision "
                             f"{self.startRevision}")
            if not e.key.startswith(self.prefix):
                found.append(f"{describeEvent(e)} is outside the prefix {self.prefix!r}")
            seen.add(at)
            last = max(last, e.mod_revision)
        return found

    def replay(self, upTo=None):
        """
        The keys rebuilt from the initial state and the events up to
        C{upTo}: C{({key: (value, create, mod, version)}, problems)}, the
        problems being breaks of the per-key metadata chain.
        """
        state = {k: (kv.value, kv.create_revision, kv.mod_revision, kv.version)
                 for k, kv in self.initial.items()}
        found = []
        for e in self.events:
            if upTo is not None and e.mod_revision > upTo:
                break
            before = state.get(e.key)
            if e.type == DELETE_EVENT:
                if before is None:
                    found.append(f"{describeEvent(e)}: the key did not exist (an event of it "
                                 "was missed)")
                state.pop(e.key, None)
                continue
            if e.type != PUT_EVENT:
                found.append(f"{describeEvent(e)}: unknown event type {e.type!r}")
                continue
            if before is None:
                want = (e.mod_revision, 1)
                what = "a new key"
            else:
                want = (before[1], before[3] + 1)
                what = f"after version {before[3]} at revision {before[2]}"
            if (e.create_revision, e.version) != want:
                found.append(f"{describeEvent(e)}, {what}: expected create {want[0]}, version "
                             f"{want[1]} (an event of the key was missed)")
            state[e.key] = (e.value, e.create_revision, e.mod_revision, e.version)
        return state, found

    def _chainProblems(self):
        return self.replay()[1]

    def _covered(self, revision):
        """Whether the watcher was handed everything up to C{revision}."""
        return self.endRevision is not None and revision < self.endRevision

    def _ackProblems(self):
        found = []
        byRevision = {}
        for e in self.events:
            byRevision.setdefault((e.mod_revision, e.key), []).append(e)
        for kind, key, value, revision in self.acks:
            if revision < self.startRevision or not self._covered(revision):
                continue
            got = byRevision.get((revision, key), [])
            if kind == "none":
                if got:
                    found.append(f"acknowledged as no change of {key!r} at revision {revision}, "
                                 f"but delivered {describeEvent(got[0])}")
                continue
            if not got:
                found.append(f"acknowledged {kind} of {key!r} at revision {revision} was never "
                             "delivered")
            elif len(got) > 1:
                found.append(f"acknowledged {kind} of {key!r} at revision {revision} delivered "
                             f"{len(got)} times")
            elif got[0].type != kind or (kind == "put" and got[0].value != value):
                want = f"{kind} {key!r}" + (f"={value!r}" if kind == "put" else "")
                found.append(f"acknowledged {want} at revision {revision}, delivered "
                             f"{describeEvent(got[0])}")
        return found

    def _finalProblems(self):
        if self.final is None or self.compacted is not None:
            return []
        revision, kvs = self.final
        if not self._covered(revision):
            return [f"the watcher stopped at revision {self.endRevision}, before the final "
                    f"read's revision {revision}"]
        state, _ = self.replay(revision)
        found = []
        for key in sorted(set(state) | set(kvs)):
            got, kv = state.get(key), kvs.get(key)
            want = None if kv is None else (kv.value, kv.create_revision, kv.mod_revision,
                                             kv.version)
            if got != want:
                found.append(f"{key!r}: the events make {got!r}, the final read at revision "
                             f"{revision} says {want!r}")
        return found

    def _logProblems(self):
        found = []
        for window in self.logs:
            last = window.last if self.endRevision is None else min(
                window.last, self.endRevision - 1)
            first = max(window.first, self.startRevision)
            want = [eventTuple(e) for e in window.events if first <= e.mod_revision <= last]
            got = [eventTuple(e) for e in self.events if first <= e.mod_revision <= last]
            if want == got:
                continue
            wanted, gotten = Counter(want), Counter(got)
            missing = [t for t in want if gotten[t] < wanted[t]]
            extra = [t for t in got if wanted[t] < gotten[t]]
            what = []
            if missing:
                what.append(f"{len(missing)} committed event(s) never delivered, the first "
                            f"{_tupleText(missing[0])}")
            if extra:
                what.append(f"{len(extra)} delivered event(s) not in the log, the first "
                            f"{_tupleText(extra[0])}")
            if not what:
                what.append("the same events in another order or repeated")
            found.append(f"n{window.node}'s log, revisions {first}-{last}: " + "; ".join(what))
        return found

    def logCoverage(self):
        """The revisions, from the start on, that some node's log checked:
        a sorted list of disjoint C{(first, last)}."""
        spans = []
        for w in self.logs:
            last = w.last if self.endRevision is None else min(w.last, self.endRevision - 1)
            first = max(w.first, self.startRevision)
            if first <= last:
                spans.append((first, last))
        merged = []
        for first, last in sorted(spans):
            if merged and first <= merged[-1][1] + 1:
                merged[-1] = (merged[-1][0], max(merged[-1][1], last))
            else:
                merged.append((first, last))
        return merged

    def verdict(self):
        """
        @return: C{(status, lines)}: C{"ok"}, C{"violation"} (lines: the
            problems) or C{"inconclusive"} (compacted: what was handed
            passed, the rest was not checked).
        """
        problems = self.problems()
        if problems:
            return "violation", problems
        coverage = self.logCoverage()
        checked = sum(1 for a in self.acks
                      if a[3] >= self.startRevision and self._covered(a[3]))
        lines = [
            f"{len(self.events)} events in {self.batches} batches from revision "
            f"{self.startRevision} to {None if self.endRevision is None else self.endRevision - 1}"
            f" ({self.resumes} resumes on another node, {self.restarts} restarts): none twice,"
            " in revision order",
            f"acknowledged writes delivered at their revisions: {checked}/{len(self.acks)}; "
            "per-key versions unbroken"
            + ("; the end state equals the final read" if self.final else ""),
        ]
        if coverage:
            n = sum(last - first + 1 for first, last in coverage)
            spans = ", ".join(f"{a}-{b}" for a, b in coverage)
            line = f"equal to the committed log for {n} revisions ({spans})"
            if coverage[0][0] > self.startRevision or len(coverage) > 1:
                line += ("; the others were compacted into every node's snapshot: checked by"
                         " the acknowledged writes, the versions and the final read")
            lines.append(line)
        else:
            lines.append("no revision of the run left in a node's write-ahead log: not "
                         "compared with the log")
        for problem in self.logProblems:
            lines.append(f"log not read: {problem}")
        if self.compacted is not None:
            return "inconclusive", [
                f"the watcher fell behind every node's history (COMPACTED, oldest revision "
                f"{self.compacted}) at revision {self.endRevision}: checked only up to there",
            ] + lines
        return "ok", lines

    def toJSON(self):
        status, lines = self.verdict()
        coverage = self.logCoverage()
        return {
            "enabled": True, "ok": status == "ok", "status": status,
            "problems": lines if status == "violation" else [],
            "prefix": self.prefix, "start_revision": self.startRevision,
            "end_revision": self.endRevision, "events": len(self.events),
            "batches": self.batches, "resumes": self.resumes, "restarts": self.restarts,
            "acknowledged": len(self.acks),
            "acknowledged_checked": sum(1 for a in self.acks if a[3] >= self.startRevision
                                        and self._covered(a[3])),
            "compacted": self.compacted,
            "final_revision": None if self.final is None else self.final[0],
            "log_windows": [w.toJSON() for w in self.logs],
            "log_checked_revisions": sum(b - a + 1 for a, b in coverage),
            "log_unread": list(self.logProblems),
        }


def _tupleText(t):
    kind, key, value, create, mod, version = t
    if kind == DELETE_EVENT:
        return f"delete {key!r} @{mod}"
    return f"put {key!r}={value!r} @{mod} (create {create}, version {version})"
