"""
Tests for L{twisted_raft.tls}: real TLS handshakes in memory (L{iosim}, see
L{tests.support.tlsLoopback}) between the connection creators of
L{TLSCredentials}, with certificates from L{twisted_raft.tools.certs}; one
test over 127.0.0.1 for L{endpointWithTLS}.
"""

import datetime
import os
import shutil

import pytest
import pytest_twisted
from OpenSSL import SSL
from service_identity import VerificationError
from twisted.internet import ssl
from twisted.internet.testing import StringTransport

from tests.support import tlsFiles, tlsLoopback
from twisted_raft.tls import (
    NODE_NAME_PREFIX,
    TLSConfigError,
    TLSCredentials,
    TLSFiles,
    endpointWithTLS,
    nodeCommonName,
    nodeIdOf,
    peerCommonName,
)
from twisted_raft.tools import certs


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A CA with nodes 1-2 and client alice; another CA with node 1 and mallory."""
    root = tmp_path_factory.mktemp("pki")
    ours, foreign = str(root / "ours"), str(root / "foreign")
    certs.makeCertificates(ours, 2, clients=["alice"])
    certs.makeCertificates(foreign, 1, clients=["mallory"])
    return ours, foreign


def creds(directory, name):
    return TLSCredentials(tlsFiles(directory, name))


def writeLeaf(directory, name, commonName, hosts=(), **kwargs):
    """A leaf signed by the CA in C{directory}, with C{makeLeaf}'s options."""
    caCert, caKey = certs.loadCA(directory)
    cert, key = certs.makeLeaf(caCert, caKey, commonName, hosts, **kwargs)
    with open(os.path.join(directory, f"{name}.pem"), "wb") as f:
        f.write(certs.certificatePEM(cert))
    with open(os.path.join(directory, f"{name}-key.pem"), "wb") as f:
        f.write(certs.keyPEM(key))
    return tlsFiles(directory, name)


def handshakeFailed(end):
    """
    The end never completed a handshake and lost its connection to a TLS
    error or, for a client, to a certificate that is not the dialled
    address's.
    """
    return (not end.handshakeDone and end.lostReason is not None
            and end.lostReason.check(SSL.Error, VerificationError) is not None)


# -- names -----------------------------------------------------------------------


def test_nodeCommonName():
    assert NODE_NAME_PREFIX == "raftkv-node-"
    assert nodeCommonName(3) == "raftkv-node-3"
    assert nodeCommonName(12) == "raftkv-node-12"
    for bad in (0, -1, True, "3", 3.0):
        with pytest.raises(ValueError):
            nodeCommonName(bad)


def test_nodeIdOf():
    assert nodeIdOf("raftkv-node-3") == 3
    assert nodeIdOf("raftkv-node-120") == 120
    assert nodeIdOf(nodeCommonName(7)) == 7
    for other in ("raftkv-node-03", "raftkv-node-3x", "raftkv-node--1", "raftkv-node-",
                  "raftkv-node-0", "raftkv-node-3\n", " raftkv-node-3", "RAFTKV-NODE-3",
                  "raftkv-node-\u0663", "alice", "", None, 3, b"raftkv-node-3"):
        assert nodeIdOf(other) is None, other


# -- handshakes ------------------------------------------------------------------


def test_mutualHandshake(pki):
    """A client with a cert from the CA talks to a node; each sees the other's CN."""
    ours, _ = pki
    server, client, pump = tlsLoopback(
        creds(ours, "node1").serverCreator(), creds(ours, "alice").clientCreator("127.0.0.1")
    )
    assert server.handshakeDone and client.handshakeDone
    assert peerCommonName(server.transport) == "alice"
    assert nodeIdOf(peerCommonName(server.transport)) is None
    assert peerCommonName(client.transport) == "raftkv-node-1"
    client.transport.write(b"hello")
    server.transport.write(b"there")
    pump.flush()
    assert server.received == b"hello" and client.received == b"there"


def test_peerIsANode(pki):
    """Node 2 dialling node 1 by DNS name: node 1 sees node id 2."""
    ours, _ = pki
    server, client, _ = tlsLoopback(
        creds(ours, "node1").serverCreator(), creds(ours, "node2").clientCreator("localhost")
    )
    assert server.handshakeDone and client.handshakeDone
    assert nodeIdOf(peerCommonName(server.transport)) == 2
    assert nodeIdOf(peerCommonName(client.transport)) == 1


