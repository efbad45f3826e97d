"""
C{raftkv watch} (L{twisted_raft.cli}): options, the output of each event
(JSON and text), COMPACTED's line and exit status, resuming on another node;
against real node protocols over in-memory AMP (L{tests.kvsupport.Followers}).
"""

import base64
import io
import json

import pytest
from twisted.internet.defer import Deferred
from twisted.python import usage

from twisted_raft import cli, kv
from twisted_raft.kvrecords import DELETE_EVENT, PUT_EVENT, Event
from twisted_raft.kvtxn import Delete, Put, Txn

from tests.kvsupport import Followers


class Out(io.StringIO):
    def isatty(self):
        return False


def start(nodes, argv):
    """Run C{raftkv watch ...} against C{nodes}: (Deferred exit code, stdout, stderr)."""
    config = cli.parseArgs(argv)
    client = nodes.newClient()
    stdout, stderr = Out(), Out()
    d = Deferred.fromCoroutine(cli.runCommand(config, client, stdout, stderr))
    nodes.flush()
    return d, stdout, stderr, client


def lines(out):
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_watch_options():
    sub = cli.parseArgs(["watch", "k"]).subOptions
    assert (sub["key"], sub["prefix"], sub["rev"], sub["json"]) == ("k", False, None, False)
    sub = cli.parseArgs(["watch", "k/", "--prefix", "--rev", "7", "--json"]).subOptions
    assert (sub["key"], sub["prefix"], sub["rev"], sub["json"]) == ("k/", True, 7, True)
    assert cli.parseArgs(["watch", "", "--prefix"]).subOptions["key"] == ""


@pytest.mark.parametrize("argv", [
    ["watch"], ["watch", "a", "b"], ["watch", "k", "--rev", "0"], ["watch", "k", "--rev", "x"],
    ["watch", ""],
])
def test_bad_watch_options_are_usage_errors(argv):
    with pytest.raises(usage.UsageError):
        cli.parseArgs(argv)


def test_json_lines_in_the_issues_shape():
    nodes = Followers()
    nodes.apply(kv.encodeMetadataEpoch())  # transactions apply only after it
    nodes.put("a/x", b"old")
    d, out, err, _ = start(nodes, ["watch", "a/", "--prefix", "--json"])
    nodes.put("a/x", b"\x00\xff")
    nodes.put("b", b"no")
    nodes.apply(kv.encodeTxn(Txn(success=[Put("a/y", b"1"), Delete("a/x")])))
    nodes.flush()
    assert lines(out) == [
        {"type": "put", "key": "a/x", "value": base64.b64encode(b"\x00\xff").decode(),
         "create_revision": 2, "mod_revision": 3, "version": 2},
        {"type": "put", "key": "a/y", "value": "MQ==", "create_revision": 5,
         "mod_revision": 5, "version": 1},
        {"type": "delete", "key": "a/x", "mod_revision": 5},
    ]
    assert not d.called and err.getvalue() == ""


def test_text_lines_are_one_per_event_and_escaped():
    assert cli.formatEvent(Event(PUT_EVENT, "k", b"hello", 3, 5, 2)) == (
        "put k = hello  (revision 5, created 3, version 2)"
    )
    assert cli.formatEvent(Event(PUT_EVENT, "a\nb", b'x"\n\xff', 1, 1, 1)) == (
        'put a\\nb = x\\"\\n\\\\xff  (revision 1, created 1, version 1)'
    )
    assert cli.formatEvent(Event(DELETE_EVENT, "k", None, 0, 9, 0)) == "delete k  (revision 9)"


def test_from_a_revision_then_on_through_a_killed_node():
    nodes = Followers()
    for i in range(3):
        nodes.put("k", str(i).encode())
    d, out, err, _ = start(nodes, ["watch", "k", "--rev", "2"])
    nodes.put("k", b"3")
    nodes.flush()
    nodes.kill(0)
    nodes.put("k", b"4")
    nodes.runFor(1.0)
    assert out.getvalue().splitlines() == [
        f"put k = {i}  (revision {i + 1}, created 1, version {i + 1})" for i in range(1, 5)
    ]
    assert not d.called


def test_compacted_prints_its_line_and_exits_8():
    nodes = Followers(historyEvents=4)
    for _ in range(20):
        nodes.put("k")
    d, out, err, _ = start(nodes, ["watch", "k", "--rev", "1", "--json"])
    nodes.runFor(1.0)
    oldest = min(s.history.oldestRevision for s in nodes.stores)
    assert d.result == cli.EXIT_COMPACTED == 8
    assert lines(out) == [{"error": "COMPACTED", "compact_revision": oldest}]
    assert err.getvalue() == ""
    # --rev N works
    d, out, err, _ = start(nodes, ["watch", "k", "--rev", str(oldest), "--json"])
    nodes.flush()
    assert not d.called and lines(out)[0]["mod_revision"] == oldest


def test_compacted_without_json_says_so_on_stderr_too():
    nodes = Followers(historyEvents=4)
    for _ in range(20):
        nodes.put("k")
    d, out, err, _ = start(nodes, ["watch", "k", "--rev", "1"])
    nodes.runFor(1.0)
    assert d.result == 8
    assert json.loads(out.getvalue())["error"] == "COMPACTED"
    assert err.getvalue().startswith("error: COMPACTED: ")


def test_an_invalid_watch_is_its_exit_code():
    nodes = Followers()
    d, out, err, _ = start(nodes, ["watch", "k" * 5000])
    nodes.flush()
    assert d.result == cli.EXIT_INVALID_ARGUMENT
    assert err.getvalue().startswith("error: INVALID_ARGUMENT: ")
