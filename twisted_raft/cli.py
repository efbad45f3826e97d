"""
The C{raftkv} command.

    raftkv [--cluster ADDRS] [--timeout S]
           [--tls-ca FILE --tls-cert FILE --tls-key FILE] COMMAND ...

    raftkv put KEY VALUE            set KEY; prints the new revision
    raftkv put KEY --file PATH      ... to the bytes of PATH ("-" = stdin)
    raftkv get KEY [--stale]        prints the value (raw bytes)
    raftkv get KEY [END] [--prefix] [--from-key] [--limit N] [--after KEY]
               [--keys-only] [--count-only] [--json] [--stale]
                                    a range: each key's line, then its value
                                    (--json: with revisions, values base64)
    raftkv delete KEY               prints the revision (none if not found)
    raftkv del KEY [END] [--prefix] [--from-key]
                                    delete a key (as delete) or a range;
                                    a range prints how many were deleted
    raftkv txn --json FILE|-        apply a transaction (compares, then the
                                    success or failure operations); prints
                                    {"succeeded": ..., "revision": R, ...}
    raftkv cas KEY EXPECTED NEW     set KEY to NEW only if it is EXPECTED;
                                    prints the revision (none if it failed)
    raftkv cas --absent KEY NEW     set KEY to NEW only if it does not exist
    raftkv watch KEY [--prefix] [--rev R] [--json]
                                    print each change of KEY (or of every
                                    key starting with it) from revision R
                                    (default: now), one line each, until
                                    interrupted; resumes on another node
                                    by itself (exit 8 if COMPACTED)
    raftkv status [--json] [--watch]
                                    one row per node (pid and uptime
                                    included); --watch: again every second
    raftkv member list [--json]     the members, as the leader has them committed
    raftkv member add ID HOST:PORT [--learner] [--catch-up-timeout S] [--json]
                                    add a node as a learner, wait until it
                                    has caught up, then promote it to voter
                                    (unless --learner); prints the revision
    raftkv member promote ID [--catch-up-timeout S] [--json]
                                    make a learner a voter once caught up
    raftkv member remove ID [--json]
                                    remove a member (voter or learner)
    raftkv transfer-leader [ID] [--json]
                                    hand leadership to voter ID (none: the
                                    most up-to-date voter); prints its id
    raftkv cluster [options]        run a local cluster in the foreground
    raftkv cluster add|remove|stop|restart ...
                                    change that running cluster: add a
                                    node, remove node ID, stop or restart
                                    node ID (raftkv cluster --help)
    raftkv certs DIR --nodes N [--hosts H,...] [--clients NAME,...]
                                    make a CA and TLS certificates for the
                                    nodes and clients (raftkv certs --help)
    raftkv recover --data DIR [--yes]
                                    offline, node stopped: make it the only
                                    member after a quorum was lost for good
                                    (raftkv recover --help; exit 1 if the
                                    answer was no, 7 if refused)
    raftkv chaos [options]          fault injection against real nodes
                                    (raftkv chaos --help)
    raftkv sim [options]            deterministic simulation runs
                                    (raftkv sim --help)
    raftkv bench [options]          load generator, PySyncObj comparison
                                    (raftkv bench --help)
    raftkv --version                print raftkv's version

--cluster defaults to $RAFTKV_CLUSTER, else the three local nodes
127.0.0.1:8001,127.0.0.1:8002,127.0.0.1:8003.  Values given on the command
line are UTF-8 text; use -- before a value that starts with -.

Mutual TLS (nodes started with --tls-ca/--tls-cert/--tls-key): give the CA
that signed the nodes' certificates and a client certificate and key signed
by it (raftkv certs makes them), all three or none; each defaults to
$RAFTKV_TLS_CA, $RAFTKV_TLS_CERT, $RAFTKV_TLS_KEY.  Every client command,
status included, then connects with TLS and checks each node's certificate
against the host of its address.

Exit codes:

  0  success
  1  the answer is negative: get/delete found no such key, cas did not match
     (a range or prefix that matches nothing is not: 0)
  2  bad usage, including TLS files that cannot be used (missing,
     unreadable, not PEM, key not the certificate's, not signed by the CA,
     expired) and a txn document that is not one: nothing was sent
  3  UNAVAILABLE: the request was not applied, or a read got no answer
     (safe to retry); for status, no node answered
  4  UNAVAILABLE, outcome unknown: the write may or may not have been applied
     (writes are exactly-once and retried until --timeout; this only happens
     when the timeout passes after an attempt that may have been applied)
  5  INVALID_ARGUMENT
  6  VALUE_TOO_LARGE
  7  any other error (e.g. an unreadable --file, PERMISSION_DENIED)
  8  CHANGE_IN_PROGRESS: another membership change was still not committed
     when --timeout passed (nothing was changed; retry later); for watch:
     COMPACTED, no node holds the revision any more (the line
     {"error": "COMPACTED", "compact_revision": N} on stdout; --rev N works)
  9  NOT_CAUGHT_UP: the learner did not catch up in time; it stays a
     learner (member add/promote; promote it later)
 10  TRANSFER_FAILED: no new leader was elected in time; the leader stays
"""

