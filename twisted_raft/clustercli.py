"""
The C{raftkv} command's cluster subcommands: C{status} (its table and
JSON; C{--watch}'s loop is L{twisted_raft.cli.watchStatus}), C{member
list|add|promote|remove} and C{transfer-leader}: their options, how their
answers are printed (C{--json}: a public contract, README.rst), and
L{runMembership}.  Failures are raised for L{twisted_raft.cli.runCommand}
to turn into the exit codes, which are defined there.
"""

import json

from twisted.python import usage

from twisted_raft.client import CATCH_UP_TIMEOUT
from twisted_raft.raft.membership import MAX_NODE_ID, InvalidChange, checkAddress
from twisted_raft.tools.command import InterspersedOptions, ToolOptions


class StatusOptions(InterspersedOptions):
    synopsis = "raftkv [options] status [--json] [--watch]"
    longdesc = (
        "Ask every node for its status and print one row per node.  With "
        "--watch, ask again every second until interrupted (Ctrl-C)."
    )
    optFlags = [
        ["json", None, "Print JSON: {\"nodes\": [...]} (with --watch, one line a second)."],
        ["watch", "w", "Redraw every second until interrupted."],
    ]


# -- membership (raftkv member ..., raftkv transfer-leader) ------------------------


def _nodeId(text, allowZero=False):
    """The node id C{text} names. @raise usage.UsageError: it names none."""
    low = 0 if allowZero else 1
    if not text.isdigit() or not low <= int(text) <= MAX_NODE_ID:
        raise usage.UsageError(f"ID must be a node id ({low} to 2**63 - 1), not {text!r}")
    return int(text)


class _JSONOptions(InterspersedOptions):
    optFlags = [["json", None, "Print JSON."]]


class MemberListOptions(_JSONOptions):
    synopsis = "raftkv [options] member list [--json]"
    longdesc = (
        "Print the members (id, address, voter or learner) as the leader has "
        "them committed, and their revision (the log index of their configuration)."
    )


class _CatchUpOptions(_JSONOptions):
    optParameters = [
        ["catch-up-timeout", None, CATCH_UP_TIMEOUT,
         "Seconds to wait for the learner to catch up before promoting it.", float],
    ]

    def postOptions(self):
        if not self["catch-up-timeout"] > 0:
            raise usage.UsageError("--catch-up-timeout must be positive")


class MemberAddOptions(_CatchUpOptions):
    synopsis = "raftkv [options] member add ID HOST:PORT [--learner] [--catch-up-timeout S] [--json]"
    longdesc = (
        "Add node ID, reached at HOST:PORT (kept exactly as given), as a learner; "
        "wait until it has caught up with the leader's log, then promote it to "
        "voter, unless --learner.  Prints the revision of the last change."
    )
    optFlags = [["learner", None, "Add it as a learner only (no vote)."]]

    def parseArgs(self, nodeId, address):
        self["id"] = _nodeId(nodeId)
        try:
            self["address"] = checkAddress(address)
        except InvalidChange as e:
            raise usage.UsageError(str(e))


class MemberPromoteOptions(_CatchUpOptions):
    synopsis = "raftkv [options] member promote ID [--catch-up-timeout S] [--json]"
    longdesc = "Make the learner ID a voter once it has caught up; prints the revision."

    def parseArgs(self, nodeId):
        self["id"] = _nodeId(nodeId)


class MemberRemoveOptions(_JSONOptions):
    synopsis = "raftkv [options] member remove ID [--json]"
    longdesc = "Remove member ID (voter or learner); prints the revision."

    def parseArgs(self, nodeId):
        self["id"] = _nodeId(nodeId)


class MemberOptions(ToolOptions):
    synopsis = "raftkv [options] member list|add|promote|remove ..."
    longdesc = "List the cluster's members, or change them (raftkv member COMMAND --help)."
    subCommands = [
        ["list", None, MemberListOptions, "Print the members."],
        ["add", None, MemberAddOptions, "Add a node (as a learner, then a voter)."],
        ["promote", None, MemberPromoteOptions, "Make a learner a voter."],
        ["remove", None, MemberRemoveOptions, "Remove a member."],
    ]

    def postOptions(self):
        if self.subCommand is None:
            raise usage.UsageError("member needs list, add, promote or remove")


