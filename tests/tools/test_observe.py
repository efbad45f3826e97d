"""
C{raftkv chaos}'s observability checks (L{twisted_raft.tools.observe}), fed
by hand: each check passes on what real nodes answer and log, and fails on
a bad sample or log line.  And the scraper (L{twisted_raft.tools.scrape}):
its loop on a task.Clock, and its requests against a real twisted.web site.
"""

import json
import re

import pytest
import pytest_twisted
from twisted.internet import defer, task
from twisted.web import resource, server

from twisted_raft.logs import eventAsLine
from twisted_raft.testing.cluster import SimCluster
from twisted_raft.tools import launcher, observe
from twisted_raft.tools.observe import HEALTH, METRICS, Observability, Sample
from twisted_raft.tools.scrape import Scraper
from twisted_raft.web.metrics import NAMES, NodeMetrics

# -- what a real node answers -----------------------------------------------------------


@pytest.fixture(scope="module")
def body():
    """A real node's /metrics body (the leader of a simulated cluster, with a
    client request and a peer failure recorded, so labelled counters have
    samples)."""
    c = SimCluster(3)
    leader = c.waitForLeader()
    metrics = NodeMetrics(leader, processCollector=False)
    metrics.clientRequest("Put", "OK", 0.001)
    metrics.sendFailed(2)
    return metrics.render()


def with_value(text, name, value):
    """C{text} with the (first) sample C{name} set to C{value}."""
    pattern = re.compile(rb"^(" + re.escape(name.encode()) + rb"(\{[^}]*\})?) \S+$", re.M)
    assert pattern.search(text), name
    return pattern.sub(lambda m: m.group(1) + b" " + str(value).encode(), text, count=1)


def metrics(body, nodeId=1, lifetime=1, when=1.0, code=200):
    return Sample(nodeId, lifetime, when, METRICS, code, body)


def health(code, fields, nodeId=1, lifetime=1, when=1.0):
    raw = fields if isinstance(fields, bytes) else json.dumps(fields).encode()
    return Sample(nodeId, lifetime, when, HEALTH, code, raw)


def finished(o):
    """C{o} with a passed end check, so only what it was fed decides."""
    o.finalCheck([], 0.1)
    return o


def violations(o):
    ok, lines = o.verdict()
    return [] if ok else lines


# -- /health ----------------------------------------------------------------------------


def test_health_answers_that_keep_the_contract():
    o = Observability()
    o.sample(health(200, {"healthy": True, "node_id": 1}))
    o.sample(health(503, {"healthy": False, "reason": "no leader known in the current term"}))
    assert violations(finished(o)) == []
    assert o.answers[HEALTH] == 2 and o.healthCodes == {200: 1, 503: 1}


@pytest.mark.parametrize("code,fields,problem", [
    (500, {"healthy": False, "reason": "x"}, "answered 500 (only 200 or 503)"),
    (200, {"healthy": False, "reason": "x"}, "answered 200 with healthy=False"),
    (503, {"healthy": True}, "answered 503 with healthy=True"),
    (503, {"healthy": False}, "answered 503 without a reason"),
    (200, {"healthy": "yes"}, "without a boolean 'healthy'"),
    (200, [True], "without a boolean 'healthy'"),
    (200, b"<html>ok</html>", "a body that is not JSON"),
])
def test_health_answers_that_break_it(code, fields, problem):
    o = Observability()
    o.sample(health(code, fields, nodeId=2))
    lines = violations(finished(o))
    assert len(lines) == 1 and problem in lines[0] and lines[0].startswith("n2 /health")


def test_no_answer_is_counted_not_judged():
    o = Observability()
    o.sample(Sample(1, 1, 1.0, HEALTH, error="ConnectionRefusedError"))
    o.sample(Sample(1, 1, 1.0, METRICS, error="TimeoutError"))
    assert violations(finished(o)) == []
    assert o.failed == 2 and o.scrapes == 0


# -- /metrics ---------------------------------------------------------------------------


def test_a_real_nodes_metrics_pass(body):
    o = Observability()
    o.sample(metrics(body))
    o.sample(metrics(body, when=2.0))
    assert violations(finished(o)) == []
    assert o.answers[METRICS] == 2


def test_metrics_that_do_not_parse(body):
    o = Observability()
    o.sample(metrics(body + b"raftkv_term{ 1 2 3\n"))
    lines = violations(finished(o))
    assert len(lines) == 1 and "does not parse" in lines[0]


def test_metrics_answered_with_an_error_code(body):
    o = Observability()
    o.sample(metrics(b"", code=500))
    assert "answered 500" in violations(finished(o))[0]


