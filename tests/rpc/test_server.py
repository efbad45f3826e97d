"""
NodeProtocol over in-memory AMP (twisted.test.iosim) with stub nodes.
"""

import gc
import os

import pytest
from twisted.internet import defer
from twisted.logger import LogLevel, globalLogPublisher
from twisted.internet.task import Clock
from twisted.protocols import amp
from twisted.test import iosim

from twisted_raft import kv
from twisted_raft.raft import messages
from twisted_raft.raft.membership import Configuration, Member
from twisted_raft.rpc import commands, wire
from twisted_raft.rpc.commands import (
    NOT_PROPOSED,
    InvalidArgument,
    NodeDiskFull,
    NotProposed,
    PermissionDenied,
    Unavailable,
    ValueTooLarge,
)
from twisted_raft.rpc.peers import AMPTransport
from twisted_raft.rpc.server import NodeServerFactory

from tests.support import (
    PumpEndpoint,
    Pumps,
    StubNode,
    authority,
    captured,
    failureOf,
    proveMember,
    result,
)

MiB = 1024 * 1024
OLD_DELETE = {"deleted_count": None, "prev_kvs": None}
"""What a client parsing with today's schema sees of an old-style Delete's
answer besides C{deleted} and C{revision}: the new fields are absent."""


class Harness:
    """A client connected to a node's NodeProtocol; optionally a leader too."""

    def __init__(self, node, token="raftkv", leader=None):
        self.clock = Clock()
        self.node = node
        self.pumps = Pumps()
        self.peers = None
        if leader is not None:
            # the follower's real AMPTransport, linked to the leader's server
            self.leaderFactory = NodeServerFactory(
                leader, leader.store, None, authority(leader.nodeId, token), self.clock
            )
            self.endpoint = PumpEndpoint(self.leaderFactory, self.clock)
            self.peers = AMPTransport(
                {leader.nodeId: self.endpoint}, authority(node.nodeId, token), self.clock
            )
            self.peers.startService()
            self.pumps.add(*self.endpoint.pumps)
        self.token = token
        self.factory = NodeServerFactory(
            node, node.store, self.peers, authority(node.nodeId, token), self.clock
        )
        self.client, self.server, pump = iosim.connectedServerAndClient(
            lambda: self.factory.buildProtocol(None), amp.AMP, clock=self.clock
        )
        self.pumps.add(pump)
        self.lost = []
        orig = self.client.connectionLost

        def connectionLost(reason):
            self.lost.append(reason)
            orig(reason)

        self.client.connectionLost = connectionLost
        self.pumps.flush()  # the peer link's handshake, if there is one

    def call(self, command, **kw):
        d = captured(self.client.callRemote(command, **kw))
        self.pumps.flush()
        return d

    def authenticate(self, asNode=2, token=None):
        """Prove on the client connection that it is node C{asNode}."""
        d = proveMember(self.client, asNode, self.node.nodeId, token or self.token)
        self.pumps.flush()
        return d

    def raw(self, command, box):
        d = captured(self.client._sendBoxCommand(command, amp.AmpBox(box)))
        self.pumps.flush()
        return d

    def advance(self, seconds):
        self.clock.advance(seconds)
        self.pumps.flush()

    def assertServes(self):
        assert not self.lost
        r = result(self.call(commands.Status))
        assert r["node_id"] == self.node.nodeId


# -- validation ------------------------------------------------------------


@pytest.mark.parametrize(
    "command,kwargs,error",
    [
        (commands.Put, dict(key="", value=b"v"), InvalidArgument),
        (commands.Put, dict(key="k" * 4097, value=b"v"), InvalidArgument),
        (commands.Put, dict(key="\u00e9" * 2049, value=b"v"), InvalidArgument),
        (commands.Put, dict(key="k", value=b"x" * (MiB + 1)), ValueTooLarge),
        (commands.Get, dict(key=""), InvalidArgument),
        (commands.Get, dict(key="k" * 4097, stale=True), InvalidArgument),
        (commands.Delete, dict(key=""), InvalidArgument),
        (commands.CompareAndSet, dict(key="", value=b"v"), InvalidArgument),
        (commands.CompareAndSet, dict(key="k", expected=b"x" * (MiB + 1), value=b"v"), ValueTooLarge),
        (commands.CompareAndSet, dict(key="k", value=b"x" * (MiB + 1)), ValueTooLarge),
    ],
)
def test_bad_input_is_rejected_and_link_survives(command, kwargs, error):
    h = Harness(StubNode())
    failureOf(h.call(command, **kwargs), error)
    assert h.node.proposed == [] and h.node.reads == 0
    h.assertServes()
    assert result(h.call(commands.Put, key="k", value=b"v"))["revision"] == 1


def test_limits_are_inclusive():
    h = Harness(StubNode())
    key = "\u00e9" * 2048  # 4096 bytes of UTF-8
    assert result(h.call(commands.Put, key=key, value=b"x" * MiB))["revision"] == 1
    r = result(h.call(commands.Get, key=key))
    assert r["found"] and r["value"] == b"x" * MiB