import base64
import json
import os
import sys

from twisted.internet.task import deferLater
from twisted.python import usage

from twisted_raft import kvcli
from twisted_raft.client import Compacted
from twisted_raft.client import (
    ChangeInProgress,
    NotCaughtUp,
    OutcomeUnknown,
    RaftKVClient,
    TransferFailed,
    parseAddresses,
)
from twisted_raft.clustercli import (  # noqa: F401 (formatUptime: tests import it from here)
    MemberOptions,
    StatusOptions,
    TransferLeaderOptions,
    formatStatusJSON,
    formatStatusTable,
    formatUptime,
    runMembership,
)
from twisted_raft.rpc.commands import (
    InvalidArgument,
    PermissionDenied,
    Unavailable,
    ValueTooLarge,
)
from twisted_raft.tools.command import InterspersedOptions, VersionOption

# The subcommands live by concern: kvcli.py (put, get, delete, cas, txn),
# clustercli.py (status, member, transfer-leader), tools/ (cluster, certs,
# recover, bench, chaos, sim); here are the global options, watch, the exit
# codes and the dispatch.

DEFAULT_CLUSTER = "127.0.0.1:8001,127.0.0.1:8002,127.0.0.1:8003"
ENV_CLUSTER = "RAFTKV_CLUSTER"
ENV_TLS_CA = "RAFTKV_TLS_CA"
ENV_TLS_CERT = "RAFTKV_TLS_CERT"
ENV_TLS_KEY = "RAFTKV_TLS_KEY"
TLS_OPTIONS = (("tls-ca", ENV_TLS_CA), ("tls-cert", ENV_TLS_CERT), ("tls-key", ENV_TLS_KEY))
"""The TLS options of the client commands and the variables they default to."""
TOOL_COMMANDS = ("cluster", "certs", "recover")
"""Subcommands with their own options: the client options do not apply."""

EXIT_OK = 0
EXIT_NEGATIVE = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 3
EXIT_OUTCOME_UNKNOWN = 4
EXIT_INVALID_ARGUMENT = 5
EXIT_VALUE_TOO_LARGE = 6
EXIT_ERROR = 7
EXIT_CHANGE_IN_PROGRESS = 8
EXIT_NOT_CAUGHT_UP = 9
EXIT_TRANSFER_FAILED = 10

EXIT_COMPACTED = EXIT_CHANGE_IN_PROGRESS
"""C{raftkv watch}'s own meaning of 8 (issue 13's contract): COMPACTED."""

EXIT_CODES = {
    EXIT_OK: "success",
    EXIT_NEGATIVE: "not found / compare failed",
    EXIT_USAGE: "bad usage",
    EXIT_UNAVAILABLE: "UNAVAILABLE (not applied; safe to retry)",
    EXIT_OUTCOME_UNKNOWN: "UNAVAILABLE (outcome unknown)",
    EXIT_INVALID_ARGUMENT: "INVALID_ARGUMENT",
    EXIT_VALUE_TOO_LARGE: "VALUE_TOO_LARGE",
    EXIT_ERROR: "other error",
    EXIT_CHANGE_IN_PROGRESS: "CHANGE_IN_PROGRESS (watch: COMPACTED)",
    EXIT_NOT_CAUGHT_UP: "NOT_CAUGHT_UP",
    EXIT_TRANSFER_FAILED: "TRANSFER_FAILED",
}


