"""
What a C{raftkv chaos} run sees of the nodes' own observability (issue 12)
and the checks over it: their C{/metrics} and C{/health} answers, scraped
about once a second by L{twisted_raft.tools.scrape}, and their
C{--log-format json} logs.

Pure: L{Observability} is fed samples (L{Sample}) and the bytes of each
node's log, and judges; it does no I/O.  The checks:

  - C{/health} only ever answers 200 or 503, with a JSON object whose
    C{healthy} is C{true} on 200 and C{false} (with a C{reason}) on 503;
  - every C{/metrics} answer is 200, parses as Prometheus's text format and
    names every metric of L{twisted_raft.web.metrics.NAMES};
  - within one lifetime of a node (one process: a restart starts another),
    no counter (C{_total}) and none of L{MONOTONIC} ever goes down;
  - at the end, after healing and settling, every member answers C{/health}
    with 200 and C{sum(raftkv_is_leader)} over the members is 1, within
    L{FINAL_PATIENCE} seconds (L{finalProblems});
  - every line of every node's log is a JSON object with the keys of
    L{twisted_raft.logs.LINE_KEYS} and the node's own C{node_id};
  - per lifetime, the C{role_change} events chain (the first from
    C{follower}, each C{from} the last C{to}, never to the same role), and
    no C{(leader_id, term)} is logged twice as C{leader_change}.

A node killed in the middle of writing a line may leave it unfinished; such
a line, last in its lifetime and the beginning of a JSON object, is counted
as torn, not as a violation.
"""

import json

from twisted_raft.logs import LINE_KEYS, parseLine
from twisted_raft.tools.launcher import isStartLine

METRICS = "/metrics"
HEALTH = "/health"
PATHS = (METRICS, HEALTH)

HEALTH_CODES = {200: True, 503: False}
"""The only answers of C{/health}, and the C{healthy} each goes with."""

MONOTONIC = ("raftkv_term", "raftkv_commit_index", "raftkv_applied_index")
"""Gauges that never go down while one process lives (Raft's term, and a
node's commit and applied indexes: the simulation checks the same)."""

FINAL_PATIENCE = 15.0
"""Seconds after settling within which the end check must pass."""

MAX_LISTED = 100
"""Violations listed (all are counted)."""

INITIAL_ROLE = "follower"
"""Every node process starts as a follower (L{twisted_raft.raft.node})."""


class Sample:
    """
    One scrape of one node: the answer to C{GET path}, or why there was
    none.

    @ivar lifetime: the node's start count when it was asked (a sample is
        kept only if it was still the same process when it answered).
    @ivar when: C{time.monotonic()} of the answer.
    @ivar code: the HTTP status, or C{None} without an answer.
    @ivar body: the body (bytes), or C{None}.
    @ivar error: why there was no answer (refused, timed out), or C{None}.
    """

    __slots__ = ("nodeId", "lifetime", "when", "path", "code", "body", "error")

    def __init__(self, nodeId, lifetime, when, path, code=None, body=None, error=None):
        self.nodeId = nodeId
        self.lifetime = lifetime
        self.when = when
        self.path = path
        self.code = code
        self.body = body
        self.error = error

    def __repr__(self):
        return (f"Sample(n{self.nodeId}#{self.lifetime} {self.path} {self.code} "
                f"{self.error or ''})")


def requiredNames():
    """Every metric name a node serves (L{twisted_raft.web.metrics.NAMES})."""
    from twisted_raft.web.metrics import NAMES

    return frozenset(NAMES)


def parseMetrics(text):
    """
    The families of a C{/metrics} body.

    @return: C{(names, samples)}: every name it gives (a family's, a
        counter's with C{_total}, every sample's) and C{[(name, labels,
        value, monotonic)]}, C{monotonic} true for a counter's C{_total}
        samples and L{MONOTONIC}.
    @raise ValueError: it does not parse.
    """
    from prometheus_client.parser import text_string_to_metric_families

    names, samples = set(), []
    for family in text_string_to_metric_families(text):
        names.add(family.name)
        counter = family.type == "counter"
        if counter:
            names.add(family.name + "_total")
        for s in family.samples:
            names.add(s.name)
            rising = (counter and s.name.endswith("_total")) or s.name in MONOTONIC
            samples.append((s.name, tuple(sorted(s.labels.items())), s.value, rising))
    return names, samples


def sampleValue(sample, name):
    """The value of the unlabelled metric C{name} in a C{/metrics}
    L{Sample}, or C{None} (no answer, not 200, does not parse, not in it)."""
    if sample is None or sample.code != 200:
        return None
    try:
        _, samples = parseMetrics((sample.body or b"").decode("utf-8"))
    except Exception:
        return None
    for sampleName, labels, value, _ in samples:
        if sampleName == name and not labels:
            return value
    return None


