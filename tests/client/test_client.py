"""
Tests for L{twisted_raft.client}: the client talks real AMP (through
L{twisted.test.iosim}) to in-memory fake nodes; time is a L{task.Clock}.
"""

import pytest
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.protocols import amp
from twisted.python.failure import Failure
from twisted.test import iosim

from twisted_raft.client import (
    ClientAMP,
    NotProposed,
    OutcomeUnknown,
    RaftKVClient,
    endpointString,
    parseAddresses,
    splitAddress,
)
from twisted_raft.rpc.commands import (
    CompareAndSet,
    Delete,
    Get,
    InvalidArgument,
    NodeDiskFull,
    Put,
    Status,
    Unavailable,
    ValueTooLarge,
)


class FakeNode:
    """One fake node: answers from the cluster's shared store."""

    def __init__(self, cluster, nodeId):
        self.cluster = cluster
        self.nodeId = nodeId
        self.down = False
        self.calls = []  # (command name, key)
        self.sessions = []  # (client_id, sequence) of each write, in order
        self.onWrite = None  # f(name, key) -> None to proceed, or raise / return a Deferred
        self.onRead = None
        self.servers = []

    def role(self):
        return "leader" if self.cluster.leader == self.nodeId else "follower"


class FakeServer(amp.AMP):
    def __init__(self, node):
        super().__init__()
        self.node = node

    def _write(self, name, key, apply, client_id, sequence):
        self.node.calls.append((name, key))
        self.node.sessions.append((client_id, sequence))
        if self.node.onWrite is not None:
            result = self.node.onWrite(name, key)
            if result is not None:
                return result
        if client_id is None:
            return apply()
        # exactly-once, like the real cluster: a repeat gets the first answer
        applied = self.node.cluster.applied
        if (client_id, sequence) not in applied:
            applied[client_id, sequence] = apply()
        return applied[client_id, sequence]

    def _bump(self):
        self.node.cluster.revision += 1
        return self.node.cluster.revision

    @Put.responder
    def put(self, key, value, forwarded=None, client_id=None, sequence=None, prev_kv=None):
        store = self.node.cluster.store

        def apply():
            if not key:
                raise InvalidArgument("empty key")
            if len(value) > 1024 * 1024:
                raise ValueTooLarge(f"value of {len(value)} bytes")
            store[key] = value
            return {"revision": self._bump()}

        return self._write("put", key, apply, client_id, sequence)

    @Delete.responder
    def delete(
        self, key, forwarded=None, client_id=None, sequence=None, end=None, prefix=None,
        prev_kv=None,
    ):
        store = self.node.cluster.store

        def apply():
            deleted = store.pop(key, None) is not None
            return {"deleted": deleted, "revision": self._bump()}

        return self._write("delete", key, apply, client_id, sequence)

    @CompareAndSet.responder
    def cas(self, key, value, expected=None, forwarded=None, client_id=None, sequence=None):
        store = self.node.cluster.store

        def apply():
            if store.get(key) != expected:
                return {"succeeded": False, "revision": self.node.cluster.revision}
            store[key] = value
            return {"succeeded": True, "revision": self._bump()}

        return self._write("cas", key, apply, client_id, sequence)

    @Get.responder
    def get(self, key, stale=None, forwarded=None):
        self.node.calls.append(("get", key, bool(stale)))
        if self.node.onRead is not None:
            result = self.node.onRead(key)
            if result is not None:
                return result
        value = self.node.cluster.store.get(key)
        return {"found": value is not None, "value": value if value is not None else b""}

    @Status.responder
    def status(self):
        self.node.calls.append(("status",))
        c = self.node.cluster
        return {
            "node_id": self.node.nodeId,
            "role": self.node.role(),
            "term": c.term,
            "leader_id": c.leader,
            "commit_index": c.revision,
            "last_applied": c.revision,
            "last_log_index": c.revision + 1,
        }


