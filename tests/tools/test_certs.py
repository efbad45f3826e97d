"""
Tests for C{raftkv certs} (L{twisted_raft.tools.certs}): what it writes,
what it refuses, and its command line through L{twisted_raft.cli.main}.
"""

import datetime
import ipaddress
import os
import stat

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.support import tlsFiles
from twisted_raft import cli
from twisted_raft.tls import TLSCredentials
from twisted_raft.tools import certs


def load(path):
    with open(path, "rb") as f:
        return x509.load_pem_x509_certificate(f.read())


def commonName(cert):
    return cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value


def sans(cert):
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return [], []
    return ext.get_values_for_type(x509.IPAddress), ext.get_values_for_type(x509.DNSName)


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_writesCANodesAndClients(tmp_path):
    d = str(tmp_path / "tls")
    written = certs.makeCertificates(d, 2, clients=["alice", "ops.bot"])
    names = sorted(os.path.basename(p) for p in written)
    assert names == sorted([
        "ca.pem", "ca-key.pem", "node1.pem", "node1-key.pem", "node2.pem", "node2-key.pem",
        "alice.pem", "alice-key.pem", "ops.bot.pem", "ops.bot-key.pem",
    ])
    assert sorted(os.listdir(d)) == names  # nothing else (no temporary files left)
    for p in written:
        assert mode(p) == (0o600 if p.endswith("-key.pem") else 0o644), p
    ca = load(os.path.join(d, "ca.pem"))
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    for i in (1, 2):
        node = load(os.path.join(d, f"node{i}.pem"))
        assert commonName(node) == f"raftkv-node-{i}"
        assert sans(node) == ([ipaddress.ip_address("127.0.0.1")], ["localhost"])
        node.verify_directly_issued_by(ca)
        eku = node.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
        assert not node.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        days = (node.not_valid_after_utc - node.not_valid_before_utc).days
        assert days == certs.DEFAULT_DAYS
    alice = load(os.path.join(d, "alice.pem"))
    assert commonName(alice) == "alice"
    assert sans(alice) == ([], [])
    alice.verify_directly_issued_by(ca)
    # and what it wrote is what TLSCredentials wants
    assert TLSCredentials(tlsFiles(d, "node2")).commonName == "raftkv-node-2"
    assert TLSCredentials(tlsFiles(d, "ops.bot")).commonName == "ops.bot"


def test_hosts(tmp_path):
    d = str(tmp_path)
    certs.makeCertificates(d, 1, hosts=["10.1.2.3", "::1", "Node1.Example.COM", "localhost"])
    ips, names = sans(load(os.path.join(d, "node1.pem")))
    assert ips == [ipaddress.ip_address("10.1.2.3"), ipaddress.ip_address("::1")]
    assert names == ["node1.example.com", "localhost"]


def test_parseHosts():
    assert certs.parseHosts("127.0.0.1, localhost,") == [ipaddress.ip_address("127.0.0.1"), "localhost"]
    assert certs.parseHosts("[::1]") == [ipaddress.ip_address("::1")]
    for bad in ("", ",", "a b", "-x.example", "x_y", "a..b", "x" * 64):
        with pytest.raises(ValueError):
            certs.parseHosts(bad)


@pytest.mark.parametrize("name", [
    "raftkv-node-1", "raftkv-node-x", "ca", "ca-key", "node1", "alice-key", "", "a/b", "../x",
    ".hidden", "x" * 65, "é",
])
def test_badClientNames(name, tmp_path):
    with pytest.raises(ValueError):
        certs.checkClientName(name)
    with pytest.raises(ValueError):
        certs.makeCertificates(str(tmp_path / "d"), 1, clients=[name])
    assert not os.path.exists(tmp_path / "d")  # checked before anything is written


def test_repeatedClient():
    with pytest.raises(ValueError):
        certs.parseClients("alice,bob,alice")
    assert certs.parseClients(" alice , bob ") == ["alice", "bob"]


def test_existingCASignsNewLeaves(tmp_path):
    """Adding a node: the CA stays, node 3 is signed by it, node 1 is rotated."""
    d = str(tmp_path)
    certs.makeCertificates(d, 2)
    caBefore = open(os.path.join(d, "ca.pem"), "rb").read()
    caKeyBefore = open(os.path.join(d, "ca-key.pem"), "rb").read()
    node1Before = open(os.path.join(d, "node1.pem"), "rb").read()
    written = certs.makeCertificates(d, 3)
    assert os.path.join(d, "ca.pem") not in written
    assert open(os.path.join(d, "ca.pem"), "rb").read() == caBefore
    assert open(os.path.join(d, "ca-key.pem"), "rb").read() == caKeyBefore
    assert open(os.path.join(d, "node1.pem"), "rb").read() != node1Before
    load(os.path.join(d, "node3.pem")).verify_directly_issued_by(load(os.path.join(d, "ca.pem")))
    assert TLSCredentials(tlsFiles(d, "node3")).commonName == "raftkv-node-3"