@pytest.mark.parametrize(
    "box",
    [
        {b"value": b"v"},  # missing key
        {b"key": b"k"},  # missing value
        {b"key": b"k", b"value": b"a", b"value.3": b"c"},  # gap in the chunks
        {b"key": b"\xff\xfe", b"value": b"v"},  # key is not UTF-8
    ],
)
def test_malformed_put_is_invalid_argument(box):
    h = Harness(StubNode())
    f = failureOf(h.raw(b"Put", box), amp.RemoteAmpError)
    assert f.value.errorCode == commands.INVALID_ARGUMENT
    assert h.node.proposed == []
    h.assertServes()


def test_big_values_roundtrip():
    h = Harness(StubNode())
    value = bytes(range(256)) * 1000  # 256,000 bytes: several AMP chunks
    assert result(h.call(commands.Put, key="big", value=value))["revision"] == 1
    r = result(h.call(commands.Get, key="big"))
    assert r == {"found": True, "value": value}
    assert h.node.store.get("big") == value


# -- writes and reads at the leader ------------------------------------------------


def test_writes_at_leader():
    h = Harness(StubNode())
    assert result(h.call(commands.Put, key="a", value=b"1")) == {"revision": 1, "prev_kv": None}
    assert result(h.call(commands.CompareAndSet, key="a", expected=b"0", value=b"2")) == {
        "succeeded": False,
        "revision": 2,
    }
    assert result(h.call(commands.CompareAndSet, key="a", expected=b"1", value=b"2")) == {
        "succeeded": True,
        "revision": 3,
    }
    assert result(h.call(commands.CompareAndSet, key="new", value=b"n")) == {
        "succeeded": True,
        "revision": 4,
    }
    assert result(h.call(commands.Delete, key="a")) == {"deleted": True, "revision": 5, **OLD_DELETE}
    assert result(h.call(commands.Delete, key="a")) == {"deleted": False, "revision": 6, **OLD_DELETE}
    assert h.node.proposed[0] == kv.encodePut("a", b"1")
    assert h.node.proposed[3] == kv.encodeCompareAndSet("new", None, b"n")


def test_linearizable_get_uses_read_index_stale_does_not():
    node = StubNode()
    node.store.data["k"] = b"v"
    h = Harness(node)
    assert result(h.call(commands.Get, key="k")) == {"found": True, "value": b"v"}
    assert node.reads == 1
    assert result(h.call(commands.Get, key="k", stale=True)) == {"found": True, "value": b"v"}
    assert result(h.call(commands.Get, key="nope", stale=True)) == {"found": False, "value": b""}
    assert node.reads == 1


def test_stale_get_on_follower_reads_locally():
    node = StubNode(nodeId=3, role=messages.FOLLOWER, leaderId=0)
    node.store.data["k"] = b"old"
    h = Harness(node)
    assert result(h.call(commands.Get, key="k", stale=True))["value"] == b"old"


def test_status():
    node = StubNode(nodeId=2, role=messages.FOLLOWER, leaderId=1)
    h = Harness(node)
    h.clock.advance(12.25)
    r = result(h.call(commands.Status))
    assert r == {
        "node_id": 2,
        "role": "follower",
        "term": 7,
        "leader_id": 1,
        "commit_index": 0,
        "last_applied": 0,
        "last_log_index": 0,
        "voter": True,
        "config_revision": 0,
        "pid": os.getpid(),
        "uptime": 12.25,  # since the factory was made, by its clock
        "reads": 0,
    }
    # a learner, using the configuration of log index 12
    node.configuration = Configuration(
        (Member(1, "h:1"), Member(2, "h:2", voter=False)), index=12
    )
    r = result(h.call(commands.Status))
    assert (r["voter"], r["config_revision"]) == (False, 12)


def test_status_uptime_counts_from_the_given_start():
    node = StubNode(nodeId=2, role=messages.FOLLOWER, leaderId=1)
    h = Harness(node)
    h.clock.advance(100)
    h.factory.startedAt = 40.5  # the service passes when it started
    assert result(h.call(commands.Status))["uptime"] == 59.5


# -- error mapping -----------------------------------------------------------


def test_outcome_unknown_maps_to_unavailable():
    node = StubNode()
    node.proposeError = messages.CommitUnknown("lost leadership")
    h = Harness(node)
    f = failureOf(h.call(commands.Put, key="k", value=b"v"), Unavailable)
    assert str(f.value).startswith("outcome unknown")
    assert len(node.proposed) == 1  # may have been proposed: never twice
    h.assertServes()


