"""
L{RaftKVClient} with C{tls=}: real TLS over 127.0.0.1 to a tiny in-process
AMP server (a L{Status} stub) listening with L{TLSCredentials.serverCreator}.
"""

import os
import shutil

import pytest
import pytest_twisted
from twisted.internet import defer
from twisted.protocols import amp

from tests.support import tlsFiles
from twisted_raft.client import RaftKVClient
from twisted_raft.rpc.commands import Status, Unavailable
from twisted_raft.tls import TLSCredentials, nodeIdOf, peerCommonName
from twisted_raft.tools import certs


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    root = tmp_path_factory.mktemp("pki")
    ours, foreign = str(root / "ours"), str(root / "foreign")
    certs.makeCertificates(ours, 1, clients=["alice"])
    certs.makeCertificates(foreign, 0, clients=["mallory"])
    # node 1 again, with a certificate for another address only
    far = str(root / "far")
    os.makedirs(far)
    for name in ("ca.pem", "ca-key.pem"):
        shutil.copy(os.path.join(ours, name), far)
    certs.makeCertificates(far, 1, hosts=["10.0.0.9"])
    return ours, foreign, far


class StatusStub(amp.AMP):
    """Answers Status as node 1, leader; remembers who asked."""

    def __init__(self, callers):
        super().__init__()
        self.callers = callers

    @Status.responder
    def status(self):
        self.callers.append(peerCommonName(self.transport))
        return {"node_id": 1, "role": "leader", "term": 4, "leader_id": 1,
                "commit_index": 7, "last_applied": 7, "last_log_index": 7}


@pytest.fixture
def tlsNode(pki):
    """Start a TLS Status stub with the given node files; stop it afterwards."""
    from twisted.internet import protocol, reactor
    from twisted.internet.endpoints import TCP4ServerEndpoint, wrapServerTLS

    ports = []

    @defer.inlineCallbacks
    def start(directory):
        callers = []
        endpoint = wrapServerTLS(
            TLSCredentials(tlsFiles(directory, "node1")).serverCreator(),
            TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1"),
        )
        port = yield endpoint.listen(protocol.Factory.forProtocol(lambda: StatusStub(callers)))
        ports.append(port)
        return f"127.0.0.1:{port.getHost().port}", callers

    yield start
    for port in ports:
        port.stopListening()


def client(address, tls=None, timeout=5.0):
    from twisted.internet import reactor

    return RaftKVClient([address], reactor, timeout=timeout, connectTimeout=1.0, tls=tls)


@pytest_twisted.inlineCallbacks
def test_statusOverTLS(pki, tlsNode):
    ours, _, _ = pki
    address, callers = yield tlsNode(ours)
    c = client(address, TLSCredentials(tlsFiles(ours, "alice")))
    try:
        status = yield c.status()
        rows = yield c.clusterStatus()
        proto = c._pool.protocols[address]
        assert peerCommonName(proto.transport) == "raftkv-node-1"
        assert nodeIdOf(peerCommonName(proto.transport)) == 1
    finally:
        yield c.close()
    assert status["node_id"] == 1 and status["role"] == "leader"
    assert rows[0][1]["term"] == 4
    assert callers and set(callers) == {"alice"}


@defer.inlineCallbacks
def refused(address, tls):
    """The client's status() failing with Unavailable: its message."""
    c = client(address, tls, timeout=1.0)
    try:
        with pytest.raises(Unavailable) as e:
            yield c.status()
    finally:
        yield c.close()
    return str(e.value)


@pytest_twisted.inlineCallbacks
def test_plainClientIsRefused(pki, tlsNode):
    ours, _, _ = pki
    address, callers = yield tlsNode(ours)
    yield refused(address, None)
    assert callers == []


@pytest_twisted.inlineCallbacks
def test_clientOfAnotherCAIsRefused(pki, tlsNode):
    ours, foreign, _ = pki
    address, callers = yield tlsNode(ours)
    message = yield refused(address, TLSCredentials(tlsFiles(foreign, "mallory")))
    assert callers == []
    assert "certificate verify failed" in message


@pytest_twisted.inlineCallbacks
def test_nodeCertificateForAnotherAddress(pki, tlsNode):
    """The node's certificate names 10.0.0.9, not the 127.0.0.1 dialled."""
    ours, _, far = pki
    address, callers = yield tlsNode(far)
    message = yield refused(address, TLSCredentials(tlsFiles(ours, "alice")))
    assert callers == []
    # the reason reaches the caller
    assert "no node could be reached (failed: VerificationError" in message
    assert "IPAddressMismatch" in message
