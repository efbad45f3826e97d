"""
The cluster as one node sees it: the data behind the dashboard (C{GET /}
and C{GET /api/cluster}).

L{ClusterView} asks every member of the node's current configuration for
its C{Status} (the public client command; the node's own answer is read
locally) about every half second, keeps each member's latest answer and
when it came, and keeps a minute of per-second write and read rates.  Its
L{ClusterView.snapshot} is the JSON document the page draws.

Cost, and who can cause it:

  - Polling runs only while someone looked at the dashboard in the last
    L{IDLE_AFTER} seconds (each HTTP request only notes the time:
    L{ClusterView.touch}), at one fixed pace whatever the number of
    viewers, with at most one question in flight per member: opening more
    pages cannot make the node poll more.
  - A request costs O(members) plus the minute of history: nothing here
    reads keys or the log.
  - The rate history is sampled once a second while the HTTP site is up
    (two integers read); that keeps the last minute ready for a fresh
    page.

Definitions (also in the README's operator section):

  - role: the member's own answer (C{leader}, C{follower}, C{candidate}),
    C{down} if its latest question was not answered (refused, timed out
    after L{TIMEOUT} seconds, or answered by another node id), C{unknown}
    before the first answer or failure.  A C{down} member is never the
    leader.
  - leader: the member that answers C{leader} in the highest term.
  - lag: entries of the leader's log the member does not hold yet: the
    leader's C{last_log_index} minus the member's, floored at 0 (the two
    answers may be up to one poll apart); C{null} without a leader or for a
    member not answering.
  - failures tolerated: voters answering minus the quorum (a majority of
    the voters), floored at 0: how many more voters can fail before the
    cluster can no longer commit.
  - writes/s: entries this node saw committed per second (its own commit
    index; every committed entry is a write or a membership change, plus
    one no-op per new leader).
  - reads/s: client reads answered per second, summed over the members
    (each member's optional C{reads} counter in its C{Status}); only known
    while the dashboard is watched, so seconds without polling are gaps
    (C{null}).
"""

import collections

from twisted.internet import defer, task
from twisted.logger import Logger

INTERVAL = 0.5
"""Seconds between two rounds of questions: the page shows a change (a new
leader) within about this plus one page refresh."""

TIMEOUT = 0.4
"""Seconds a member has to answer before it counts as C{down}: shorter than
L{INTERVAL}, so rounds never overlap, and far above a healthy node's answer
time on a LAN."""

IDLE_AFTER = 10.0
"""Polling stops once nobody has asked for the view for this many seconds."""

HISTORY = 60
"""Seconds of rate history kept (one sample a second)."""

SAMPLE_PERIOD = 1.0
"""Seconds between two rate samples."""

DOWN = "down"
UNKNOWN = "unknown"
LEADER = "leader"


class _Member:
    """
    What this node knows of one member.

    @ivar answer: its latest answer (a C{Status} dict), or C{None}.
    @ivar answeredAt: when that answer came (clock seconds), or C{None}.
    @ivar failed: whether its latest question failed.
    @ivar asking: the Deferred of the question in flight, or C{None}.
    """

    __slots__ = ("answer", "answeredAt", "failed", "asking")

    def __init__(self):
        self.answer = None
        self.answeredAt = None
        self.failed = False
        self.asking = None

    @property
    def role(self):
        if self.failed:
            return DOWN
        if self.answer is None:
            return UNKNOWN
        return self.answer["role"]


class WrongNode(Exception):
    """The address of a member answered with another node id."""


