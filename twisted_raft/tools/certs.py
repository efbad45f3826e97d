"""
C{raftkv certs}: make the certificates a mutual-TLS cluster needs.

    raftkv certs DIR --nodes N [--hosts 127.0.0.1,localhost]
                 [--clients NAME,...] [--days 825] [--ca-days 3650] [--force]

Writes, in C{DIR} (created if missing):

  - C{ca.pem}, C{ca-key.pem}: the cluster's certificate authority;
  - C{node<i>.pem}, C{node<i>-key.pem} for i = 1..N: node i's certificate,
    Common Name C{raftkv-node-<i>} (L{twisted_raft.tls.nodeCommonName}),
    with every C{--hosts} entry as a subject alternative name (IP addresses
    as IP SANs, names as DNS SANs), which is what clients and peers check
    against the address they dial;
  - C{<name>.pem}, C{<name>-key.pem} per C{--clients} name: a client
    certificate whose Common Name is C{name}.

Keys are EC P-256, written with mode 0600; every leaf certificate may serve
both ends of a connection (extended key usage serverAuth and clientAuth).

An existing CA is never overwritten without C{--force}: when C{DIR/ca.pem}
and C{DIR/ca-key.pem} exist, the new node and client certificates are signed
by that CA, which is how a node is added (C{--nodes} one higher) or a leaf
certificate rotated; the leaves named are written again.  A leaf never
outlives its CA (its end is the CA's if C{--days} would reach past it).

Exit status: 0 written; 1 refused or failed (an existing CA without its key,
a CA that does not load, a file that cannot be written); 2 usage error.

L{makeCertificates} is the same as a function, for the tools (C{--tls} of
C{cluster}, C{bench}, C{chaos}) and the tests.
"""

import datetime
import ipaddress
import os
import re
import sys
import tempfile

from twisted.python import usage

from twisted_raft.tls import NODE_NAME_PREFIX, nodeCommonName
from twisted_raft.tools.command import InterspersedOptions, parseOptions

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

DEFAULT_HOSTS = ("127.0.0.1", "localhost")
DEFAULT_DAYS = 825
"""The longest validity browsers accept for a leaf; a sensible default
elsewhere too."""
DEFAULT_CA_DAYS = 3650
CA_NAME = "raftkv CA"
CA_FILE = "ca.pem"
CA_KEY_FILE = "ca-key.pem"
CLOCK_SKEW = datetime.timedelta(minutes=5)
"""Certificates start this long before now, so that a peer whose clock is a
little behind does not see them as not yet valid."""

_CLIENT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")
_NODE_FILE = re.compile(r"node[0-9]+\Z")
_DNS_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)\Z")


class CertificateError(Exception):
    """The certificates could not be made (the message says why)."""


# -- names ----------------------------------------------------------------------------


def nodeFiles(directory, nodeId):
    """C{(certificate path, key path)} of node C{nodeId} in C{directory}."""
    return (os.path.join(directory, f"node{nodeId}.pem"),
            os.path.join(directory, f"node{nodeId}-key.pem"))


def clientFiles(directory, name):
    """C{(certificate path, key path)} of client C{name} in C{directory}."""
    return (os.path.join(directory, f"{name}.pem"),
            os.path.join(directory, f"{name}-key.pem"))