class FakeCluster:
    serverType = FakeServer

    def __init__(self, n=3, leader=1):
        self.clock = Clock()
        self.store = {}
        self.applied = {}  # (client_id, sequence) -> the first answer
        self.revision = 0
        self.term = 1
        self.leader = leader
        self.addresses = [f"127.0.0.1:{8001 + i}" for i in range(n)]
        self.nodes = [FakeNode(self, i + 1) for i in range(n)]
        self.pumps = []
        self.connects = []

    def node(self, nodeId):
        return next(n for n in self.nodes if n.nodeId == nodeId)

    def connect(self, address):
        node = self.nodes[self.addresses.index(address)]
        self.connects.append(address)
        if node.down:
            return fail(ConnectionRefusedError(address))
        server = self.serverType(node)
        node.servers.append(server)
        client = ClientAMP()
        self.pumps.append(
            iosim.connect(
                server, iosim.makeFakeServer(server), client, iosim.makeFakeClient(client), greet=False
            )
        )
        return succeed(client)

    def client(self, **kwargs):
        kwargs.setdefault("timeout", 5.0)
        return RaftKVClient(self.addresses, reactor=self.clock, connect=self.connect, **kwargs)

    def flush(self):
        for _ in range(1000):
            moved = False
            for pump in list(self.pumps):
                moved = pump.pump(advanceClock=False) or moved
            if not moved:
                return

    def run(self, d, limit=30.0, step=0.01):
        """Pump and advance time until C{d} fires; return its result or raise."""
        results = []
        d.addBoth(results.append)
        start = self.clock.seconds()
        while True:
            self.flush()
            if results:
                break
            assert self.clock.seconds() - start < limit, "operation never finished"
            self.clock.advance(step)
        result = results[0]
        if isinstance(result, Failure):
            result.raiseException()
        return result

    def writes(self, nodeId):
        return [c for c in self.node(nodeId).calls if c[0] in ("put", "delete", "cas")]


@pytest.fixture
def cluster():
    return FakeCluster()


# -- addresses ------------------------------------------------------------


def test_parseAddresses():
    assert parseAddresses("127.0.0.1:8001, 127.0.0.1:8002,") == ["127.0.0.1:8001", "127.0.0.1:8002"]
    assert parseAddresses(["h:1"]) == ["h:1"]
    for bad in ["", "nohost", "h:notaport", "h:0", ":80", "h:70000"]:
        with pytest.raises(ValueError):
            parseAddresses(bad)


def test_splitAddressAndEndpoint():
    assert splitAddress("[::1]:8001") == ("::1", 8001)
    assert endpointString("127.0.0.1:8001", 2.0) == "tcp:host=127.0.0.1:port=8001:timeout=2"
    assert endpointString("[::1]:8001", 0.3) == "tcp:host=\\:\\:1:port=8001:timeout=1"


def test_realConnectUsesEndpointString():
    """Without C{connect}, the client connects over TCP to the address."""
    from twisted.internet.testing import MemoryReactorClock

    reactor = MemoryReactorClock()
    client = RaftKVClient("127.0.0.1:8001", reactor=reactor, timeout=1.0)
    d = client.put("k", b"v")
    host, port, factory, timeout, bindAddress = reactor.tcpClients[0]
    assert (host, port, timeout) == ("127.0.0.1", 8001, 2)
    reactor.advance(10)
    with pytest.raises(Unavailable):
        FakeCluster().run(d)  # already failed: the connection never came up


# -- basic operations -------------------------------------------------------


def test_putGetDeleteCas(cluster):
    client = cluster.client()
    assert cluster.run(client.put("a", b"1")) == 1
    assert cluster.run(client.get("a")) == b"1"
    assert cluster.run(client.get("missing")) is None
    assert cluster.run(client.compareAndSet("a", b"nope", b"2")) == (False, 1)
    assert cluster.run(client.compareAndSet("a", b"1", b"2")) == (True, 2)
    assert cluster.run(client.compareAndSet("b", None, b"x")) == (True, 3)
    assert cluster.run(client.compareAndSet("b", None, b"y")) == (False, 3)
    assert cluster.run(client.delete("a")) == (True, 4)
    assert cluster.run(client.delete("a")) == (False, 5)
    assert cluster.run(client.get("a")) is None
    # Everything went to the leader, node 1.
    assert len(cluster.writes(1)) == 7
    assert cluster.writes(2) == cluster.writes(3) == []