def test_caWithoutKeyIsRefused(tmp_path):
    d = str(tmp_path)
    certs.makeCertificates(d, 1)
    os.unlink(os.path.join(d, "ca-key.pem"))
    os.unlink(os.path.join(d, "node1.pem"))
    with pytest.raises(certs.CertificateError) as e:
        certs.makeCertificates(d, 1)
    assert "ca.pem exists without" in str(e.value) and "--force" in str(e.value)
    assert not os.path.exists(os.path.join(d, "node1.pem"))


def test_brokenCAIsRefused(tmp_path):
    d = str(tmp_path)
    certs.makeCertificates(d, 1)
    other = str(tmp_path / "other")
    certs.makeCertificates(other, 0)
    # the key of another CA
    os.replace(os.path.join(other, "ca-key.pem"), os.path.join(d, "ca-key.pem"))
    with pytest.raises(certs.CertificateError) as e:
        certs.makeCertificates(d, 1)
    assert "does not match" in str(e.value)
    with open(os.path.join(d, "ca-key.pem"), "wb") as f:
        f.write(b"junk SECRET\n")
    with pytest.raises(certs.CertificateError) as e:
        certs.makeCertificates(d, 1)
    assert "ca-key.pem" in str(e.value) and "SECRET" not in str(e.value)


def test_forceMakesANewCA(tmp_path):
    d = str(tmp_path)
    certs.makeCertificates(d, 1)
    caBefore = open(os.path.join(d, "ca.pem"), "rb").read()
    written = certs.makeCertificates(d, 1, force=True)
    assert os.path.join(d, "ca.pem") in written
    assert open(os.path.join(d, "ca.pem"), "rb").read() != caBefore
    assert TLSCredentials(tlsFiles(d, "node1")).commonName == "raftkv-node-1"


def test_leafNeverOutlivesItsCA(tmp_path):
    d = str(tmp_path)
    certs.makeCertificates(d, 1, days=400, caDays=100)
    ca, node = load(os.path.join(d, "ca.pem")), load(os.path.join(d, "node1.pem"))
    assert node.not_valid_after_utc == ca.not_valid_after_utc
    now = datetime.datetime.now(datetime.timezone.utc)
    assert node.not_valid_before_utc < now  # valid at once


def test_unwritableDirectory(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(certs.CertificateError) as e:
        certs.makeCertificates(str(blocker / "tls"), 1)
    assert str(blocker) in str(e.value)


# -- the command line ----------------------------------------------------------------


def test_cli(tmp_path, capsys):
    d = str(tmp_path / "tls")
    with pytest.raises(SystemExit) as exited:
        cli.main(["certs", d, "--nodes", "2", "--hosts", "127.0.0.1,db.local",
                  "--clients", "alice", "--days", "30"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    for name in ("ca.pem", "ca-key.pem", "node1.pem", "node2-key.pem", "alice.pem"):
        assert f"wrote {os.path.join(d, name)}\n" in out
    node = load(os.path.join(d, "node2.pem"))
    assert sans(node)[1] == ["db.local"]
    assert (node.not_valid_after_utc - node.not_valid_before_utc).days == 30
    # again: the CA is kept and says so
    with pytest.raises(SystemExit) as exited:
        cli.main(["certs", d, "--nodes", "1"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert "ca.pem" not in out.replace("existing CA " + os.path.join(d, "ca.pem"), "")
    assert "signed with the existing CA" in out


def test_cliRefusal(tmp_path, capsys):
    d = str(tmp_path)
    certs.makeCertificates(d, 1)
    os.unlink(os.path.join(d, "ca-key.pem"))
    with pytest.raises(SystemExit) as exited:
        cli.main(["certs", d, "--nodes", "1"])
    assert exited.value.code == certs.EXIT_FAILED == 1
    assert "error:" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [
    ["certs"],
    ["certs", "DIR"],
    ["certs", "DIR", "--nodes", "x"],
    ["certs", "DIR", "--nodes", "-1"],
    ["certs", "DIR", "--nodes", "1", "--hosts", "bad host"],
    ["certs", "DIR", "--nodes", "1", "--clients", "raftkv-node-9"],
    ["certs", "DIR", "--nodes", "1", "--days", "0"],
    ["certs", "DIR", "EXTRA", "--nodes", "1"],
])
def test_cliBadUsage(argv, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exited:
        cli.main(argv)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "raftkv certs DIR" in err and "error:" in err
    assert os.listdir(tmp_path) == []
