"""
/metrics and /health of real node processes (issue 12's acceptance): after
the leader's SIGKILL the survivors count one leader change and agree on one
leader within 2 s; a node cut off from the others (they are SIGSTOPped)
turns unhealthy within 2 s.
"""

import json
import time

import pytest
import pytest_twisted
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import defer

from tests.process.support import waitFor, waitForLeader

pytestmark = pytest.mark.integration


def _reactor():
    from twisted.internet import reactor

    return reactor


@defer.inlineCallbacks
def get(c, nodeId, path, timeout=1.0):
    """C{(code, body)} of C{GET path} on node C{nodeId}'s --http port."""
    from twisted.web.client import Agent, readBody

    url = f"http://127.0.0.1:{c.httpPorts[nodeId - 1]}{path}".encode()
    d = Agent(_reactor()).request(b"GET", url)
    d.addCallback(lambda response: readBody(response).addCallback(
        lambda body: (response.code, body)))
    d.addTimeout(timeout, _reactor())
    result = yield d
    return result


@defer.inlineCallbacks
def scrape(c, nodeId):
    """C{{sample name: value}} of node C{nodeId}'s unlabelled samples."""
    code, body = yield get(c, nodeId, "/metrics")
    assert code == 200
    samples = {}
    for family in text_string_to_metric_families(body.decode("utf-8")):
        for s in family.samples:
            if not s.labels:
                samples[s.name] = s.value
    return samples


@defer.inlineCallbacks
def scrapeAll(c, ids):
    out = {}
    for i in ids:
        try:
            out[i] = yield scrape(c, i)
        except Exception:
            pass
    return out


@pytest_twisted.inlineCallbacks
def test_leader_kill_is_counted_and_cut_off_nodes_turn_unhealthy(httpCluster):
    c = httpCluster
    c.start()
    leader = yield waitForLeader(c)
    survivors = [i for i in c.ids if i != leader]

    @defer.inlineCallbacks
    def settled():
        s = yield scrapeAll(c, c.ids)
        return len(s) == 3 and all(m["raftkv_has_leader"] == 1 for m in s.values()) and s

    before = yield waitFor("every node to report a leader", settled, 10, c)
    assert sum(m["raftkv_is_leader"] for m in before.values()) == 1
    assert before[leader]["raftkv_is_leader"] == 1

    # The service wired the hooks: the Status calls above were counted, the
    # leader's fsyncs (its no-op entry, at least) and round trips timed.
    code, body = yield get(c, leader, "/metrics")
    text = body.decode("utf-8")
    assert 'raftkv_client_requests_total{code="OK",command="Status"}' in text
    assert before[leader]["raftkv_wal_fsync_duration_seconds_count"] >= 1
    assert "raftkv_peer_round_trip_time_seconds_count{peer=" in text

    # -- SIGKILL the leader: one new leader within 2 s, one change each
    c.kill(leader)
    killed = time.monotonic()

    @defer.inlineCallbacks
    def oneLeader():
        s = yield scrapeAll(c, survivors)
        return (len(s) == 2 and sum(m["raftkv_is_leader"] for m in s.values()) == 1
                and all(m["raftkv_has_leader"] == 1 for m in s.values()) and s)

    after = yield waitFor("one leader among the survivors", oneLeader, 2.0, c, interval=0.05)
    assert time.monotonic() - killed < 2.5
    for i in survivors:
        assert (after[i]["raftkv_leader_changes_seen_total"]
                == before[i]["raftkv_leader_changes_seen_total"] + 1), (i, after, before)
    newLeader = next(i for i in survivors if after[i]["raftkv_is_leader"] == 1)
    follower = next(i for i in survivors if i != newLeader)

    @defer.inlineCallbacks
    def healthOf(i):
        code, body = yield get(c, i, "/health")
        return code, json.loads(body)

    for i in survivors:
        code, fields = yield healthOf(i)
        assert code == 200 and fields["healthy"] is True, fields

    # -- cut the follower off (its only live peer stopped): 503 within 2 s
    def unhealthy(i):
        @defer.inlineCallbacks
        def check():
            code, fields = yield healthOf(i)
            return code == 503 and fields["healthy"] is False and fields
        return check

    c[newLeader].pause()
    try:
        fields = yield waitFor(
            f"node {follower} unhealthy", unhealthy(follower), 2.0, c, interval=0.05
        )
        assert fields["reason"]
    finally:
        c[newLeader].resume()

    # -- and the leader, once its follower is stopped (CheckQuorum)
    @defer.inlineCallbacks
    def bothHealthy():
        a = yield healthOf(newLeader)
        b = yield healthOf(follower)
        return a[0] == 200 and b[0] == 200

    yield waitFor("both survivors healthy again", bothHealthy, 10, c)
    leaderNow = yield waitForLeader(c)
    other = next(i for i in survivors if i != leaderNow)
    c[other].pause()
    try:
        fields = yield waitFor(
            f"node {leaderNow} unhealthy", unhealthy(leaderNow), 2.0, c, interval=0.05
        )
        assert fields["reason"]
    finally:
        c[other].resume()