def test_prefersTheLeader(cluster):
    cluster.leader = 3
    client = cluster.client()
    cluster.run(client.put("a", b"1"))
    assert cluster.writes(3) == [("put", "a")]


def test_leaderFoundByIdWhenAddressIsNotAPeerListPosition():
    """The leader's address comes from node_id, not list position, when known."""
    cluster = FakeCluster()
    cluster.addresses.reverse()  # addresses[0] is now node 3
    cluster.nodes.reverse()
    cluster.leader = 1
    client = cluster.client()
    cluster.run(client.put("a", b"1"))
    assert cluster.writes(1) == [("put", "a")]


def test_setAddressesFollowsTheMembers():
    """
    After setAddresses the client looks for the leader among the new
    addresses only, and no longer sends to one it dropped, even over a
    connection that still works.
    """
    cluster = FakeCluster(n=4)
    client = RaftKVClient(cluster.addresses[:3], reactor=cluster.clock, connect=cluster.connect)
    assert cluster.run(client.put("a", b"1")) == 1
    assert cluster.writes(1) == [("put", "a")]
    # node 1 is removed (its connection stays up), node 4 was added and leads
    cluster.leader = 4
    client.setAddresses(cluster.addresses[1:])
    assert cluster.run(client.put("b", b"2")) == 2
    assert cluster.writes(4) == [("put", "b")]
    assert cluster.writes(1) == [("put", "a")]
    rows = cluster.run(client.clusterStatus())
    assert [address for address, _ in rows] == cluster.addresses[1:]
    with pytest.raises(ValueError):
        client.setAddresses([])
    assert client.addresses == cluster.addresses[1:]


def test_staleGet(cluster):
    client = cluster.client()
    cluster.store["k"] = b"v"
    assert cluster.run(client.get("k", stale=True)) == b"v"
    assert ("get", "k", True) in cluster.node(1).calls


def test_bigValueRoundtrips(cluster):
    """200 KiB travels as several BigBytes chunks both ways."""
    client = cluster.client()
    value = bytes(range(256)) * 800
    assert len(value) == 200 * 1024
    cluster.run(client.put("big", value))
    assert cluster.store["big"] == value
    assert cluster.run(client.get("big")) == value
    assert cluster.run(client.compareAndSet("big", value, value + b"!")) == (True, 2)


def test_status(cluster):
    client = cluster.client()
    s = cluster.run(client.status("127.0.0.1:8002"))
    assert s["node_id"] == 2 and s["role"] == "follower" and s["leader_id"] == 1
    assert s["address"] == "127.0.0.1:8002"
    s = cluster.run(client.status())
    assert s["node_id"] == 1 and s["role"] == "leader"


def test_statusOfADownNode(cluster):
    cluster.node(2).down = True
    client = cluster.client()
    with pytest.raises(Unavailable, match="8002"):
        cluster.run(client.status("127.0.0.1:8002"))


def test_clusterStatus(cluster):
    cluster.node(2).down = True
    client = cluster.client()
    rows = cluster.run(client.clusterStatus())
    assert [a for a, _ in rows] == cluster.addresses
    assert rows[1][1] is None
    assert rows[0][1]["role"] == "leader" and rows[2][1]["node_id"] == 3


def test_connectionIsReused(cluster):
    client = cluster.client()
    for i in range(3):
        cluster.run(client.put("k", b"%d" % i))
    # one Status round to each node, then the cached leader connection.
    assert cluster.connects.count("127.0.0.1:8001") == 1


def test_lostConnectionIsRecreated(cluster):
    client = cluster.client()
    cluster.run(client.put("k", b"1"))
    for server in cluster.node(1).servers:
        server.transport.loseConnection()
    cluster.flush()
    assert cluster.run(client.put("k", b"2")) == 2
    assert cluster.connects.count("127.0.0.1:8001") == 2


# -- errors -------------------------------------------------------------------