# -- raftkv watch -----------------------------------------------------------------


class WatchOptions(InterspersedOptions):
    synopsis = "raftkv [options] watch KEY [--prefix] [--rev R] [--json]"
    longdesc = (
        "Print every change of KEY (with --prefix: of every key starting with "
        "KEY; an empty KEY with --prefix: of every key) from revision R (default: "
        "now), one line per change, until interrupted (Ctrl-C).  If its node "
        "goes away it goes on from another node, missing and repeating nothing.  "
        "With --json each line is "
        "{\"type\": \"put\", \"key\", \"value\" (base64), \"create_revision\", "
        "\"mod_revision\", \"version\"} or {\"type\": \"delete\", \"key\", "
        "\"mod_revision\"}.  If no node holds revision R any more it prints "
        "{\"error\": \"COMPACTED\", \"compact_revision\": N} and exits 8: read "
        "the keys, then watch with --rev N."
    )
    optFlags = [
        ["prefix", "p", "Watch every key starting with KEY."],
        ["json", None, "Print one JSON object per change."],
    ]
    optParameters = [["rev", "r", None, "Start at this revision (default: now).", int]]

    def parseArgs(self, key):
        self["key"] = key

    def postOptions(self):
        if self["rev"] is not None and not 1 <= self["rev"] <= 2**63 - 1:
            raise usage.UsageError("--rev must be a revision, 1 or more")
        if not self["key"] and not self["prefix"]:
            raise usage.UsageError("KEY is empty (watch every key with --prefix \"\")")


def _clusterOptions():
    from twisted_raft.tools.cluster import ClusterOptions

    return ClusterOptions()


def _certsOptions():
    from twisted_raft.tools.certs import CertsOptions

    return CertsOptions()


def _recoverOptions():
    from twisted_raft.tools.recover import RecoverOptions

    return RecoverOptions()


OWN_OPTION_TOOLS = {
    "bench": "twisted_raft.tools.bench",
    "chaos": "twisted_raft.tools.chaos",
    "sim": "twisted_raft.tools.sim",
}
"""Subcommands that parse their own options and set their own exit codes:
the module whose C{main(argv)} runs each."""


class _OwnOptions(usage.Options):
    """A tool of L{OWN_OPTION_TOOLS} in the table of subcommands, for the
    help; L{main} hands its arguments to the tool before any parsing.  It
    is only parsed here after global options (C{raftkv --timeout 1
    bench}), which the tool would not see: that is a usage error."""

    def parseOptions(self, options=None):
        tool = self.parent.subCommand
        raise usage.UsageError(
            f"{tool} takes no options before its name: run raftkv {tool} [options]"
            f" (raftkv {tool} --help)"
        )


