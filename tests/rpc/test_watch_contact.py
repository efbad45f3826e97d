"""
A node out of touch with a leader ends its watches with UNAVAILABLE and
refuses new ones (L{twisted_raft.rpc.watches}, "Losing the leader"), by the
rule of L{twisted_raft.raft.contact}; the client library then resumes
elsewhere.  Deterministic: a L{task.Clock}, in-memory AMP, and a simulated
cluster for the end-to-end case.
"""

import pytest

from twisted_raft import kv
from twisted_raft.raft.contact import contactReason, nodeContactReason
from twisted_raft.rpc import commands
from twisted_raft.rpc.commands import Unavailable
from twisted_raft.rpc.watches import WatchLimits
from twisted_raft.web.metrics import NodeMetrics

from tests.kvsupport import Node, SimNodes, Sink
from tests.support import failureOf, result
from tests.web.test_metrics import scrape, value

IN_TOUCH = dict(isLeader=False, leaderId=2, heardFromQuorum=False, lastLeaderContact=9.9,
                now=10.0, electionTimeout=0.5)


@pytest.mark.parametrize("changes, expected", [
    ({}, None),
    ({"lastLeaderContact": 9.5}, None),  # exactly an election timeout ago
    ({"lastLeaderContact": 9.4}, "no contact with leader 2 within 500 ms"),
    ({"lastLeaderContact": None}, "no contact with leader 2 within 500 ms"),
    ({"leaderId": 0}, "no leader known in the current term"),
    ({"isLeader": True, "leaderId": 1, "heardFromQuorum": True}, None),
    ({"isLeader": True, "leaderId": 1},
     "leader without a quorum: no majority answered within 500 ms"),
])
def test_the_contact_rule(changes, expected):
    assert contactReason(**{**IN_TOUCH, **changes}) == expected


class Contact:
    """A settable contactReason."""

    def __init__(self):
        self.reason = None
        self.asked = 0

    def __call__(self):
        self.asked += 1
        return self.reason


def node():
    n = Node()
    contact = n.hub.contactReason = Contact()
    return n, contact


def elapse(n, seconds, step=0.05):
    """Let C{seconds} pass in small steps, as a reactor would."""
    for _ in range(round(seconds / step)):
        n.clock.advance(step)
        n.flush()


def test_out_of_touch_past_the_grace_ends_every_watch_with_unavailable():
    n, contact = node()
    limits = n.hub.limits
    d1, h1 = n.watch("a", watchId=1)
    d2, h2 = n.watch("p/", watchId=2, prefix=True)
    assert result(d1)["created"] and result(d2)["created"]
    contact.reason = "no contact with leader 2 within 550 ms"
    # first seen at the next look; the watches live out the grace
    n.clock.advance(limits.contactInterval)
    n.flush()
    n.clock.advance(limits.contactGrace - limits.contactInterval)
    n.flush()
    assert h1.cancelled == [] and h2.cancelled == [] and n.hub.count == 2
    n.clock.advance(limits.contactInterval)
    n.flush()
    expected = ("UNAVAILABLE", None,
                "no contact with leader 2 within 550 ms; resume on another node")
    assert h1.cancelled == [expected] and h2.cancelled == [expected]
    assert n.hub.count == 0 and n.hub.ended == {"UNAVAILABLE": 2}
    # nothing more is sent to them
    n.put("a")
    n.flush()
    assert h1.calls == []


def test_out_of_touch_a_new_watch_is_refused_then_accepted_once_back():
    n, contact = node()
    d, _ = n.watch("a", watchId=1)
    contact.reason = "no leader known in the current term"
    elapse(n, n.hub.limits.contactGrace + 2 * n.hub.limits.contactInterval)
    f = failureOf(n.watch("b", watchId=2)[0], Unavailable)
    assert str(f.value) == "no leader known in the current term; try another node"
    contact.reason = None
    d, h = n.watch("b", watchId=3)
    assert result(d)["created"]
    n.put("b")
    n.flush()
    assert [e.key for e in h.events] == ["b"]