class ClusterView:
    """
    The cluster as node C{nodeId} sees it.

    @param clock: an L{IReactorTime} (the reactor; C{task.Clock} in tests).
    @param nodeId: this node's id.
    @param configuration: a callable answering the node's current
        L{twisted_raft.raft.membership.Configuration}.
    @param localStatus: a callable answering this node's own C{Status}
        answer (a dict with the keys of L{twisted_raft.rpc.commands.Status}).
    @param fetchStatus: C{fetchStatus(member) -> Deferred[dict]}: ask
        another member (a L{Member}) for its C{Status}; cancelled after
        C{timeout}.
    @param commitIndex: a callable answering this node's commit index (the
        writes/s samples).
    """

    log = Logger()

    def __init__(self, clock, nodeId, configuration, localStatus, fetchStatus, commitIndex,
                 interval=INTERVAL, timeout=TIMEOUT, idleAfter=IDLE_AFTER, history=HISTORY):
        self.clock = clock
        self.nodeId = nodeId
        self.configuration = configuration
        self.localStatus = localStatus
        self.fetchStatus = fetchStatus
        self.commitIndex = commitIndex
        self.interval = interval
        self.timeout = timeout
        self.idleAfter = idleAfter
        self.members = {}  # id -> _Member
        self.samples = collections.deque(maxlen=history)  # (time, writes/s, reads/s)
        self.rounds = 0
        self._lastViewed = None
        self._poller = None
        self._sampler = None
        self._lastSample = None  # (time, commit index)
        self._readBase = {}  # id -> (reads counter, answer time) counted so far
        self._stopped = False

    # -- life -----------------------------------------------------------------

    def start(self):
        """Start the once-a-second rate samples (polling waits for a viewer)."""
        if self._sampler is None:
            self._sampler = task.LoopingCall(self._sample)
            self._sampler.clock = self.clock
            self._sampler.start(SAMPLE_PERIOD, now=True)

    def stop(self):
        """
        Stop sampling and polling for good (L{touch} no longer starts
        it); questions in flight are cancelled.
        """
        self._stopped = True
        for loop in (self._sampler, self._poller):
            if loop is not None and loop.running:
                loop.stop()
        self._sampler = self._poller = None
        for state in self.members.values():
            if state.asking is not None:
                state.asking.cancel()

    @property
    def polling(self):
        return self._poller is not None and self._poller.running

    def touch(self):
        """
        Someone looks at the view now: poll (at once if polling had
        stopped) for the next L{IDLE_AFTER} seconds.  Constant cost.
        """
        self._lastViewed = self.clock.seconds()
        if not self.polling and not self._stopped:
            self._poller = task.LoopingCall(self._round)
            self._poller.clock = self.clock
            self._poller.start(self.interval, now=True)

    # -- polling -----------------------------------------------------------------

    def _watched(self):
        return (self._lastViewed is not None
                and self.clock.seconds() - self._lastViewed <= self.idleAfter)

    def _round(self):
        if not self._watched():
            self._poller.stop()
            self._poller = None
            self._readBase.clear()  # a gap: no read counted across it
            return
        self.rounds += 1
        members = self.configuration().members
        current = {m.id for m in members}
        for gone in [i for i in self.members if i not in current]:
            state = self.members.pop(gone)
            if state.asking is not None:
                state.asking.cancel()
        for member in members:
            state = self.members.setdefault(member.id, _Member())
            if member.id == self.nodeId:
                self._record(defer.maybeDeferred(self.localStatus), state, member.id)
            elif state.asking is None:
                self._ask(member, state)

    def _ask(self, member, state):
        d = defer.maybeDeferred(self.fetchStatus, member)
        state.asking = d
        d.addTimeout(self.timeout, self.clock)

        def done(result):
            if state.asking is d:
                state.asking = None
            return result

        d.addBoth(done)
        self._record(d, state, member.id)

    def _record(self, d, state, nodeId):
        # Separate callbacks: an answer _answered refuses must reach _failed.
        d.addCallback(self._answered, state, nodeId)
        d.addErrback(self._failed, state)

    def _answered(self, answer, state, nodeId):
        if answer.get("node_id") != nodeId:
            raise WrongNode(f"its address answered as node {answer.get('node_id')!r}")
        state.answer = answer
        state.answeredAt = self.clock.seconds()
        state.failed = False

    def _failed(self, failure, state):
        # Refused, timed out, cancelled, a wrong node: all mean "not
        # answering" to an operator.  No log line: a down member would
        # otherwise log twice a second for as long as someone watches.
        state.failed = True

    # -- rates -------------------------------------------------------------------

    def _sample(self):
        now = self.clock.seconds()
        commit = self.commitIndex()
        last, self._lastSample = self._lastSample, (now, commit)
        if last is None:
            return
        elapsed = now - last[0]
        if elapsed <= 0:
            return
        writes = max(0, commit - last[1]) / elapsed
        self.samples.append((now, writes, self._readRate(now, elapsed)))

    def _readRate(self, now, elapsed):
        """
        Client reads per second over the last C{elapsed} seconds, summed
        over the members, or C{None} when not polling.  A member adds the
        growth of its counter between two of its answers no more than a
        couple of samples apart (older: the reads may span a gap, so none
        are counted that second); a counter that went down (the member
        restarted) starts again from its new value.
        """
        if not self.polling:
            self._readBase.clear()
            return None
        total = 0
        fresh = 2 * SAMPLE_PERIOD + self.timeout
        for nodeId, state in self.members.items():
            answer = state.answer
            if answer is None or state.failed or answer.get("reads") is None:
                continue
            reads, at = answer["reads"], state.answeredAt
            base = self._readBase.get(nodeId)
            self._readBase[nodeId] = (reads, at)
            if base is not None and at - base[1] <= fresh and reads >= base[0]:
                total += reads - base[0]
        return total / elapsed

    # -- the document ------------------------------------------------------------

    def snapshot(self):
        """
        The view as a JSON-able dict (the shape of C{GET /api/cluster},
        documented in the README): O(members + L{HISTORY}).
        """
        now = self.clock.seconds()
        configuration = self.configuration()
        rows = []
        leader = None
        for member in configuration.members:
            state = self.members.get(member.id) or _Member()
            answer = state.answer or {}
            role = state.role
            row = {
                "node_id": member.id,
                "address": member.address,
                "voter": member.voter,
                "role": role,
                "term": answer.get("term"),
                "leader_id": answer.get("leader_id") or None,
                "commit_index": answer.get("commit_index"),
                "last_applied": answer.get("last_applied"),
                "last_log_index": answer.get("last_log_index"),
                "last_contact": (None if state.answeredAt is None
                                 else round(max(0.0, now - state.answeredAt), 3)),
                "lag": None,
            }
            rows.append(row)
            if role == LEADER and (leader is None or row["term"] > leader["term"]):
                leader = row
        for row in rows:
            if leader is not None and row["role"] not in (DOWN, UNKNOWN):
                row["lag"] = max(0, leader["last_log_index"] - row["last_log_index"])
        voters = [r for r in rows if r["voter"]]
        up = [r for r in voters if r["role"] not in (DOWN, UNKNOWN)]
        quorum = len(voters) // 2 + 1 if voters else 0
        samples = list(self.samples)
        return {
            "node_id": self.nodeId,
            "time": now,
            "polling": self.polling,
            "interval": self.interval,
            "config_revision": configuration.index,
            "leader_id": None if leader is None else leader["node_id"],
            "term": None if leader is None else leader["term"],
            "voters": len(voters),
            "voters_up": len(up),
            "quorum": quorum,
            "failures_tolerated": max(0, len(up) - quorum),
            "members": rows,
            "rates": {
                "period": SAMPLE_PERIOD,
                "writes": _last(samples, 1),
                "reads": _last(samples, 2),
                "history": [
                    {"time": t, "writes": _round(w), "reads": _round(r)}
                    for t, w, r in samples
                ],
            },
        }


def _round(rate):
    return None if rate is None else round(rate, 2)


def _last(samples, column):
    """The latest sample's C{column}, rounded (C{None} if none)."""
    return _round(samples[-1][column]) if samples else None