def test_clientFromAnotherCA(pki):
    ours, foreign = pki
    server, client, _ = tlsLoopback(
        creds(ours, "node1").serverCreator(),
        # mallory trusts our CA (so she would accept the node), but another
        # CA signed her certificate: TLSCredentials would not load that
        _crossClient(ours, foreign),
    )
    assert handshakeFailed(server)
    assert client.lostReason is not None
    assert peerCommonName(server.transport) is None


def _crossClient(ours, foreign):
    """A client creator presenting mallory's (foreign) cert, trusting our CA."""
    mallory = creds(foreign, "mallory")._material
    ca = ssl.Certificate.loadPEM(open(os.path.join(ours, "ca.pem"), "rb").read())
    return ssl.optionsForClientTLS(
        "127.0.0.1", trustRoot=ca,
        clientCertificate=ssl.PrivateCertificate.fromCertificateAndKeyPair(
            ssl.Certificate(mallory._certificate), ssl.KeyPair(mallory._key)),
    )


def test_clientWithoutCertificate(pki):
    ours, _ = pki
    ca = ssl.Certificate.loadPEM(open(os.path.join(ours, "ca.pem"), "rb").read())
    server, client, _ = tlsLoopback(
        creds(ours, "node1").serverCreator(), ssl.optionsForClientTLS("127.0.0.1", trustRoot=ca)
    )
    assert handshakeFailed(server)
    assert client.lostReason is not None


def test_serverFromAnotherCA(pki):
    """A client refuses a node whose certificate another CA signed."""
    ours, foreign = pki
    server, client, _ = tlsLoopback(
        creds(foreign, "node1").serverCreator(), creds(ours, "alice").clientCreator("127.0.0.1")
    )
    assert handshakeFailed(client)
    assert server.lostReason is not None


def test_serverCertificateForAnotherAddress(pki, tmp_path):
    """The client checks the node's certificate against the address it dialled."""
    ours, _ = pki
    directory = str(tmp_path)
    for name in ("ca.pem", "ca-key.pem"):
        shutil.copy(os.path.join(ours, name), directory)
    files = writeLeaf(directory, "far", "raftkv-node-1", certs.parseHosts("10.0.0.9,far.example"))
    far = TLSCredentials(files)
    alice = creds(ours, "alice")
    for dialled in ("127.0.0.1", "localhost", "10.0.0.10"):
        server, client, _ = tlsLoopback(far.serverCreator(), alice.clientCreator(dialled))
        assert handshakeFailed(client), dialled
    # and the same certificate passes for the addresses it names
    for dialled in ("10.0.0.9", "far.example"):
        server, client, _ = tlsLoopback(far.serverCreator(), alice.clientCreator(dialled))
        assert client.handshakeDone and server.handshakeDone, dialled


def test_peerCommonNameWithoutTLS():
    assert peerCommonName(StringTransport()) is None
    assert peerCommonName(object()) is None


# -- reload -------------------------------------------------------------------------


def copyFiles(src, dst, name):
    """Copy CA and C{name}'s files from C{src} to C{dst} as the files of C{"me"}."""
    shutil.copy(os.path.join(src, "ca.pem"), os.path.join(dst, "ca.pem"))
    shutil.copy(os.path.join(src, f"{name}.pem"), os.path.join(dst, "me.pem"))
    shutil.copy(os.path.join(src, f"{name}-key.pem"), os.path.join(dst, "me-key.pem"))
    return tlsFiles(dst, "me")


def test_reloadAffectsNewConnectionsOnly(pki, tmp_path):
    ours, _ = pki
    files = copyFiles(ours, str(tmp_path), "node1")
    node = TLSCredentials(files)
    serverCreator = node.serverCreator()
    alice = creds(ours, "alice").clientCreator("127.0.0.1")
    oldServer, oldClient, oldPump = tlsLoopback(serverCreator, alice)
    assert peerCommonName(oldClient.transport) == "raftkv-node-1"

    copyFiles(ours, str(tmp_path), "node2")
    assert node.commonName == "raftkv-node-1"  # nothing until reload
    node.reload()
    assert node.commonName == "raftkv-node-2"
    newServer, newClient, _ = tlsLoopback(serverCreator, alice)
    assert peerCommonName(newClient.transport) == "raftkv-node-2"
    # the open connection keeps its session and still works
    assert peerCommonName(oldClient.transport) == "raftkv-node-1"
    oldClient.transport.write(b"still here")
    oldPump.flush()
    assert oldServer.received == b"still here"