def test_invalidArgumentSurfaces(cluster):
    client = cluster.client()
    with pytest.raises(InvalidArgument, match="empty key"):
        cluster.run(client.put("", b"v"))
    assert len(cluster.writes(1)) == 1  # not retried


def test_valueTooLargeSurfaces(cluster):
    client = cluster.client()
    with pytest.raises(ValueTooLarge):
        cluster.run(client.put("k", b"x" * (1024 * 1024 + 1)))


def test_wrongTypesFailTheDeferred(cluster):
    client = cluster.client()
    with pytest.raises(TypeError):
        cluster.run(client.put("k", "not bytes"))
    with pytest.raises(TypeError):
        cluster.run(client.get(b"bytes key"))
    assert cluster.connects == []


def test_notProposedWriteIsRetriedElsewhere(cluster):
    """UNAVAILABLE 'not proposed' proves the write was not applied: retry."""
    client = cluster.client()

    def lostLeadership(name, key):
        cluster.leader = 2
        cluster.term = 2
        raise Unavailable("not proposed: no longer the leader")

    cluster.node(1).onWrite = lostLeadership
    assert cluster.run(client.put("k", b"v")) == 1
    assert cluster.writes(1) == [("put", "k")]
    assert cluster.writes(2) == [("put", "k")]
    assert cluster.store == {"k": b"v"}


def test_notProposedUntilTimeoutIsStillNotProposed(cluster):
    client = cluster.client(timeout=1.0)

    def refuse(name, key):
        raise Unavailable("not proposed: no quorum")

    for node in cluster.nodes:
        node.onWrite = refuse
    with pytest.raises(Unavailable, match="^not proposed") as info:
        cluster.run(client.put("k", b"v"))
    assert not isinstance(info.value, OutcomeUnknown)
    assert isinstance(info.value, NotProposed)
    assert len(cluster.writes(1)) > 1


@pytest.mark.parametrize("description,kind", [
    ("not proposed: no leader", NotProposed),
    ("not proposed: disk full on node 3", NodeDiskFull),
    ("not proposed", NotProposed),
    ("outcome unknown: leadership lost", Unavailable),
    ("no quorum; not proposed", Unavailable),
])
@pytest.mark.parametrize("callRemote", ["fast", "twisted"])
def test_unavailableIsDecodedOnceIntoItsType(description, kind, callRemote):
    """
    Whether a write may have been applied travels as a type, decided where
    the AMP error becomes an exception, for FastCalls and Twisted's
    callRemote alike; the description is kept byte for byte.
    """

    class Refusing(amp.AMP):
        @Put.responder
        def put(self, key, value, forwarded=None, client_id=None, sequence=None, prev_kv=None):
            raise Unavailable(description)

    clock = Clock()
    client, server, pump = iosim.connectedServerAndClient(Refusing, ClientAMP, clock=clock)
    if callRemote == "fast":
        d = client.callRemote(Put, key="k", value=b"v")
    else:
        d = amp.BoxDispatcher.callRemote(client, Put, key="k", value=b"v")
    errors = []
    d.addErrback(errors.append)
    pump.flush()
    [f] = errors
    assert type(f.value) is kind
    assert str(f.value) == description


def test_unknownOutcomeIsNotRetried(cluster):
    """
    Without sessions, a plain UNAVAILABLE on a write: the outcome is
    unknown; never retried.
    """
    client = cluster.client(sessions=False)

    def commitTimeout(name, key):
        raise Unavailable("commit timed out")

    cluster.node(1).onWrite = commitTimeout
    for op in [
        lambda: client.put("k", b"v"),
        lambda: client.delete("k"),
        lambda: client.compareAndSet("k", None, b"v"),
    ]:
        with pytest.raises(OutcomeUnknown, match="outcome unknown.*commit timed out"):
            cluster.run(op())
    assert len(cluster.writes(1)) == 3
    assert cluster.writes(2) == cluster.writes(3) == []