@pytest.mark.parametrize("name", ["raftkv_term", "raftkv_leader_changes_seen_total",
                                  "raftkv_client_request_duration_seconds"])
def test_metrics_missing_a_name(body, name):
    kept = b"\n".join(
        line for line in body.split(b"\n")
        if not re.match(rb"(# (HELP|TYPE) )?" + re.escape(name.encode()) + rb"\b", line)
        and not (name.endswith("_total") and line.startswith(name[:-len("_total")].encode()))
        and not line.startswith(name.encode())
    )
    assert kept != body
    o = Observability()
    o.sample(metrics(kept))
    lines = violations(finished(o))
    assert len(lines) == 1 and lines[0] == f"n1 /metrics lacks {name}"


def test_every_name_is_required():
    assert observe.requiredNames() == frozenset(NAMES)


@pytest.mark.parametrize("name", ["raftkv_term", "raftkv_commit_index",
                                  "raftkv_applied_index", "raftkv_proposals_committed_total",
                                  "raftkv_leader_changes_seen_total"])
def test_a_counter_or_term_going_down_in_one_lifetime(body, name):
    o = Observability()
    o.sample(metrics(with_value(body, name, 7)))
    o.sample(metrics(with_value(body, name, 7), when=2.0))  # the same: fine
    o.sample(metrics(with_value(body, name, 6), when=3.0))
    lines = violations(finished(o))
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"n1 {name} went down from 7 to 6 at 3.0s")


def test_a_labelled_counter_going_down(body):
    o = Observability()
    o.sample(metrics(with_value(body, "raftkv_peer_sent_failures_total", 5)))
    o.sample(metrics(with_value(body, "raftkv_peer_sent_failures_total", 4), when=2.0))
    lines = violations(finished(o))
    assert len(lines) == 1 and 'raftkv_peer_sent_failures_total{peer="2"}' in lines[0]


def test_counters_start_again_with_a_new_lifetime(body):
    o = Observability()
    o.sample(metrics(with_value(body, "raftkv_term", 9), lifetime=1))
    o.sample(metrics(with_value(body, "raftkv_term", 1), lifetime=2, when=2.0))
    o.sample(metrics(with_value(body, "raftkv_term", 8), lifetime=1, when=3.0))  # late: ignored
    o.sample(metrics(with_value(body, "raftkv_term", 2), lifetime=2, when=4.0))
    # each node on its own
    o.sample(metrics(with_value(body, "raftkv_term", 1), nodeId=2, when=5.0))
    assert violations(finished(o)) == []


def test_gauges_may_go_down(body):
    o = Observability()
    o.sample(metrics(with_value(body, "raftkv_proposals_pending", 9)))
    o.sample(metrics(with_value(body, "raftkv_proposals_pending", 0), when=2.0))
    assert violations(finished(o)) == []


def test_sample_value(body):
    assert observe.sampleValue(metrics(body), "raftkv_is_leader") == 1
    assert observe.sampleValue(metrics(with_value(body, "raftkv_is_leader", 0)),
                               "raftkv_is_leader") == 0
    assert observe.sampleValue(metrics(body), "raftkv_nothing") is None
    assert observe.sampleValue(metrics(b"{", code=200), "raftkv_is_leader") is None
    assert observe.sampleValue(metrics(body, code=503), "raftkv_is_leader") is None
    assert observe.sampleValue(None, "raftkv_is_leader") is None


# -- the end check ----------------------------------------------------------------------


def test_final_problems():
    members = [1, 2, 3]
    healthy = {1: 200, 2: 200, 3: 200}
    assert observe.finalProblems(members, healthy, {1: 0, 2: 1, 3: 0}) == []
    assert observe.finalProblems(members, {**healthy, 3: 503}, {1: 0, 2: 1, 3: 0}) == [
        "n3 /health 503"]
    assert observe.finalProblems(members, {1: 200, 2: 200}, {1: 0, 2: 1, 3: 0}) == [
        "n3 /health did not answer"]
    assert observe.finalProblems(members, healthy, {1: 1, 2: 1, 3: 0}) == [
        "sum(raftkv_is_leader) over the members is 2 (n1, n2)"]
    assert observe.finalProblems(members, healthy, {1: 0, 2: 0, 3: 0}) == [
        "sum(raftkv_is_leader) over the members is 0"]
    assert observe.finalProblems(members, healthy, {1: 0, 2: 1}) == ["no /metrics from n3"]
    # a node that is not a member does not count
    assert observe.finalProblems([1, 2], healthy, {1: 0, 2: 1, 3: 1}) == []