def test_a_core_that_raises_at_once_is_answered_and_leaves_no_deadline():
    """A proposal that raises instead of failing its Deferred is answered
    like any failure, at once, and its deadline does not fire later."""

    class Raising(StubNode):
        def propose(self, data):
            raise RuntimeError("boom")

    logged = []
    globalLogPublisher.addObserver(logged.append)
    try:
        h = Harness(Raising())
        f = failureOf(h.call(commands.Put, key="k", value=b"v"), Unavailable)
        assert "internal error serving put" in str(f.value).lower()
        before = len(logged)
        assert len(h.factory.deadlines) == 0
        h.clock.advance(h.factory.requestTimeout + 1)
        gc.collect()  # an orphaned, failed Deferred is reported when collected
        assert not [e for e in logged[before:] if e.get("log_level") is LogLevel.critical]
        h.assertServes()
    finally:
        globalLogPublisher.removeObserver(logged.append)


def test_storage_failed_maps_to_unavailable():
    node = StubNode()
    node.proposeError = messages.StorageFailed("disk on fire")
    f = failureOf(Harness(node).call(commands.Delete, key="k"), Unavailable)
    assert str(f.value).startswith("outcome unknown")
    assert len(node.proposed) == 1


def test_not_leader_on_forwarded_request_is_not_proposed():
    node = StubNode()
    node.proposeError = messages.NotLeader(0)
    h = Harness(node)
    result(h.authenticate(asNode=2))
    f = failureOf(h.call(commands.Put, key="k", value=b"v", forwarded=True), Unavailable)
    assert str(f.value).startswith(NOT_PROPOSED)
    node.readError = messages.NotLeader(2)
    f = failureOf(h.call(commands.Get, key="k", forwarded=True), Unavailable)
    assert str(f.value).startswith(NOT_PROPOSED)


def test_forwarded_request_at_follower_is_not_forwarded_again():
    node = StubNode(nodeId=3, role=messages.FOLLOWER, leaderId=1)
    h = Harness(node)  # no peers at all: forwarding would crash
    result(h.authenticate(asNode=2))
    for command, kw in [
        (commands.Put, dict(key="k", value=b"v")),
        (commands.Delete, dict(key="k")),
        (commands.CompareAndSet, dict(key="k", value=b"v")),
        (commands.Get, dict(key="k")),
    ]:
        f = failureOf(h.call(command, forwarded=True, **kw), NotProposed)
        assert str(f.value).startswith(NOT_PROPOSED), f.value
    assert node.proposed == []
    h.assertServes()


def test_unexpected_exception_is_unavailable_and_link_survives():
    node = StubNode()
    node.proposeError = RuntimeError("boom")
    h = Harness(node)
    f = failureOf(h.call(commands.Put, key="k", value=b"v"), Unavailable)
    assert "internal error" in str(f.value)
    h.assertServes()


def test_request_timeout_is_outcome_unknown():
    node = StubNode()
    node.hold = True
    h = Harness(node)
    d = h.call(commands.Put, key="k", value=b"v")
    assert not d.called
    h.advance(h.factory.requestTimeout)
    f = failureOf(d, Unavailable)
    assert str(f.value).startswith("outcome unknown")
    # the core answering late is harmless
    node.held[0].callback((1, None))
    h.assertServes()


@pytest.mark.parametrize("error,expected,text", [
    (messages.CommitUnknown("deposed"), Unavailable, "outcome unknown: deposed"),
    (messages.StorageFailed("disk on fire"), Unavailable, "outcome unknown: storage failed"),
    (RuntimeError("boom"), Unavailable, "internal error serving put"),
    (InvalidArgument("sequence too old"), InvalidArgument, "sequence too old"),
])
def test_a_proposed_write_that_fails_later_is_answered_once(error, expected, text):
    """The leader's own path: proposed once, the core's failure mapped."""
    node = StubNode()
    node.hold = True
    h = Harness(node)
    d = h.call(commands.Put, key="k", value=b"v")
    assert not d.called and len(node.proposed) == 1
    node.held[0].errback(error)
    h.pumps.flush()
    f = failureOf(d, expected)
    assert text in str(f.value)
    assert len(node.proposed) == 1
    h.assertServes()


def test_a_held_write_answers_each_command_with_its_own_response():
    node = StubNode()
    node.hold = True
    h = Harness(node)
    put = h.call(commands.Put, key="k", value=b"v")
    delete = h.call(commands.Delete, key="k")
    cas = h.call(commands.CompareAndSet, key="k", value=b"w")
    node.held[0].callback((5, None))
    node.held[1].callback((6, True))
    node.held[2].callback((7, False))
    h.pumps.flush()
    assert result(put) == {"revision": 5, "prev_kv": None}
    assert result(delete) == {"deleted": True, "revision": 6, **OLD_DELETE}
    assert result(cas) == {"succeeded": False, "revision": 7}
    assert h.clock.getDelayedCalls() == []  # no deadline left behind


# -- forwarding --------------------------------------------------------------


def followerAndLeader():
    leader = StubNode(nodeId=1)
    follower = StubNode(nodeId=2, role=messages.FOLLOWER, leaderId=1)
    return Harness(follower, leader=leader), leader, follower