def test_an_election_shorter_than_the_grace_moves_no_watch():
    n, contact = node()
    limits = n.hub.limits
    d, h = n.watch("a")
    for _ in range(5):
        contact.reason = "no leader known in the current term"
        n.clock.advance(limits.contactGrace - limits.contactInterval / 2)
        n.flush()
        contact.reason = None
        n.clock.advance(limits.contactInterval)
        n.flush()
    assert h.cancelled == [] and n.hub.count == 1
    n.put("a")
    n.flush()
    assert [e.key for e in h.events] == ["a"]


def test_the_node_looks_only_while_watches_are_open():
    n, contact = node()
    n.clock.advance(10)
    assert contact.asked == 0 and n.clock.getDelayedCalls() == []
    d, h = n.watch("a")
    assert contact.asked == 1  # by the Watch itself
    elapse(n, n.hub.limits.contactInterval * 3)
    assert contact.asked == 4
    result(n.call(commands.CancelWatch, watch_id=1))
    elapse(n, n.hub.limits.contactInterval * 2)
    asked = contact.asked
    elapse(n, 10, step=0.5)
    assert contact.asked == asked and n.clock.getDelayedCalls() == []


def test_a_watch_refused_for_contact_counts_nowhere_and_the_node_serves_on():
    n, contact = node()
    n.watch("a", watchId=1)
    contact.reason = "leader without a quorum: no majority answered within 550 ms"
    elapse(n, n.hub.limits.contactGrace + 2 * n.hub.limits.contactInterval)
    failureOf(n.watch("b", watchId=2)[0], Unavailable)
    assert n.hub.count == 0
    assert result(n.call(commands.Put, key="k", value=b"v"))["revision"] >= 1


def test_without_a_contact_rule_nothing_is_looked_at():
    n = Node()
    assert n.hub.contactReason is None
    d, h = n.watch("a")
    n.clock.advance(WatchLimits().contactGrace * 10)
    n.flush()
    assert h.cancelled == [] and n.hub.count == 1


def test_a_watcher_on_a_cut_off_follower_moves_on_and_misses_nothing():
    nodes = SimNodes()
    for nodeId, factory in zip(nodes.cluster.ids, nodes.factories):
        raftNode = nodes.cluster.nodes[nodeId]
        factory.watches.contactReason = lambda n=raftNode: nodeContactReason(n)
    nodes.cluster.waitForLeader()
    leaderId = nodes.cluster.leader().nodeId
    follower = next(i for i in nodes.cluster.ids if i != leaderId)
    client = nodes.newClient()
    client._preferred = nodes.addresses[follower - 1]
    sink = Sink()
    w = client.watch("c/", prefix=True, onEvents=sink)
    nodes.runFor(0.05)
    assert w.address == nodes.addresses[follower - 1]
    nodes.propose(kv.encodePut("c/0", b"0"))
    nodes.runFor(0.05)
    assert len(sink.events) == 1
    # The follower is cut off from the others, not from its client: its TCP
    # connection stays open, and it applies nothing new.
    nodes.cluster.network.isolate(follower)
    for i in range(1, 40):
        nodes.propose(kv.encodePut(f"c/{i % 4}", str(i).encode()))
        nodes.runFor(0.01)
    assert w.address == nodes.addresses[follower - 1] and len(sink.events) == 1
    grace = WatchLimits()
    nodes.runFor(nodes.cluster.nodes[follower].config.electionTimeout[1]
              + grace.contactGrace + 2 * grace.contactInterval)
    assert w.resumes == 1 and w.address != nodes.addresses[follower - 1]
    expected = nodes.cluster.machines[leaderId].watchEvents(1, "c/", prefix=True).events
    assert len(expected) == 40 and sink.events == expected
    # what the cut-off node's /metrics says, and the node the watch went to
    metrics = NodeMetrics(nodes.cluster.nodes[follower], processCollector=False)
    metrics.attach(server=nodes.factories[follower - 1])
    _, samples = scrape(metrics)
    assert value(samples, "raftkv_watches") == 0
    assert value(samples, "raftkv_watches_ended_total", code="UNAVAILABLE") == 1
    now = nodes.addresses.index(w.address)
    metrics = NodeMetrics(nodes.cluster.nodes[nodes.cluster.ids[now]], processCollector=False)
    metrics.attach(server=nodes.factories[now])
    _, samples = scrape(metrics)
    assert value(samples, "raftkv_watches") == 1
    assert "raftkv_watches_ended_total" not in samples
