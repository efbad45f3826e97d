"""
The node's log observer (L{twisted_raft.logs}): JSON lines, the level
filter, per-connection noise at debug, the flags, and how each runner gets
the observer.
"""

import io
import json
import math

import pytest
from twisted.application.service import Application
from twisted.internet.testing import StringTransport
from twisted.logger import ILogObserver, LogLevel, Logger, LogPublisher, globalLogPublisher
from twisted.protocols import amp
from twisted.python import usage
from twisted.python.failure import Failure

from twisted_raft import logs
from twisted_raft.options import Options

PEERS = "127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003"


def emitted(observer, emit):
    """Publish what C{emit(log)} logs to C{observer} only."""
    publisher = LogPublisher(observer)
    emit(Logger(namespace="test.logs", observer=publisher))


def jsonLines(level="debug", emit=None):
    out = io.StringIO()
    emitted(logs.nodeObserver(out, "json", level, 7), emit)
    text = out.getvalue()
    assert text.endswith("\n") or not text
    return [json.loads(line) for line in text.splitlines()]


class Odd:
    def __repr__(self):
        return "<odd thing>"


def test_every_line_is_one_json_object_with_the_required_keys():
    def emit(log):
        log.info("node {nodeId} became leader for term {term}", raftkv_event="role_change",
                 nodeId=7, term=3, **{"from": "candidate", "to": "leader"})
        log.warn("two\nlines of text", count=2)
        log.debug("quiet")

    lines = jsonLines(emit=emit)
    assert len(lines) == 3
    for line in lines:
        for key in ("time", "level", "node_id", "event", "message"):
            assert key in line
        assert line["node_id"] == 7
        assert line["time"].endswith("Z") and "T" in line["time"]
    first, second, third = lines
    assert first["event"] == "role_change"
    assert first["message"] == "node 7 became leader for term 3"
    assert (first["from"], first["to"], first["term"], first["level"]) == (
        "candidate", "leader", 3, "info")
    assert "raftkv_event" not in first and not any(k.startswith("log_") for k in first)
    assert second["event"] == logs.GENERIC_EVENT
    assert (second["level"], second["message"], second["count"]) == ("warn", "two\nlines of text", 2)
    assert third["level"] == "debug"


def test_fields_json_cannot_encode_become_their_text():
    def emit(log):
        log.info("odd", thing=Odd(), data=b"\xff", nan=math.nan, ids={3, 1, 2},
                 tupleKeys={(1, 2): "x"}, error=ValueError("bad value"))

    [line] = jsonLines(emit=emit)
    assert line["thing"] == "<odd thing>"
    assert line["data"] == "b'\\xff'"
    assert line["nan"] == "nan"
    assert line["ids"] == [1, 2, 3]
    assert line["tupleKeys"] == "{(1, 2): 'x'}"
    assert line["error"] == "bad value"


def test_own_fields_named_like_the_output_keys_are_kept_apart():
    def emit(log):
        # Logger.info would take "level" itself: publish the event as it is.
        log.observer({"log_format": "clash", "log_level": LogLevel.info, "log_time": 0.0,
                      "log_namespace": "test.logs",
                      "time": "noon", "level": "high", "message": "m", "event": "e"})

    [line] = jsonLines(emit=emit)
    assert line["message"] == "clash" and line["event"] == logs.GENERIC_EVENT
    assert line["level"] == "info" and line["time"].endswith("Z")
    assert (line["field_time"], line["field_level"], line["field_message"], line["field_event"]) == (
        "noon", "high", "m", "e")


def test_a_failure_carries_its_traceback_in_one_field():
    def emit(log):
        try:
            1 / 0
        except ZeroDivisionError:
            log.failure("applying entry {index} failed", raftkv_event="apply_failed", index=4)

    [line] = jsonLines(emit=emit)
    assert line["level"] == "critical" and line["event"] == "apply_failed"
    assert line["message"] == "applying entry 4 failed"
    assert "ZeroDivisionError" in line["failure"] and "Traceback" in line["failure"]


def test_a_bad_format_still_gives_a_parsable_line():
    def emit(log):
        log.info("missing {field}")

    [line] = jsonLines(emit=emit)
    assert "Unable to format event" in line["message"]


