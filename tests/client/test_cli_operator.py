"""
Tests for the operator's side of the C{raftkv} command (issue 12): status
with pid and uptime, C{status --watch}, C{--version}, the help text, and
keys that are not UTF-8.
"""

import io
import json
import os
import re
import subprocess
import sys

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

import twisted_raft
from twisted_raft import cli
from twisted_raft.client import RaftKVClient
from twisted_raft.rpc.commands import InvalidArgument

from .test_cli import FakeClient, Out, _status, run

# -- status: pid and uptime --------------------------------------------------------


@pytest.mark.parametrize(
    "seconds, text",
    [(None, "-"), (0, "0s"), (59.9, "59s"), (60, "1m00s"), (3599, "59m59s"),
     (3600, "1h00m"), (86399, "23h59m"), (86400, "1d00h"), (10 * 86400 + 7200, "10d02h")],
)
def test_formatUptime(seconds, text):
    assert cli.formatUptime(seconds) == text


def test_statusJSONCarriesPidAndUptime():
    status = dict(_status(1, "leader"), pid=4242, uptime=12.5)
    code, out, err = run(["status", "--json"], FakeClient(status=[("h:1", status), ("h:2", None)]))
    assert code == 0
    nodes = json.loads(out)["nodes"]
    assert (nodes[0]["pid"], nodes[0]["uptime"]) == (4242, 12.5)
    assert nodes[1] == {"address": "h:2", "up": False}


def test_statusOfAnOlderNodeWithoutPid():
    """A node older than pid/uptime leaves them out: "-" in the table."""
    code, out, err = run(["status"], FakeClient(status=[("h:1", _status(1, "leader"))]))
    header, row = out.decode().splitlines()
    assert header.split()[-2:] == ["PID", "UPTIME"] and row.split()[-2:] == ["-", "-"]


# -- status --watch ---------------------------------------------------------------


class CountingClient(FakeClient):
    """Answers status with the number of the round as the term."""

    def __init__(self):
        super().__init__()
        self.rounds = 0

    def clusterStatus(self):
        self.rounds += 1
        self.answers["status"] = [("h:1", dict(_status(1, "leader"), term=self.rounds))]
        return super().clusterStatus()


def _watch(client, out, clock, asJSON=False, iterations=None):
    d = Deferred.fromCoroutine(cli.watchStatus(client, out, asJSON, clock, iterations))
    codes = []
    d.addCallback(codes.append)
    return codes


def test_watchAsksEverySecond():
    clock, client, out = Clock(), CountingClient(), Out()
    codes = _watch(client, out, clock, iterations=3)
    assert client.rounds == 1
    clock.advance(0.99)
    assert client.rounds == 1
    clock.advance(0.01)
    assert client.rounds == 2 and not codes
    clock.advance(1)
    assert client.rounds == 3 and codes == [cli.EXIT_OK]
    # not a terminal: no escape codes, each table after the last
    text = out.value().decode()
    assert "\x1b" not in text
    assert [b.splitlines()[1].split()[3] for b in text.split("\n\n")] == ["1", "2", "3"]


def test_watchRedrawsATerminal():
    clock, client, out = Clock(), CountingClient(), Out(tty=True)
    _watch(client, out, clock, iterations=2)
    clock.advance(1)
    text = out.value().decode()
    assert text.count(cli.CLEAR_SCREEN) == 2 and text.startswith(cli.CLEAR_SCREEN)


def test_watchJSONIsOneLinePerRound():
    clock, client, out = Clock(), CountingClient(), Out(tty=True)
    _watch(client, out, clock, asJSON=True, iterations=2)
    clock.advance(1)
    lines = out.value().decode().splitlines()
    assert [json.loads(line)["nodes"][0]["term"] for line in lines] == [1, 2]


def test_watchGoesOnWhenNoNodeAnswers():
    clock, out = Clock(), Out()
    client = FakeClient(status=[("h:1", None)])
    codes = _watch(client, out, clock, iterations=2)
    clock.advance(1)
    assert codes == [cli.EXIT_OK] and out.value().decode().count("down") == 2


def test_watchOption():
    assert cli.parseArgs(["status", "--watch"]).subOptions["watch"]
    assert cli.parseArgs(["status", "-w", "--json"]).subOptions["json"]
    assert not cli.parseArgs(["status"]).subOptions["watch"]


# -- keys that are not UTF-8 ------------------------------------------------------


def _client():
    return RaftKVClient(["127.0.0.1:1"], reactor=Clock(), timeout=1)


@pytest.mark.parametrize(
    "call",
    [
        lambda c, k: c.put(k, b"v"),
        lambda c, k: c.get(k),
        lambda c, k: c.delete(k),
        lambda c, k: c.compareAndSet(k, None, b"v"),
    ],
)
def test_clientRefusesAKeyThatIsNotUTF8(call):
    failures = []
    call(_client(), "a\udcff").addErrback(failures.append)
    assert failures and failures[0].check(InvalidArgument)
    assert str(failures[0].value) == "key is not UTF-8 text: b'a\\xff'"


