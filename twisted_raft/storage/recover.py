"""
Offline recovery from a lost quorum (C{raftkv recover --data DIR}).

When a majority of a cluster's voters is gone for good, no leader can be
elected and nothing can be committed, ever: membership change itself needs
a quorum.  L{recover} rewrites the configuration of one surviving node's
data dir, with the node stopped, to that node alone as a voter, so that it
can be started, elect itself, serve, and have new members added back.

It changes nothing but the end of the log: it appends one configuration
entry at the log's last index + 1, in the term of the log's last entry (or
of the snapshot, if the log holds none after it), whose configuration is
this node alone, with the address the old configuration gave it.  A
configuration takes effect when its entry is appended (thesis §4.1), so
the node uses it as soon as it loads its log; every entry and the snapshot
are kept, and the entries it holds become committed once it leads.

The configuration it replaces is the one in force: the latest
configuration entry in the log, else the snapshot's, else the bootstrap
record (see L{twisted_raft.storage.bootstrap}).  Before writing, it
describes what may be lost (L{Recovery.describe}) and asks; it refuses a
data dir that a node holds (L{DataDirLocked}), one that is not a raftkv
data dir (L{NotADataDir}), a damaged one (L{DataDirError} and its
subclasses, naming the file and offset; nothing is repaired), and one with
nothing to recover (L{NothingToRecover}).  Until the operator says yes
nothing in the data dir changes, not even the repairs a node's start-up
makes (a torn log tail is cut only once the change is written, just as a
start would cut it).

This runs in the C{raftkv} command, not in a node: it blocks, and needs no
reactor.
"""

import dataclasses
import os
import textwrap
from dataclasses import dataclass
from typing import List, Optional

from twisted_raft.raft.membership import Configuration, Member, decodeMembers, encodeMembers
from twisted_raft.raft.messages import CONFIGURATION, Entry, HardState, SnapshotMeta
from twisted_raft.storage import bootstrap, hardstate, identity
from twisted_raft.storage import snapshot as snapfile
from twisted_raft.storage.dirlock import DataDirLock
from twisted_raft.storage.errors import CorruptLogError, DataDirError, checkedFsync
from twisted_raft.storage.smallfile import fsyncDir
from twisted_raft.storage.files import BOOTSTRAP_FILE, IDENTITY_FILE, STATE_FILE, WAL_DIR
from twisted_raft.storage.wal import WriteAheadLog

# Only rolls segments: one small record is appended.
_SEGMENT_BYTES = 16 * 1024 * 1024


class NotADataDir(DataDirError):
    """The directory is not a raftkv data dir (it has no identity file)."""


class NothingToRecover(DataDirError):
    """The data dir holds no log entry and no snapshot: there is nothing to keep."""