class Options(VersionOption, usage.Options):
    synopsis = (
        "Usage: raftkv [--cluster ADDRS] [--timeout SECONDS] "
        "[--tls-ca FILE --tls-cert FILE --tls-key FILE] COMMAND [ARGS...]"
    )
    optParameters = [
        ["cluster", "c", None,
         f"Comma-separated host:port of the nodes [default: ${ENV_CLUSTER}, else {DEFAULT_CLUSTER}]"],
        ["timeout", "t", 5.0, "Seconds per operation, retries included.", float],
        ["tls-ca", None, None,
         f"TLS: the CA certificate (PEM) the nodes' certificates are signed by [default: ${ENV_TLS_CA}]"],
        ["tls-cert", None, None,
         f"TLS: this client's certificate (PEM), signed by that CA [default: ${ENV_TLS_CERT}]"],
        ["tls-key", None, None, f"TLS: the certificate's private key (PEM) [default: ${ENV_TLS_KEY}]"],
    ]
    subCommands = [
        ["put", None, kvcli.PutOptions, "Set a key."],
        ["get", None, kvcli.GetOptions, "Read a key."],
        ["delete", None, kvcli.DeleteOptions, "Delete a key (or a range, as del)."],
        ["del", None, kvcli.DeleteOptions, "Delete a key, a range [KEY, END) or a --prefix."],
        ["cas", None, kvcli.CasOptions, "Compare-and-set a key."],
        ["txn", None, kvcli.TxnOptions, "Apply a transaction (--json FILE|-)."],
        ["status", None, StatusOptions, "Show every node's status."],
        ["watch", None, WatchOptions, "Print each change of a key or prefix as it happens."],
        ["member", None, MemberOptions, "List, add, promote or remove members."],
        ["transfer-leader", None, TransferLeaderOptions, "Hand leadership to another voter."],
        ["cluster", None, _clusterOptions, "Run a local cluster in the foreground."],
        ["certs", None, _certsOptions, "Make TLS certificates for nodes and clients."],
        ["recover", None, _recoverOptions, "Offline: make a stopped node the only member."],
        ["bench", None, _OwnOptions, "Measure throughput and latency (raftkv bench --help)."],
        ["chaos", None, _OwnOptions, "Fault injection against real nodes (raftkv chaos --help)."],
        ["sim", None, _OwnOptions, "Deterministic simulation runs (raftkv sim --help)."],
    ]

    def getUsage(self, width=None):
        # The module docstring is preformatted; Twisted would reflow longdesc.
        return super().getUsage(width) + "\n" + __doc__.split("\n\n", 1)[1]

    def postOptions(self):
        if self.subCommand is None:
            raise usage.UsageError("no command given")
        cluster = self["cluster"]
        if cluster is None:
            cluster = os.environ.get(ENV_CLUSTER) or DEFAULT_CLUSTER
        try:
            self["cluster"] = parseAddresses(cluster)
        except ValueError as e:
            raise usage.UsageError(f"--cluster: {e}")
        if not self["timeout"] > 0:
            raise usage.UsageError("--timeout must be positive")
        self["tls"] = None if self.subCommand in TOOL_COMMANDS else tlsFiles(self, os.environ)


def tlsFiles(options, environ):
    """
    The L{TLSFiles} the C{--tls-*} C{options} (else C{environ}'s variables)
    name, or C{None} if none is given.

    @raise usage.UsageError: some but not all three are given.
    """
    paths = {}
    for name, variable in TLS_OPTIONS:
        value = options[name]
        paths[name] = value if value is not None else environ.get(variable) or None
    given = [name for name in paths if paths[name]]
    if not given:
        return None
    if len(given) != len(TLS_OPTIONS):
        missing = ", ".join(f"--{n} (${v})" for n, v in TLS_OPTIONS if not paths[n])
        raise usage.UsageError(
            "TLS needs --tls-ca, --tls-cert and --tls-key together "
            f"(or their variables); missing: {missing}"
        )
    from twisted_raft.tls import TLSFiles

    return TLSFiles(ca=paths["tls-ca"], cert=paths["tls-cert"], key=paths["tls-key"])


def parseArgs(argv):
    """Parse C{argv} (without the program name). @raise usage.UsageError."""
    config = Options()
    config.parseOptions(argv)
    return config


def errorLine(error):
    """C{(exit code, "error: CODE: message")} for an exception."""
    message = str(error.args[0]) if error.args else str(error)
    if isinstance(error, usage.UsageError):  # found only once read: txn's JSON
        return EXIT_USAGE, f"error: {message}"
    if isinstance(error, OutcomeUnknown):
        return EXIT_OUTCOME_UNKNOWN, f"error: UNAVAILABLE: {message}"
    if isinstance(error, Unavailable):
        return EXIT_UNAVAILABLE, f"error: UNAVAILABLE: {message}"
    if isinstance(error, InvalidArgument):
        return EXIT_INVALID_ARGUMENT, f"error: INVALID_ARGUMENT: {message}"
    if isinstance(error, ValueTooLarge):
        return EXIT_VALUE_TOO_LARGE, f"error: VALUE_TOO_LARGE: {message}"
    if isinstance(error, PermissionDenied):
        return EXIT_ERROR, f"error: PERMISSION_DENIED: {message}"
    if isinstance(error, ChangeInProgress):
        return EXIT_CHANGE_IN_PROGRESS, f"error: CHANGE_IN_PROGRESS: {message}"
    if isinstance(error, NotCaughtUp):
        return EXIT_NOT_CAUGHT_UP, f"error: NOT_CAUGHT_UP: {message}"
    if isinstance(error, TransferFailed):
        return EXIT_TRANSFER_FAILED, f"error: TRANSFER_FAILED: {message}"
    return EXIT_ERROR, f"error: {type(error).__name__}: {error}"