def checkClientName(name):
    """
    @raise ValueError: if C{name} cannot be a client certificate's Common
        Name and file name: a node's name, a name whose files would collide
        with the CA's or a node's, or characters other than letters, digits,
        C{.}, C{_} and C{-}.
    """
    if name.startswith(NODE_NAME_PREFIX):
        raise ValueError(f"client name {name!r}: names starting with {NODE_NAME_PREFIX!r} are nodes'")
    if not _CLIENT_NAME.match(name):
        raise ValueError(
            f"client name {name!r}: use 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    if name in ("ca", CA_KEY_FILE[:-4]) or _NODE_FILE.match(name) or name.endswith("-key"):
        raise ValueError(f"client name {name!r}: its files would collide with the CA's or a node's")


def parseHosts(text):
    """
    C{"127.0.0.1,localhost"} -> C{[IPv4Address('127.0.0.1'), 'localhost']}.

    @raise ValueError: on an empty list or an entry that is neither an IP
        address nor a DNS name.
    """
    hosts = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        try:
            hosts.append(ipaddress.ip_address(item.strip("[]")))
            continue
        except ValueError:
            pass
        name = item.rstrip(".")
        if len(name) > 253 or not all(_DNS_LABEL.match(label) for label in name.split(".")):
            raise ValueError(f"{item!r} is neither an IP address nor a DNS name")
        hosts.append(name.lower())
    if not hosts:
        raise ValueError("no hosts given")
    return hosts


def parseClients(text):
    """C{"alice,bob"} -> C{["alice", "bob"]}. @raise ValueError: a bad or repeated name."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    for n in names:
        checkClientName(n)
    if len(set(names)) != len(names):
        raise ValueError("a client name is given twice")
    return names


# -- certificates ------------------------------------------------------------------------


def _crypto():
    # cryptography is imported when certificates are made, not when the
    # command line is parsed.
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    return x509, hashes, serialization, ec, ExtendedKeyUsageOID, NameOID


def newKey():
    """A new EC P-256 private key (fast to make, small, widely supported)."""
    _, _, _, ec, _, _ = _crypto()
    return ec.generate_private_key(ec.SECP256R1())


def _now():
    return datetime.datetime.now(datetime.timezone.utc)


def makeCA(days=DEFAULT_CA_DAYS, commonName=CA_NAME, key=None, notBefore=None):
    """A new self-signed CA. @return: C{(certificate, private key)}."""
    x509, hashes, _, _, _, NameOID = _crypto()
    key = key or newKey()
    start = notBefore or (_now() - CLOCK_SKEW)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, commonName)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=False, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
            encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def makeLeaf(caCert, caKey, commonName, hosts=(), days=DEFAULT_DAYS, key=None, notBefore=None,
             notAfter=None):
    """
    A certificate for C{commonName} signed by the CA, usable by a TLS server
    and a TLS client.

    @param hosts: IP addresses (L{ipaddress} objects) and DNS names for the
        subject alternative name; none for a client.
    @param notBefore: the start (default: now, less L{CLOCK_SKEW}).
    @param notAfter: the end (default: C{days} after the start, but never
        past the CA's end).
    @return: C{(certificate, private key)}.
    """
    x509, hashes, _, _, ExtendedKeyUsageOID, NameOID = _crypto()
    key = key or newKey()
    start = notBefore or (_now() - CLOCK_SKEW)
    end = notAfter or min(start + datetime.timedelta(days=days), caCert.not_valid_after_utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, commonName)]))
        .issuer_name(caCert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
            encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage(
            [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(caKey.public_key()),
                       critical=False)
    )
    sans = [x509.IPAddress(h) if not isinstance(h, str) else x509.DNSName(h) for h in hosts]
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(caKey, hashes.SHA256()), key


def certificatePEM(cert):
    _, _, serialization, _, _, _ = _crypto()
    return cert.public_bytes(serialization.Encoding.PEM)


def keyPEM(key):
    _, _, serialization, _, _, _ = _crypto()
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def writeFile(path, data, mode):
    """
    Write C{data} to C{path} with C{mode}, atomically: a reader sees the old
    file or the new one, and a key is never readable by others, not even
    while it is written.
    """
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def loadCA(directory):
    """
    The CA in C{directory}. @return: C{(certificate, key)}.
    @raise CertificateError: if it does not load or the key is not the
        certificate's.
    """
    x509, _, serialization, _, _, _ = _crypto()
    certPath, keyPath = os.path.join(directory, CA_FILE), os.path.join(directory, CA_KEY_FILE)
    try:
        with open(certPath, "rb") as f:
            cert = x509.load_pem_x509_certificate(f.read())
    except (OSError, ValueError) as e:
        raise CertificateError(f"{certPath}: not a readable PEM certificate ({e})") from None
    try:
        with open(keyPath, "rb") as f:
            key = serialization.load_pem_private_key(f.read(), password=None)
    except OSError as e:
        raise CertificateError(f"{keyPath}: cannot read: {e.strerror}") from None
    except (ValueError, TypeError):
        # never echo the key's bytes
        raise CertificateError(f"{keyPath}: not an unencrypted PEM private key") from None
    der = serialization.Encoding.DER
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(der, spki) != cert.public_key().public_bytes(der, spki):
        raise CertificateError(f"{keyPath}: does not match the certificate {certPath}")
    return cert, key


def makeCertificates(directory, nodes, hosts=DEFAULT_HOSTS, clients=(), days=DEFAULT_DAYS,
                     force=False, caDays=DEFAULT_CA_DAYS):
    """
    Write the CA (unless there is one), C{nodes} node certificates and the
    client certificates into C{directory} (see the module docstring).

    @param nodes: the number of nodes (ids 1..C{nodes}), or an iterable of
        node ids.
    @param hosts: the SANs of the node certificates: IP address or DNS name
        strings (or L{ipaddress} objects).
    @param clients: client names (L{checkClientName}).
    @param force: make a new CA even if there is one.
    @return: the paths written, in order.
    @raise CertificateError: an existing CA cannot be used, or a file cannot
        be written.
    @raise ValueError: a bad host or client name, or no valid node id.
    """
    nodeIds = list(range(1, nodes + 1)) if isinstance(nodes, int) else list(nodes)
    if any(isinstance(i, bool) or not isinstance(i, int) or i < 1 for i in nodeIds):
        raise ValueError("node ids are integers from 1")
    sans = parseHosts(",".join(str(h) for h in hosts))
    clients = list(clients)
    for name in clients:
        checkClientName(name)
    if days < 1 or caDays < 1:
        raise ValueError("certificates must be valid for at least one day")
    certPath, keyPath = os.path.join(directory, CA_FILE), os.path.join(directory, CA_KEY_FILE)
    written = []
    try:
        os.makedirs(directory, exist_ok=True)
        haveCert, haveKey = os.path.exists(certPath), os.path.exists(keyPath)
        if (haveCert or haveKey) and not force:
            if not (haveCert and haveKey):
                raise CertificateError(
                    f"{certPath if haveCert else keyPath} exists without "
                    f"{keyPath if haveCert else certPath}: cannot sign with that CA "
                    "(--force makes a new CA, replacing it)"
                )
            caCert, caKey = loadCA(directory)
        else:
            caCert, caKey = makeCA(caDays)
            writeFile(keyPath, keyPEM(caKey), 0o600)
            writeFile(certPath, certificatePEM(caCert), 0o644)
            written += [certPath, keyPath]
        leaves = [(nodeCommonName(i), sans, nodeFiles(directory, i)) for i in nodeIds]
        leaves += [(name, (), clientFiles(directory, name)) for name in clients]
        for commonName, leafHosts, (leafCert, leafKey) in leaves:
            cert, key = makeLeaf(caCert, caKey, commonName, leafHosts, days)
            writeFile(leafKey, keyPEM(key), 0o600)
            writeFile(leafCert, certificatePEM(cert), 0o644)
            written += [leafCert, leafKey]
    except OSError as e:
        raise CertificateError(f"{e.filename or directory}: {e.strerror}") from None
    return written


# -- command line ---------------------------------------------------------------------


class CertsOptions(InterspersedOptions):
    synopsis = (
        "raftkv certs DIR --nodes N [--hosts 127.0.0.1,localhost] [--clients NAME,...] "
        "[--days 825] [--ca-days 3650] [--force]"
    )
    longdesc = (
        "Make a CA (or use the one in DIR), node certificates (CN raftkv-node-<i>, "
        "SANs from --hosts) and client certificates (CN = name) for mutual TLS."
    )
    optParameters = [
        ["nodes", "n", None, "Number of node certificates (node1 .. nodeN).", int],
        ["hosts", None, ",".join(DEFAULT_HOSTS),
         "Comma-separated IP addresses and DNS names the nodes are reached at."],
        ["clients", None, "", "Comma-separated client certificate names."],
        ["days", None, DEFAULT_DAYS, "Days the node and client certificates are valid.", int],
        ["ca-days", None, DEFAULT_CA_DAYS, "Days a new CA is valid.", int],
    ]
    optFlags = [["force", None, "Make a new CA even if DIR has one (replacing it)."]]

    def parseArgs(self, directory):
        self["directory"] = directory

    def postOptions(self):
        if self["nodes"] is None:
            raise usage.UsageError("--nodes is required")
        if not 0 <= self["nodes"] <= 1000:
            raise usage.UsageError("--nodes must be 0..1000")
        if not 1 <= self["days"] <= 36500 or not 1 <= self["ca-days"] <= 36500:
            raise usage.UsageError("--days and --ca-days must be 1..36500")
        try:
            self["hostList"] = parseHosts(self["hosts"])
        except ValueError as e:
            raise usage.UsageError(f"--hosts: {e}")
        try:
            self["clientList"] = parseClients(self["clients"])
        except ValueError as e:
            raise usage.UsageError(f"--clients: {e}")


def run(options, out=print, err=None):
    """Make what C{options} (parsed L{CertsOptions}) asks for. @return: the exit status."""
    err = err or (lambda line: print(line, file=sys.stderr))
    try:
        written = makeCertificates(
            options["directory"], options["nodes"], options["hostList"], options["clientList"],
            options["days"], options["force"], options["ca-days"],
        )
    except (CertificateError, ValueError) as e:
        err(f"error: {e}")
        return EXIT_FAILED
    for path in written:
        out(f"wrote {path}")
    if not any(p.endswith(os.sep + CA_FILE) for p in written):
        out(f"signed with the existing CA {os.path.join(options['directory'], CA_FILE)}")
    return EXIT_OK


def main(argv=None):
    """C{raftkv certs ...} on its own; @return: the exit status."""
    options = parseOptions(CertsOptions(), argv)
    if options is None:
        return EXIT_USAGE
    return run(options)
