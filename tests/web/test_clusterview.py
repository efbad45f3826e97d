"""
The dashboard's data (L{ClusterView}) with a task.Clock and a fake status
fetcher: what it asks and when, the roles, leader, lag, failures tolerated
and rates it derives, and that viewers cannot make it poll more.
"""

from twisted.internet import defer
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock

from twisted_raft.raft.membership import Configuration, Member
from twisted_raft.web.clusterview import IDLE_AFTER, INTERVAL, TIMEOUT, ClusterView


def conf(*members, index=0):
    """C{conf(1, 2, (4, False))}: voters 1 and 2, learner 4."""
    out = []
    for m in members:
        nodeId, voter = m if isinstance(m, tuple) else (m, True)
        out.append(Member(nodeId, f"10.0.0.{nodeId}:7000", voter))
    return Configuration(tuple(out), index)


def status(nodeId, role="follower", term=3, commit=10, last=None, reads=None, leader=1):
    answer = {
        "node_id": nodeId, "role": role, "term": term, "leader_id": leader,
        "commit_index": commit, "last_applied": commit,
        "last_log_index": commit if last is None else last,
        "voter": True, "config_revision": 0,
    }
    if reads is not None:
        answer["reads"] = reads
    return answer


class FakeCluster:
    """
    The node (id 1) and what the other members answer: C{answers[id]} is a
    dict (answered at once), an exception (failed at once) or C{None} (no
    answer: the Deferred hangs until the view's timeout cancels it).
    """

    def __init__(self, configuration, clock):
        self.clock = clock
        self.config = configuration
        self.local = status(1, role="leader")
        self.commit = 0
        self.answers = {}
        self.asked = []
        self.cancelled = []

    def fetch(self, member):
        self.asked.append((self.clock.seconds(), member.id))
        answer = self.answers.get(member.id)
        if isinstance(answer, Exception):
            return defer.fail(answer)
        if answer is None:
            return defer.Deferred(lambda d: self.cancelled.append(member.id))
        return defer.succeed(dict(answer))

    def view(self, **kw):
        return ClusterView(
            self.clock, 1,
            configuration=lambda: self.config,
            localStatus=lambda: dict(self.local),
            fetchStatus=self.fetch,
            commitIndex=lambda: self.commit,
            **kw,
        )


def setup(*members, **kw):
    clock = Clock()
    cluster = FakeCluster(conf(*members), clock)
    for m in cluster.config.members:
        if m.id != 1:
            cluster.answers[m.id] = status(m.id)
    return clock, cluster, cluster.view(**kw)


def roles(snapshot):
    return {m["node_id"]: m["role"] for m in snapshot["members"]}


# -- when it asks -------------------------------------------------------------


def test_no_polling_until_someone_looks_then_every_interval():
    clock, cluster, view = setup(1, 2, 3)
    view.start()
    clock.advance(30)
    assert cluster.asked == [] and not view.polling
    view.touch()
    assert sorted(i for _, i in cluster.asked) == [2, 3]  # at once; itself read locally
    clock.advance(INTERVAL)
    clock.advance(INTERVAL)
    assert len(cluster.asked) == 6
    assert roles(view.snapshot()) == {1: "leader", 2: "follower", 3: "follower"}


def test_polling_stops_once_nobody_has_looked_for_a_while():
    clock, cluster, view = setup(1, 2, 3)
    view.touch()
    clock.pump([INTERVAL] * int(IDLE_AFTER / INTERVAL + 2))
    assert not view.polling
    asked = len(cluster.asked)
    clock.pump([INTERVAL] * 40)
    assert len(cluster.asked) == asked
    view.touch()  # a new viewer: at once again
    assert len(cluster.asked) == asked + 2 and view.polling


def test_many_viewers_do_not_make_it_ask_more():
    clock, cluster, view = setup(1, 2, 3)
    for _ in range(5):
        view.touch()
    for _ in range(10):
        for _ in range(50):  # fifty page loads every half second
            view.touch()
        view.snapshot()
        clock.advance(INTERVAL)
    # one question per other member per round, the first round at once
    assert len(cluster.asked) == 2 * 11
    times = [t for t, i in cluster.asked if i == 2]
    assert all(b - a == INTERVAL for a, b in zip(times, times[1:]))


def test_a_member_that_does_not_answer_is_down_and_never_asked_twice_at_once():
    clock, cluster, view = setup(1, 2, 3)
    view.touch()
    assert roles(view.snapshot())[3] == "follower"
    cluster.answers[3] = None  # hangs from now on
    clock.advance(INTERVAL)
    assert roles(view.snapshot())[3] == "follower"  # not yet timed out
    clock.advance(TIMEOUT)
    assert cluster.cancelled == [3]
    snap = view.snapshot()
    assert roles(snap)[3] == "down"
    row = snap["members"][2]
    assert row["lag"] is None and row["last_contact"] == INTERVAL + TIMEOUT
    assert sum(1 for _, i in cluster.asked if i == 3) == 2


def test_refused_and_wrong_node_are_down_and_a_down_leader_is_not_the_leader():
    clock, cluster, view = setup(1, 2, 3)
    cluster.local = status(1)
    cluster.answers[2] = status(2, role="leader", term=5)
    view.touch()
    assert view.snapshot()["leader_id"] == 2
    cluster.answers[2] = ConnectionRefusedError()
    cluster.answers[3] = status(2)  # another node at 3's address
    clock.advance(INTERVAL)
    snap = view.snapshot()
    assert roles(snap) == {1: "follower", 2: "down", 3: "down"}
    assert snap["leader_id"] is None and snap["term"] is None