def test_droppedConnectionMidWriteIsUnknown(cluster):
    client = cluster.client(sessions=False)
    hang = Deferred()
    cluster.node(1).onWrite = lambda name, key: hang
    d = client.put("k", b"v")
    cluster.flush()
    assert cluster.writes(1) == [("put", "k")]
    for server in cluster.node(1).servers:
        server.transport.loseConnection()
    with pytest.raises(Unavailable, match="outcome unknown") as info:
        cluster.run(d)
    assert isinstance(info.value, OutcomeUnknown)
    assert cluster.writes(2) == cluster.writes(3) == []


def test_writeTimeoutIsUnknown(cluster):
    client = cluster.client(timeout=2.0, sessions=False)
    cluster.node(1).onWrite = lambda name, key: Deferred()
    with pytest.raises(OutcomeUnknown, match="no answer"):
        cluster.run(client.put("k", b"v"))
    assert cluster.writes(2) == cluster.writes(3) == []


def test_withoutSessionsWritesCarryNoSession(cluster):
    client = cluster.client(sessions=False)
    cluster.run(client.put("k", b"v"))
    cluster.run(client.delete("k"))
    assert cluster.node(1).sessions == [(None, None), (None, None)]


# -- exactly-once writes (client sessions) -------------------------------------------


def test_writesCarryTheClientSession(cluster):
    """Each write gets the next sequence of the client's random client id."""
    client = cluster.client()
    other = cluster.client()
    assert len(client.clientId) == 32 and client.clientId != other.clientId
    cluster.run(client.put("a", b"1"))
    cluster.run(client.delete("a"))
    cluster.run(client.compareAndSet("a", None, b"2"))
    cluster.run(other.put("b", b"1"))
    cid = client.clientId
    assert cluster.node(1).sessions == [(cid, 1), (cid, 2), (cid, 3), (other.clientId, 1)]


def test_sessionWriteTimeoutIsRetriedWithTheSameSession(cluster):
    """
    The first attempt gets no answer in time: the write is retried with the
    same (client_id, sequence), and the retry's answer is returned.
    """
    client = cluster.client(timeout=5.0, writeAttemptTimeout=1.0)
    hung = []

    def hangOnce(name, key):
        if not hung:
            hung.append(Deferred())
            return hung[0]

    cluster.node(1).onWrite = hangOnce
    assert cluster.run(client.put("k", b"v")) == 1
    assert cluster.writes(1) == [("put", "k"), ("put", "k")]
    assert cluster.node(1).sessions == [(client.clientId, 1)] * 2
    assert cluster.store == {"k": b"v"} and cluster.revision == 1


def test_sessionRetryAfterLostAnswerGetsTheFirstAnswer(cluster):
    """
    The classic double-apply: a compare-and-set is applied but its answer
    is lost (the connection drops).  The retry must not apply it again (it
    would now fail, the value having changed) but answer like the first
    attempt: succeeded, at the first revision.
    """
    client = cluster.client()
    node = cluster.node(1)
    lost = []

    def applyThenDrop(name, key):
        if lost:
            return None
        lost.append(True)
        # the cluster applies it (revision 1) ...
        cluster.store[key] = b"v"
        cluster.revision += 1
        cluster.applied[node.sessions[-1]] = {"succeeded": True, "revision": 1}
        # ... someone else changes the key, and the answer never arrives
        cluster.store[key] = b"other"
        cluster.revision += 1
        node.servers[-1].transport.loseConnection()
        return Deferred()

    node.onWrite = applyThenDrop
    assert cluster.run(client.compareAndSet("k", None, b"v")) == (True, 1)
    assert node.sessions == [(client.clientId, 1)] * 2
    assert cluster.store == {"k": b"other"} and cluster.revision == 2


def test_sessionUnknownOutcomeIsRetriedElsewhere(cluster):
    """UNAVAILABLE (outcome unknown) at a deposed leader: retried at the new one."""
    client = cluster.client()

    def deposed(name, key):
        cluster.leader = 2
        cluster.term = 2
        raise Unavailable("outcome unknown: leadership lost")

    cluster.node(1).onWrite = deposed
    assert cluster.run(client.delete("k")) == (False, 1)
    assert cluster.node(1).sessions == cluster.node(2).sessions == [(client.clientId, 1)]


