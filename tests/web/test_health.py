"""
/health: the rule on plain values, on nodes of a cluster driven on a
task.Clock, and both resources over a real HTTP port on 127.0.0.1.
"""

import json

import pytest
import pytest_twisted
from twisted.internet import defer

from twisted_raft.testing.cluster import SimCluster
from twisted_raft.web.health import MAX_APPLY_LAG, HealthResource, nodeHealth, unhealthyReason
from twisted_raft.web.metrics import MetricsResource, NodeMetrics
from twisted_raft.web.site import buildSite

FOLLOWER = dict(
    running=True, isLeader=False, leaderId=1, heardFromQuorum=False,
    lastLeaderContact=10.0, now=10.2, electionTimeout=0.5,
    commitIndex=5000, appliedIndex=5000,
)


def reason(**changes):
    return unhealthyReason(**{**FOLLOWER, **changes})


def test_a_follower_in_touch_with_its_leader_is_healthy():
    assert reason() is None
    assert reason(now=10.5) is None  # exactly one election timeout: still in touch


@pytest.mark.parametrize("changes,words", [
    (dict(running=False), "not running"),
    (dict(leaderId=0), "no leader known"),
    (dict(now=10.51), "no contact with leader 1 within 500 ms"),
    (dict(lastLeaderContact=None), "no contact with leader 1"),
    (dict(appliedIndex=5000 - MAX_APPLY_LAG - 1), "1001 entries behind"),
    (dict(isLeader=True, heardFromQuorum=False), "leader without a quorum"),
])
def test_unhealthy_cases_say_why(changes, words):
    assert words in reason(**changes)


def test_apply_lag_up_to_the_limit_is_healthy():
    assert reason(appliedIndex=5000 - MAX_APPLY_LAG) is None


def test_a_leader_heard_by_a_quorum_needs_no_leader_contact():
    assert reason(isLeader=True, heardFromQuorum=True, leaderId=3,
                  lastLeaderContact=None) is None


def test_nodes_of_a_cluster_turn_unhealthy_when_cut_off():
    cluster = SimCluster(3, seed=3)
    leader = cluster.waitForLeader()
    cluster.advance(0.2)
    for node in cluster.nodes.values():
        healthy, fields = nodeHealth(node)
        assert healthy, fields
        assert fields["leader_id"] == leader.nodeId
        assert fields["node_id"] == node.nodeId
        assert fields["commit_index"] == node.commitIndex
    follower = next(n for n in cluster.nodes.values() if n is not leader)
    cluster.network.isolate(follower.nodeId)
    cluster.network.isolate(leader.nodeId)
    # Within the longest election timeout (plus a heartbeat) both notice.
    cluster.advance(leader.config.electionTimeout[1] + leader.config.heartbeatInterval + 0.01)
    healthy, fields = nodeHealth(follower)
    assert not healthy and fields["healthy"] is False
    assert "no contact with leader" in fields["reason"] or "no leader" in fields["reason"]
    healthy, fields = nodeHealth(leader)
    assert not healthy, fields


# -- over HTTP -----------------------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_resources_over_a_real_port():
    from twisted.internet import reactor
    from twisted.internet.endpoints import serverFromString
    from twisted.web.client import Agent, readBody

    cluster = SimCluster(3, seed=4)
    leader = cluster.waitForLeader()
    cluster.advance(0.2)
    site = buildSite({
        b"metrics": MetricsResource(NodeMetrics(leader)),
        b"health": HealthResource(leader),
    })
    port = yield serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(site)
    base = f"http://127.0.0.1:{port.getHost().port}".encode()
    agent = Agent(reactor)

    @defer.inlineCallbacks
    def fetch(method, path):
        response = yield agent.request(method, base + path)
        body = yield readBody(response)
        return response, body

    try:
        response, body = yield fetch(b"GET", b"/health")
        assert response.code == 200
        assert response.headers.getRawHeaders(b"content-type") == [b"application/json"]
        fields = json.loads(body)
        assert fields["healthy"] is True and fields["role"] == "leader"

        response, body = yield fetch(b"GET", b"/metrics")
        assert response.code == 200
        assert response.headers.getRawHeaders(b"content-type")[0].startswith(b"text/plain")
        assert b"\nraftkv_is_leader 1.0\n" in body

        response, body = yield fetch(b"HEAD", b"/metrics")
        assert response.code == 200 and body == b""

        for method, path in [(b"POST", b"/metrics"), (b"PUT", b"/health"),
                             (b"DELETE", b"/health")]:
            response, _ = yield fetch(method, path)
            assert response.code == 405, (method, path)
        response, _ = yield fetch(b"GET", b"/metrics/x")
        assert response.code == 404

        cluster.network.isolate(leader.nodeId)
        cluster.advance(leader.config.electionTimeout[1] + 0.1)
        response, body = yield fetch(b"GET", b"/health")
        assert response.code == 503
        assert json.loads(body)["healthy"] is False
    finally:
        yield port.stopListening()