def test_a_member_not_yet_heard_of_is_unknown():
    clock, cluster, view = setup(1, 2)
    cluster.answers[2] = None
    view.touch()
    snap = view.snapshot()
    assert roles(snap) == {1: "leader", 2: "unknown"}
    assert snap["members"][1]["last_contact"] is None
    assert snap["voters_up"] == 1


# -- what it derives ------------------------------------------------------------


def test_the_leader_is_the_one_answering_leader_in_the_highest_term():
    clock, cluster, view = setup(1, 2, 3)
    cluster.local = status(1, role="leader", term=4)  # deposed, does not know yet
    cluster.answers[2] = status(2, role="leader", term=5)
    view.touch()
    snap = view.snapshot()
    assert (snap["leader_id"], snap["term"]) == (2, 5)


def test_lag_is_the_leaders_last_index_minus_the_members():
    clock, cluster, view = setup(1, 2, 3, (4, False))
    cluster.local = status(1, role="leader", commit=90, last=100)
    cluster.answers[2] = status(2, commit=90, last=100)
    cluster.answers[3] = status(3, commit=60, last=70)
    cluster.answers[4] = status(4, commit=90, last=105)  # an uncommitted tail
    view.touch()
    lag = {m["node_id"]: m["lag"] for m in view.snapshot()["members"]}
    assert lag == {1: 0, 2: 0, 3: 30, 4: 0}


def test_failures_tolerated_is_voters_up_minus_quorum():
    clock, cluster, view = setup(1, 2, 3, 4, 5, (6, False))
    view.touch()
    snap = view.snapshot()
    assert (snap["voters"], snap["voters_up"], snap["quorum"]) == (5, 5, 3)
    assert snap["failures_tolerated"] == 2
    cluster.answers[2] = ConnectionRefusedError()
    cluster.answers[6] = ConnectionRefusedError()  # a learner: does not count
    clock.advance(INTERVAL)
    assert view.snapshot()["failures_tolerated"] == 1
    cluster.answers[3] = cluster.answers[4] = ConnectionRefusedError()
    clock.advance(INTERVAL)
    snap = view.snapshot()
    assert (snap["voters_up"], snap["failures_tolerated"]) == (2, 0)  # floored


def test_rows_follow_the_configuration():
    clock, cluster, view = setup(1, 2, 3)
    view.touch()
    cluster.config = conf(1, 2, (4, False), index=9)
    cluster.answers[4] = status(4)
    snap = view.snapshot()
    assert [(m["node_id"], m["voter"], m["role"]) for m in snap["members"]] == [
        (1, True, "leader"), (2, True, "follower"), (4, False, "unknown"),
    ]
    assert snap["members"][2]["address"] == "10.0.0.4:7000"
    assert snap["config_revision"] == 9
    clock.advance(INTERVAL)
    assert roles(view.snapshot())[4] == "follower"
    assert 3 not in view.members


def test_stop_cancels_questions_in_flight_and_polls_no_more():
    clock, cluster, view = setup(1, 2, 3)
    cluster.answers[2] = None
    view.start()
    view.touch()
    view.stop()
    assert cluster.cancelled == [2]
    asked = len(cluster.asked)
    clock.advance(10)
    assert len(cluster.asked) == asked and clock.getDelayedCalls() == []


def test_a_failing_local_status_marks_this_node_down_and_polling_goes_on():
    clock, cluster, view = setup(1, 2)
    view.touch()

    def broken():
        raise RuntimeError("boom")

    view.localStatus = broken
    clock.advance(INTERVAL)
    assert roles(view.snapshot())[1] == "down"
    assert view.polling


# -- rates --------------------------------------------------------------------------


def test_writes_per_second_come_from_the_commit_index_even_unwatched():
    clock, cluster, view = setup(1, 2, 3)
    view.start()
    for commit in (100, 250, 250, 1250):
        clock.advance(1)
        cluster.commit = commit
    clock.advance(1)
    rates = view.snapshot()["rates"]
    assert [s["writes"] for s in rates["history"]] == [0, 100, 150, 0, 1000]
    assert rates["writes"] == 1000
    assert [s["reads"] for s in rates["history"]] == [None] * 5  # nobody watched


def test_reads_per_second_sum_the_members_counters_while_watched():
    clock, cluster, view = setup(1, 2, 3)
    cluster.local["reads"] = 0
    cluster.answers[2] = status(2, reads=1000)
    cluster.answers[3] = status(3)  # an older node: no counter
    view.start()
    view.touch()
    clock.advance(0.5)
    clock.advance(0.5)  # first sample: the baselines
    cluster.local["reads"] = 10
    cluster.answers[2] = status(2, reads=1040)
    clock.advance(0.5)
    clock.advance(0.5)
    cluster.answers[2] = status(2, reads=5)  # node 2 restarted
    clock.advance(0.5)
    clock.advance(0.5)
    reads = [s["reads"] for s in view.snapshot()["rates"]["history"]]
    assert reads == [0, 50, 0]


def test_history_keeps_one_minute():
    clock, cluster, view = setup(1, 2)
    view.start()
    clock.pump([1] * 200)
    history = view.snapshot()["rates"]["history"]
    assert len(history) == 60
    assert history[-1]["time"] == clock.seconds()
    assert history[0]["time"] == clock.seconds() - 59


def test_snapshot_shape():
    clock, cluster, view = setup(1, 2)
    view.start()
    view.touch()
    clock.advance(1)
    snap = view.snapshot()
    assert set(snap) == {
        "node_id", "time", "polling", "interval", "config_revision", "leader_id", "term",
        "voters", "voters_up", "quorum", "failures_tolerated", "members", "rates",
    }
    assert set(snap["members"][0]) == {
        "node_id", "address", "voter", "role", "term", "leader_id", "commit_index",
        "last_applied", "last_log_index", "last_contact", "lag",
    }
    assert set(snap["rates"]) == {"period", "writes", "reads", "history"}