def test_sessionWriteTimesOutOverallAsOutcomeUnknown(cluster):
    client = cluster.client(timeout=2.0, writeAttemptTimeout=0.5)
    for node in cluster.nodes:
        node.onWrite = lambda name, key: Deferred()
    with pytest.raises(OutcomeUnknown, match="outcome unknown.*no attempt succeeded"):
        cluster.run(client.put("k", b"v"))
    attempts = [s for n in cluster.nodes for s in n.sessions]
    assert len(attempts) > 1
    assert set(attempts) == {(client.clientId, 1)}
    # the next write gets a new sequence
    for node in cluster.nodes:
        node.onWrite = None
    cluster.run(client.put("k", b"w"))
    assert cluster.node(1).sessions[-1] == (client.clientId, 2)


def test_refusedConnectionWriteIsRetried(cluster):
    """A write that could not even connect was not sent: retry elsewhere."""
    client = cluster.client()
    cluster.run(client.put("k", b"1"))  # caches node 1 as the leader
    for server in cluster.node(1).servers:
        server.transport.loseConnection()
    cluster.flush()
    cluster.node(1).down = True
    cluster.leader = 2
    assert cluster.run(client.put("k", b"2")) == 2
    assert cluster.writes(2) == [("put", "k")]


def test_allDownWriteIsNotApplied(cluster):
    for node in cluster.nodes:
        node.down = True
    client = cluster.client(timeout=1.0)
    with pytest.raises(Unavailable, match="^not proposed.*no node") as info:
        cluster.run(client.put("k", b"v"))
    assert not isinstance(info.value, OutcomeUnknown)
    assert isinstance(info.value, NotProposed)


def test_waitsForALeader(cluster):
    """No leader yet: the client waits for one instead of sending blindly."""
    cluster.leader = 0
    client = cluster.client()
    d = client.put("k", b"v")
    cluster.flush()
    cluster.clock.advance(0.3)
    cluster.flush()
    assert not d.called
    cluster.leader = 3
    assert cluster.run(d) == 1
    assert cluster.writes(3) == [("put", "k")]


def test_readIsRetriedAfterDroppedConnection(cluster):
    client = cluster.client()
    cluster.store["k"] = b"v"

    def drop(key):
        cluster.leader = 2
        for server in cluster.node(1).servers:
            server.transport.loseConnection()
        return Deferred()

    cluster.node(1).onRead = drop
    assert cluster.run(client.get("k")) == b"v"
    assert [c for c in cluster.node(2).calls if c[0] == "get"] == [("get", "k", False)]


def test_readIsRetriedAfterUnavailable(cluster):
    client = cluster.client()
    cluster.store["k"] = b"v"
    answers = [Unavailable("read index timed out")]

    def flaky(key):
        if answers:
            raise answers.pop()

    cluster.node(1).onRead = flaky
    assert cluster.run(client.get("k")) == b"v"


def test_readTimesOutOverall(cluster):
    client = cluster.client(timeout=1.0)
    for node in cluster.nodes:
        node.onRead = lambda key: Deferred()
    with pytest.raises(Unavailable, match="no node answered"):
        cluster.run(client.get("k"))


def test_close(cluster):
    client = cluster.client()
    cluster.run(client.put("k", b"v"))
    d = client.close()
    cluster.flush()
    assert d.called
    with pytest.raises(Unavailable, match="closed"):
        cluster.run(client.get("k"))


def test_closeFailsAWaitingOperation(cluster):
    for node in cluster.nodes:
        node.down = True
    client = cluster.client()
    d = client.get("k")
    cluster.flush()
    client.close()
    with pytest.raises(Unavailable, match="closed"):
        cluster.run(d)


# -- the first attempt on a live connection to the leader (no coroutine) -----------


def warm(cluster, **kwargs):
    """A client that knows the leader and holds a live connection to it."""
    client = cluster.client(**kwargs)
    cluster.run(client.put("warm", b"up"))
    assert client._preferred == cluster.addresses[0]
    return client