class TransferLeaderOptions(_JSONOptions):
    synopsis = "raftkv [options] transfer-leader [ID] [--json]"
    longdesc = (
        "Hand leadership to voter ID (without ID: the most up-to-date voter) "
        "and print the new leader's id."
    )

    def parseArgs(self, nodeId="0"):
        self["id"] = _nodeId(nodeId, allowZero=True)


# -- output -----------------------------------------------------------------------

STATUS_COLUMNS = [
    "ID", "ADDRESS", "ROLE", "TERM", "LEADER", "COMMIT", "APPLIED", "LOG", "VOTER", "CONFIG",
    "PID", "UPTIME",
]


def formatUptime(seconds):
    """C{seconds} as C{42s}, C{5m03s}, C{2h05m} or C{3d04h}; C{-} for C{None}."""
    if seconds is None:
        return "-"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def formatStatusTable(rows):
    """
    A text table of C{[(address, status dict or None), ...]}, one row per
    node; a node that did not answer shows as C{down}.
    """
    table = [STATUS_COLUMNS]
    for address, s in rows:
        if s is None:
            table.append(["-", address, "down"] + [""] * (len(STATUS_COLUMNS) - 3))
            continue
        leader = s["leader_id"]
        voter, config = s.get("voter"), s.get("config_revision")
        pid = s.get("pid")
        table.append([
            str(s["node_id"]),
            address,
            s["role"],
            str(s["term"]),
            str(leader) if leader and leader > 0 else "none",
            str(s["commit_index"]),
            str(s["last_applied"]),
            str(s["last_log_index"]),
            # "-": a node older than membership change does not say
            "-" if voter is None else ("yes" if voter else "no"),
            "-" if config is None else str(config),
            # "-": a node older than pid and uptime does not say
            "-" if pid is None else str(pid),
            formatUptime(s.get("uptime")),
        ])
    return _table(table)


def _table(rows):
    """Rows of cells as left-aligned text columns."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows
    ) + "\n"


def formatStatusJSON(rows):
    """
    C{raftkv status --json}: C{{"nodes": [...]}}, one object per node in
    address order, with the L{Status} answer's keys and C{"address"} and
    C{"up": true}, or only C{"address"} and C{"up": false} for a node that
    did not answer.
    """
    nodes = []
    for address, s in rows:
        if s is None:
            nodes.append({"address": address, "up": False})
        else:
            nodes.append({**s, "address": address, "up": True})
    return json.dumps({"nodes": nodes}) + "\n"


MEMBER_COLUMNS = ["ID", "ADDRESS", "ROLE"]


def formatMembers(current, asJSON=False):
    """C{raftkv member list}'s output for the L{Membership} C{current}."""
    if asJSON:
        return json.dumps({
            "revision": current.revision,
            "members": [
                {"id": m.id, "address": m.address, "voter": m.voter} for m in current.members
            ],
        }) + "\n"
    rows = [MEMBER_COLUMNS] + [
        [str(m.id), m.address or "-", "voter" if m.voter else "learner"]
        for m in current.members
    ]
    return f"revision {current.revision}\n" + _table(rows)


async def runMembership(command, sub, client, stdout):
    """
    C{raftkv member ...} and C{raftkv transfer-leader}: print the answer
    (failures are raised for L{runCommand} to report).
    """
    if command == "transfer-leader":
        leaderId = await client.transferLeader(sub["id"])
        stdout.write(json.dumps({"leader_id": leaderId}) + "\n" if sub["json"] else f"{leaderId}\n")
        return
    action, options = sub.subCommand, sub.subOptions
    if action == "list":
        stdout.write(formatMembers(await client.members(), options["json"]))
        return
    if action == "add":
        revision = await client.addMember(
            options["id"], options["address"], learner=bool(options["learner"]),
            timeout=options["catch-up-timeout"],
        )
    elif action == "promote":
        revision = await client.promoteMember(options["id"], timeout=options["catch-up-timeout"])
    else:
        revision = await client.removeMember(options["id"])
    stdout.write(json.dumps({"revision": revision}) + "\n" if options["json"] else f"{revision}\n")