def test_reloadClientSide(pki, tmp_path):
    """A client creator made before reload() presents the new certificate."""
    ours, _ = pki
    me = TLSCredentials(copyFiles(ours, str(tmp_path), "alice"))
    clientCreator = me.clientCreator("127.0.0.1")
    server, _, _ = tlsLoopback(creds(ours, "node1").serverCreator(), clientCreator)
    assert peerCommonName(server.transport) == "alice"
    copyFiles(ours, str(tmp_path), "node2")
    me.reload()
    server, _, _ = tlsLoopback(creds(ours, "node1").serverCreator(), clientCreator)
    assert peerCommonName(server.transport) == "raftkv-node-2"


def test_badReloadKeepsTheOldMaterial(pki, tmp_path):
    ours, _ = pki
    files = copyFiles(ours, str(tmp_path), "node1")
    node = TLSCredentials(files)
    with open(files.cert, "wb") as f:
        f.write(b"not a certificate\n")
    with pytest.raises(TLSConfigError) as e:
        node.reload()
    assert files.cert in str(e.value)
    assert node.commonName == "raftkv-node-1"
    server, client, _ = tlsLoopback(node.serverCreator(), creds(ours, "alice").clientCreator("127.0.0.1"))
    assert peerCommonName(client.transport) == "raftkv-node-1"


# -- TLSConfigError ---------------------------------------------------------------------


def brokenFiles(pki, tmp_path, **replace):
    """node1's files copied to tmp_path, some of them then replaced by C{bytes}."""
    ours, _ = pki
    files = copyFiles(ours, str(tmp_path), "node1")
    for field, data in replace.items():
        path = getattr(files, field)
        if data is None:
            os.unlink(path)
        else:
            with open(path, "wb") as f:
                f.write(data)
    return files


def configError(files):
    with pytest.raises(TLSConfigError) as e:
        TLSCredentials(files)
    return str(e.value)


@pytest.mark.parametrize("field", ["ca", "cert", "key"])
def test_missingFile(pki, tmp_path, field):
    files = brokenFiles(pki, tmp_path, **{field: None})
    message = configError(files)
    assert getattr(files, field) in message
    assert "cannot read" in message


@pytest.mark.parametrize("field", ["ca", "cert", "key"])
def test_notPEM(pki, tmp_path, field):
    secret = b"SECRET-KEY-MATERIAL-1234"
    files = brokenFiles(pki, tmp_path, **{field: secret})
    message = configError(files)
    assert getattr(files, field) in message
    assert "not a PEM" in message
    assert secret.decode() not in message


def test_unreadableFile(pki, tmp_path):
    files = brokenFiles(pki, tmp_path)
    os.unlink(files.key)
    os.mkdir(files.key)
    message = configError(files)
    assert files.key in message and "cannot read" in message


def test_keyDoesNotMatch(pki, tmp_path):
    ours, _ = pki
    files = brokenFiles(pki, tmp_path,
                        key=open(os.path.join(ours, "node2-key.pem"), "rb").read())
    message = configError(files)
    assert files.key in message and "does not match" in message
    assert "PRIVATE KEY" not in message


def test_encryptedKey(pki, tmp_path):
    from cryptography.hazmat.primitives import serialization

    ours, _ = pki
    key = serialization.load_pem_private_key(
        open(os.path.join(ours, "node1-key.pem"), "rb").read(), password=None)
    encrypted = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.BestAvailableEncryption(b"pw"))
    files = brokenFiles(pki, tmp_path, key=encrypted)
    message = configError(files)
    assert files.key in message and "encrypted" in message


def test_certificateNotSignedByTheCA(pki, tmp_path):
    _, foreign = pki
    files = brokenFiles(pki, tmp_path, ca=open(os.path.join(foreign, "ca.pem"), "rb").read())
    message = configError(files)
    assert files.cert in message and "not signed by the CA" in message


def test_certificateExpired(pki, tmp_path):
    ours, _ = pki
    directory = str(tmp_path)
    shutil.copy(os.path.join(ours, "ca.pem"), directory)
    shutil.copy(os.path.join(ours, "ca-key.pem"), directory)
    now = datetime.datetime.now(datetime.timezone.utc)
    files = writeLeaf(directory, "old", "raftkv-node-1",
                      notBefore=now - datetime.timedelta(days=10),
                      notAfter=now - datetime.timedelta(days=1))
    message = configError(files)
    assert files.cert in message and "expired" in message


