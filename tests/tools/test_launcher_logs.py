"""
The launcher's start line in a node's log (L{launcher.logStart}): text for a
text log, a JSON line of the node's own shape for a C{--log-format json}
log, found by L{launcher.isStartLine} either way and always a line of its
own; and the count of starts a node keeps (its lifetime).
"""

import json
import sys

import pytest_twisted

from twisted_raft.logs import eventAsLine
from twisted_raft.tools import launcher

TEXT = ["python", "-m", "twisted", "--log-format=text", "raftkv", "--id", "3"]


def test_the_plugins_log_format_counts_not_twists():
    assert launcher.logFormat(TEXT) == "text"
    assert launcher.logFormat(TEXT + ["--log-format", "json"]) == "json"
    assert launcher.logFormat(TEXT + ["--log-format=JSON"]) == "json"
    assert launcher.logFormat(TEXT + ["--log-format", "json", "--log-format", "text"]) == "text"
    assert launcher.logFormat(["python", "-m", "twisted", "--log-format=json", "raftkv"]) == "text"
    argv = launcher.nodeArgv(2, ["127.0.0.1:1", "127.0.0.1:2"], "/d", extra=["--log-format",
                                                                               "json"])
    assert launcher.logFormat(argv) == "json"


def test_start_lines_text_and_json(tmp_path):
    path = tmp_path / "n3.log"
    js = TEXT + ["--log-format", "json"]
    with open(path, "ab") as log:
        launcher.logStart(log, TEXT)
        launcher.logStart(log, js)
        log.write(b'{"time": "2024')  # a line the process did not finish
        log.flush()
        launcher.logStart(log, TEXT + ["--log-format=json"])
    lines = path.read_bytes().split(b"\n")
    assert len(lines) == 5 and lines[-1] == b""
    assert lines[0].startswith(b"==== ") and launcher.isStartLine(lines[0])
    first = json.loads(lines[1])
    assert first["event"] == launcher.START_EVENT and first["node_id"] == 3
    assert first["level"] == "info" and first["message"] == "starting: " + " ".join(js)
    assert first["argv"] == js and launcher.isStartLine(lines[1])
    assert lines[2] == b'{"time": "2024' and not launcher.isStartLine(lines[2])
    assert launcher.isStartLine(lines[3].decode())
    # a node's own line that mentions starting is not one
    other = eventAsLine({"log_format": "starting: {x}", "x": launcher.START_EVENT,
                         "log_time": 0.0}, 3)
    assert not launcher.isStartLine(other) and not launcher.isStartLine(b"starting: x")


@pytest_twisted.inlineCallbacks
def test_a_spawned_node_counts_its_starts(tmp_path):
    from twisted.internet import reactor

    log = tmp_path / "n1.log"
    argv = [sys.executable, "-c", "print('{\"not\": \"finished\"', end='')", "raftkv", "--id",
            "1", "--log-format", "json"]
    node = launcher.SpawnedNode(reactor, 1, argv, str(log), str(tmp_path))
    assert node.starts == 0
    node.start()
    yield node.ended
    node.start()
    yield node.ended
    assert node.starts == 2
    lines = log.read_bytes().split(b"\n")
    # each start line on a line of its own, after what the last run left
    assert [launcher.isStartLine(line) for line in lines] == [True, False, True, False]


def test_a_process_node_counts_its_starts(tmp_path):
    argv = [sys.executable, "-c", "pass", "raftkv", "--id", "1"]
    node = launcher.ProcessNode(argv, str(tmp_path / "n1.log"), str(tmp_path))
    assert node.starts == 0
    node.start().proc.wait()
    node.start().proc.wait()
    assert node.starts == 2
