"""
Tests for the C{raftkv} command (L{twisted_raft.cli}) and the local cluster
launcher's pure parts (L{twisted_raft.tools.cluster}, L{twisted_raft.tools.launcher}).
"""

import io
import os
import sys

import pytest
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.task import Clock
from twisted.python import usage
from twisted.python.failure import Failure

from twisted_raft import cli
from twisted_raft.client import OutcomeUnknown
from twisted_raft.rpc.commands import (
    InvalidArgument,
    PermissionDenied,
    Unavailable,
    ValueTooLarge,
)
from twisted_raft.tools import cluster, launcher

# -- option parsing ---------------------------------------------------------------


def test_defaultCluster(monkeypatch):
    monkeypatch.delenv("RAFTKV_CLUSTER", raising=False)
    config = cli.parseArgs(["status"])
    assert config["cluster"] == ["127.0.0.1:8001", "127.0.0.1:8002", "127.0.0.1:8003"]
    assert config["timeout"] == 5.0


def test_clusterFromEnvironment(monkeypatch):
    monkeypatch.setenv("RAFTKV_CLUSTER", "10.0.0.1:9000,10.0.0.2:9000")
    assert cli.parseArgs(["status"])["cluster"] == ["10.0.0.1:9000", "10.0.0.2:9000"]
    config = cli.parseArgs(["--cluster", "h:1", "status"])
    assert config["cluster"] == ["h:1"]


def test_put():
    config = cli.parseArgs(["put", "k", "välue"])
    assert config.subCommand == "put"
    assert config.subOptions["key"] == "k"
    assert config.subOptions["value"] == "välue".encode("utf-8")
    config = cli.parseArgs(["put", "k", "--file", "/tmp/x"])
    assert config.subOptions["value"] is None and config.subOptions["file"] == "/tmp/x"


def test_putDashValue():
    config = cli.parseArgs(["put", "--", "k", "-5"])
    assert config.subOptions["value"] == b"-5"


def test_getStaleAfterKey():
    config = cli.parseArgs(["get", "k", "--stale"])
    assert config.subOptions["key"] == "k" and config.subOptions["stale"]
    assert not cli.parseArgs(["get", "k"]).subOptions["stale"]


def test_cas():
    sub = cli.parseArgs(["cas", "k", "old", "new"]).subOptions
    assert (sub["key"], sub["expected"], sub["value"]) == ("k", b"old", b"new")
    sub = cli.parseArgs(["cas", "--absent", "k", "new"]).subOptions
    assert (sub["key"], sub["expected"], sub["value"]) == ("k", None, b"new")
    sub = cli.parseArgs(["cas", "k", "new", "--absent"]).subOptions
    assert sub["expected"] is None


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["frobnicate"],
        ["get"],
        ["get", "a", "b", "c"],  # (get KEY END is a range since issue 13)
        ["put", "k"],
        ["put", "k", "v", "--file", "f"],
        ["cas", "k", "new"],
        ["cas", "--absent", "k", "old", "new"],
        ["delete"],
        ["get", "k", "--nope"],
        ["--cluster", "nohost", "status"],
        ["--timeout", "0", "status"],
        ["cluster", "--nodes", "0"],
    ],
)
def test_badUsage(argv):
    with pytest.raises(usage.UsageError):
        cli.parseArgs(argv)


