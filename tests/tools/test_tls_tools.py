"""
C{--tls} of the tools (C{raftkv cluster}, C{bench}, C{chaos}): the one
place that turns it into certificates, node argv and client credentials
(L{launcher.LocalTLS}), and that each tool uses it.  No node process is
started here (the node flags are the node side's); the argv is checked.
"""

import os

import pytest_twisted

from twisted_raft import cli
from twisted_raft.tls import TLSCredentials, TLSFiles, nodeIdOf
from twisted_raft.tools import bench, chaos, certs, cluster, launcher, load


def flagsOf(argv):
    """C{{flag: value}} of the --tls-* flags in C{argv}."""
    return {a: argv[i + 1] for i, a in enumerate(argv) if a.startswith("--tls-")}


def checkNodeFlags(argv, directory, nodeId):
    flags = flagsOf(argv)
    assert flags == {
        "--tls-ca": os.path.join(directory, "ca.pem"),
        "--tls-cert": os.path.join(directory, f"node{nodeId}.pem"),
        "--tls-key": os.path.join(directory, f"node{nodeId}-key.pem"),
    }
    # and the files are what a node with that id needs
    creds = TLSCredentials(TLSFiles(flags["--tls-ca"], flags["--tls-cert"], flags["--tls-key"]))
    assert nodeIdOf(creds.commonName) == nodeId


# -- launcher.LocalTLS ------------------------------------------------------------------


def test_localTLSMakesWhatIsMissing(tmp_path):
    d = str(tmp_path / "tls")
    tls = launcher.LocalTLS(d, 2)
    assert sorted(os.path.basename(p) for p in tls.written) == sorted([
        "ca.pem", "ca-key.pem", "node1.pem", "node1-key.pem", "node2.pem", "node2-key.pem",
        "raftkv-tools.pem", "raftkv-tools-key.pem",
    ])
    assert tls.credentials().commonName == launcher.TLS_CLIENT
    assert nodeIdOf(launcher.TLS_CLIENT) is None
    ca = open(os.path.join(d, "ca.pem"), "rb").read()
    # a second run reuses everything; a bigger one adds only the new node
    assert launcher.LocalTLS(d, 2).written == []
    grown = launcher.LocalTLS(d, 3)
    assert [os.path.basename(p) for p in grown.written] == ["node3.pem", "node3-key.pem"]
    assert open(os.path.join(d, "ca.pem"), "rb").read() == ca
    checkNodeFlags(grown.nodeArgs(3), d, 3)


def test_localTLSWithoutCAStartsAfresh(tmp_path):
    """Leaves left without their CA are made again, by the new CA."""
    d = str(tmp_path)
    launcher.LocalTLS(d, 2)
    os.unlink(os.path.join(d, "ca.pem"))
    os.unlink(os.path.join(d, "ca-key.pem"))
    tls = launcher.LocalTLS(d, 2)
    assert len(tls.written) == 8
    checkNodeFlags(tls.nodeArgs(1), d, 1)
    assert tls.credentials().commonName == launcher.TLS_CLIENT


def test_localTLSEnvironment(tmp_path):
    tls = launcher.LocalTLS(str(tmp_path), 1)
    env = tls.environment()
    assert env == {
        cli.ENV_TLS_CA: os.path.join(str(tmp_path), "ca.pem"),
        cli.ENV_TLS_CERT: os.path.join(str(tmp_path), "raftkv-tools.pem"),
        cli.ENV_TLS_KEY: os.path.join(str(tmp_path), "raftkv-tools-key.pem"),
    }
    # what the cluster banner tells users to export is what the CLI reads
    files = cli.tlsFiles({"tls-ca": None, "tls-cert": None, "tls-key": None}, env)
    assert TLSCredentials(files).commonName == "raftkv-tools"


def test_nodeArgvWithTLS(tmp_path):
    d = str(tmp_path)
    tls = launcher.LocalTLS(d, 3)
    peers = launcher.peerAddresses(3, 8001)
    argv = launcher.nodeArgv(2, peers, "/data", extra=["--x"], python="/py", tls=tls)
    assert argv[:5] == ["/py", "-m", "twisted", "--log-format=text", "raftkv"]
    assert argv[-1] == "--x"
    checkNodeFlags(argv, d, 2)
    assert flagsOf(launcher.nodeArgv(2, peers, "/data")) == {}


def test_nodesWithTLS(tmp_path):
    d = str(tmp_path)
    tls = launcher.LocalTLS(os.path.join(d, "tls"), 3)
    nodes = launcher.Nodes(launcher.peerAddresses(3, 8001), d, tls=tls)
    for i in (1, 2, 3):
        checkNodeFlags(nodes[i].argv, tls.directory, i)


# -- raftkv cluster --tls -----------------------------------------------------------------


class SpawnRecorder:
    def __init__(self):
        self.argvs = []

    def spawnProcess(self, proto, executable, args, env=None, path=None, childFDs=None):
        self.argvs.append(args)