def test_final_check_decides():
    o = Observability()
    ok, lines = o.verdict()
    assert not ok and "did not run" in lines[0]
    o.finalCheck(["sum(raftkv_is_leader) over the members is 2 (n1, n2)"], 15.2)
    ok, lines = o.verdict()
    assert not ok and lines == [
        "at the end, 15.2s after settling: sum(raftkv_is_leader) over the members is 2 (n1, n2)"]
    assert o.toJSON()["final"] == {"ok": False, "seconds": 15.2, "problems": [
        "sum(raftkv_is_leader) over the members is 2 (n1, n2)"]}
    good = finished(Observability())
    assert good.verdict()[0] and good.toJSON()["final"]["ok"]


def test_json_shape(body):
    o = Observability()
    o.sample(metrics(body))
    o.sample(health(200, {"healthy": True}))
    o.sample(Sample(1, 1, 1.0, HEALTH, error="refused"))
    d = finished(o).toJSON()
    assert d["ok"] is True and d["scrapes"] == 2 and d["unanswered"] == 1
    assert d["violations"] == [] and d["violation_count"] == 0
    assert d["health_codes"] == {"200": 1}
    json.dumps(d)


def test_violations_are_listed_once_and_capped():
    o = Observability()
    for n in range(observe.MAX_LISTED + 10):
        o.sample(health(500, {"healthy": False, "reason": "x"}, when=float(n)))
        o.sample(health(500, {"healthy": False, "reason": "x"}, when=float(n)))  # same text
    finished(o)
    assert o.violationCount == observe.MAX_LISTED + 10
    ok, lines = o.verdict()
    assert len(lines) == observe.MAX_LISTED + 1 and lines[-1] == "... 10 more"


# -- logs -------------------------------------------------------------------------------


def start(nodeId=1):
    """A start line as the launcher writes it for a JSON node."""
    argv = ["python", "-m", "twisted", "--log-format=text", "raftkv", "--id", str(nodeId),
            "--log-format", "json"]

    class Log:
        name = None
        data = b""

        def write(self, data):
            self.data += data

        def flush(self):
            pass

    log = Log()
    launcher.logStart(log, argv)
    return log.data


def line(event="log", who=1, **fields):
    """A line as a JSON node C{who} writes it."""
    e = {"log_format": "x", "log_time": 1700000000.0, "log_namespace": "test"}
    if event != "log":
        e["raftkv_event"] = event
    e.update(fields)
    return eventAsLine(e, who).encode()


def role(old, new, term, nodeId=1):
    return line("role_change", nodeId, nodeId=nodeId, term=term, **{"from": old, "to": new})


def leader(leaderId, term, nodeId=1):
    return line("leader_change", nodeId, nodeId=nodeId, leader_id=leaderId, term=term)


def judged(data, nodeId=1):
    o = Observability()
    o.nodeLog(nodeId, data)
    return o, violations(finished(o))


def test_a_good_log_over_two_lifetimes():
    data = (start() + line() + role("follower", "candidate", 2) + role("candidate", "leader", 2)
            + leader(1, 2) + role("leader", "follower", 3) + leader(2, 3)
            # restarted: a new lifetime starts as a follower, and may see (2, 3) again
            + start() + role("follower", "candidate", 4) + role("candidate", "follower", 4)
            + leader(2, 3) + leader(3, 4))
    o, lines = judged(data)
    assert lines == []
    assert (o.lifetimes, o.roleChanges, o.leaderChanges, o.logLines) == (2, 5, 4, 12)


def test_a_line_that_is_not_json():
    o, lines = judged(start() + line() + b"Traceback (most recent call last):\n" + line())
    assert len(lines) == 1 and "is not a JSON object: 'Traceback" in lines[0]


def test_a_text_start_line_is_not_json():
    o, lines = judged(b"==== 10:00:00 starting: python raftkv --id 1\n" + line())
    assert len(lines) == 1 and "not a JSON object" in lines[0]


def test_a_line_missing_a_key():
    record = json.loads(line())
    del record["level"]
    o, lines = judged(start() + json.dumps(record).encode() + b"\n")
    assert len(lines) == 1 and "lacks level" in lines[0]


def test_a_line_of_another_node():
    o, lines = judged(start() + line(who=2))
    assert len(lines) == 1 and "node_id 2" in lines[0]


def test_json_that_is_not_an_object():
    o, lines = judged(start() + b"[1, 2]\n" + line())
    assert len(lines) == 1 and "not a JSON object" in lines[0]


@pytest.mark.parametrize("roles,problem", [
    ([("candidate", "leader", 2)], "but its role was follower"),
    ([("follower", "candidate", 2), ("follower", "leader", 2)], "but its role was candidate"),
    ([("follower", "follower", 2)], "to itself"),
])
def test_role_changes_that_do_not_chain(roles, problem):
    o, lines = judged(start() + b"".join(role(*r) for r in roles))
    assert len(lines) == 1 and problem in lines[0], lines