def test_follower_forwards_writes_and_relays_answers():
    h, leader, follower = followerAndLeader()
    value = b"v" * 100000  # forwarded in chunks too
    assert result(h.call(commands.Put, key="a", value=value)) == {"revision": 1, "prev_kv": None}
    assert leader.store.get("a") == value
    assert follower.proposed == []
    assert result(h.call(commands.CompareAndSet, key="a", expected=value, value=b"2")) == {
        "succeeded": True,
        "revision": 2,
    }
    assert result(h.call(commands.Delete, key="a")) == {"deleted": True, "revision": 3, **OLD_DELETE}
    assert len(leader.proposed) == 3


def test_follower_forwards_linearizable_get():
    h, leader, follower = followerAndLeader()
    leader.store.data["k"] = b"new"
    follower.store.data["k"] = b"old"
    assert result(h.call(commands.Get, key="k")) == {"found": True, "value": b"new"}
    assert leader.reads == 1
    assert result(h.call(commands.Get, key="k", stale=True))["value"] == b"old"


def test_a_read_waiting_at_the_leader_is_answered_when_confirmed():
    node = StubNode()
    node.holdReads = True
    node.store.data["k"] = b"v"
    h = Harness(node)
    d = h.call(commands.Get, key="k")
    assert not d.called and node.reads == 1
    node.heldReads[0].callback(None)
    h.pumps.flush()
    assert result(d) == {"found": True, "value": b"v"}
    assert h.clock.getDelayedCalls() == []


def test_a_read_that_times_out_at_the_leader_is_not_proposed():
    node = StubNode()
    node.holdReads = True
    h = Harness(node)
    d = h.call(commands.Get, key="k")
    h.advance(h.factory.requestTimeout)
    f = failureOf(d, Unavailable)
    assert str(f.value).startswith(NOT_PROPOSED)
    node.heldReads[0].callback(None)  # late: harmless
    h.assertServes()


def test_a_read_whose_leader_steps_down_while_it_waits_goes_to_the_new_leader():
    h, leader, node = followerAndLeader()
    node.role, node.leaderId, node.holdReads = messages.LEADER, 2, True
    leader.store.data["k"] = b"new"
    node.store.data["k"] = b"old"
    d = h.call(commands.Get, key="k")
    assert not d.called
    # deposed: node 1 leads now
    node.role, node.leaderId = messages.FOLLOWER, 1
    node.heldReads[0].errback(messages.NotLeader(1))
    h.pumps.flush()
    assert result(d) == {"found": True, "value": b"new"}
    assert leader.reads == 1


def test_a_rerouted_read_that_times_out_is_not_logged_as_an_error():
    from twisted.logger import globalLogPublisher

    h, leader, node = followerAndLeader()
    node.role, node.leaderId, node.holdReads = messages.LEADER, 2, True
    leader.holdReads = True
    d = h.call(commands.Get, key="k")
    node.role, node.leaderId = messages.FOLLOWER, 1
    node.heldReads[0].errback(messages.NotLeader(1))
    h.pumps.flush()
    assert leader.reads == 1 and not d.called  # forwarded; the leader holds it
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        h.advance(h.factory.requestTimeout)
    finally:
        globalLogPublisher.removeObserver(events.append)
    f = failureOf(d, Unavailable)
    assert str(f.value).startswith(NOT_PROPOSED)
    assert [e for e in events if "log_failure" in e] == []


def test_a_forwarded_read_whose_leader_steps_down_is_not_forwarded_again():
    node = StubNode()
    node.holdReads = True
    h = Harness(node)
    result(h.authenticate(asNode=2))
    d = h.call(commands.Get, key="k", forwarded=True)
    node.role, node.leaderId = messages.FOLLOWER, 2
    node.heldReads[0].errback(messages.NotLeader(2))
    h.pumps.flush()
    f = failureOf(d, Unavailable)
    assert str(f.value).startswith(NOT_PROPOSED)
    h.assertServes()


def test_follower_relays_leader_errors():
    h, leader, follower = followerAndLeader()
    leader.proposeError = messages.CommitUnknown("deposed")
    f = failureOf(h.call(commands.Put, key="k", value=b"v"), Unavailable)
    assert str(f.value).startswith("outcome unknown")
    leader.proposeError = messages.StorageFailed("x")
    failureOf(h.call(commands.Delete, key="k"), Unavailable)
    h.assertServes()


def test_follower_relays_a_full_disk_at_once_and_by_type():
    """
    A leader whose disk is full refuses writes, not proposed; its follower
    relays that at once (retrying the same leader would not help), with the
    leader's description, and a client of the follower gets the type.
    """
    h, leader, follower = followerAndLeader()
    leader.storage = type("FullStorage", (), {"diskFull": True})()
    f = failureOf(h.call(commands.Put, key="k", value=b"v"), NodeDiskFull)
    assert str(f.value) == "not proposed: disk full on node 1"
    assert leader.proposed == []
    assert h.clock.getDelayedCalls() == []  # no retry pending, no deadline left
    h.assertServes()


