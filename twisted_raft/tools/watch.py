"""
What the nodes of a C{raftkv chaos} run say about leaders and
configurations, and the checks over it: at most one leader per term, at
most one configuration per log index, acknowledged membership changes in
the configuration at their revision, and the committed configuration never
going backwards.

L{Observations} is pure: it is fed what the nodes answered (C{Status},
C{MemberList}) and the leader lines of their logs (a node's C{role_change}
to C{leader} with C{--log-format json}, as C{raftkv chaos} runs them, or
its text line), and judges.  L{Watch}
feeds it during a run, polling every node process and the member list.

What polling can see, and what it cannot, is in C{docs/correctness.rst}
("Fault injection against real processes"): a leader that led between two
polls is missed by polling, which is why the nodes' logs are read too; a
configuration entry that was committed and replaced by a later one between
two polls is never seen at all.
"""

import bisect
import re
import time

from twisted.internet import defer, task

from twisted_raft.logs import parseLine

LEADER_LINE = re.compile(rb"node (\d+) became leader for term (\d+)")
"""The text line a node logs when it becomes leader (L{twisted_raft.raft.node})."""


def leaderOfLine(line):
    """
    C{(nodeId, term)} if C{line} (bytes) of a node's log says that node
    became leader, else C{None}: with C{--log-format json} the
    C{role_change} event to C{leader} (its C{nodeId} and C{term} fields),
    else the text line L{LEADER_LINE}.
    """
    record = parseLine(line)
    if record is not None:
        if record.get("event") == "role_change" and record.get("to") == "leader":
            try:
                return int(record.get("nodeId", record.get("node_id"))), int(record["term"])
            except (KeyError, TypeError, ValueError):
                return None
        return None
    m = LEADER_LINE.search(line)
    return (int(m.group(1)), int(m.group(2))) if m else None


def _members(membership):
    """A L{twisted_raft.client.Membership}'s members as a comparable tuple."""
    return tuple(sorted((m.id, m.address, bool(m.voter)) for m in membership.members))


def describeMembers(members, addresses=False):
    """C{"n1 n2 n4(learner)"} (with C{addresses}, C{"n1@127.0.0.1:8001
    ..."}) for a tuple made by L{_members}."""
    return " ".join(
        f"n{i}" + (f"@{address}" if addresses else "") + ("" if voter else "(learner)")
        for i, address, voter in members
    ) or "none"


def _same(revision, a, b):
    """
    Whether C{a} and C{b} (L{_members} tuples) can be the one configuration
    at C{revision}.  At 0, the bootstrap configuration, each node has its
    own: the addresses are those of its C{--peers}, which need not match
    between nodes (proxies, NAT); only ids and votes must.  Every later one
    is a log entry, the same bytes on every node.
    """
    if revision == 0:
        return [(i, v) for i, _, v in a] == [(i, v) for i, _, v in b]
    return a == b