def test_cliKeyThatIsNotUTF8IsOneLineInvalidArgument():
    """C{raftkv put $'\\xff' v}: argv holds a surrogate escape (PEP 383)."""
    out, err = Out(), io.StringIO()
    config = cli.parseArgs(["put", "\udcff", "v"])
    d = Deferred.fromCoroutine(cli.runCommand(config, _client(), out, err))
    codes = []
    d.addCallback(codes.append)
    assert codes == [cli.EXIT_INVALID_ARGUMENT]
    assert err.getvalue() == "error: INVALID_ARGUMENT: key is not UTF-8 text: b'\\xff'\n"
    assert out.value() == b""


def test_loneSurrogateKey():
    failures = []
    _client().get("\ud800x").addErrback(failures.append)
    assert failures[0].check(InvalidArgument)
    assert "\\ud800" in str(failures[0].value)


# -- --version and help -----------------------------------------------------------


def _main(argv, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    captured = capsys.readouterr()
    return e.value.code, captured.out, captured.err


def test_version(capsys):
    code, out, err = _main(["--version"], capsys)
    assert (code, out, err) == (0, f"raftkv {twisted_raft.__version__}\n", "")
    assert re.fullmatch(r"\d+\.\d+\.\d+\S*", twisted_raft.__version__)


def _helpSubcommands(text):
    """The subcommand names the "Commands:" part of C{raftkv --help} lists."""
    part = text.split("\nCommands:\n", 1)[1].split("\n\n", 1)[0]
    return [m.group(1) for m in re.finditer(r"^ {4}(\S+)", part, re.M)]


def test_helpListsEverySubcommand(capsys):
    code, out, err = _main(["--help"], capsys)
    assert code == 0
    listed = _helpSubcommands(out)
    real = [name for name, _, _, _ in cli.Options.subCommands]
    assert set(cli.OWN_OPTION_TOOLS) <= set(real)
    assert sorted(listed) == sorted(real)
    assert {"bench", "chaos", "sim", "cluster", "recover", "certs", "member"} <= set(listed)
    # the usage text lists them too
    for name in real:
        assert re.search(rf"^    raftkv {re.escape(name)}\b", out, re.M), name


def test_toolsAreDispatched():
    """Every tool help lists is one main() runs."""
    import importlib

    for name, module in cli.OWN_OPTION_TOOLS.items():
        assert callable(importlib.import_module(module).main), name


@pytest.mark.parametrize("argv", [
    ["--timeout", "1", "bench"],
    ["--cluster", "127.0.0.1:1", "sim", "--help"],
    ["--cluster", "127.0.0.1:1", "chaos", "--seconds", "1"],
    ["-t", "1", "sim", "--version"],
])
def test_toolsAfterGlobalOptionsAreAUsageError(argv, capsys, monkeypatch):
    """bench, chaos and sim parse their own options: global ones before
    them would be ignored (or the tool misrun), so they are refused, with
    neither a traceback-like error nor Twisted's help or version."""
    import importlib

    for module in cli.OWN_OPTION_TOOLS.values():
        monkeypatch.setattr(importlib.import_module(module), "main",
                            lambda argv: pytest.fail(f"a tool ran: {argv}"))
    monkeypatch.setattr("twisted.internet.task.react",
                        lambda *a: pytest.fail("a client command ran"))
    code, out, err = _main(argv, capsys)
    tool = next(a for a in argv if a in cli.OWN_OPTION_TOOLS)
    assert code == cli.EXIT_USAGE
    assert "Twisted" not in out + err and "Error" not in err
    assert f"raftkv {tool} [options]" in err
    assert out == ""


INTERNAL = re.compile(
    r"twisted_raft|python -m|\b(?!PySyncObj\b)[A-Z][a-z]+[A-Z]\w*\b|\b\w+\.py\b|\b_\w+"
    r"|C\{"
)
"""Module paths, CamelCase class names (PySyncObj, another project, is
not one), files, private names, epytext markup."""


def _helps(capsys):
    texts = [_main(["--help"], capsys)[1]]
    for name, _, _, _ in cli.Options.subCommands:
        texts.append(_main([name, "--help"], capsys)[1])
    for name in ("list", "add", "promote", "remove"):
        texts.append(_main(["member", name, "--help"], capsys)[1])
    for name in ("add", "remove", "stop", "restart"):
        texts.append(_main(["cluster", name, "--help"], capsys)[1])
    assert all(texts), "a --help printed nothing"
    return texts


def test_noInternalNamesInHelp(capsys):
    for text in _helps(capsys):
        found = INTERNAL.findall(text)
        assert not found, (found, text[:200])


def test_installedVersionIsThePackages():
    """setup.py takes the version from the package: one place for it."""
    from importlib.metadata import version

    assert version("raftkv") == twisted_raft.__version__


def test_a_reader_that_went_away_gets_no_traceback():
    # raftkv --help | head: the pipe's reader is gone before raftkv writes
    read, write = os.pipe()
    os.close(read)
    try:
        r = subprocess.run(
            [sys.executable, "-c", "from twisted_raft.cli import main; main(['--help'])"],
            stdout=write, stderr=subprocess.PIPE, text=True, timeout=60,
        )
    finally:
        os.close(write)
    assert r.returncode == 1
    assert "Traceback" not in r.stderr and "BrokenPipeError" not in r.stderr, r.stderr