def test_mainBadUsageExits2(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["get"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "Usage: raftkv" in err and "error:" in err


def test_clusterOptions():
    sub = cli.parseArgs(["cluster", "--nodes", "5", "--base-port", "9001", "--data", "/tmp/d"]).subOptions
    assert (sub["nodes"], sub["base-port"], sub["data"], sub["election-timeout"]) == (5, 9001, "/tmp/d", None)
    assert sub["extra"] == []
    sub = cli.parseArgs(["cluster", "-e", "300-550", "--", "--foo", "bar"]).subOptions
    assert sub["election-timeout"] == "300-550" and sub["extra"] == ["--foo", "bar"]


# -- status table ----------------------------------------------------------------


def _status(nodeId, role, leader=1, voter=True, config=4):
    return {
        "node_id": nodeId, "role": role, "term": 7, "leader_id": leader,
        "commit_index": 120, "last_applied": 119, "last_log_index": 121,
        "voter": voter, "config_revision": config,
    }


def test_statusTable():
    rows = [
        ("127.0.0.1:8001", _status(1, "leader")),
        ("127.0.0.1:8002", None),
        ("127.0.0.1:8003", _status(3, "candidate", leader=0)),
        ("127.0.0.1:8004", _status(4, "follower", voter=False, config=12)),
        ("127.0.0.1:8005", _status(5, "follower", voter=None, config=None)),  # an older node
    ]
    rows[0][1].update(pid=4242, uptime=3725.9)
    rows[2][1].update(pid=77, uptime=59.99)
    rows[3][1].update(pid=78, uptime=90061.0)
    assert cli.formatStatusTable(rows).splitlines() == [
        "ID  ADDRESS         ROLE       TERM  LEADER  COMMIT  APPLIED  LOG  VOTER  CONFIG  PID   UPTIME",
        "1   127.0.0.1:8001  leader     7     1       120     119      121  yes    4       4242  1h02m",
        "-   127.0.0.1:8002  down",
        "3   127.0.0.1:8003  candidate  7     none    120     119      121  yes    4       77    59s",
        "4   127.0.0.1:8004  follower   7     1       120     119      121  no     12      78    1d01h",
        "5   127.0.0.1:8005  follower   7     1       120     119      121  -      -       -     -",
    ]


# -- running commands against a fake client ------------------------------------------------


class FakeClient:
    def __init__(self, **answers):
        self.answers = answers
        self.calls = []

    def _answer(self, name, *args):
        self.calls.append((name,) + args)
        answer = self.answers[name]
        if isinstance(answer, Exception):
            return fail(answer)
        return succeed(answer)

    def put(self, key, value):
        return self._answer("put", key, value)

    def get(self, key, stale=False):
        return self._answer("get", key, stale)

    def delete(self, key):
        return self._answer("delete", key)

    def compareAndSet(self, key, expected, value):
        return self._answer("cas", key, expected, value)

    def clusterStatus(self):
        return self._answer("status")


class Out(io.TextIOWrapper):
    def __init__(self, tty=False):
        super().__init__(io.BytesIO(), encoding="utf-8", write_through=True)
        self.tty = tty

    def isatty(self):
        return self.tty

    def value(self):
        self.flush()
        return self.buffer.getvalue()


def run(argv, client, stdin=None, tty=False):
    out, err = Out(tty), io.StringIO()
    d = Deferred.fromCoroutine(cli.runCommand(cli.parseArgs(argv), client, out, err, stdin))
    codes = []
    d.addBoth(codes.append)
    assert codes, "runCommand did not finish"
    return codes[0], out.value(), err.getvalue()


def test_runPut():
    client = FakeClient(put=42)
    assert run(["put", "k", "v"], client) == (0, b"42\n", "")
    assert client.calls == [("put", "k", b"v")]


def test_runPutFile(tmp_path):
    path = tmp_path / "value"
    path.write_bytes(b"\x00\xff binary")
    client = FakeClient(put=1)
    assert run(["put", "k", "--file", str(path)], client)[0] == 0
    assert client.calls == [("put", "k", b"\x00\xff binary")]
    stdin = io.TextIOWrapper(io.BytesIO(b"from stdin"))
    assert run(["put", "k", "--file", "-"], client, stdin=stdin)[0] == 0
    assert client.calls[-1] == ("put", "k", b"from stdin")


def test_runPutMissingFile(tmp_path):
    code, out, err = run(["put", "k", "--file", str(tmp_path / "nope")], FakeClient(put=1))
    assert code == cli.EXIT_ERROR and err.startswith("error: FileNotFoundError")


def test_runGet():
    assert run(["get", "k"], FakeClient(get=b"\x00raw")) == (0, b"\x00raw", "")
    assert run(["get", "k"], FakeClient(get=b"v"), tty=True) == (0, b"v\n", "")
    client = FakeClient(get=b"v")
    run(["get", "k", "--stale"], client)
    assert client.calls == [("get", "k", True)]


def test_runGetNotFound():
    assert run(["get", "k"], FakeClient(get=None)) == (1, b"", "not found\n")


def test_runDelete():
    assert run(["delete", "k"], FakeClient(delete=(True, 9))) == (0, b"9\n", "")
    # a failed delete prints no revision: only a change has one to report
    assert run(["delete", "k"], FakeClient(delete=(False, 9))) == (1, b"", "not found\n")


def test_runCas():
    client = FakeClient(cas=(True, 3))
    assert run(["cas", "--absent", "k", "v"], client) == (0, b"3\n", "")
    assert client.calls == [("cas", "k", None, b"v")]
    code, out, err = run(["cas", "k", "a", "b"], FakeClient(cas=(False, 3)))
    assert (code, out) == (1, b"") and err == "compare failed: value differs or key missing\n"
    code, out, err = run(["cas", "--absent", "k", "b"], FakeClient(cas=(False, 3)))
    assert (code, out, err) == (1, b"", "compare failed: key exists\n")


def test_runStatus():
    rows = [("127.0.0.1:8001", _status(1, "leader")), ("127.0.0.1:8002", None)]
    code, out, err = run(["status"], FakeClient(status=rows))
    assert code == 0 and b"down" in out and b"leader" in out
    code, out, err = run(["status"], FakeClient(status=[("127.0.0.1:8001", None)]))
    assert code == cli.EXIT_UNAVAILABLE and "UNAVAILABLE" in err


@pytest.mark.parametrize(
    "error, code, prefix",
    [
        (Unavailable("not proposed: no leader"), 3, "error: UNAVAILABLE: not proposed: no leader"),
        (OutcomeUnknown("outcome unknown: boom"), 4, "error: UNAVAILABLE: outcome unknown: boom"),
        (InvalidArgument("empty key"), 5, "error: INVALID_ARGUMENT: empty key"),
        (ValueTooLarge("2000000 bytes"), 6, "error: VALUE_TOO_LARGE: 2000000 bytes"),
        (PermissionDenied("no"), 7, "error: PERMISSION_DENIED: no"),
        (RuntimeError("oops"), 7, "error: RuntimeError: oops"),
    ],
)
def test_runErrors(error, code, prefix):
    assert run(["put", "k", "v"], FakeClient(put=error)) == (code, b"", prefix + "\n")


def test_cliClientUsesSessions():
    """Writes from the command line are exactly-once within the process."""
    from twisted.internet.task import Clock

    config = cli.parseArgs(["--cluster", "h:1,h:2", "--timeout", "3", "put", "k", "v"])
    client = cli.makeClient(config, Clock())
    assert client.sessions and client.clientId and client.sequence == 0
    assert client.addresses == ["h:1", "h:2"] and client.timeout == 3.0


def test_exitCodesAreDistinct():
    codes = [
        cli.EXIT_OK, cli.EXIT_NEGATIVE, cli.EXIT_USAGE, cli.EXIT_UNAVAILABLE,
        cli.EXIT_OUTCOME_UNKNOWN, cli.EXIT_INVALID_ARGUMENT, cli.EXIT_VALUE_TOO_LARGE, cli.EXIT_ERROR,
        cli.EXIT_CHANGE_IN_PROGRESS, cli.EXIT_NOT_CAUGHT_UP, cli.EXIT_TRANSFER_FAILED,
    ]
    assert len(set(codes)) == len(codes) == len(cli.EXIT_CODES)
    # new codes go at the end of the table, never renumbered
    assert codes == list(range(len(codes)))


# -- cluster launcher ---------------------------------------------------------------


def test_peerAddresses():
    assert launcher.peerAddresses(3, 8001) == ["127.0.0.1:8001", "127.0.0.1:8002", "127.0.0.1:8003"]


def test_nodeArgv():
    peers = launcher.peerAddresses(3, 8001)
    argv = launcher.nodeArgv(2, peers, "/d", python="/py")
    assert argv == [
        "/py", "-m", "twisted", "--log-format=text", "raftkv",
        "--id", "2", "--peers", "127.0.0.1:8001,127.0.0.1:8002,127.0.0.1:8003",
        "--data", os.path.join("/d", "n2"),
    ]
    argv = launcher.nodeArgv(1, peers, "/d", electionTimeout="300", extra=["--x"])
    assert argv[0] == sys.executable
    assert argv[-3:] == ["--election-timeout", "300", "--x"]


def test_nodeArgv_of_a_joining_node():
    argv = launcher.nodeArgv(5, {1: "127.0.0.1:8001", 5: "127.0.0.1:8005"}, "/d",
                             python="/py", join=True)
    assert argv == [
        "/py", "-m", "twisted", "--log-format=text", "raftkv",
        "--id", "5", "--join", "--peers", "1=127.0.0.1:8001,5=127.0.0.1:8005",
        "--data", os.path.join("/d", "n5"),
    ]
    argv = launcher.nodeArgv(5, {}, "/d", python="/py", join=True, listen="tcp:8005")
    assert "--peers" not in argv
    assert argv[-4:] == ["--data", os.path.join("/d", "n5"), "--listen", "tcp:8005"]


def test_banner():
    text = cluster.banner(launcher.peerAddresses(3, 8001))
    assert "raftkv put hello world" in text and "RAFTKV_CLUSTER" not in text
    text = cluster.banner(launcher.peerAddresses(2, 9001))
    assert "RAFTKV_CLUSTER=127.0.0.1:9001,127.0.0.1:9002 raftkv get hello" in text


def test_nodeOutputGoesToLogAndImportantLinesAreEchoed():
    log, echoed = io.BytesIO(), []
    log.close = lambda: None
    proc = cluster.NodeProcess("n1", log, echoed.append)
    proc.outReceived(b"2024 [-] boring line\n2024 [raft] became leader term=3\npart")
    proc.errReceived(b"Traceback (most recent call last):\n")
    proc.outReceived(b"ial\n")
    assert log.getvalue().count(b"\n") == 4
    assert echoed == ["[n1] 2024 [raft] became leader term=3", "[n1] Traceback (most recent call last):"]
    assert list(proc.tail)[-1] == "partial"


def test_unexpectedDeathIsReported():
    echoed = []
    c = cluster.LocalCluster(reactor=None, nodes=2, echo=echoed.append)
    procs = []
    for i in (1, 2):
        p = cluster.NodeProcess(f"n{i}", None, echoed.append)
        p.nodeId = i
        p.onEnded = c._ended
        p.running = True
        procs.append(p)
    c.processes = procs
    procs[1].processEnded(Failure(ProcessTerminated(exitCode=1)))
    assert any("n2 (127.0.0.1:8002) died: exited with status 1" in line for line in echoed)
    assert not c.finished.called
    procs[0].outReceived(b"Error: Unknown command: raftkv\n")
    procs[0].processEnded(Failure(ProcessDone(0)))
    assert any("plugin was not found" in line for line in echoed)
    failures = []
    c.finished.addErrback(failures.append)
    assert failures and failures[0].check(SystemExit)


@pytest.mark.parametrize("tool", ["chaos", "sim"])
def test_tools_are_subcommands(tool, capsys):
    with pytest.raises(SystemExit) as exited:
        cli.main([tool, "--nodes", "0" if tool == "sim" else "x"])
    assert exited.value.code == 2
    assert "error:" in capsys.readouterr().err


# -- TLS options ---------------------------------------------------------------------

TLS_VARIABLES = ("RAFTKV_TLS_CA", "RAFTKV_TLS_CERT", "RAFTKV_TLS_KEY")


@pytest.fixture
def noTLSEnvironment(monkeypatch):
    for name in TLS_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_noTLSByDefault(noTLSEnvironment):
    assert cli.parseArgs(["status"])["tls"] is None


def test_tlsFlags(noTLSEnvironment):
    config = cli.parseArgs(["--tls-ca", "ca.pem", "--tls-cert", "me.pem", "--tls-key", "me-key.pem",
                            "get", "k"])
    files = config["tls"]
    assert (files.ca, files.cert, files.key) == ("ca.pem", "me.pem", "me-key.pem")


def test_tlsFromEnvironment(noTLSEnvironment):
    env = noTLSEnvironment
    for name, value in zip(TLS_VARIABLES, ("/e/ca.pem", "/e/c.pem", "/e/k.pem")):
        env.setenv(name, value)
    files = cli.parseArgs(["status"])["tls"]
    assert (files.ca, files.cert, files.key) == ("/e/ca.pem", "/e/c.pem", "/e/k.pem")
    # a flag wins over its variable, one by one
    files = cli.parseArgs(["--tls-cert", "mine.pem", "status"])["tls"]
    assert (files.ca, files.cert, files.key) == ("/e/ca.pem", "mine.pem", "/e/k.pem")


@pytest.mark.parametrize("argv, env", [
    (["--tls-ca", "ca.pem", "status"], {}),
    (["--tls-ca", "ca.pem", "--tls-cert", "c.pem", "put", "k", "v"], {}),
    (["status"], {"RAFTKV_TLS_KEY": "k.pem"}),
    (["--tls-cert", "c.pem", "--tls-key", "k.pem", "status"], {"RAFTKV_TLS_CA": ""}),
])
def test_tlsAllOrNone(argv, env, noTLSEnvironment, capsys):
    for name, value in env.items():
        noTLSEnvironment.setenv(name, value)
    with pytest.raises(usage.UsageError) as e:
        cli.parseArgs(argv)
    assert "--tls-ca, --tls-cert and --tls-key together" in str(e.value)
    assert "missing: --tls-" in str(e.value)
    with pytest.raises(SystemExit) as exited:
        cli.main(argv)
    assert exited.value.code == cli.EXIT_USAGE
    assert "together" in capsys.readouterr().err


def test_tlsNotForTools(noTLSEnvironment):
    """A half-set TLS environment does not stop raftkv certs or cluster."""
    noTLSEnvironment.setenv("RAFTKV_TLS_CA", "ca.pem")
    assert cli.parseArgs(["certs", "d", "--nodes", "1"])["tls"] is None
    assert cli.parseArgs(["cluster"])["tls"] is None


def test_badTLSFilesExit2(noTLSEnvironment, tmp_path, capsys):
    """Unusable TLS files: a clear message naming the file, exit 2, nothing sent."""
    from twisted_raft.tools.certs import makeCertificates

    d = str(tmp_path)
    makeCertificates(d, 0, clients=["alice"])
    key = os.path.join(d, "alice-key.pem")
    os.unlink(key)
    with pytest.raises(SystemExit) as exited:
        cli.main(["--cluster", "127.0.0.1:1", "--tls-ca", os.path.join(d, "ca.pem"),
                  "--tls-cert", os.path.join(d, "alice.pem"), "--tls-key", key, "status"])
    assert exited.value.code == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert err.startswith("error: TLS: ") and key in err and "cannot read" in err


def test_makeClientWithTLS(noTLSEnvironment, tmp_path):
    from twisted_raft.tools.certs import makeCertificates

    d = str(tmp_path)
    makeCertificates(d, 0, clients=["alice"])
    config = cli.parseArgs([
        "--tls-ca", os.path.join(d, "ca.pem"), "--tls-cert", os.path.join(d, "alice.pem"),
        "--tls-key", os.path.join(d, "alice-key.pem"), "status",
    ])
    tls = cli.loadTLS(config)
    assert tls.commonName == "alice"
    assert cli.makeClient(config, Clock(), tls)._pool.tls is tls
    assert cli.makeClient(cli.parseArgs(["status"]), Clock())._pool.tls is None
    assert cli.loadTLS(cli.parseArgs(["status"])) is None