WATCH_INTERVAL = 1.0
"""Seconds between two redraws of C{raftkv status --watch}."""
CLEAR_SCREEN = "\x1b[H\x1b[2J"
"""ANSI: cursor home, then erase the screen."""


async def watchStatus(client, stdout, asJSON, clock, iterations=None, interval=WATCH_INTERVAL):
    """
    C{raftkv status --watch}: ask every node for its status and print it,
    every C{interval} seconds (of C{clock}) until interrupted.  On a
    terminal each table replaces the last; otherwise (or with C{asJSON},
    one line per round) each is printed after the last, so a log of it
    reads in order.

    @param iterations: stop after this many rounds (C{None}: never; for
        tests).
    @return: the exit code, 0: a round where no node answers is shown as
        such, and the watch goes on.
    """
    rounds = 0
    while True:
        started = clock.seconds()
        rows = await client.clusterStatus()
        if asJSON:
            text = formatStatusJSON(rows)
        elif stdout.isatty():
            text = (CLEAR_SCREEN + f"every {interval:g}s (Ctrl-C to stop)\n\n"
                    + formatStatusTable(rows))
        else:
            text = ("\n" if rounds else "") + formatStatusTable(rows)
        stdout.write(text)
        stdout.flush()
        rounds += 1
        if iterations is not None and rounds >= iterations:
            return EXIT_OK
        # A round that took long (nodes down: the timeout) starts the next at once.
        await deferLater(clock, max(0.0, interval - (clock.seconds() - started)))


async def runCommand(config, client, stdout, stderr, stdin=None, clock=None):
    """
    Run the client subcommand C{config.subCommand} with C{client}.

    @param stdout: a text stream; raw values go to its C{buffer}.
    @param clock: the L{IReactorTime} C{status --watch} waits with.
    @return: the exit code.
    """
    command, sub = config.subCommand, config.subOptions
    try:
        if command in kvcli.COMMANDS:
            stdin = stdin if stdin is not None else sys.stdin
            if not await kvcli.run(command, sub, client, stdout, stderr, stdin):
                return EXIT_NEGATIVE
        elif command == "status" and sub["watch"]:
            return await watchStatus(client, stdout, bool(sub["json"]), clock)
        elif command == "status":
            rows = await client.clusterStatus()
            stdout.write(formatStatusJSON(rows) if sub["json"] else formatStatusTable(rows))
            if all(s is None for _, s in rows):
                stderr.write("error: UNAVAILABLE: no node answered\n")
                return EXIT_UNAVAILABLE
        elif command in ("member", "transfer-leader"):
            await runMembership(command, sub, client, stdout)
        elif command == "watch":
            return await runWatch(sub, client, stdout, stderr)
        else:
            raise ValueError(f"not a client command: {command}")
    except Exception as e:
        code, line = errorLine(e)
        stderr.write(line + "\n")
        return code
    finally:
        stdout.flush()
    return EXIT_OK


def formatEvent(event, asJSON=False):
    """
    One line of C{raftkv watch} for the L{Event} C{event}: with C{asJSON}
    issue 13's shape (the value in base64), else a readable one (key and
    value as text, escaped as in JSON).
    """
    if asJSON:
        if event.type == "delete":
            return json.dumps(
                {"type": "delete", "key": event.key, "mod_revision": event.mod_revision}
            )
        return json.dumps({
            "type": "put", "key": event.key,
            "value": base64.b64encode(event.value).decode("ascii"),
            "create_revision": event.create_revision, "mod_revision": event.mod_revision,
            "version": event.version,
        })
    key = _shown(event.key)
    if event.type == "delete":
        return f"delete {key}  (revision {event.mod_revision})"
    value = _shown(event.value.decode("utf-8", "backslashreplace"))
    return (
        f"put {key} = {value}  (revision {event.mod_revision}, created"
        f" {event.create_revision}, version {event.version})"
    )


