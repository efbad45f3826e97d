"""
C{raftkv recover --data DIR [--yes]}: the terminal side of
L{twisted_raft.storage.recover} (offline recovery from a lost quorum).

It prints what the data dir holds and what may be lost, then asks on the
terminal (unless C{--yes}).  Exit status: 0 written (or nothing to do), 1
the operator said no (nothing changed), 2 bad usage, 7 refused: the dir is
locked by a running node, is not a raftkv data dir, is damaged, or holds
nothing to recover (nothing changed).
"""

import sys

from twisted.python import usage

from twisted_raft.storage.errors import DataDirError, DataDirLocked
from twisted_raft.storage.recover import recover
from twisted_raft.tools.command import InterspersedOptions

EXIT_OK = 0
EXIT_DECLINED = 1
EXIT_REFUSED = 7
"""As the C{raftkv} command's C{EXIT_ERROR}: the request was refused."""


class RecoverOptions(InterspersedOptions):
    synopsis = "raftkv recover --data DIR [--yes]"
    longdesc = (
        "With the node stopped, rewrite the configuration of its data dir to this "
        "node alone, keeping every entry and snapshot, so that after the permanent "
        "loss of a majority it can be started, serve, and have members added back. "
        "Says what may be lost and asks first."
    )
    optParameters = [["data", "d", None, "The stopped node's data dir."]]
    optFlags = [["yes", "y", "Do not ask (for scripts)."]]

    def postOptions(self):
        if not self["data"]:
            raise usage.UsageError("--data DIR is required")


def run(options, stdin=None, stdout=None, stderr=None):
    """
    Recover the data dir C{options["data"]}.

    @param stdin: where the answer is read (a text stream); C{sys.stdin}
        if not given.
    @return: the exit status.
    """
    stdin = stdin or sys.stdin
    stdout = stdout or sys.stdout
    stderr = stderr or sys.stderr

    def confirm(recovery):
        stdout.write(recovery.describe())
        if options["yes"]:
            return True
        stdout.write(f"Rewrite the configuration of {recovery.path}? [y/N] ")
        stdout.flush()
        answer = stdin.readline()
        if not stdin.isatty():
            stdout.write("\n")  # no echo of the answer's newline
        return answer.strip().lower() in ("y", "yes")

    try:
        recovery = recover(options["data"], confirm)
    except DataDirLocked as e:
        holder = f" (pid {e.pid})" if e.pid is not None else ""
        stderr.write(
            f"error: data dir {e.path} is locked by a running raftkv process{holder}:"
            " stop the node first; nothing changed\n"
        )
        return EXIT_REFUSED
    except DataDirError as e:
        stderr.write(f"error: {e}\n")
        return EXIT_REFUSED
    if not recovery.needed:
        stdout.write(recovery.describe())
        return EXIT_OK
    if not recovery.written:
        stdout.write("Not changed.\n")
        return EXIT_DECLINED
    stdout.write(
        f"Wrote configuration entry {recovery.lastIndex + 1}: node {recovery.nodeId}"
        " alone, as a voter.  Start the node; once it leads, add members back with"
        " 'raftkv member add'.\n"
    )
    return EXIT_OK
