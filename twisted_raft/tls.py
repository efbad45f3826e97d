"""
Mutual TLS for raftkv: the certificates a node or client presents, what it
trusts, and who is on the other end of a connection.

The identity rule: a certificate whose subject Common Name is
C{raftkv-node-<id>} (L{nodeCommonName}) is node C{<id>}; any other Common
Name is a client (L{nodeIdOf}).  Every connection to a TLS node presents a
certificate signed by the cluster's CA (a certificate from another CA fails
the handshake), and clients and peers check the node's certificate against
the address they dialled (an IP or DNS subject alternative name).

L{TLSCredentials} loads a CA file, a certificate and its key (checking that
they fit together, see L{TLSConfigError}), and makes the connection creators
Twisted's TLS wants: L{TLSCredentials.serverCreator} for a listening node,
L{TLSCredentials.clientCreator} for a dialling client or peer (see
L{endpointWithTLS}).  Both follow L{TLSCredentials.reload}: a new connection
uses the material current when it starts; connections already open keep
theirs.

C{raftkv certs} (L{twisted_raft.tools.certs}) makes such files.
"""

import datetime
import re
from dataclasses import dataclass

from twisted.internet import ssl
from twisted.internet.interfaces import (
    IOpenSSLClientConnectionCreator,
    IOpenSSLServerConnectionCreator,
    IStreamClientEndpoint,
)
from zope.interface import implementer

__all__ = [
    "NODE_NAME_PREFIX",
    "nodeCommonName",
    "nodeIdOf",
    "TLSConfigError",
    "TLSFiles",
    "TLSCredentials",
    "peerCommonName",
    "endpointWithTLS",
]

NODE_NAME_PREFIX = "raftkv-node-"
_NODE_NAME = re.compile(re.escape(NODE_NAME_PREFIX) + r"([1-9][0-9]*)\Z")


def nodeCommonName(nodeId):
    """The Common Name of node C{nodeId}'s certificate: C{"raftkv-node-3"}."""
    if isinstance(nodeId, bool) or not isinstance(nodeId, int) or nodeId < 1:
        raise ValueError(f"a node id is an integer from 1, not {nodeId!r}")
    return f"{NODE_NAME_PREFIX}{nodeId}"


def nodeIdOf(commonName):
    """
    The node id a certificate's Common Name names, or C{None} if it is not a
    node's name (a client's).  Strict: only exactly what L{nodeCommonName}
    makes counts, so C{"raftkv-node-03"}, C{"raftkv-node-3x"} or
    C{"raftkv-node--1"} are clients' names.
    """
    if not isinstance(commonName, str):
        return None
    match = _NODE_NAME.match(commonName)
    return int(match.group(1)) if match else None


class TLSConfigError(Exception):
    """
    The TLS files cannot be used: the message names the file and what is
    wrong with it (never the key's bytes).
    """


@dataclass(frozen=True)
class TLSFiles:
    """
    The paths of the TLS material.

    @ivar ca: PEM certificate(s) of the CA(s) trusted to sign peers'
        certificates.
    @ivar cert: our PEM certificate (the first in the file; it must be
        signed directly by a CA in C{ca}).
    @ivar key: the PEM private key of C{cert}, unencrypted.
    """

    ca: str
    cert: str
    key: str


# -- loading -----------------------------------------------------------------------------


def _read(path, what):
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise TLSConfigError(f"{what} file {path}: cannot read: {e.strerror or e}") from None


def _commonNames(name):
    from cryptography.x509.oid import NameOID

    return [a.value for a in name.get_attributes_for_oid(NameOID.COMMON_NAME)]


def _checkValidity(cert, path, what, now):
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    if now < start:
        raise TLSConfigError(f"{what} file {path}: certificate not valid until {start:%Y-%m-%d %H:%M:%S} UTC")
    if now > end:
        raise TLSConfigError(f"{what} file {path}: certificate expired on {end:%Y-%m-%d %H:%M:%S} UTC")


