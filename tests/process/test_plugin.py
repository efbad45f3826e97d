"""
The raftkv twistd plugin and its options.
"""

import subprocess
import sys

import pytest
from twisted.python import usage

from twisted_raft.options import Options
from twisted_raft.tools import launcher

from tests.support import ROOT

PEERS = "127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003"


def parse(*argv):
    o = Options()
    o.parseOptions(list(argv))
    return o


def test_good_options_and_defaults():
    o = parse("--id", "2", "--peers", PEERS, "--data", "d/n2")
    assert o["id"] == 2
    assert o["peers"] == [("127.0.0.1", 7001), ("127.0.0.1", 7002), ("127.0.0.1", 7003)]
    assert o["data"] == "d/n2"
    assert o["listen"] == "tcp:7002:interface=127.0.0.1"
    assert o["cluster-token"] == "raftkv"
    assert o["election-timeout"] == (0.3, 0.55)
    assert o["heartbeat-interval"] == 0.08


def test_explicit_options():
    o = parse(
        "--id=1", "--peers", " a.example:1 , [::1]:65535 ", "--data", "x",
        "--listen", "unix:/tmp/s", "--cluster-token", "prod",
        "--election-timeout", "1000-2000", "--heartbeat-interval", "100",
    )
    assert o["peers"] == [("a.example", 1), ("::1", 65535)]
    assert o["listen"] == "unix:/tmp/s"
    assert o["cluster-token"] == "prod"
    assert o["election-timeout"] == (1.0, 2.0)
    assert o["heartbeat-interval"] == 0.1


def test_http_endpoint_is_off_by_default_and_kept_as_given():
    assert parse("--id", "1", "--peers", PEERS, "--data", "x").config.http is None
    o = parse("--id", "1", "--peers", PEERS, "--data", "x", "--http", " tcp:9101:interface=127.0.0.1")
    assert o["http"] == o.config.http == "tcp:9101:interface=127.0.0.1"


def test_single_election_timeout_means_min_to_183_percent():
    lo, hi = parse("--id", "1", "--peers", PEERS, "--data", "x", "--election-timeout", "400")[
        "election-timeout"
    ]
    assert lo == 0.4 and hi == pytest.approx(0.732)


def test_ipv6_default_listen():
    o = parse("--id", "1", "--peers", "[::1]:7001", "--data", "x")
    assert o["listen"] == "tcp:7001:interface=\\:\\:1"


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--id", "0", "--peers", PEERS, "--data", "x"], "out of range"),
        (["--id", "4", "--peers", PEERS, "--data", "x"], "out of range"),
        (["--id", "one", "--peers", PEERS, "--data", "x"], "integer"),
        (["--id", "1", "--peers", "a:1,b:2,a:1", "--data", "x"], "twice"),
        (["--id", "1", "--peers", "A:1,a:1", "--data", "x"], "twice"),
        (["--id", "1", "--peers", "a:1,b", "--data", "x"], "unparsable"),
        (["--id", "1", "--peers", "a:1,b:x", "--data", "x"], "bad port"),
        (["--id", "1", "--peers", "a:1,b:0", "--data", "x"], "out of range"),
        (["--id", "1", "--peers", "a:1,b:65536", "--data", "x"], "out of range"),
        (["--id", "1", "--peers", "a:1,::1:5", "--data", "x"], "unparsable"),
        (["--id", "1", "--peers", ",", "--data", "x"], "empty"),
        (["--id", "1", "--peers", PEERS], "--data is required"),
        (["--peers", PEERS, "--data", "x"], "--id is required"),
        (["--id", "1", "--data", "x"], "--peers is required"),
        (["--id", "1", "--peers", PEERS, "--data", "x", "--election-timeout", "500-300"], "maximum"),
        (["--id", "1", "--peers", PEERS, "--data", "x", "--election-timeout", "abc"], "number"),
        (["--id", "1", "--peers", PEERS, "--data", "x", "--election-timeout", "0"], "positive"),
        (["--id", "1", "--peers", PEERS, "--data", "x", "--heartbeat-interval", "300"], "below"),
        (["--id", "1", "--peers", PEERS, "--data", "x", "--heartbeat-interval", "-5"], "positive"),
        (["--id", "1", "--peers", PEERS, "--data", "x", "--cluster-token", ""], "empty"),
        (["--id", "1", "--peers", PEERS, "--data", "x", "--http", " "], "--http is empty"),
        (["--id", "1", "--peers", PEERS, "--data", "x", "--http", "bogus:1"], "not a server endpoint"),
        (["--id", "1", "--peers", PEERS, "--data", "x", "--http", "tcp:port"], "not a server endpoint"),
        (["--id", "1", "--peers", PEERS, "--data", "x", "--http", "ssl:9443:privateKey=/no.pem"],
         "No such file"),
    ],
)
def test_bad_options(argv, message):
    with pytest.raises(usage.UsageError) as e:
        parse(*argv)
    assert message in str(e.value)