def test_clusterTLS(tmp_path):
    data = str(tmp_path / "data")
    options = cli.parseArgs(["cluster", "--nodes", "2", "--data", data, "--tls"]).subOptions
    assert options["tls"]
    tls = cluster.prepareTLS(options)
    assert tls.directory == os.path.join(data, "tls")
    reactor = SpawnRecorder()
    c = cluster.LocalCluster(reactor, nodes=2, dataDir=data, tls=tls, echo=lambda line: None,
                             portsTaken=lambda addresses: [])
    c.start()
    for i, argv in enumerate(reactor.argvs, start=1):
        checkNodeFlags(argv, tls.directory, i)
    assert len(reactor.argvs) == 2
    text = cluster.banner(c.peers, tls)
    for name, path in tls.environment().items():
        assert f"export {name}={path}" in text
    assert "mutual TLS" in text
    # without --tls: no TLS anywhere
    options = cli.parseArgs(["cluster", "--data", data]).subOptions
    assert cluster.prepareTLS(options) is None
    assert "export" not in cluster.banner(c.peers)


def test_clusterTLSUnusable(tmp_path, capsys):
    data = str(tmp_path)
    certs.makeCertificates(os.path.join(data, "tls"), 1)
    os.unlink(os.path.join(data, "tls", "ca-key.pem"))
    options = cli.parseArgs(["cluster", "--nodes", "2", "--data", data, "--tls"]).subOptions
    assert cluster.main(options) == 1
    err = capsys.readouterr().err
    assert "error: TLS:" in err and "ca.pem exists without" in err
    assert os.path.join(data, "tls") in err


# -- raftkv bench --tls ------------------------------------------------------------------


def test_benchOptions():
    o = bench.Options()
    o.parseOptions(["--tls"])
    assert o["tls"]
    o = bench.Options()
    o.parseOptions([])
    assert not o["tls"]


def test_benchTLSWithClusterIsRefused(capsys):
    assert bench.main(["--tls", "--cluster", "127.0.0.1:1"]) == bench.EXIT_USAGE
    assert "--tls" in capsys.readouterr().err


def test_benchLocalClusterWithTLS():
    local = load.LocalCluster(3, tls=True)
    try:
        directory = os.path.join(local.root, "tls")
        for i in (1, 2, 3):
            checkNodeFlags(local[i].argv, directory, i)
        assert local.clientTLS().commonName == launcher.TLS_CLIENT
    finally:
        local.stop()
    assert not os.path.exists(local.root)
    plain = load.LocalCluster(1)
    try:
        assert plain.clientTLS() is None and flagsOf(plain[1].argv) == {}
    finally:
        plain.stop()


def test_rawEndpointWithTLS(monkeypatch, tmp_path):
    from twisted.internet.task import Clock

    import twisted_raft.tls

    calls = []

    def fake(endpoint, credentials, hostname):
        calls.append((credentials, hostname))
        return "wrapped"

    monkeypatch.setattr(twisted_raft.tls, "endpointWithTLS", fake)
    creds = launcher.LocalTLS(str(tmp_path), 1).credentials()
    assert load.rawEndpoint(Clock(), "127.0.0.1:8001", creds) == "wrapped"
    assert calls == [(creds, "127.0.0.1")]
    assert load.rawEndpoint(Clock(), "127.0.0.1:8001") != "wrapped"


# -- raftkv chaos --tls ------------------------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_chaosTLS(tmp_path, monkeypatch):
    """setUp with --tls: each node's argv has its own TLS flags; clients have credentials."""
    from twisted.internet import reactor

    started = []
    monkeypatch.setattr(launcher.SpawnedNode, "start", lambda self: started.append(self))
    options = chaos.Options()
    options.parseOptions(["--nodes", "3", "--tls", "--data", str(tmp_path)])
    run = chaos.Chaos(reactor, options, out=lambda line: None)
    try:
        yield run.setUp()
        directory = os.path.join(str(tmp_path), "tls")
        for i, node in sorted(run.nodes.items()):
            checkNodeFlags(node.argv, directory, i)
        assert len(started) == 3
        assert run.clientTLS.commonName == launcher.TLS_CLIENT
        assert run.statusClient()._pool.tls is run.clientTLS
        assert "--tls" in run.replayCommand().split()
    finally:
        from twisted.internet import defer

        yield defer.gatherResults([p.stop() for p in run.proxies.values()])


def test_chaosWithoutTLS(tmp_path):
    options = chaos.Options()
    options.parseOptions(["--nodes", "3"])
    assert not options["tls"]
    run = chaos.Chaos(None, options, out=lambda line: None)
    assert run.clientTLS is None and "--tls" not in run.replayCommand()


def test_a_new_local_cluster_gets_a_random_token_file(tmp_path):
    data = str(tmp_path / "data")
    path = launcher.localTokenFile(data, 3)
    token = open(path).read().strip()
    assert len(token) == 64 and os.stat(path).st_mode & 0o777 == 0o600
    assert launcher.localTokenFile(data, 3) == path  # kept between runs
    assert open(path).read().strip() == token
    argv = launcher.nodeArgv(1, ["h:1", "h:2", "h:3"], data, tokenFile=path)
    assert argv[argv.index("--cluster-token-file") + 1] == path
    # data dirs made before there was a token keep the default one
    old = str(tmp_path / "old")
    os.makedirs(launcher.dataPath(old, 2))
    assert launcher.localTokenFile(old, 3) is None
    assert not os.path.exists(os.path.join(old, launcher.TOKEN_FILE))