def test_status_counts_the_client_reads_answered_where_they_were_sent():
    """C{reads} (the dashboard's reads/s) counts each client read once: at
    the node the client asked, stale or not; a read the follower forwards
    is not counted again by the leader, a refused read not at all."""
    h, leader, follower = followerAndLeader()
    leader.store.data["k"] = follower.store.data["k"] = b"v"
    assert result(h.call(commands.Status))["reads"] == 0
    result(h.call(commands.Get, key="k"))  # forwarded to the leader
    result(h.call(commands.Get, key="k", stale=True))
    result(h.call(commands.Get, key="nope", stale=True))
    failureOf(h.call(commands.Get, key=""), InvalidArgument)
    assert leader.reads == 1
    assert result(h.call(commands.Status))["reads"] == 3
    assert h.leaderFactory.readsAnswered == 0


def test_follower_retries_when_its_leader_is_stale():
    h, leader, follower = followerAndLeader()
    leader.role = messages.FOLLOWER  # node 1 stepped down; nobody leads yet
    leader.leaderId = 0
    d = h.call(commands.Put, key="k", value=b"v")
    assert not d.called
    h.advance(0.3)
    assert not d.called
    leader.becomeLeader()  # node 1 is re-elected
    h.advance(0.2)
    assert result(d) == {"revision": 1, "prev_kv": None}


def test_write_waits_for_a_leader():
    leader = StubNode(nodeId=1, role=messages.FOLLOWER, leaderId=0)
    follower = StubNode(nodeId=2, role=messages.FOLLOWER, leaderId=0)
    h = Harness(follower, leader=leader)
    d = h.call(commands.Put, key="k", value=b"v")
    h.advance(1.0)
    assert not d.called
    leader.becomeLeader()
    follower.setLeader(1)
    h.pumps.flush()
    assert result(d) == {"revision": 1, "prev_kv": None}


def test_no_leader_in_time_is_unavailable_not_proposed():
    follower = StubNode(nodeId=2, role=messages.FOLLOWER, leaderId=0)
    h = Harness(follower)
    d = h.call(commands.Put, key="k", value=b"v")
    for _ in range(60):
        h.advance(0.1)
    f = failureOf(d, Unavailable)
    assert str(f.value).startswith(NOT_PROPOSED)
    h.assertServes()


def test_leader_unreachable_is_not_proposed():
    h, leader, follower = followerAndLeader()
    h.endpoint.refuse = True
    for p in h.endpoint.pumps:
        p.serverIO.loseConnection()
    h.pumps.flush()
    assert not h.peers.isConnected(1)
    d = h.call(commands.Put, key="k", value=b"v")
    for _ in range(60):
        h.advance(0.1)
    f = failureOf(d, Unavailable)
    assert str(f.value).startswith(NOT_PROPOSED), f.value
    assert leader.proposed == []


# -- peer RPCs -----------------------------------------------------------------


def test_peer_rpcs_reach_the_node():
    node = StubNode(role=messages.FOLLOWER, leaderId=0)
    h = Harness(node, token="c1")
    result(h.authenticate(asNode=2))
    r = result(
        h.call(
            commands.RequestVote, cluster="c1", term=3, candidate_id=2,
            last_log_index=5, last_log_term=2,
        )
    )
    assert r == {"term": 3, "vote_granted": True}
    assert node.votes == [messages.RequestVote(3, 2, 5, 2)]
    entries = [messages.Entry(6, 3, b"a"), messages.Entry(7, 3, b"b" * 70000)]
    r = result(
        h.call(
            commands.AppendEntries, cluster="c1", term=3, leader_id=2,
            prev_log_index=5, prev_log_term=2, entries=wire.encodeEntries(entries),
            leader_commit=4,
        )
    )
    assert r["success"] and r["match_index"] == 7
    assert node.appends == [messages.AppendEntries(3, 2, 5, 2, entries, 4)]


def _vote(h, candidate=2, term=3):
    return h.call(
        commands.RequestVote, cluster="", term=term, candidate_id=candidate,
        last_log_index=5, last_log_term=2,
    )


def _forgedAppend(h, leader=2, term=1003):
    """The issue's forgery: a far higher term and a committed Put."""
    entries = [messages.Entry(1, term, kv.encodePut("k", b"FORGED"))]
    return h.call(
        commands.AppendEntries, cluster="raftkv", term=term, leader_id=leader,
        prev_log_index=0, prev_log_term=0, entries=wire.encodeEntries(entries),
        leader_commit=1,
    )


def _snapshotCall(h, leader=2):
    return h.call(commands.InstallSnapshot, **_installArgs(leader_id=leader))