def test_warmSessionWriteTimeoutIsRetriedWithTheSameSession(cluster):
    client = warm(cluster, timeout=5.0, writeAttemptTimeout=1.0)
    hung = []

    def hangOnce(name, key):
        if not hung:
            hung.append(cluster.clock.seconds())
            return Deferred()

    cluster.node(1).onWrite = hangOnce
    start = cluster.clock.seconds()
    assert cluster.run(client.put("k", b"v")) == 2
    # one attempt timed out after 1 s, then a retry (after a 50 ms backoff)
    assert 1.05 <= cluster.clock.seconds() - start < 1.2
    assert cluster.writes(1)[-2:] == [("put", "k"), ("put", "k")]
    assert cluster.node(1).sessions[-2:] == [(client.clientId, 2)] * 2


def test_warmWriteWithoutSessionThatTimesOutIsUnknown(cluster):
    client = warm(cluster, timeout=2.0, sessions=False)
    cluster.node(1).onWrite = lambda name, key: Deferred()
    start = cluster.clock.seconds()
    with pytest.raises(OutcomeUnknown, match="no answer within 2s"):
        cluster.run(client.put("k", b"v"))
    assert 2.0 <= cluster.clock.seconds() - start < 2.1
    assert cluster.writes(1)[-1] == ("put", "k")
    assert cluster.writes(2) == cluster.writes(3) == []


def test_warmWriteAtADeposedLeaderIsRetriedAtTheNewOne(cluster):
    client = warm(cluster)

    def deposed(name, key):
        cluster.leader, cluster.term = 2, 2
        raise Unavailable("outcome unknown: leadership lost")

    cluster.node(1).onWrite = deposed
    assert cluster.run(client.put("k", b"v")) == 2
    assert cluster.node(2).sessions == [(client.clientId, 2)]
    assert client._preferred == cluster.addresses[1]


def test_warmNotProposedWriteWithoutSessionIsRetried(cluster):
    client = warm(cluster, sessions=False)

    def notProposed(name, key):
        cluster.leader, cluster.term = 3, 2
        raise Unavailable("not proposed: not the leader")

    cluster.node(1).onWrite = notProposed
    assert cluster.run(client.put("k", b"v")) == 2
    assert cluster.writes(3) == [("put", "k")]


def test_warmReadIsRetriedAfterADroppedConnection(cluster):
    client = warm(cluster)
    cluster.store["k"] = b"v"
    cluster.node(1).onRead = lambda key: Deferred()
    d = client.get("k")
    cluster.flush()
    cluster.node(1).onRead = None
    for server in cluster.node(1).servers:
        server.transport.loseConnection()
    assert cluster.run(d) == b"v"


def test_warmInvalidArgumentSurfacesWithoutRetry(cluster):
    client = warm(cluster)
    with pytest.raises(InvalidArgument, match="empty key"):
        cluster.run(client._operation("put ''", Put, {"key": "", "value": b"v"}, True,
                                      lambda r: r["revision"]))
    assert cluster.writes(1)[-1] == ("put", "")
    assert len(cluster.writes(1)) == 2  # the warm-up and this one, no retry


def test_warmWritesAllHangingTimeOutOverallAsOutcomeUnknown(cluster):
    client = warm(cluster, timeout=2.0, writeAttemptTimeout=0.5)
    for node in cluster.nodes:
        node.onWrite = lambda name, key: Deferred()
    start = cluster.clock.seconds()
    with pytest.raises(OutcomeUnknown, match="no attempt succeeded within 2s"):
        cluster.run(client.put("k", b"v"))
    assert 2.0 <= cluster.clock.seconds() - start < 2.1


def test_warmCloseFailsAPendingOperation(cluster):
    client = warm(cluster)
    cluster.node(1).onWrite = lambda name, key: Deferred()
    d = client.put("k", b"v")
    cluster.flush()
    client.close()
    with pytest.raises(Unavailable, match="closed"):
        cluster.run(d)
    assert cluster.clock.getDelayedCalls() == []