def test_cluster_token_file(tmp_path):
    path = tmp_path / "token"
    path.write_text("  s3cret \nignored\n")
    o = parse("--id", "1", "--peers", PEERS, "--data", "x", "--cluster-token-file", str(path))
    assert o.config.clusterToken == "s3cret"
    for argv, message in [
        (["--cluster-token-file", str(path), "--cluster-token", "other"], "not both"),
        (["--cluster-token-file", str(tmp_path / "missing")], "No such file"),
        (["--cluster-token-file", str(tmp_path)], "--cluster-token-file"),
    ]:
        with pytest.raises(usage.UsageError) as e:
            parse("--id", "1", "--peers", PEERS, "--data", "x", *argv)
        assert message in str(e.value)
    path.write_text("\n")
    with pytest.raises(usage.UsageError) as e:
        parse("--id", "1", "--peers", PEERS, "--data", "x", "--cluster-token-file", str(path))
    assert "holds no token" in str(e.value)


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--tls-ca", "ca.pem"], "--tls-cert, --tls-key missing"),
        (["--tls-ca", "nope.pem", "--tls-cert", "nope.pem", "--tls-key", "nope.pem"],
         "no such file"),
    ],
)
def test_bad_tls_options(argv, message):
    with pytest.raises(usage.UsageError) as e:
        parse("--id", "1", "--peers", PEERS, "--data", "x", *argv)
    assert message in str(e.value)


def test_plugin_object():
    from twisted.application.service import IServiceMaker
    from twisted.plugin import IPlugin, getPlugins

    makers = [p for p in getPlugins(IServiceMaker) if getattr(p, "tapname", None) == "raftkv"]
    assert len(makers) == 1
    maker = makers[0]
    assert IPlugin.providedBy(maker)
    assert maker.options is Options
    assert maker.description


def test_make_service_builds_without_reactor():
    from twisted_raft.service import RaftKVService, makeService

    svc = makeService(parse("--id", "3", "--peers", PEERS, "--data", "somewhere"))
    assert isinstance(svc, RaftKVService)
    assert svc.nodeId == 3 and svc.config.listen == "tcp:7003:interface=127.0.0.1"


def test_make_service_refuses_a_file_as_data_dir(tmp_path):
    from twisted_raft.service import makeService

    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(SystemExit) as e:
        makeService(parse("--id", "1", "--peers", PEERS, "--data", str(f)))
    assert "not a directory" in str(e.value.code)


def _run(args):
    return subprocess.run(
        [sys.executable] + args, capture_output=True, text=True, env=launcher.environment(),
        cwd=ROOT, timeout=60,
    )


TWISTD = ["-c", "from twisted.scripts.twistd import run; run()"]


def test_plugin_is_discoverable():
    # `python -m twisted` is the `twist` runner; twistd shares its plugin scan
    out = _run(["-m", "twisted", "--help"])
    assert "raftkv" in out.stdout, out.stdout + out.stderr
    out = _run(TWISTD + ["--help"])
    assert "raftkv" in out.stdout, out.stdout + out.stderr


def test_twistd_rejects_bad_flags_with_nonzero_exit(tmp_path):
    argv = launcher.nodeArgv(4, PEERS.split(","), str(tmp_path), runner=launcher.TWISTD)
    out = _run(argv[1:])
    assert out.returncode != 0
    assert "out of range" in out.stdout + out.stderr


def test_plugin_import_does_not_install_reactor():
    out = _run(
        [
            "-c",
            "import sys; from twisted.plugin import IPlugin, getPlugins;"
            " list(getPlugins(IPlugin));"
            " import twisted.plugins.raftkv_plugin;"
            " print('twisted.internet.reactor' in sys.modules)",
        ]
    )
    assert out.stdout.strip().endswith("False"), out.stdout + out.stderr