def test_certificateNotYetValid(pki, tmp_path):
    ours, _ = pki
    directory = str(tmp_path)
    shutil.copy(os.path.join(ours, "ca.pem"), directory)
    shutil.copy(os.path.join(ours, "ca-key.pem"), directory)
    now = datetime.datetime.now(datetime.timezone.utc)
    files = writeLeaf(directory, "future", "raftkv-node-1",
                      notBefore=now + datetime.timedelta(days=1),
                      notAfter=now + datetime.timedelta(days=10))
    message = configError(files)
    assert files.cert in message and "not valid until" in message


def test_caExpired(tmp_path):
    now = datetime.datetime.now(datetime.timezone.utc)
    caCert, caKey = certs.makeCA(days=2, notBefore=now - datetime.timedelta(days=3))
    directory = str(tmp_path)
    with open(os.path.join(directory, "ca.pem"), "wb") as f:
        f.write(certs.certificatePEM(caCert))
    with open(os.path.join(directory, "ca-key.pem"), "wb") as f:
        f.write(certs.keyPEM(caKey))
    files = writeLeaf(directory, "leaf", "alice", notBefore=now - datetime.timedelta(days=3),
                      notAfter=now + datetime.timedelta(days=1))
    message = configError(files)
    assert files.ca in message and "expired" in message


# -- over 127.0.0.1 ---------------------------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_endpointWithTLS(pki):
    """A real TCP connection: endpointWithTLS to a wrapServerTLS listener."""
    from twisted.internet import defer, protocol, reactor
    from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, wrapServerTLS

    from tests.support import TLSEnd

    ours, _ = pki
    accepted = defer.Deferred()

    class Server(TLSEnd):
        def handshakeCompleted(self):
            super().handshakeCompleted()
            accepted.callback(peerCommonName(self.transport))

    listening = yield wrapServerTLS(
        creds(ours, "node1").serverCreator(), TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")
    ).listen(protocol.Factory.forProtocol(Server))
    try:
        port = listening.getHost().port
        endpoint = endpointWithTLS(TCP4ClientEndpoint(reactor, "127.0.0.1", port),
                                   creds(ours, "alice"), "127.0.0.1")
        client = yield endpoint.connect(protocol.Factory.forProtocol(TLSEnd))
        name = yield accepted.addTimeout(10, reactor)
        assert name == "alice"
        client.transport.loseConnection()
    finally:
        yield listening.stopListening()


def test_materialOpenSSLRefusesIsRefusedWhenLoaded(pki, tmp_path):
    """
    A key OpenSSL will not use (RSA-1024 is under its security level) is a
    TLSConfigError when the files load, not an error at every connection;
    a reload of such files keeps the old material.
    """
    from cryptography.hazmat.primitives.asymmetric import rsa

    ours, _ = pki
    directory = str(tmp_path)
    for name in ("ca.pem", "ca-key.pem"):
        shutil.copy(os.path.join(ours, name), directory)
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    files = writeLeaf(directory, "weak", "raftkv-node-1", key=weak)
    message = configError(files)
    assert "OpenSSL refuses" in message and files.cert in message

    os.makedirs(tmp_path / "good")
    good = copyFiles(ours, str(tmp_path / "good"), "node1")
    node = TLSCredentials(good)
    for name in ("weak.pem", "weak-key.pem"):
        shutil.copy(os.path.join(directory, name),
                    good.cert if name == "weak.pem" else good.key)
    with pytest.raises(TLSConfigError):
        node.reload()
    server, client, _ = tlsLoopback(node.serverCreator(), creds(ours, "alice").clientCreator("127.0.0.1"))
    assert client.handshakeDone and peerCommonName(client.transport) == "raftkv-node-1"


def test_reloadCheckRefusesAndKeepsTheOldMaterial(pki, tmp_path):
    ours, _ = pki
    files = copyFiles(ours, str(tmp_path), "node1")
    node = TLSCredentials(files)
    for src, dst in ((tlsFiles(ours, "node2").cert, files.cert),
                     (tlsFiles(ours, "node2").key, files.key)):
        shutil.copy(src, dst)
    seen = []

    def check(commonName):
        seen.append(commonName)
        raise TLSConfigError("not me")

    with pytest.raises(TLSConfigError):
        node.reload(check=check)
    assert seen == ["raftkv-node-2"] and node.commonName == "raftkv-node-1"
    node.reload(check=seen.append)
    assert node.commonName == "raftkv-node-2"