def _shown(text):
    """C{text} on one line: newlines, quotes and control characters escaped."""
    return json.dumps(text, ensure_ascii=False)[1:-1]


async def runWatch(sub, client, stdout, stderr):
    """
    C{raftkv watch}: print each change as it comes until interrupted (or
    the watch fails).  @return: the exit code.
    """
    asJSON = bool(sub["json"])

    def show(events):
        stdout.write("".join(formatEvent(e, asJSON) + "\n" for e in events))
        stdout.flush()

    watcher = client.watch(sub["key"], prefix=bool(sub["prefix"]), startRevision=sub["rev"],
                           onEvents=show)
    try:
        await watcher.done
    except Compacted as e:
        line = {"error": "COMPACTED", "compact_revision": e.compact_revision}
        stdout.write(json.dumps(line) + "\n")
        if not asJSON:
            stderr.write(
                f"error: COMPACTED: no node holds the revision any more; the oldest"
                f" held is {e.compact_revision} (--rev {e.compact_revision})\n"
            )
        return EXIT_COMPACTED
    return EXIT_OK


def loadTLS(config):
    """
    The L{TLSCredentials} of C{config["tls"]}, or C{None} without TLS.

    @raise twisted_raft.tls.TLSConfigError: the files cannot be used.
    """
    if config.get("tls") is None:
        return None
    from twisted_raft.tls import TLSCredentials

    return TLSCredentials(config["tls"])


def makeClient(config, reactor, tls=None):
    """
    The client for one command: with a client session, so that a write
    retried within this process (after a timeout or a leader change) takes
    effect at most once; over TLS with C{tls} (L{loadTLS}).
    """
    return RaftKVClient(
        config["cluster"], reactor=reactor, timeout=config["timeout"], sessions=True, tls=tls
    )


async def _runOnReactor(reactor, config, tls):
    client = makeClient(config, reactor, tls)
    try:
        code = await runCommand(config, client, sys.stdout, sys.stderr, clock=reactor)
    finally:
        await client.close()
    if code:
        raise SystemExit(code)


def main(argv=None):
    """The C{raftkv} console script."""
    try:
        _dispatch(argv)
    except BrokenPipeError:
        # The reader went away (raftkv --help | head): nothing more to say,
        # and Python's own flush at exit must not fail again with a traceback.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        sys.exit(1)


def _dispatch(argv):
    if argv is None:
        argv = sys.argv[1:]
    if argv and argv[0] in OWN_OPTION_TOOLS:
        import importlib

        sys.exit(importlib.import_module(OWN_OPTION_TOOLS[argv[0]]).main(argv[1:]))
    config = Options()
    try:
        config.parseOptions(argv)
    except usage.UsageError as e:
        if config.subCommand in OWN_OPTION_TOOLS:
            # its usage here would be a placeholder's, not the tool's
            sys.stderr.write(f"error: {e}\n")
            sys.exit(EXIT_USAGE)
        sub = getattr(config, "subOptions", None)
        while getattr(sub, "subOptions", None) is not None:  # raftkv member add ...
            sub = sub.subOptions
        sys.stderr.write(f"{sub if sub is not None else config}\nerror: {e}\n")
        sys.exit(EXIT_USAGE)
    if config.subCommand == "cluster":
        from twisted_raft.tools import cluster

        sys.exit(cluster.main(config.subOptions))
    if config.subCommand == "certs":
        from twisted_raft.tools import certs

        sys.exit(certs.run(config.subOptions))
    if config.subCommand == "recover":
        from twisted_raft.tools import recover

        sys.exit(recover.run(config.subOptions))
    tls = None
    if config["tls"] is not None:
        from twisted_raft.tls import TLSConfigError

        try:
            tls = loadTLS(config)
        except TLSConfigError as e:
            sys.stderr.write(f"error: TLS: {e}\n")
            sys.exit(EXIT_USAGE)
    from twisted.internet.task import react

    react(_runOnReactor, [config, tls])


if __name__ == "__main__":
    main()