def test_a_leader_change_logged_twice_in_one_lifetime():
    o, lines = judged(start() + leader(2, 3) + leader(3, 4) + leader(2, 3))
    assert len(lines) == 1 and "leader_change to n2 in term 3 logged twice" in lines[0]


def test_a_line_cut_short_by_a_kill_is_torn_not_wrong():
    cut = line()[:25]
    # at the end of the file, unfinished
    o, lines = judged(start() + line() + cut)
    assert lines == [] and o.tornLines == 1
    # before the next start line (the launcher ends it first)
    o, lines = judged(start() + line() + cut + b"\n" + start() + line())
    assert lines == [] and o.tornLines == 1 and o.lifetimes == 2
    # anywhere else it is wrong
    o, lines = judged(start() + cut + b"\n" + line())
    assert len(lines) == 1 and o.tornLines == 0
    # and so is a text line at the end
    o, lines = judged(start() + line() + b"Killed")
    assert len(lines) == 1


# -- the scraper -------------------------------------------------------------------------


class _Node:
    def __init__(self):
        self.running, self.paused, self.starts = True, False, 1


def test_the_scraper_asks_each_node_about_once_a_second():
    clock = task.Clock()
    nodes = {1: (9001, _Node()), 2: (9002, _Node())}
    samples, asked = [], []

    def get(port, path):
        asked.append((port, path))
        return defer.succeed((200, b"{}"))

    scraper = Scraper(clock, lambda: dict(nodes), samples.append, agent=object())
    scraper.get = get
    scraper.start()
    for _ in range(50):
        clock.advance(0.1)
    assert set(asked) == {(9001, METRICS), (9001, HEALTH), (9002, METRICS), (9002, HEALTH)}
    assert 5 * 4 <= len(asked) <= 6 * 4
    assert {(s.nodeId, s.lifetime, s.code) for s in samples} == {(1, 1, 200), (2, 1, 200)}
    # a paused node is not asked; one gone is no longer asked
    nodes[1][1].paused = True
    del nodes[2]
    before = len(asked)
    for _ in range(30):
        clock.advance(0.1)
    assert len(asked) == before
    d = scraper.stop()
    clock.advance(1.0)
    assert d.called


def test_a_sample_of_a_restarted_node_is_dropped():
    clock = task.Clock()
    node = _Node()
    samples = []
    pending = defer.Deferred()
    scraper = Scraper(clock, lambda: {1: (9001, node)}, samples.append, agent=object())
    scraper.get = lambda port, path: pending
    d = scraper.scrape(1, 9001, node, METRICS)
    node.starts = 2  # killed and started again meanwhile
    pending.callback((200, b""))
    assert d.result is None and samples == []
    scraper.get = lambda port, path: defer.fail(ConnectionRefusedError())
    d = scraper.scrape(1, 9001, node, HEALTH)
    assert d.result.lifetime == 2 and d.result.code is None
    assert "ConnectionRefusedError" in d.result.error and samples == [d.result]


class _Page(resource.Resource):
    isLeaf = True

    def __init__(self, code, body, hang=False):
        super().__init__()
        self.code, self.body, self.hang = code, body, hang

    def render_GET(self, request):
        if self.hang:
            return server.NOT_DONE_YET
        request.setResponseCode(self.code)
        return self.body


@pytest_twisted.inlineCallbacks
def test_the_scraper_over_http():
    from twisted.internet import reactor

    root = resource.Resource()
    root.putChild(b"metrics", _Page(200, b"raftkv_term 1\n"))
    root.putChild(b"health", _Page(503, b'{"healthy": false, "reason": "r"}'))
    port = reactor.listenTCP(0, server.Site(root), interface="127.0.0.1")
    hanging = reactor.listenTCP(0, server.Site(_Page(200, b"", hang=True)),
                                interface="127.0.0.1")
    node = _Node()
    samples = []
    scraper = Scraper(reactor, lambda: {1: (port.getHost().port, node)}, samples.append,
                      timeout=0.5)
    try:
        answers = yield scraper.round([1, 2])
        assert answers[2] == {HEALTH: None, METRICS: None}  # not a running node
        assert answers[1][METRICS].code == 200
        assert answers[1][METRICS].body == b"raftkv_term 1\n"
        assert answers[1][HEALTH].code == 503
        late = yield scraper.scrape(1, hanging.getHost().port, node, HEALTH)
        assert late.code is None and "TimeoutError" in late.error
        assert len(samples) == 3
    finally:
        yield scraper.stop()
        yield port.stopListening()
        yield hanging.stopListening()