def test_peer_rpcs_on_an_unauthenticated_connection_are_denied(logged):
    node = _SnapshotStub()  # a leader: it would serve a forwarded request
    h = Harness(node)
    for d in (_vote(h), _forgedAppend(h), _snapshotCall(h)):
        failureOf(d, PermissionDenied)
    for command, args in [
        (commands.Put, dict(key="k", value=b"FORGED")),
        (commands.Delete, dict(key="k")),
        (commands.CompareAndSet, dict(key="k", value=b"FORGED")),
        (commands.Get, dict(key="k")),
    ]:
        failureOf(h.call(command, forwarded=True, **args), PermissionDenied)
    # nothing reached the node: no term change, no vote, no entry
    assert node.votes == [] and node.appends == [] and node.snapshots == []
    assert node.proposed == [] and node.reads == 0
    # logged once for the connection, not once per refused command
    refusals = [e for e in logged if "refused a peer command" in e.get("log_format", "")]
    assert len(refusals) == 1
    # and the connection still serves the client contract
    h.assertServes()
    assert result(h.call(commands.Put, key="k", value=b"v"))["revision"] == 1


def test_authenticated_peer_speaks_only_for_itself():
    node = _SnapshotStub(
        role=messages.FOLLOWER, leaderId=0,
        answer=messages.InstallSnapshotResult(5, True, 0),
    )
    h = Harness(node)
    result(h.authenticate(asNode=2))
    for d in (_vote(h, candidate=3), _forgedAppend(h, leader=3), _snapshotCall(h, leader=3)):
        f = failureOf(d, PermissionDenied)
        assert "node 3 on a connection of node 2" in str(f.value)
    assert node.votes == [] and node.appends == [] and node.snapshots == []
    assert result(_vote(h, candidate=2)) == {"term": 3, "vote_granted": True}
    result(_snapshotCall(h, leader=2))
    assert len(node.snapshots) == 1


@pytest.mark.parametrize(
    "asNode,token,why",
    [
        (2, "another-token", "did not prove"),  # knows another cluster's token
        (7, "raftkv", "not a member"),  # not in the configuration
        (1, "raftkv", "not a member"),  # claims to be the node itself
    ],
)
def test_handshake_refused_changes_nothing(asNode, token, why):
    node = StubNode(role=messages.FOLLOWER, leaderId=0)
    h = Harness(node)
    f = failureOf(h.authenticate(asNode=asNode, token=token), PermissionDenied)
    assert why in str(f.value)
    failureOf(_vote(h, candidate=asNode), PermissionDenied)
    assert node.votes == []
    h.assertServes()


def test_handshake_for_another_node_or_twice_is_refused():
    node = StubNode(role=messages.FOLLOWER, leaderId=0)
    h = Harness(node)
    me = authority(2)
    dialling = me.dial(3)  # meant node 3, reached node 1
    f = failureOf(
        h.call(commands.PeerHello, **dialling.helloArguments(2)), PermissionDenied
    )
    assert "this is node 1, not node 3" in str(f.value)
    failureOf(h.call(commands.PeerProof, proof=b"x" * 32), PermissionDenied)
    failureOf(
        h.call(commands.PeerHello, node_id=2, to_node_id=1, nonce=b"short"),
        PermissionDenied,
    )
    h2 = Harness(StubNode(role=messages.FOLLOWER, leaderId=0))
    result(h2.authenticate(asNode=2))
    failureOf(h2.authenticate(asNode=3), PermissionDenied)  # one identity per connection
    h.assertServes()


def test_a_proof_is_worth_nothing_on_another_connection():
    """A handshake replayed from the wire: the node's fresh nonce differs."""
    node = StubNode(role=messages.FOLLOWER, leaderId=0)
    h1, h2 = Harness(node), Harness(node)
    me = authority(2)
    dialling = me.dial(1)
    answer = result(h1.call(commands.PeerHello, **dialling.helloArguments(2)))
    proof = me.checkAnswer(dialling, answer)
    result(h1.call(commands.PeerProof, proof=proof))
    # the same hello and proof on a second connection
    result(h2.call(commands.PeerHello, **dialling.helloArguments(2)))
    failureOf(h2.call(commands.PeerProof, proof=proof), PermissionDenied)
    failureOf(_vote(h2), PermissionDenied)


def test_the_token_is_never_in_an_answer_or_a_log_line(logged):
    secret = "s3cret-token-value"
    node = StubNode(role=messages.FOLLOWER, leaderId=0)
    h = Harness(node, token=secret)
    answers = []
    for d in (
        h.authenticate(asNode=2, token="guess"),
        _vote(h),
        h.authenticate(asNode=9, token=secret),
        h.call(commands.PeerHello, node_id=2, to_node_id=1, nonce=b"n" * 32),
    ):
        answers.append(repr(_outcomeText(d)))
    assert not any(secret in a for a in answers), answers
    from twisted.logger import formatEvent

    text = " ".join(formatEvent(e) + repr(e) for e in logged)
    assert secret not in text


def _outcomeText(d):
    f = failureOf(d)
    return str(f.value)


def test_bad_entry_batch_is_invalid_argument():
    node = StubNode(role=messages.FOLLOWER, leaderId=0)
    h = Harness(node)
    result(h.authenticate(asNode=2))
    failureOf(
        h.call(
            commands.AppendEntries, cluster="raftkv", term=3, leader_id=2,
            prev_log_index=0, prev_log_term=0, entries=b"\x00\x00\x00\x05junk",
            leader_commit=0,
        ),
        InvalidArgument,
    )
    h.assertServes()