class Observations:
    """
    Everything seen of leaders and configurations, with the time
    (C{time.monotonic()}) each fact was first seen, and the verdicts.

    @ivar leaders: C{{term: {nodeId: how it was first seen}}}.
    @ivar configurations: C{{revision: members}} from C{MemberList} answers
        (the leader's committed configuration), C{members} a tuple of
        C{(id, address, voter)}.
    @ivar voterAt: C{{(revision, nodeId): voter}} from C{Status} answers
        of nodes whose configuration's entry they had committed.
    @ivar violations: what went wrong, one line each.
    """

    def __init__(self, clock=time.monotonic):
        self.clock = clock
        self.leaders = {}
        self.configurations = {}
        self.voterAt = {}
        self.memberCalls = []  # (start, end, revision)
        self.acknowledged = []  # (action, target, address, revision)
        self.violations = []
        self.statusAnswers = 0
        self.memberAnswers = 0
        self.leaderLines = 0

    # -- what was seen ----------------------------------------------------

    def _leader(self, term, nodeId, how):
        seen = self.leaders.setdefault(term, {})
        if nodeId in seen:
            return
        seen[nodeId] = how
        if len(seen) == 2:
            claims = "; ".join(f"n{n} ({w})" for n, w in sorted(seen.items()))
            self._violation(f"two leaders in term {term}: {claims}")

    def status(self, status, when=None):
        """A node's C{Status} answer (a dict of its keys)."""
        when = self.clock() if when is None else when
        self.statusAnswers += 1
        nodeId, term = status["node_id"], status["term"]
        if status["role"].lower() == "leader":
            self._leader(term, nodeId, f"n{nodeId} said it led, {when:.2f}")
        if status["leader_id"] > 0:
            self._leader(term, status["leader_id"],
                         f"n{nodeId} said n{status['leader_id']} led, {when:.2f}")
        revision = status.get("config_revision")
        if revision is None or status.get("voter") is None:
            return
        if status["commit_index"] < revision:
            return  # in force on append: not necessarily committed yet
        voter = bool(status["voter"])
        key = (revision, nodeId)
        before = self.voterAt.setdefault(key, voter)
        if before != voter:
            self._violation(
                f"configuration {revision}: n{nodeId} said it was "
                f"{'a voter' if before else 'no voter'}, later "
                f"{'a voter' if voter else 'no voter'} (both with it committed)"
            )
        self._checkVoter(revision, nodeId, voter)

    def members(self, membership, start, end):
        """A C{MemberList} answer (a L{twisted_raft.client.Membership}),
        asked at C{start} and answered at C{end}."""
        self.memberAnswers += 1
        revision, members = membership.revision, _members(membership)
        self.memberCalls.append((start, end, revision))
        before = self.configurations.setdefault(revision, members)
        if not _same(revision, before, members):
            self._violation(
                f"two configurations at index {revision}: {describeMembers(before, True)} "
                f"and {describeMembers(members, True)}"
            )
            return
        for nodeId in {n for r, n in self.voterAt if r == revision}:
            self._checkVoter(revision, nodeId, self.voterAt[(revision, nodeId)])

    def _checkVoter(self, revision, nodeId, voter):
        members = self.configurations.get(revision)
        if members is None:
            return
        inConfig = {i: v for i, _, v in members}
        expected = inConfig.get(nodeId, False)
        if voter != expected:
            self._violation(
                f"configuration {revision} ({describeMembers(members)}): n{nodeId} said it "
                f"was {'a voter' if voter else 'no voter'} in it"
            )

    def _violation(self, text):
        if text not in self.violations:
            self.violations.append(text)

    def leaderLine(self, nodeId, term, line):
        """A node's log says node C{nodeId} became leader for C{term}."""
        self.leaderLines += 1
        self._leader(term, nodeId, f"its log: {line}")

    def readLog(self, path, offset=0):
        """Every leader line of the log at C{path}, from byte C{offset}."""
        try:
            with open(path, "rb") as f:
                f.seek(offset)
                data = f.read()
        except OSError:
            return
        self.readLogData(data)

    def readLogData(self, data):
        """Every leader line of a node's log (bytes, text or JSON lines)."""
        for line in data.splitlines():
            found = leaderOfLine(line)
            if found:
                record = parseLine(line)
                text = record.get("message", "") if record is not None else line.decode(
                    "utf-8", "replace")
                self.leaderLine(found[0], found[1], text.strip()[-120:])

    def changed(self, action, target, address, revision):
        """An acknowledged membership change: C{action} is C{add-learner},
        C{promote}, C{remove} or C{remove-leader}; C{revision} answered."""
        self.acknowledged.append((action, target, address, revision))

    # -- verdicts ------------------------------------------------------------

    def memberOrderViolations(self):
        """
        Answers to C{MemberList} are linearizable reads of the committed
        configuration: one asked after another was answered never shows an
        older revision.
        """
        calls = sorted(self.memberCalls, key=lambda c: c[1])
        ends = [c[1] for c in calls]
        best, highest = [], None
        for start, end, revision in calls:
            highest = revision if highest is None else max(highest, revision)
            best.append(highest)
        found = []
        for start, end, revision in self.memberCalls:
            i = bisect.bisect_left(ends, start)
            if i and best[i - 1] > revision:
                found.append(
                    f"the member list went back: revision {revision} answered after "
                    f"{best[i - 1]} had been"
                )
        return found[:5]

    def changeViolations(self):
        """
        Every acknowledged change holds in the configuration at its
        revision, where that one was seen.  @return: C{(violations,
        verified)}.
        """
        found, verified = [], 0
        for action, target, address, revision in self.acknowledged:
            members = self.configurations.get(revision)
            if members is None:
                continue
            verified += 1
            byId = {i: (a, v) for i, a, v in members}
            if action == "add-learner":
                ok = target in byId and byId[target][0] == address
            elif action == "promote":
                ok = target in byId and byId[target][1]
            else:
                ok = target not in byId
            if not ok:
                found.append(
                    f"{action} n{target} was acknowledged with revision {revision}, whose "
                    f"configuration is {describeMembers(members)}"
                )
        return found, verified

    def verdict(self):
        """@return: C{(ok, lines)}: every violation found, or a summary."""
        problems = list(self.violations) + self.memberOrderViolations()
        changeProblems, verified = self.changeViolations()
        problems += changeProblems
        lines = []
        if self.statusAnswers and any(len(s) for s in self.leaders.values()) and not self.leaderLines:
            problems.append(
                "the nodes' logs name no leader though Status did: the line 'node N "
                "became leader for term T' or the role_change event to leader"
                " (twisted_raft/raft/node.py) has changed"
            )
        if problems:
            return False, problems
        lines.append(
            f"{len(self.leaders)} terms with a leader seen (Status answers: "
            f"{self.statusAnswers}; leader lines in logs: {self.leaderLines}): "
            "at most one leader per term"
        )
        lines.append(
            f"{len(self.configurations)} configurations seen (member list answers: "
            f"{self.memberAnswers}; committed voter flags: {len(self.voterAt)}): at most one "
            f"per index; acknowledged changes verified: {verified}/{len(self.acknowledged)}"
        )
        return True, lines

    def toJSON(self):
        return {
            "status_answers": self.statusAnswers,
            "member_list_answers": self.memberAnswers,
            "leader_log_lines": self.leaderLines,
            "terms_with_leader": len(self.leaders),
            "configurations_seen": len(self.configurations),
            "acknowledged_changes": len(self.acknowledged),
            "acknowledged_changes_verified": self.changeViolations()[1],
        }