def test_warmCloseOfASentWriteIsOutcomeUnknown(cluster):
    # the write reached the leader before the close: it may have been applied
    client = warm(cluster)
    cluster.node(1).onWrite = lambda name, key: Deferred()
    d = client.put("k", b"v")
    cluster.flush()
    client.close()
    with pytest.raises(OutcomeUnknown, match="closed after an attempt that may have been applied"):
        cluster.run(d)


def test_cancelAfterCloseOfASentWriteIsOutcomeUnknown(cluster):
    # (what the blocking client does to calls still waiting when it closes)
    client = warm(cluster)
    cluster.node(1).onWrite = lambda name, key: Deferred()
    d = client.put("k", b"v")
    client.close()
    d.cancel()
    with pytest.raises(OutcomeUnknown, match="closed after an attempt that may have been applied"):
        cluster.run(d)


def test_closeOfAWriteNeverSentIsNotOutcomeUnknown(cluster):
    for node in cluster.nodes:
        node.down = True
    client = cluster.client()
    d = client.put("k", b"v")
    cluster.flush()
    client.close()
    with pytest.raises(Unavailable, match="closed") as raised:
        cluster.run(d)
    assert not isinstance(raised.value, OutcomeUnknown)


def test_a_client_connection_reads_answers_in_small_pieces():
    """See FastBoxParsing.setReadSize."""
    from twisted.internet.testing import StringTransport

    transport = StringTransport()
    transport.bufferSize = 65536
    ClientAMP().makeConnection(transport)
    assert transport.bufferSize == ClientAMP.readSize == 2048


def test_warmFailureLeftForLaterDoesNotDropTheConnection(cluster):
    """
    AMP ends a request's Deferred with an errback that drops the connection:
    the caller gets a Deferred of its own, so a failure it handles later (or
    never) costs nobody else their connection.
    """
    client = warm(cluster)
    connects = len(cluster.connects)
    d = client._operation("put ''", Put, {"key": "", "value": b"v"}, True,
                          lambda r: r["revision"])
    cluster.flush()  # answered INVALID_ARGUMENT; nobody has looked yet
    assert d.called
    with pytest.raises(InvalidArgument):
        cluster.run(d)
    proto = client._pool.protocols[cluster.addresses[0]]
    assert not proto.lost
    assert cluster.run(client.put("k", b"v")) == 2
    assert len(cluster.connects) == connects


def test_warmReadsAndWritesWithDifferentAttemptTimeoutsEachTimeOutOnTime(cluster):
    """Without sessions a write's attempt may take the whole timeout, a
    read's only half of it: a read issued after a write still gives up on
    its node at its own deadline and is tried elsewhere."""
    client = warm(cluster, timeout=4.0, sessions=False)
    cluster.node(1).onWrite = lambda name, key: Deferred()
    reads = []
    cluster.node(1).onRead = lambda key: reads.append(key) or Deferred()
    cluster.store["k"] = b"v"
    write = client.put("w", b"x")
    cluster.flush()
    cluster.clock.advance(0.1)
    read = client.get("k")
    cluster.flush()
    start = cluster.clock.seconds()
    cluster.leader = 2
    assert cluster.run(read) == b"v"
    # gave up on node 1 after its 2 s attempt, not after the write's 4 s
    assert 2.0 <= cluster.clock.seconds() - start < 2.5
    with pytest.raises(OutcomeUnknown):
        cluster.run(write)


def test_largeAnswersAreReadInLargePieces():
    """Answers are read 2 KiB per turn, but a big value is not: while a box
    larger than that arrives, the client reads 64 KiB at a time."""
    from twisted.internet.testing import StringTransport

    transport = StringTransport()
    transport.bufferSize = 65536
    proto = ClientAMP()
    proto.makeConnection(transport)
    assert transport.bufferSize == 2048
    big = amp.AmpBox({b"_answer": b"1", b"value": b"x" * 60000}).serialize()
    proto.dataReceived(big[:3000])
    assert transport.bufferSize == 65536
    proto._outstandingRequests[b"1"] = Deferred()
    proto.dataReceived(big[3000:])
    assert transport.bufferSize == 2048