def test_legacy_events_lose_their_legacy_keys():
    from twisted.python import log as legacy

    out = io.StringIO()
    observer = logs.nodeObserver(out, "json", "info", 1)
    globalLogPublisher.addObserver(observer)
    try:
        legacy.msg("TCP Port %d Closed" % 7001)
    finally:
        globalLogPublisher.removeObserver(observer)
    [line] = [json.loads(t) for t in out.getvalue().splitlines() if "7001" in t]
    assert line["message"] == "TCP Port 7001 Closed"
    assert line["level"] == "info" and line["event"] == logs.GENERIC_EVENT
    assert not {"isError", "system", "field_message", "field_time"} & set(line)


@pytest.mark.parametrize("level, seen", [
    ("debug", ["debug", "info", "warn", "error", "critical"]),
    ("info", ["info", "warn", "error", "critical"]),
    ("warn", ["warn", "error", "critical"]),
    ("error", ["error", "critical"]),
])
@pytest.mark.parametrize("fmt", ["json", "text"])
def test_the_level_filter(level, seen, fmt):
    out = io.StringIO()

    def emit(log):
        for name in ("debug", "info", "warn", "error", "critical"):
            getattr(log, name)("a {name} line", name=name)

    emitted(logs.nodeObserver(out, fmt, level, 1), emit)
    lines = out.getvalue().splitlines()
    if fmt == "json":
        assert [json.loads(t)["level"] for t in lines] == seen
    else:
        assert [t.split("#", 1)[1].split("]")[0] for t in lines] == seen
        assert all(f"a {name} line" in t for name, t in zip(seen, lines))


def test_text_keeps_twisteds_look():
    out = io.StringIO()
    emitted(logs.nodeObserver(out, "text", "info", 1),
            lambda log: log.info("node {n} started", n=1))
    [line] = out.getvalue().splitlines()
    assert line.endswith(" [test.logs#info] node 1 started")


def loggedBy(act):
    """What Twisted logs while C{act()} runs."""
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        act()
    finally:
        globalLogPublisher.removeObserver(events.append)
    return events


def connectionEvents():
    """What amp.AMP logs for one connection made and lost."""

    def act():
        proto = amp.AMP()
        proto.makeConnection(StringTransport())
        proto.connectionLost(Failure(ConnectionError("bye")))

    return [e for e in loggedBy(act)
            if e.get("log_namespace") in ("twisted.protocols.amp", "log_legacy")]


def httpTimeoutEvents():
    """What twisted.web logs when it times out an idle client, then forcibly."""
    from twisted.web import http

    def act():
        channel = http.HTTPChannel()
        channel.makeConnection(StringTransport())
        channel.timeoutConnection()
        channel.forceAbortClient()

    return loggedBy(act)


def legacyEvents():
    """The same lines as Twisted 24.3 logs them (C{log.msg}, one text)."""
    from twisted.python import log

    def act():
        log.msg("AMP connection established (HOST:IPv4Address(type='TCP',"
                " host='127.0.0.1', port=8001) PEER:IPv4Address(type='TCP',"
                " host='127.0.0.1', port=40000))")
        log.msg("NodeProtocol connection lost (HOST:x PEER:y)")
        log.msg("Timing out client: IPv4Address(type='TCP', host='127.0.0.1', port=1)")

    return loggedBy(act)


def test_twisteds_per_connection_lines_are_recognised():
    # If Twisted rewords them, this fails (and they would be back at info).
    for events, count in [(connectionEvents(), 2), (httpTimeoutEvents(), 2),
                          (legacyEvents(), 3)]:
        assert len(events) == count, events
        assert all(logs.isConnectionNoise(e) for e in events), events


def test_other_lines_are_not_noise():
    from twisted.python import log

    def act():
        log.msg("NodeServerFactory starting on 8001")
        log.msg("AMP connection established (HOST:x PEER:y) and then some")
        log.err(ConnectionError("AMP connection lost (HOST:x PEER:y)"))
        Logger(namespace="twisted.protocols.amp").info("something else {x}", x=1)

    events = loggedBy(act)
    assert len(events) == 4
    assert not [e for e in events if logs.isConnectionNoise(e)]


@pytest.mark.parametrize("level, count", [("info", 0), ("debug", 7)])
def test_per_connection_lines_are_debug(level, count):
    out = io.StringIO()
    observer = logs.nodeObserver(out, "json", level, 1)
    for event in connectionEvents() + httpTimeoutEvents() + legacyEvents():
        observer(event)
    lines = [json.loads(t) for t in out.getvalue().splitlines()]
    assert len(lines) == count
    assert all(line["level"] == "debug" for line in lines)
    assert all("connection" in line["message"] or "client" in line["message"]
               for line in lines)


# -- the flags -------------------------------------------------------------------------------


