"""
Who may speak Raft, end to end: real node processes on 127.0.0.1, with and
without mutual TLS, attacked the way issue 10 describes.
"""

import os
import signal

import pytest
import pytest_twisted
from twisted.internet import defer
from twisted.protocols import amp

from twisted_raft import kv
from twisted_raft.client import RaftKVClient
from twisted_raft.raft import messages
from twisted_raft.rpc import commands, wire
from twisted_raft.rpc.commands import PermissionDenied
from twisted_raft.rpc.peerauth import PeerAuthority
from twisted_raft.tls import TLSCredentials
from twisted_raft.tools import certs, launcher

from tests.process.support import Cluster, call, connect, sleep, statuses, waitFor, waitForLeader
from tests.support import tlsFiles

pytestmark = pytest.mark.integration


def forgedAppend(proto, term, leaderId):
    """The issue's forgery: a term far ahead and a Put committed at once."""
    entries = [messages.Entry(1, term, kv.encodePut("k", b"FORGED"))]
    return proto.callRemote(
        commands.AppendEntries, cluster="raftkv", term=term, leader_id=leaderId,
        prev_log_index=0, prev_log_term=0, entries=wire.encodeEntries(entries),
        leader_commit=1,
    )


@defer.inlineCallbacks
def refused(d):
    """The failure C{d} ends with, which must be PERMISSION_DENIED."""
    try:
        r = yield d
    except PermissionDenied as e:
        return e
    pytest.fail(f"expected PERMISSION_DENIED, got {r!r}")


def handshake(proto, asNode, toNode, token="raftkv"):
    """Prove on C{proto} that it is node C{asNode} (a member of 1..3)."""
    me = PeerAuthority(asNode, token, {1, 2, 3}.__contains__)
    dialling = me.dial(toNode)
    d = proto.callRemote(commands.PeerHello, **dialling.helloArguments(asNode))
    d.addCallback(lambda answer: proto.callRemote(
        commands.PeerProof, proof=me.checkAnswer(dialling, answer)))
    return d


def log(c, i):
    with open(os.path.join(str(c.base), f"n{i}.log"), errors="replace") as f:
        return f.read()


@pytest_twisted.inlineCallbacks
def test_the_forgery_is_refused_by_a_node_started_the_default_way(tmp_path):
    c = Cluster(tmp_path)
    try:
        c.start()
        leader = yield waitForLeader(c)
        follower = next(i for i in c.ids if i != leader)
        before = (yield statuses(c))[follower]["term"]

        proto = yield connect(c.port(follower))
        try:
            yield refused(forgedAppend(proto, before + 1000, leader))
            # the connection still serves the client contract
            got = yield proto.callRemote(commands.Get, key="k", stale=True)
            assert got == {"found": False, "value": b""}
        finally:
            proto.transport.loseConnection()

        yield sleep(1.0)  # anything it could have set off has happened now
        after = yield statuses(c)
        assert all(s["term"] < before + 1000 for s in after.values()), after
        for i in c.ids:
            got = yield call(c.port(i), commands.Get, key="k", stale=True)
            assert got["found"] is False, (i, got)
        assert "refused a peer command" in log(c, follower)
        for i in c.ids:  # and every node warned at start that it is open
            assert "peer traffic is unauthenticated" in log(c, i)
    finally:
        c.killAll()


@pytest.fixture
def tlsCluster(tmp_path):
    tls = launcher.LocalTLS(str(tmp_path / "tls"), 3)
    certs.makeCertificates(str(tmp_path / "tls"), [], clients=["app"])
    certs.makeCertificates(str(tmp_path / "foreign"), [2], clients=["app"])
    c = Cluster(tmp_path, tls=tls)
    try:
        c.start()
        yield c
    finally:
        c.killAll()


def credentials(tmp_path, name, directory="tls"):
    return TLSCredentials(tlsFiles(str(tmp_path / directory), name))


@defer.inlineCallbacks
def tlsLeader(c, tls):
    """The leader's id, once the TLS cluster has one that every node knows."""

    @defer.inlineCallbacks
    def check():
        seen = {}
        for i in c.ids:
            try:
                seen[i] = yield call(c.port(i), commands.Status, timeout=1, tls=tls)
            except Exception:
                return None
        leaders = {s["leader_id"] for s in seen.values()}
        return leaders.pop() if len(leaders) == 1 and 0 not in leaders else None

    leader = yield waitFor("a TLS leader", check, 20, c)
    return leader


