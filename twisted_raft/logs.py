"""
A node's log output: the C{--log-level} filter, the C{--log-format} (text as
Twisted writes it, or one JSON object per line), and per-connection noise
moved down to debug.

Everything here is a L{twisted.logger} observer; the modules that log only
use L{twisted.logger.Logger}.  An event that has a name an operator or a
script may rely on carries it in the field L{EVENT_FIELD}
(C{log.info("...", raftkv_event="role_change", ...)}): a plain field, since
C{log_*} names are Twisted's and C{event} is what the JSON line calls it.
The names are a public contract, listed in C{docs/design.rst}.

How the observer gets in place depends on the runner (L{configureRunner}):
C{twistd} asks the application for an L{ILogObserver} component after the
plugin's service got its parent, and only then starts logging (its own
start-up lines included); C{twist} (C{python -m twisted}) starts logging
after the service is made, with the observer factory and level in its
options, which the plugin's options see as their C{parent}.

Importing this module must not import the reactor.
"""

import datetime
import json
import re
import sys

from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    formatEvent,
    textFileLogObserver,
)
from twisted.python import usage
from zope.interface import implementer

EVENT_FIELD = "raftkv_event"
"""The field holding an event's stable name (JSON: C{event})."""

GENERIC_EVENT = "log"
"""The JSON C{event} of a line without a name (Twisted's own, for one)."""

LEVELS = {
    "debug": LogLevel.debug,
    "info": LogLevel.info,
    "warn": LogLevel.warn,
    "error": LogLevel.error,
}
"""C{--log-level} values: each lets its level and the ones above it through."""

FORMATS = ("text", "json")
"""C{--log-format} values."""

DEFAULT_LEVEL = "info"
DEFAULT_FORMAT = "text"

OUTPUT_KEYS = ("time", "level", "node_id", "event", "message", "namespace", "failure")
"""The keys of a JSON line that are not the event's own fields; an own field
of one of these names is written as C{field_<name>}."""

_LEGACY_KEYS = frozenset(
    ("message", "time", "isError", "system", "format", "why", "failure", "logLevel", "printed")
)
"""What C{twisted.python.log.msg} adds to an event beside C{log_*} keys."""


def parseLevel(text):
    """C{"warn"} -> C{"warn"}; @raise usage.UsageError: not a level name."""
    name = str(text).strip().lower()
    if name not in LEVELS:
        raise usage.UsageError(
            f"--log-level {text!r} is not one of {', '.join(LEVELS)}"
        )
    return name


def parseFormat(text):
    """C{"JSON"} -> C{"json"}; @raise usage.UsageError: not a format name."""
    name = str(text).strip().lower()
    if name not in FORMATS:
        raise usage.UsageError(f"--log-format {text!r} is not one of {', '.join(FORMATS)}")
    return name


# -- per-connection noise ---------------------------------------------------------

_NOISE = frozenset(
    (
        # amp.AMP.makeConnection / connectionLost, for every client call
        ("twisted.protocols.amp", "{cls} connection established (HOST:{host} PEER:{peer})"),
        ("twisted.protocols.amp", "{cls} connection lost (HOST:{host} PEER:{peer})"),
        # an idle --http client (a scraper's or a browser's kept-alive connection)
        ("twisted.web.http.HTTPChannel", "Timing out client: {peer}"),
        ("twisted.web.http.HTTPChannel", "Forcibly timing out client: {peer}"),
    )
)
"""C{(namespace, format)} of Twisted's info lines that come once per
connection; Twisted has no switch for them (factories do: C{noisy})."""

_LEGACY_NOISE = re.compile(
    r"\w+ connection (established|lost) \(HOST:.* PEER:.*\)"
    r"|(Forcibly t|T)iming out client: .*",
    re.S,
)
"""The same lines as older Twisted releases (24.3, for one) write them, through
C{twisted.python.log.msg} (one text, no format of their own)."""


def isConnectionNoise(event):
    """Is C{event} one of Twisted's per-connection lines (L{_NOISE})?"""
    namespace, fmt = event.get("log_namespace"), event.get("log_format")
    if (namespace, fmt) in _NOISE:
        return True
    if namespace == "log_legacy" and fmt == "{log_text}" and not event.get("isError"):
        text = event.get("log_text")
        return isinstance(text, str) and _LEGACY_NOISE.fullmatch(text) is not None
    return False


@implementer(ILogObserver)
class DemoteNoise:
    """
    Pass every event to C{observer}, Twisted's per-connection lines at
    debug level instead of info.
    """

    def __init__(self, observer):
        self.observer = observer

    def __call__(self, event):
        if isConnectionNoise(event) and event.get("log_level") is not LogLevel.debug:
            event = dict(event, log_level=LogLevel.debug)
        self.observer(event)


def filtered(observer, level):
    """C{observer} behind a filter letting C{level} (a L{LEVELS} name) and up through."""
    predicate = LogLevelFilterPredicate(defaultLogLevel=LEVELS[level])
    return DemoteNoise(FilteringLogObserver(observer, [predicate]))


# -- JSON lines ---------------------------------------------------------------------


def isoTime(seconds):
    """C{1700000000.5} -> C{"2023-11-14T22:13:20.500000Z"} (UTC)."""
    when = datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc)
    return when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _jsonSafe(value):
    """C{value} if JSON encodes it as it is, else its C{str()}."""
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError, OverflowError, RecursionError):
        if isinstance(value, (set, frozenset)):
            try:
                return _jsonSafe(sorted(value))
            except TypeError:
                pass
        try:
            return str(value)
        except Exception:
            return object.__repr__(value)
    return value