def parse(*argv):
    o = Options()
    o.parseOptions(["--id", "1", "--peers", PEERS, "--data", "d", *argv])
    return o


def test_flag_defaults():
    o = parse()
    assert (o["log-level"], o["log-format"]) == ("info", "text")


def test_flags_are_case_insensitive():
    o = parse("--log-level", "WARN", "--log-format", "Json")
    assert (o["log-level"], o["log-format"]) == ("warn", "json")


@pytest.mark.parametrize("argv, words", [
    (["--log-level", "verbose"], "--log-level 'verbose' is not one of debug, info, warn, error"),
    (["--log-level", "critical"], "--log-level 'critical'"),
    (["--log-format", "xml"], "--log-format 'xml' is not one of text, json"),
])
def test_bad_flags_are_usage_errors(argv, words):
    with pytest.raises(usage.UsageError, match=words.replace("(", r"\(")):
        parse(*argv)


def test_help_names_the_flags():
    text = str(Options())
    assert "--log-level" in text and "--log-format" in text


# -- the runners -----------------------------------------------------------------------------


def test_twist_gets_the_observer_factory_and_lets_it_filter():
    from twisted.application.twist._options import TwistOptions

    twist = TwistOptions()
    twist.parseOptions(["--log-level=error", "raftkv", "--id", "2", "--peers", PEERS,
                        "--data", "d", "--log-format", "json", "--log-level", "warn"])
    assert logs.configureRunner(twist.subOptions, 2) is None
    assert twist["logLevel"] is LogLevel.debug
    out = io.StringIO()
    observer = twist["fileLogObserverFactory"](out)
    emitted(observer, lambda log: (log.info("hidden"), log.warn("shown")))
    [line] = [json.loads(t) for t in out.getvalue().splitlines()]
    assert (line["message"], line["node_id"]) == ("shown", 2)


def twistdOptions(*argv):
    from twisted.scripts.twistd import ServerOptions

    options = ServerOptions()
    options.parseOptions(["--pidfile=", *argv, "raftkv", "--id", "3", "--peers", PEERS,
                          "--data", "d", "--log-format", "json"])
    return options


def test_twistd_in_the_foreground_logs_json_to_stdout(capsys):
    observer = logs.configureRunner(twistdOptions("-n").subOptions, 3)
    emitted(observer, lambda log: log.info("hello"))
    [line] = [json.loads(t) for t in capsys.readouterr().out.splitlines()]
    assert (line["message"], line["node_id"]) == ("hello", 3)


def test_twistd_logfile_is_honoured(tmp_path):
    path = tmp_path / "node.log"
    observer = logs.configureRunner(twistdOptions("-n", f"--logfile={path}").subOptions, 3)
    emitted(observer, lambda log: log.info("to the file"))
    observer.observer._observer.outFile.flush()  # DemoteNoise -> filter -> JSON lines
    [line] = [json.loads(t) for t in path.read_text().splitlines()]
    assert line["message"] == "to the file"


def test_twistd_logger_flag_wins():
    assert logs.configureRunner(twistdOptions("-n", "--logger=twisted.logger.textFileLogObserver").subOptions, 3) is None


def test_the_service_hands_its_observer_to_the_application():
    from twisted_raft.service import makeService

    options = twistdOptions("-n").subOptions
    service = makeService(options)
    assert service.logObserver is not None
    application = Application("raftkv")
    service.setServiceParent(application)
    assert application.getComponent(ILogObserver) is service.logObserver


def test_without_a_runner_nothing_is_set():
    from twisted_raft.service import makeService

    service = makeService(parse())
    assert service.logObserver is None
    application = Application("raftkv")
    service.setServiceParent(application)
    assert application.getComponent(ILogObserver) is None


# -- the names are documented ----------------------------------------------------------------


def test_every_event_name_in_the_code_is_in_the_design_doc_and_back():
    import pathlib
    import re

    from tests.support import ROOT
    from twisted_raft.tools.launcher import START_EVENT

    root = pathlib.Path(ROOT)
    used = {START_EVENT}  # the launcher's line in a node's JSON log
    for path in (root / "twisted_raft").rglob("*.py"):
        used |= set(re.findall(r'raftkv_event="([a-z_]+)"', path.read_text()))
    design = (root / "docs" / "design.rst").read_text()
    table = design[design.index("``role_change``  "):design.index("Any other line's")]
    documented = set(re.findall(r"^``([a-z_]+)``", table, re.M))
    assert "role_change" in used and "leader_change" in used
    assert used == documented