@dataclass(frozen=True)
class Recovery:
    """
    What L{recover} found in a data dir and what it writes (or wrote).

    @ivar path: the data dir.
    @ivar nodeId: the node that owns it (its identity file says so).
    @ivar hardState: its term and vote.
    @ivar snapshot: its snapshot's metadata, or C{None}.
    @ivar lastIndex: its last log index (the snapshot's if no entry follows).
    @ivar lastTerm: the term at C{lastIndex}.
    @ivar old: the configuration in force, or C{None} if the data dir
        records none (it predates membership change: the node's
        C{--peers} decided).
    @ivar oldSource: where C{old} comes from, for people.
    @ivar new: this node alone, as a voter, as of C{lastIndex + 1}.
    @ivar repairs: what a node's start-up repairs in this dir (a torn log
        tail, ...), done when the change is written.
    @ivar written: whether the new configuration entry was written.
    """

    path: str
    nodeId: int
    hardState: HardState
    snapshot: Optional[SnapshotMeta]
    lastIndex: int
    lastTerm: int
    old: Optional[Configuration]
    oldSource: str
    new: Configuration
    repairs: List[str]
    written: bool = False

    @property
    def entry(self):
        """The configuration entry L{recover} appends."""
        return Entry(self.lastIndex + 1, self.lastTerm, encodeMembers(self.new), CONFIGURATION)

    @property
    def needed(self):
        """Whether the configuration in force is not this node alone already."""
        return self.old is None or self.old.members != self.new.members

    @property
    def dropped(self):
        """The members the new configuration leaves out."""
        if self.old is None:
            return ()
        return tuple(m for m in self.old.members if m.id != self.nodeId)

    def describe(self):
        """A description, for the operator, of the data dir and the change."""
        lines = [f"data dir {self.path} of node {self.nodeId}"]
        if self.snapshot is not None:
            lines.append(
                f"  snapshot:      up to index {self.snapshot.lastIndex}"
                f" (term {self.snapshot.lastTerm})"
            )
        lines.append(f"  last entry:    index {self.lastIndex}, term {self.lastTerm}")
        vote = f", voted for node {self.hardState.votedFor}" if self.hardState.votedFor else ""
        lines.append(f"  current term:  {self.hardState.term}{vote}")
        if self.old is None:
            lines.append(
                "  configuration: none recorded (this data dir predates membership"
                " change: the node's --peers decided who the members were)"
            )
        else:
            lines.append(f"  configuration: {self.oldSource}: {_members(self.old)}")
        if not self.needed:
            lines.append(f"Node {self.nodeId} is already the only member: nothing to do.")
            return "\n".join(lines) + "\n"
        me = _member(self.new.members[0])
        lines.append("")
        lines += _wrap(
            f"This appends configuration entry {self.lastIndex + 1} (term"
            f" {self.lastTerm}): {me} alone, as a voter.  Every entry and the snapshot"
            " this node has are kept.  What may be lost:"
        )
        if self.old is not None and not self.old.isVoter(self.nodeId):
            role = "a learner" if self.nodeId in self.old else "not a member"
            lines += _bullet(
                f"node {self.nodeId} is {role} in that configuration: the voters may"
                " have committed entries it never received."
            )
        if self.dropped:
            others = _list([_member(m) for m in self.dropped])
            lines += _bullet(
                f"{others} {'leaves' if len(self.dropped) == 1 else 'leave'} the"
                " cluster.  Never start them again on their old data dirs: a majority"
                " of the old configuration could elect a second leader.  Wipe them and"
                " add them back with 'raftkv member add'."
            )
        elif self.old is None:
            lines += _bullet(
                "every other node leaves the cluster.  Never start one again on its old"
                " data dir: a majority of the old members could elect a second leader."
                "  Wipe them and add them back with 'raftkv member add'."
            )
        lines += _bullet(
            f"entries after index {self.lastIndex} that other nodes had are lost for"
            " good -- committed ones too (acknowledged writes), if a majority stored"
            " them without this node."
        )
        lines += _bullet(
            f"entries up to index {self.lastIndex} that were never committed (writes"
            " whose outcome was unknown) become committed when this node starts."
        )
        if self.repairs:
            lines.append("When it writes, it also repairs what a node's start-up would:")
            for repair in self.repairs:
                lines += _bullet(repair)
        return "\n".join(lines) + "\n"


def _wrap(text):
    return textwrap.wrap(text, 78, break_on_hyphens=False, break_long_words=False)


def _bullet(text):
    return textwrap.wrap(
        text, 78, initial_indent="  - ", subsequent_indent="    ",
        break_on_hyphens=False, break_long_words=False,
    )


def _member(m):
    return f"node {m.id}" + (f" ({m.address})" if m.address else "")


def _list(items):
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _members(configuration):
    if not len(configuration):
        return "no members"
    voters = [_member(m) for m in configuration.members if m.voter]
    learners = [_member(m) for m in configuration.members if not m.voter]
    text = "voters " + ", ".join(voters) if voters else "no voters"
    if learners:
        text += "; learners " + ", ".join(learners)
    return text