_VOTE = dict(cluster="raftkv", term=3, candidate_id=2, last_log_index=5, last_log_term=2)
_APPEND = dict(cluster="raftkv", term=3, leader_id=2, prev_log_index=5, prev_log_term=2,
               entries=wire.encodeEntries([]), leader_commit=4)
_INSTALL = dict(cluster="raftkv", term=5, leader_id=2, last_index=900, last_term=4,
                members=[1, 2, 3], offset=0, data=b"", done=False)


@pytest.mark.parametrize(
    "command,base,changes",
    [
        (commands.RequestVote, _VOTE, dict(term=-1)),
        (commands.RequestVote, _VOTE, dict(term=2**64)),
        (commands.RequestVote, _VOTE, dict(candidate_id=0)),
        (commands.RequestVote, _VOTE, dict(candidate_id=-2)),
        (commands.RequestVote, _VOTE, dict(last_log_index=-10)),
        (commands.RequestVote, _VOTE, dict(last_log_term=-1)),
        (commands.AppendEntries, _APPEND, dict(prev_log_index=-10)),
        (commands.AppendEntries, _APPEND, dict(prev_log_term=-1)),
        (commands.AppendEntries, _APPEND, dict(leader_commit=-5)),
        (commands.AppendEntries, _APPEND, dict(leader_id=0)),
        (commands.AppendEntries, _APPEND, dict(term=10**100)),
        (commands.InstallSnapshot, _INSTALL, dict(offset=-1)),
        (commands.InstallSnapshot, _INSTALL, dict(last_index=-900)),
        (commands.InstallSnapshot, _INSTALL, dict(members=[1, 0, 3])),
        (commands.InstallSnapshot, _INSTALL, dict(members=[1, -2])),
        (commands.InstallSnapshot, _INSTALL, dict(members=[2**64])),
    ],
)
def test_peer_rpc_integers_out_of_range_are_invalid_and_reach_nothing(command, base, changes):
    node = _SnapshotStub(role=messages.FOLLOWER, leaderId=0)
    h = Harness(node)
    f = failureOf(h.call(command, **{**base, **changes}), InvalidArgument)
    (name,) = changes
    assert f"{name} is out of range" in str(f.value)
    assert node.votes == [] and node.appends == [] and node.snapshots == []
    h.assertServes()


def test_peer_rpc_integers_at_their_limits_are_accepted():
    node = StubNode(role=messages.FOLLOWER, leaderId=0)
    h = Harness(node)
    result(h.authenticate(asNode=2))
    top = 2**64 - 1
    result(h.call(commands.RequestVote, **{**_VOTE, "term": top, "candidate_id": 2,
                                           "last_log_index": 0, "last_log_term": 0}))
    result(h.call(commands.AppendEntries, **{**_APPEND, "term": top, "prev_log_index": 0,
                                             "prev_log_term": top, "leader_commit": 0}))
    assert len(node.votes) == 1 and len(node.appends) == 1
    # the largest id parses; it is refused only as not this connection's node
    failureOf(h.call(commands.RequestVote, **{**_VOTE, "candidate_id": top}), PermissionDenied)