@pytest_twisted.inlineCallbacks
def test_mutual_tls_identities(tlsCluster, tmp_path):
    c = tlsCluster
    from twisted.internet import reactor

    tools = c.tls.credentials()
    leader = yield tlsLeader(c, tools)
    follower = next(i for i in c.ids if i != leader)
    client = RaftKVClient(c.peers, reactor=reactor, timeout=10, tls=tools)
    try:
        revision = yield client.put("k", b"real")
        assert revision > 0
    finally:
        yield client.close()

    # a client's certificate: client commands yes, peer commands never
    app = credentials(tmp_path, "app")
    proto = yield connect(c.port(follower), app)
    try:
        got = yield proto.callRemote(commands.Get, key="k")
        assert got == {"found": True, "value": b"real"}
        e = yield refused(handshake(proto, leader, follower))
        assert "certificate does not name node" in str(e)
        yield refused(forgedAppend(proto, 10**6, leader))
    finally:
        proto.transport.loseConnection()

    # node 2's certificate cannot speak for node 3 ...
    target = 1
    node2 = credentials(tmp_path, "node2")
    proto = yield connect(c.port(target), node2)
    try:
        e = yield refused(handshake(proto, 3, target))
        assert "certificate does not name node 3" in str(e)
    finally:
        proto.transport.loseConnection()
    # ... not even on a connection where it proved to be node 2
    proto = yield connect(c.port(target), node2)
    try:
        yield handshake(proto, 2, target)
        e = yield refused(forgedAppend(proto, 10**6, 3))
        assert "for node 3 on a connection of node 2" in str(e)
    finally:
        proto.transport.loseConnection()

    # another CA's certificate (even one naming node 2), or none: no connection
    for tls in (credentials(tmp_path, "node2", "foreign"), credentials(tmp_path, "app", "foreign"),
                None):
        with pytest.raises(Exception) as info:
            yield call(c.port(target), commands.Status, timeout=3, tls=tls)
        assert not isinstance(info.value, amp.RemoteAmpError), info.value

    # nothing of the above changed anything
    statusNow = yield call(c.port(target), commands.Status, tls=tools)
    assert statusNow["term"] < 10**6
    for i in c.ids:
        got = yield call(c.port(i), commands.Get, key="k", stale=True, tls=tools)
        assert got == {"found": True, "value": b"real"}, i


def peerSerial(proto):
    return proto.transport.getPeerCertificate().get_serial_number()


@pytest_twisted.inlineCallbacks
def test_sighup_reloads_the_certificate_for_new_connections(tlsCluster, tmp_path):
    c = tlsCluster
    tools = c.tls.credentials()
    yield tlsLeader(c, tools)
    old = yield connect(c.port(1), tools)
    try:
        yield old.callRemote(commands.Status)
        before = peerSerial(old)

        # a file that does not load: refused, the old certificate kept
        cert, key = certs.nodeFiles(str(tmp_path / "tls"), 1)
        with open(cert, "rb") as f:
            good = f.read()
        with open(cert, "wb") as f:
            f.write(b"not a certificate")
        os.kill(c[1].pid, signal.SIGHUP)
        yield waitFor("the refused reload", lambda: defer.succeed(
            "TLS files not reloaded" in log(c, 1)), 10, c)
        proto = yield connect(c.port(1), tools)
        yield proto.callRemote(commands.Status)
        assert peerSerial(proto) == before
        proto.transport.loseConnection()
        with open(cert, "wb") as f:
            f.write(good)

        # a new certificate from the same CA: new connections get it
        certs.makeCertificates(str(tmp_path / "tls"), [1])
        os.kill(c[1].pid, signal.SIGHUP)
        yield waitFor("the reload", lambda: defer.succeed(
            "TLS files reloaded" in log(c, 1)), 10, c)
        proto = yield connect(c.port(1), tools)
        yield proto.callRemote(commands.Status)
        assert peerSerial(proto) != before
        proto.transport.loseConnection()
        # the connection made before keeps serving, and node 1 still leads
        # or follows: its peers accept the new certificate too
        yield old.callRemote(commands.Status)
        assert c[1].running()
        leader = yield tlsLeader(c, tools)
        assert leader in c.ids
    finally:
        old.transport.loseConnection()