def finalProblems(members, health, isLeader):
    """
    The end check, on one round of answers: every member healthy, one
    leader among them.

    @param members: the members' ids.
    @param health: C{{id: HTTP status of /health, or None}}.
    @param isLeader: C{{id: its raftkv_is_leader, or None without an answer}}.
    @return: the problems, one line each (none: passed).
    """
    problems = []
    for i in members:
        code = health.get(i)
        if code != 200:
            problems.append(f"n{i} /health {'did not answer' if code is None else code}")
    silent = [i for i in members if isLeader.get(i) is None]
    if silent:
        problems.append("no /metrics from " + ", ".join(f"n{i}" for i in silent))
    leaders = [i for i in members if isLeader.get(i)]
    total = sum(isLeader.get(i) or 0 for i in members)
    if not silent and total != 1:
        problems.append(
            f"sum(raftkv_is_leader) over the members is {total:g}"
            + (f" ({', '.join(f'n{i}' for i in leaders)})" if leaders else "")
        )
    return problems


def _describeLabels(labels):
    return "{" + ",".join(f'{k}="{v}"' for k, v in labels) + "}" if labels else ""


class Observability:
    """
    Everything seen of the nodes' metrics, health answers and JSON logs,
    and the verdict.

    @param t0: the run's start (C{time.monotonic()}), for the times in
        violations.
    @param names: the metric names every C{/metrics} must give (default
        L{requiredNames}).
    """

    def __init__(self, t0=0.0, names=None):
        self.t0 = t0
        self.names = requiredNames() if names is None else frozenset(names)
        self.answers = {METRICS: 0, HEALTH: 0}
        self.failed = 0
        self.healthCodes = {}
        self.violations = []
        self.violationCount = 0
        self._seen = set()
        self._last = {}  # nodeId -> (lifetime, {(name, labels): value})
        self.logLines = 0
        self.lifetimes = 0
        self.roleChanges = 0
        self.leaderChanges = 0
        self.tornLines = 0
        self.final = None  # {"ok", "seconds", "problems"} once the end check ran

    @property
    def scrapes(self):
        """Answers received, C{/metrics} and C{/health}."""
        return sum(self.answers.values())

    def _violation(self, text):
        if text in self._seen:
            return
        self._seen.add(text)
        self.violationCount += 1
        if len(self.violations) < MAX_LISTED:
            self.violations.append(text)

    def _at(self, when):
        return f"{when - self.t0:.1f}s"

    # -- scrapes ----------------------------------------------------------

    def sample(self, s):
        """One L{Sample} (answered or not)."""
        if s.code is None:
            self.failed += 1
            return
        self.answers[s.path] = self.answers.get(s.path, 0) + 1
        if s.path == HEALTH:
            self._health(s)
        else:
            self._metrics(s)

    def _health(self, s):
        where = f"n{s.nodeId} /health at {self._at(s.when)}"
        self.healthCodes[s.code] = self.healthCodes.get(s.code, 0) + 1
        if s.code not in HEALTH_CODES:
            self._violation(f"{where} answered {s.code} (only 200 or 503)")
            return
        try:
            body = json.loads((s.body or b"").decode("utf-8"))
        except ValueError:
            self._violation(f"{where} answered {s.code} with a body that is not JSON")
            return
        if not isinstance(body, dict) or not isinstance(body.get("healthy"), bool):
            self._violation(f"{where} answered {s.code} without a boolean 'healthy'")
            return
        if body["healthy"] != HEALTH_CODES[s.code]:
            self._violation(f"{where} answered {s.code} with healthy={body['healthy']}")
        elif not body["healthy"] and not (isinstance(body.get("reason"), str) and body["reason"]):
            self._violation(f"{where} answered 503 without a reason")

    def _metrics(self, s):
        where = f"n{s.nodeId} /metrics"
        if s.code != 200:
            self._violation(f"{where} at {self._at(s.when)} answered {s.code}")
            return
        try:
            names, samples = parseMetrics((s.body or b"").decode("utf-8"))
        except Exception as e:  # the parser raises more than ValueError on bad input
            self._violation(f"{where} at {self._at(s.when)} does not parse: {e}"[:300])
            return
        missing = sorted(self.names - names)
        if missing:
            self._violation(f"{where} lacks {', '.join(missing)}")
        lifetime, last = self._last.get(s.nodeId, (None, None))
        if lifetime != s.lifetime:
            if lifetime is not None and s.lifetime < lifetime:
                return  # an older process's answer: nothing to compare it with
            last = {}
            self._last[s.nodeId] = (s.lifetime, last)
        for name, labels, value, rising in samples:
            if not rising:
                continue
            key = (name, labels)
            before = last.get(key)
            if before is not None and value < before:
                self._violation(
                    f"n{s.nodeId} {name}{_describeLabels(labels)} went down from {before:g} "
                    f"to {value:g} at {self._at(s.when)} (one process, lifetime {s.lifetime})"
                )
            last[key] = value

    # -- logs ----------------------------------------------------------------

    def nodeLog(self, nodeId, data):
        """
        Node C{nodeId}'s log (bytes) as this run wrote it: from before its
        first start line to the end.
        """
        pieces = data.split(b"\n")
        # The last piece is what follows the last newline: nothing, or a
        # line the last process did not finish.
        lines = [(line, False) for line in pieces[:-1]]
        if pieces[-1]:
            lines.append((pieces[-1], True))
        lifetime = 0
        role, leaders = INITIAL_ROLE, set()
        for n, (line, unfinished) in enumerate(lines):
            if isStartLine(line):
                lifetime += 1
                self.lifetimes += 1
                role, leaders = INITIAL_ROLE, set()
            if not line.strip():
                continue
            self.logLines += 1
            record = parseLine(line)
            where = f"n{nodeId}'s log (lifetime {lifetime})"
            if record is None:
                lastOfLifetime = unfinished or (
                    n + 1 < len(lines) and isStartLine(lines[n + 1][0])
                )
                if lastOfLifetime and line.lstrip().startswith(b"{"):
                    self.tornLines += 1
                else:
                    text = line.decode("utf-8", "replace").strip()[:160]
                    self._violation(f"{where}: a line is not a JSON object: {text!r}")
                continue
            missing = [k for k in LINE_KEYS if k not in record]
            if missing:
                self._violation(f"{where}: a line lacks {', '.join(missing)}: "
                                f"{record.get('message', '')!r}"[:300])
                continue
            if record["node_id"] != nodeId:
                self._violation(f"{where}: a line has node_id {record['node_id']!r}: "
                                f"{record.get('message', '')!r}"[:300])
            event = record["event"]
            if event == "role_change":
                self.roleChanges += 1
                old, new = record.get("from"), record.get("to")
                if old != role:
                    self._violation(
                        f"{where}: role_change from {old} to {new} (term {record.get('term')})"
                        f" at {record['time']}, but its role was {role}"
                    )
                elif old == new:
                    self._violation(f"{where}: role_change from {old} to itself at "
                                    f"{record['time']}")
                role = new
            elif event == "leader_change":
                self.leaderChanges += 1
                pair = (record.get("leader_id"), record.get("term"))
                if pair in leaders:
                    self._violation(
                        f"{where}: leader_change to n{pair[0]} in term {pair[1]} logged twice"
                        f" (again at {record['time']})"
                    )
                leaders.add(pair)

    # -- the end --------------------------------------------------------------

    def finalCheck(self, problems, seconds):
        """The end check's outcome: C{problems} of its last round
        (L{finalProblems}), after C{seconds} of trying."""
        self.final = {"ok": not problems, "seconds": round(seconds, 3),
                      "problems": list(problems)}
        for p in problems:
            self._violation(f"at the end, {seconds:.1f}s after settling: {p}")

    def verdict(self):
        """@return: C{(ok, lines)}: the violations, or a summary."""
        problems = list(self.violations)
        if self.final is None:
            problems.append("the end check (every member healthy, one leader) did not run")
        if self.violationCount > len(self.violations):
            problems.append(f"... {self.violationCount - len(self.violations)} more")
        if problems:
            return False, problems
        codes = ", ".join(f"{n} x {c}" for c, n in sorted(self.healthCodes.items()))
        return True, [
            f"{self.scrapes} answers ({self.answers[METRICS]} /metrics, every one parsed with"
            f" every metric and no counter going down; {self.answers[HEALTH]} /health:"
            f" {codes or 'none'}), {self.failed} unanswered (down or paused)",
            f"{self.logLines} JSON log lines in {self.lifetimes} node lifetimes"
            f" ({self.roleChanges} role changes chaining, {self.leaderChanges} leader"
            f" changes, none twice; {self.tornLines} cut short by a kill)",
            f"at the end every member healthy and one leader, after {self.final['seconds']:g}s",
        ]

    def toJSON(self):
        ok, _ = self.verdict()
        return {
            "ok": ok,
            "scrapes": self.scrapes,
            "metrics_answers": self.answers[METRICS],
            "health_answers": self.answers[HEALTH],
            "health_codes": {str(c): n for c, n in sorted(self.healthCodes.items())},
            "unanswered": self.failed,
            "log_lines": self.logLines,
            "lifetimes": self.lifetimes,
            "role_changes": self.roleChanges,
            "leader_changes": self.leaderChanges,
            "torn_lines": self.tornLines,
            "final": self.final,
            "violations": list(self.violations),
            "violation_count": self.violationCount,
        }