# -- the service, in memory ----------------------------------------------------


def _service(storageFactory):
    from twisted.internet.testing import MemoryReactorClock

    from twisted_raft.config import NodeConfig
    from twisted_raft.service import RaftKVService

    reactor = MemoryReactorClock()
    config = NodeConfig(
        nodeId=1,
        peers=[("127.0.0.1", 7001), ("127.0.0.1", 7002), ("127.0.0.1", 7003)],
        dataDir="unused",
        listen="tcp:7001:interface=127.0.0.1",
    )
    svc = RaftKVService(
        config,
        reactor=reactor,
        storageFactory=storageFactory,
        exitOnFailure=False,
    )
    return reactor, svc


def test_service_starts_listens_and_stops():
    from twisted_raft.storage.memory import MemoryStorage

    class Storage(MemoryStorage):
        def __init__(self, path, nodeId, token, reactor):
            super().__init__()
            self.started = self.closed = False

        def start(self):
            self.started = True

        def close(self):
            self.closed = True
            return super().close()

    reactor, svc = _service(Storage)
    svc.startService()
    assert svc.exitCode is None
    assert svc.storage.started
    assert [(p[0], p[3]) for p in reactor.tcpServers] == [(7001, "127.0.0.1")]
    assert svc.node.status().nodeId == 1
    storage = svc.storage
    done = []
    svc.stopService().addBoth(done.append)
    assert done == [None]
    assert storage.closed
    assert not svc.node.running


def test_the_service_wires_every_setting():
    """The node's server and peer links run with the NodeConfig's values."""
    from twisted.internet.testing import MemoryReactorClock

    from twisted_raft.config import NodeConfig
    from twisted_raft.raft.config import RaftConfig
    from twisted_raft.service import RaftKVService
    from twisted_raft.storage.memory import MemoryStorage

    class Storage(MemoryStorage):
        def __init__(self, *a):
            super().__init__()

        def start(self):
            pass

    config = NodeConfig(
        1, [("127.0.0.1", 7001), ("127.0.0.1", 7002)], "unused", requestTimeout=7.0,
        leaderTimeout=1.5, retryDelay=0.2, maxTries=3, forwardTimeout=4.0,
        raft=RaftConfig(electionTimeout=(0.2, 0.4), heartbeatInterval=0.05),
    )
    svc = RaftKVService(config, reactor=MemoryReactorClock(), storageFactory=Storage,
                        exitOnFailure=False)
    svc.startService()
    try:
        f = svc.factory
        assert (f.requestTimeout, f.leaderTimeout, f.retryDelay, f.maxTries) == (7.0, 1.5, 0.2, 3)
        assert svc.transport.forwardTimeout == 4.0 and svc.transport.rpcTimeout == 0.2
        assert svc.node.config is config.raft
    finally:
        svc.stopService()


def test_service_refuses_a_foreign_data_dir():
    from twisted.internet import defer

    from twisted_raft.storage.errors import DataDirError
    from twisted_raft.storage.memory import MemoryStorage

    class Foreign(MemoryStorage):
        def __init__(self, *a):
            super().__init__()

        def start(self):
            pass

        def load(self):
            return defer.fail(DataDirError("data dir x belongs to node 2"))

    reactor, svc = _service(Foreign)
    svc.startService()
    assert svc.exitCode == 1
    assert reactor.tcpServers == []


def test_snapshot_flags():
    from twisted_raft.options import Options

    o = Options()
    o.parseOptions(["--id", "1", "--peers", "127.0.0.1:1,127.0.0.1:2,127.0.0.1:3", "--data", "d",
                    "--snapshot-entries", "1000", "--snapshot-bytes", "8MiB"])
    assert o["snapshot-entries"] == 1000 and o["snapshot-bytes"] == 8 * 1024 * 1024
    o = Options()
    o.parseOptions(["--id", "1", "--peers", "127.0.0.1:1", "--data", "d"])
    assert o["snapshot-entries"] == 50000 and o["snapshot-bytes"] == 64 * 1024 * 1024


@pytest.mark.parametrize("flag,value", [("--snapshot-entries", "0"), ("--snapshot-entries", "x"),
                                        ("--snapshot-bytes", "12XB"), ("--snapshot-bytes", "0")])