class Watch:
    """
    Polls, while a run lasts, every node process's C{Status} (each on its
    own, so a paused node delays no other) and the cluster's C{MemberList},
    into L{Observations}.

    @param nodes: C{nodes()} -> C{{id: (address, node)}} of the node
        processes to poll now (a L{twisted_raft.tools.launcher.SpawnedNode}
        each; one not running or paused is skipped).
    @param memberClient: C{memberClient()} -> a C{RaftKVClient} on the
        current members, or C{None} not to poll the member list.
    """

    def __init__(self, reactor, statusClient, nodes, memberClient=None,
                 observations=None, interval=0.25, memberInterval=1.0):
        self.reactor = reactor
        self.statusClient = statusClient
        self.nodes = nodes
        self.memberClient = memberClient
        self.observations = observations or Observations()
        self.interval = interval
        self.memberInterval = memberInterval
        self.running = False
        self._loops = {}
        self._members = None

    def start(self):
        self.running = True
        self._tick = task.LoopingCall(self._spawn)
        self._tick.clock = self.reactor
        self._tick.start(self.interval)
        if self.memberClient is not None:
            self._members = self._memberLoop()

    def _spawn(self):
        for nodeId, (address, node) in self.nodes().items():
            loop = self._loops.get(nodeId)
            if loop is None or loop.called:
                self._loops[nodeId] = self._statusLoop(nodeId)

    def _sleep(self, seconds):
        return task.deferLater(self.reactor, seconds, lambda: None)

    @defer.inlineCallbacks
    def _statusLoop(self, nodeId):
        while self.running:
            entry = self.nodes().get(nodeId)
            if entry is None:
                return
            address, node = entry
            if node.running and not node.paused:
                try:
                    status = yield self.statusClient.status(address)
                except Exception:
                    pass
                else:
                    self.observations.status(status)
            yield self._sleep(self.interval)

    @defer.inlineCallbacks
    def _memberLoop(self):
        while self.running:
            yield self.readMembers()
            yield self._sleep(self.memberInterval)

    @defer.inlineCallbacks
    def readMembers(self, client=None):
        """
        One C{MemberList}, noted.  @return: Deferred[the Membership, or
        None if it failed].
        """
        client = client or self.memberClient()
        start = time.monotonic()
        try:
            membership = yield client.members()
        except Exception:
            return None
        self.observations.members(membership, start, time.monotonic())
        return membership

    @defer.inlineCallbacks
    def stop(self):
        self.running = False
        if self._tick.running:
            self._tick.stop()
        loops = list(self._loops.values())
        if self._members is not None:
            loops.append(self._members)
        yield defer.DeferredList(loops, consumeErrors=True)