class _Material:
    """
    One loaded, checked set of TLS material, and the TLS options made from
    it (built once each: an options object caches its SSL context).
    """

    def __init__(self, files, now=None):
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization
        from OpenSSL import crypto

        now = now or datetime.datetime.now(datetime.timezone.utc)
        caBytes = _read(files.ca, "CA")
        certBytes = _read(files.cert, "certificate")
        keyBytes = _read(files.key, "key")
        try:
            cas = x509.load_pem_x509_certificates(caBytes)
        except ValueError:
            raise TLSConfigError(f"CA file {files.ca}: not a PEM certificate") from None
        try:
            cert = x509.load_pem_x509_certificates(certBytes)[0]
        except ValueError:
            raise TLSConfigError(f"certificate file {files.cert}: not a PEM certificate") from None
        try:
            key = serialization.load_pem_private_key(keyBytes, password=None)
        except TypeError:
            raise TLSConfigError(f"key file {files.key}: the key is encrypted (give an unencrypted key)") from None
        except ValueError:
            # cryptography's message may quote the input: say only what failed
            raise TLSConfigError(f"key file {files.key}: not a PEM private key") from None
        der = serialization.Encoding.DER
        spki = serialization.PublicFormat.SubjectPublicKeyInfo
        if key.public_key().public_bytes(der, spki) != cert.public_key().public_bytes(der, spki):
            raise TLSConfigError(f"key file {files.key}: does not match the certificate {files.cert}")
        for ca in cas:
            _checkValidity(ca, files.ca, "CA", now)
        if not any(_issuedBy(cert, ca) for ca in cas):
            raise TLSConfigError(
                f"certificate file {files.cert}: not signed by the CA in {files.ca}"
            )
        _checkValidity(cert, files.cert, "certificate", now)
        names = _commonNames(cert.subject)
        if len(names) != 1:
            raise TLSConfigError(f"certificate file {files.cert}: has {len(names)} Common Names, not one")
        self.commonName = names[0]
        self.notAfter = cert.not_valid_after_utc
        self._cas = [crypto.X509.from_cryptography(ca) for ca in cas]
        self._certificate = crypto.X509.from_cryptography(cert)
        self._key = crypto.PKey.from_cryptography_key(key)
        self._server = None
        self._clients = {}
        # OpenSSL has checks of its own (key sizes, signature algorithms) that
        # run only when a context is made: make one of each now, so that
        # material it refuses is refused here, by name, rather than at every
        # connection.
        from OpenSSL import SSL

        try:
            self.serverOptions().getContext()
            self.clientOptions("localhost")
        except SSL.Error as e:
            raise TLSConfigError(
                f"certificate file {files.cert} or key file {files.key}: OpenSSL refuses"
                f" it ({_openSSLReason(e)})"
            ) from None

    def trustRoot(self):
        return ssl.trustRootFromCertificates([ssl.Certificate(ca) for ca in self._cas])

    def serverOptions(self):
        if self._server is None:
            # A trustRoot makes the server verify the client's certificate
            # and require one.
            self._server = ssl.CertificateOptions(
                privateKey=self._key, certificate=self._certificate,
                trustRoot=self.trustRoot(), raiseMinimumTo=ssl.TLSVersion.TLSv1_2,
            )
        return self._server

    def clientOptions(self, hostname):
        options = self._clients.get(hostname)
        if options is None:
            ours = ssl.PrivateCertificate.fromCertificateAndKeyPair(
                ssl.Certificate(self._certificate), ssl.KeyPair(self._key)
            )
            options = self._clients[hostname] = ssl.optionsForClientTLS(
                hostname, trustRoot=self.trustRoot(), clientCertificate=ours,
                extraCertificateOptions={"raiseMinimumTo": ssl.TLSVersion.TLSv1_2},
            )
        return options


def _openSSLReason(error):
    """The reasons in an C{OpenSSL.SSL.Error}, without anything else."""
    try:
        return "; ".join(str(reason[2]) for reason in error.args[0])
    except (IndexError, TypeError):
        return "error"


def _issuedBy(cert, ca):
    if cert.issuer != ca.subject:
        return False
    try:
        cert.verify_directly_issued_by(ca)
    except Exception:  # InvalidSignature, ValueError, TypeError
        return False
    return True


# -- credentials ------------------------------------------------------------------------