def test_bad_snapshot_flags(flag, value):
    from twisted_raft.options import Options

    with pytest.raises(usage.UsageError):
        Options().parseOptions(["--id", "1", "--peers", "127.0.0.1:1", "--data", "d", flag, value])


def test_node_tunes_the_garbage_collector():
    import gc

    from twisted_raft.service import tuneGarbageCollector

    before = gc.get_threshold()
    try:
        tuneGarbageCollector()
        assert gc.get_threshold()[0] == 50000
    finally:
        gc.set_threshold(*before)


# -- membership change: ID=HOST:PORT peers and --join ---------------------------


def test_peers_by_id():
    o = parse("--id", "7", "--peers", "7=127.0.0.1:7007, 2=[::1]:7002 ,10=h:1", "--data", "x")
    assert o["peers"] == {2: ("::1", 7002), 7: ("127.0.0.1", 7007), 10: ("h", 1)}
    assert o["listen"] == "tcp:7007:interface=127.0.0.1"
    assert o.config.peers == o["peers"] and not o.config.join
    assert o.config.bootstrap.voters == (2, 7, 10)


def test_positional_peers_are_unchanged():
    o = parse("--id", "2", "--peers", PEERS, "--data", "x")
    assert o["peers"] == [("127.0.0.1", 7001), ("127.0.0.1", 7002), ("127.0.0.1", 7003)]
    assert o.config.peers == {1: ("127.0.0.1", 7001), 2: ("127.0.0.1", 7002),
                              3: ("127.0.0.1", 7003)}
    assert o["join"] is False


def test_join_without_peers_needs_only_listen():
    o = parse("--id", "4", "--join", "--data", "x", "--listen", "tcp:7004")
    assert o["join"] is True and o["peers"] == {}
    assert o.config.join and len(o.config.bootstrap) == 0
    assert o["listen"] == "tcp:7004"


def test_join_with_peers_that_leave_this_node_out():
    o = parse("--id", "4", "--join", "--peers", PEERS, "--data", "x", "--listen", "tcp:7004")
    assert o.config.others == {1: ("127.0.0.1", 7001), 2: ("127.0.0.1", 7002),
                               3: ("127.0.0.1", 7003)}
    o = parse("--id", "4", "--join", "--peers", "1=a:1,4=b:4", "--data", "x")
    assert o["listen"] == "tcp:4:interface=b"  # its own entry


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--id", "1", "--peers", "1=a:1,b:2", "--data", "x"], "mixes"),
        (["--id", "1", "--peers", "a:1,2=b:2", "--data", "x"], "mixes"),
        (["--id", "1", "--peers", "1=a:1,1=b:2", "--data", "x"], "id 1 twice"),
        (["--id", "1", "--peers", "1=a:1,2=A:1", "--data", "x"], "twice"),
        (["--id", "1", "--peers", "1=a:1,x=b:2", "--data", "x"], "not an integer"),
        (["--id", "1", "--peers", "1=a:1,0=b:2", "--data", "x"], "not an integer"),
        (["--id", "1", "--peers", "1=a:1,=b:2", "--data", "x"], "not an integer"),
        (["--id", "1", "--peers", "1=a:1,2=b", "--data", "x"], "unparsable"),
        (["--id", "3", "--peers", "1=a:1,2=b:2", "--data", "x"], "not in --peers"),
        (["--id", "4", "--join", "--data", "x"], "--listen is required"),
        (["--id", "4", "--join", "--peers", PEERS, "--data", "x"], "--listen is required"),
        (["--id", "0", "--join", "--data", "x", "--listen", "tcp:1"], "out of range"),
        (["--id", "4", "--join", "--listen", "tcp:1"], "--data is required"),
        (["--id", "4", "--data", "x", "--listen", "tcp:1"], "--peers is required (unless --join)"),
    ],
)
def test_bad_membership_options(argv, message):
    with pytest.raises(usage.UsageError) as e:
        parse(*argv)
    assert message in str(e.value)


def test_twistd_refuses_a_join_without_an_address(tmp_path):
    """A bad combination exits non-zero with the usage message, from twistd too."""
    argv = launcher.nodeArgv(4, {}, str(tmp_path), runner=launcher.TWISTD, join=True)
    out = _run(argv[1:])
    assert out.returncode != 0
    assert "--listen is required" in out.stdout + out.stderr