def eventAsRecord(event, nodeId):
    """
    The dict a JSON line holds for C{event}: L{OUTPUT_KEYS}, then the
    event's own fields (not C{log_*}), each JSON-safe.
    """
    level = event.get("log_level")
    failure = event.get("log_failure")
    record = {
        "time": isoTime(event.get("log_time") or 0.0),
        "level": level.name if isinstance(level, type(LogLevel.info)) else "info",
        "node_id": nodeId,
        "event": event.get(EVENT_FIELD) or GENERIC_EVENT,
        "message": _message(event),
        "namespace": event.get("log_namespace"),
    }
    if failure is not None:
        try:
            record["failure"] = failure.getTraceback()
        except Exception:
            record["failure"] = _jsonSafe(failure)
    legacy = "isError" in event and "message" in event
    for key, value in event.items():
        if key.startswith("log_") or key == EVENT_FIELD or (legacy and key in _LEGACY_KEYS):
            continue
        if key in OUTPUT_KEYS:
            key = "field_" + key
        record[str(key)] = _jsonSafe(value)
    return record


def _message(event):
    try:
        text = formatEvent(event)
    except Exception:  # formatEvent reports its own failures; this is a last resort
        text = repr(event.get("log_format"))
    return text or ""


def eventAsLine(event, nodeId):
    """One line of JSON (with its newline) for C{event}."""
    try:
        return json.dumps(eventAsRecord(event, nodeId), allow_nan=False) + "\n"
    except Exception as e:  # never lose a line, nor the process, to an odd event
        return json.dumps({
            "time": isoTime(event.get("log_time") or 0.0), "level": "error",
            "node_id": nodeId, "event": "log_unencodable",
            "message": f"a log event could not be written as JSON: {e!r}",
        }) + "\n"


LINE_KEYS = ("time", "level", "node_id", "event")
"""The keys every JSON line has, whatever wrote it (the fallback of
L{eventAsLine} included): what a reader of the log may rely on."""


def parseLine(line):
    """
    The JSON object of one line of a C{--log-format json} log (bytes or
    str, with or without its newline), or C{None} if it is not one: a text
    line, a line cut short, JSON that is not an object.
    """
    if isinstance(line, bytes):
        line = line.decode("utf-8", "replace")
    line = line.strip()
    if not line.startswith("{"):
        return None
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


@implementer(ILogObserver)
class JSONLineObserver:
    """
    Write each event to C{outFile} as one JSON object on one line (not
    Twisted's C{jsonFileLogObserver}, which frames records with C{\\x1e}).
    """

    def __init__(self, outFile, nodeId):
        self.outFile = outFile
        self.nodeId = nodeId

    def __call__(self, event):
        self.outFile.write(eventAsLine(event, self.nodeId))
        self.outFile.flush()


def fileObserver(outFile, logFormat, nodeId):
    """The unfiltered observer writing C{logFormat} to C{outFile}."""
    if logFormat == "json":
        return JSONLineObserver(outFile, nodeId)
    return textFileLogObserver(outFile)


def nodeObserver(outFile, logFormat, level, nodeId):
    """The node's whole observer: format, level filter, noise demoted."""
    return filtered(fileObserver(outFile, logFormat, nodeId), level)


# -- the runners ------------------------------------------------------------------------


def _twistdLogFile(options):
    """
    The file twistd itself would log to for its C{ServerOptions}
    (C{UnixAppLogger._getLogObserver}): stdout in the foreground without
    C{--logfile} or with C{--logfile=-}, else the file (C{twistd.log} by
    default), rotated on SIGUSR1 as twistd does.
    """
    from twisted.python import logfile

    name = options.get("logfile") or ""
    nodaemon = options.get("nodaemon", False)
    if name == "-":
        if not nodaemon:
            sys.exit("Daemons cannot log to stdout, exiting!")
        return sys.stdout
    if nodaemon and not name:
        return sys.stdout
    logFile = logfile.LogFile.fromFullPath(name or "twistd.log")
    import signal

    if hasattr(signal, "SIGUSR1") and not signal.getsignal(signal.SIGUSR1):

        def rotate(signum, frame):
            from twisted.internet import reactor

            reactor.callFromThread(logFile.rotate)

        signal.signal(signal.SIGUSR1, rotate)
    return logFile


def configureRunner(options, nodeId):
    """
    Make the runner that parsed C{options} (the plugin's L{Options}; their
    C{parent} is the runner's) log as C{--log-format} and C{--log-level}
    say, once it starts logging.

    @return: an observer for the service to give its application as its
        L{ILogObserver} component (twistd), or C{None} (C{twist}, whose
        options now hold the observer factory; or no runner at all).
    """
    parent = getattr(options, "parent", None)
    logFormat = options.get("log-format") or DEFAULT_FORMAT
    level = options.get("log-level") or DEFAULT_LEVEL
    if parent is None:
        return None
    if "fileLogObserverFactory" in parent or "logFile" in parent:
        # twist: it filters by its own level too; ours decides.
        parent["logLevel"] = LogLevel.debug
        parent["fileLogObserverFactory"] = lambda outFile: nodeObserver(
            outFile, logFormat, level, nodeId
        )
        return None
    if parent.get("logger"):
        return None  # twistd --logger=...: the operator chose an observer
    if parent.get("syslog"):
        from twisted.python.syslog import SyslogObserver
        from twisted.logger import LegacyLogObserverWrapper

        observer = LegacyLogObserverWrapper(SyslogObserver(parent.get("prefix", "")).emit)
        return filtered(observer, level)
    return nodeObserver(_twistdLogFile(parent), logFormat, level, nodeId)