class TLSCredentials:
    """
    Our certificate and key and the CA we trust, loaded from L{TLSFiles}.

    @ivar files: the L{TLSFiles}.
    @ivar commonName: the Common Name of our certificate.
    @raise TLSConfigError: (from the constructor and L{reload}) a file is
        missing or unreadable, not PEM, the key does not match the
        certificate, the certificate is not signed by the CA, or a
        certificate is expired or not yet valid.
    """

    def __init__(self, files):
        self.files = files
        self._material = _Material(files)

    @property
    def commonName(self):
        return self._material.commonName

    def reload(self, check=None):
        """
        Read the same paths again (after the files were replaced, e.g. a
        rotated certificate); new connections use the new material,
        connections already open are not touched.

        @param check: C{check(commonName)}, called with the new material's
            Common Name before it is used; it refuses it by raising
            L{TLSConfigError}.
        @raise TLSConfigError: the new files do not load or C{check} refused
            them; the old material stays in use.
        """
        material = _Material(self.files)
        if check is not None:
            check(material.commonName)
        self._material = material

    def serverCreator(self):
        """
        For a listening node: a TLS server that requires a client
        certificate signed by the CA.  Provides
        L{IOpenSSLServerConnectionCreator} (for C{wrapServerTLS},
        C{SSL4ServerEndpoint}, C{TLSMemoryBIOFactory}).
        """
        return _ServerCreator(self)

    def clientCreator(self, hostname):
        """
        For a dialling client or peer: presents our certificate and checks
        the server's against the CA and against C{hostname}, the IP address
        or DNS name dialled.  Provides L{IOpenSSLClientConnectionCreator}
        (for C{wrapClientTLS}).
        """
        return _ClientCreator(self, hostname)

    def __repr__(self):
        return f"<TLSCredentials {self.commonName!r} from {self.files.cert}>"


@implementer(IOpenSSLServerConnectionCreator)
class _ServerCreator:
    def __init__(self, credentials):
        self.credentials = credentials

    def serverConnectionForTLS(self, tlsProtocol):
        options = self.credentials._material.serverOptions()
        make = getattr(options, "serverConnectionForTLS", None)
        if make is not None:
            return make(tlsProtocol)
        # Twisted before 24.x: CertificateOptions is only a context factory.
        from OpenSSL import SSL

        return SSL.Connection(options.getContext(), None)


@implementer(IOpenSSLClientConnectionCreator)
class _ClientCreator:
    def __init__(self, credentials, hostname):
        self.credentials = credentials
        self.hostname = hostname

    def clientConnectionForTLS(self, tlsProtocol):
        options = self.credentials._material.clientOptions(self.hostname)
        return options.clientConnectionForTLS(tlsProtocol)


def peerCommonName(transport):
    """
    The Common Name of the peer's certificate on a TLS C{transport}, once
    its handshake is done (it was verified against the CA then); C{None} if
    the transport is not TLS, there is no certificate (yet), or it does not
    have exactly one Common Name.
    """
    getPeerCertificate = getattr(transport, "getPeerCertificate", None)
    if getPeerCertificate is None:
        return None
    try:
        x509 = getPeerCertificate()
    except Exception:  # a plain TCP transport's stub, or no connection left
        return None
    if x509 is None:
        return None
    names = _commonNames(x509.to_cryptography().subject)
    return names[0] if len(names) == 1 else None


def peerNodeId(transport):
    """
    The node id the peer's verified certificate names (L{nodeIdOf} its
    Common Name), or C{None}: not TLS, no certificate, or a client's.
    """
    return nodeIdOf(peerCommonName(transport))


def endpointWithTLS(endpoint, credentials, hostname, clock=None):
    """
    C{endpoint} (any client endpoint) wrapped in TLS with C{credentials},
    checking the server's certificate against C{hostname}.

    @param clock: the reactor the connection runs on.  Twisted's TLS
        gathers small writes and flushes them on a timer of the global
        reactor unless given a clock: on any other reactor, such as the
        blocking client's, nothing would be sent (and the global reactor
        would be imported).  C{None}: the global reactor.
    """
    return _TLSEndpoint(endpoint, credentials.clientCreator(hostname), clock)


@implementer(IStreamClientEndpoint)
class _TLSEndpoint:
    """C{wrapClientTLS}'s endpoint, with the clock its TLS runs on."""

    def __init__(self, endpoint, creator, clock):
        self._endpoint = endpoint
        self._creator = creator
        self._clock = clock

    def connect(self, factory):
        from twisted.protocols.tls import TLSMemoryBIOFactory

        tls = TLSMemoryBIOFactory(self._creator, True, factory, clock=self._clock)
        return self._endpoint.connect(tls).addCallback(lambda proto: proto.wrappedProtocol)