def recover(path, confirm, fsync=os.fsync):
    """
    Rewrite the configuration of the stopped node's data dir C{path} to
    that node alone, once C{confirm} agrees.

    @param confirm: called with the L{Recovery} (see L{Recovery.describe})
        if there is something to do; the entry is written only if it
        returns true.
    @param fsync: L{os.fsync} or a stand-in (tests).
    @return: the L{Recovery}; C{written} says whether the entry was written
        (and fsynced).
    @raise NotADataDir: C{path} is no raftkv data dir; nothing was touched.
    @raise DataDirLocked: a running node (or anything else) holds it.
    @raise NothingToRecover: it holds no entry and no snapshot.
    @raise DataDirError: it is damaged (L{CorruptLogError} and
        L{CorruptSnapshotError} name the file and offset); nothing changed.
    """
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise NotADataDir(f"{path} is not a directory")
    if not os.path.exists(os.path.join(path, IDENTITY_FILE)):
        # Checked before locking, which would create the lock file.
        raise NotADataDir(f"{path} is not a raftkv data dir: it has no {IDENTITY_FILE} file")
    fsync = checkedFsync(fsync)
    lock = DataDirLock.lock(path)
    try:
        recovery, wal = _read(path, fsync)
        wal.close()
        if not recovery.needed or not confirm(recovery):
            return recovery
        walDir = os.path.join(path, WAL_DIR)
        hadWalDir = os.path.isdir(walDir)
        wal = WriteAheadLog(walDir, _SEGMENT_BYTES, fsync)
        try:
            wal.recover(recovery.snapshot)  # this time repairing, as a start would
            if not hadWalDir:
                fsyncDir(path, fsync)
            if wal.lastIndex != recovery.lastIndex:
                raise DataDirError(
                    f"the log of {path} ends at index {wal.lastIndex} once repaired,"
                    f" not at {recovery.lastIndex} as read: not changed"
                )
            wal.append([recovery.entry])
            wal.sync()
        finally:
            wal.close()
        return dataclasses.replace(recovery, written=True)
    finally:
        lock.release()


def _read(path, fsync):
    """
    Read the locked data dir C{path} without changing it.

    @return: C{(Recovery, the WriteAheadLog read without repair)}
    """
    found = identity.read(path, os.path.join(path, IDENTITY_FILE))
    if found is None:
        raise NotADataDir(f"{path} is not a raftkv data dir: it has no {IDENTITY_FILE} file")
    nodeId, _ = found
    hard = hardstate.read(os.path.join(path, STATE_FILE))
    boot = bootstrap.read(os.path.join(path, BOOTSTRAP_FILE))
    try:
        snapshot = snapfile.verifyFile(os.path.join(path, snapfile.FILE_NAME))
    except FileNotFoundError:
        snapshot = None
    wal = WriteAheadLog(os.path.join(path, WAL_DIR), _SEGMENT_BYTES, fsync)
    entries, warnings = wal.recover(snapshot, repair=False)
    lastIndex = wal.lastIndex
    if entries:
        lastTerm = entries[-1].term
    elif snapshot is not None:
        lastTerm = snapshot.lastTerm
    else:
        raise NothingToRecover(
            f"data dir {path} holds no log entry and no snapshot: there is nothing to"
            " recover (start a new cluster instead)"
        )
    old, source = _inForce(wal, entries, snapshot, boot)
    kept = old.member(nodeId) if old is not None else None
    new = Configuration((Member(nodeId, kept.address if kept else "", True),), lastIndex + 1)
    repairs = [fmt.format(**fields) for fmt, fields in warnings]
    recovery = Recovery(
        path, nodeId, hard, snapshot, lastIndex, lastTerm, old, source, new, repairs
    )
    return recovery, wal


def _inForce(wal, entries, snapshot, boot):
    """
    The configuration in force and where it comes from: the latest
    configuration entry, else the snapshot's, else the bootstrap record.

    @raise CorruptLogError: that entry does not decode (it passed its
        checksum: written so by a bug); named by segment and offset.
    """
    for entry in reversed(entries):
        if entry.kind is CONFIGURATION:
            try:
                return decodeMembers(entry.data, entry.index), f"log entry {entry.index}"
            except ValueError as e:
                segment = [s for s in wal.segments if s.firstIndex <= entry.index][-1]
                raise CorruptLogError(
                    segment.path,
                    segment.offsets[entry.index - segment.firstIndex],
                    f"configuration entry {entry.index} does not decode: {str(e)[:200]}",
                ) from None
    if snapshot is not None:
        return snapshot.configuration, f"the snapshot's (of index {snapshot.configuration.index})"
    if boot is not None:
        return boot, "the bootstrap record"
    return None, ""