class _SnapshotStub(StubNode):
    def __init__(self, *args, answer=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.snapshots = []
        self.answer = answer

    def handleInstallSnapshot(self, request):
        self.snapshots.append(request)
        if isinstance(self.answer, Exception):
            return defer.fail(self.answer)
        return defer.succeed(self.answer)


def _installArgs(cluster="c1", data=b"", **kw):
    args = dict(
        cluster=cluster, term=5, leader_id=2, last_index=900, last_term=4,
        members=[1, 2, 3], offset=0, data=data, done=False,
    )
    args.update(kw)
    return args


def test_install_snapshot_reaches_the_node():
    node = _SnapshotStub(
        role=messages.FOLLOWER, leaderId=0,
        answer=messages.InstallSnapshotResult(5, True, 300 * 1024 + 100),
    )
    h = Harness(node, token="c1")
    result(h.authenticate(asNode=2))
    data = b"\xab\x00" * (150 * 1024) + b"z" * 100  # 300 KiB + 100, 5 AMP chunks
    r = result(h.call(commands.InstallSnapshot, **_installArgs(data=data, offset=0)))
    assert r == {"term": 5, "success": True, "next_offset": 300 * 1024 + 100}
    meta = messages.SnapshotMeta(900, 4, (1, 2, 3))
    assert node.snapshots == [messages.InstallSnapshot(5, 2, meta, 0, data, False)]


def test_install_snapshot_unauthenticated_or_failure_keeps_link():
    node = _SnapshotStub(role=messages.FOLLOWER, leaderId=0, answer=RuntimeError("boom"))
    h = Harness(node, token="c1")
    failureOf(h.call(commands.InstallSnapshot, **_installArgs()), PermissionDenied)
    assert node.snapshots == []
    result(h.authenticate(asNode=2))
    # an unexpected error in the node is UNAVAILABLE, not a dropped link
    failureOf(h.call(commands.InstallSnapshot, **_installArgs()), Unavailable)
    assert len(node.snapshots) == 1
    h.assertServes()


# -- exactly-once writes (client sessions) -------------------------------------------


def test_duplicate_session_writes_answer_like_the_first_attempt():
    h = Harness(StubNode())
    s = dict(client_id="c1")
    assert result(h.call(commands.Put, key="k", value=b"first", sequence=1, **s)) == {
        "revision": 1, "prev_kv": None,
    }
    assert result(h.call(commands.Put, key="k", value=b"second")) == {"revision": 2, "prev_kv": None}
    # the retry of sequence 1 changes nothing and answers revision 1 again
    assert result(h.call(commands.Put, key="k", value=b"first", sequence=1, **s)) == {
        "revision": 1, "prev_kv": None,
    }
    assert h.node.store.get("k") == b"second"
    assert h.node.proposed[0] == kv.encodeSession("c1", 1, kv.encodePut("k", b"first"))
    assert h.node.proposed[1] == kv.encodePut("k", b"second")  # no session: as before

    cas = dict(key="k", expected=b"second", value=b"third", sequence=2, **s)
    assert result(h.call(commands.CompareAndSet, **cas)) == {"succeeded": True, "revision": 4}
    h.call(commands.Put, key="k", value=b"second")
    assert result(h.call(commands.CompareAndSet, **cas)) == {"succeeded": True, "revision": 4}
    assert h.node.store.get("k") == b"second"

    assert result(h.call(commands.Delete, key="k", sequence=3, **s)) == {
        "deleted": True, "revision": 7, **OLD_DELETE,
    }
    h.call(commands.Put, key="k", value=b"back")
    assert result(h.call(commands.Delete, key="k", sequence=3, **s)) == {
        "deleted": True, "revision": 7, **OLD_DELETE,
    }
    assert h.node.store.get("k") == b"back"


@pytest.mark.parametrize(
    "session,message",
    [
        (dict(client_id="c"), "together"),
        (dict(sequence=1), "together"),
        (dict(client_id="", sequence=1), "empty client_id"),
        (dict(client_id="c", sequence=0), "sequence 0"),
        (dict(client_id="c", sequence=-5), "sequence -5"),
        (dict(client_id="c", sequence=2**64), "sequence"),
        (dict(client_id="x" * 129, sequence=1), "client_id is 129 bytes"),
    ],
)
@pytest.mark.parametrize(
    "command,kwargs",
    [
        (commands.Put, dict(key="k", value=b"v")),
        (commands.Delete, dict(key="k")),
        (commands.CompareAndSet, dict(key="k", value=b"v")),
    ],
)
def test_bad_session_is_invalid_argument(command, kwargs, session, message):
    h = Harness(StubNode())
    f = failureOf(h.call(command, **kwargs, **session), InvalidArgument)
    assert message in str(f.value)
    assert h.node.proposed == []
    h.assertServes()


def test_sequence_older_than_the_window_is_invalid_argument():
    h = Harness(StubNode(store=kv.KVStore(window=2)))
    for seq in (1, 2, 3):
        h.call(commands.Put, key="k", value=b"%d" % seq, client_id="c", sequence=seq)
    f = failureOf(
        h.call(commands.Put, key="k", value=b"1", client_id="c", sequence=1),
        InvalidArgument,
    )
    assert "sequence 1 is older than this session's window" in str(f.value)
    assert h.node.store.get("k") == b"3"
    h.assertServes()


def test_follower_forwards_the_session():
    h, leader, follower = followerAndLeader()
    put = dict(key="a", value=b"1", client_id="c", sequence=1)
    assert result(h.call(commands.Put, **put)) == {"revision": 1, "prev_kv": None}
    assert result(h.call(commands.Put, key="a", value=b"2")) == {"revision": 2, "prev_kv": None}
    assert result(h.call(commands.Put, **put)) == {"revision": 1, "prev_kv": None}
    cas = dict(key="a", expected=b"2", value=b"3", client_id="c", sequence=2)
    assert result(h.call(commands.CompareAndSet, **cas)) == {"succeeded": True, "revision": 4}
    assert result(h.call(commands.CompareAndSet, **cas)) == {"succeeded": True, "revision": 4}
    assert result(h.call(commands.Delete, key="a", client_id="c", sequence=3)) == {
        "deleted": True, "revision": 6, **OLD_DELETE,
    }
    assert follower.proposed == []
    assert leader.proposed[0] == kv.encodeSession("c", 1, kv.encodePut("a", b"1"))
    assert leader.proposed[3] == kv.encodeSession(
        "c", 2, kv.encodeCompareAndSet("a", b"2", b"3")
    )
    assert leader.store.get("a") is None
