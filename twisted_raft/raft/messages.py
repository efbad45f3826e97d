"""
Raft's messages and log entries, as plain immutable values.

These are what the consensus core exchanges with its transport and storage;
how they are encoded on the wire (L{twisted_raft.rpc.wire}) or on disk
(L{twisted_raft.storage}) is the business of those layers.
"""

from dataclasses import dataclass, field
from enum import IntEnum
from typing import List, Optional

from twisted_raft.raft.membership import EMPTY, Configuration


class EntryKind(IntEnum):
    """
    What a log entry holds (stored as one byte on disk and on the wire).
    C{DATA} entries go to the state machine; a C{CONFIGURATION} entry's data
    is a configuration (L{twisted_raft.raft.membership.encodeMembers}), which
    the core itself takes in the moment it is appended (thesis §4.1).
    """

    DATA = 0
    CONFIGURATION = 1


DATA = EntryKind.DATA
CONFIGURATION = EntryKind.CONFIGURATION


@dataclass(frozen=True, slots=True)
class Entry:
    """
    One log entry.  A C{DATA} entry's C{data} is opaque to the core; C{b""} is
    the no-op a new leader appends at the start of its term (§5.4.2, Figure
    8).
    """

    index: int
    term: int
    data: bytes = b""
    kind: EntryKind = DATA


@dataclass(frozen=True, slots=True)
class HardState:
    """
    What Raft must persist before answering (Figure 2: currentTerm, votedFor).
    C{votedFor} is 0 when the node has not voted in C{term}.
    """

    term: int = 0
    votedFor: int = 0


@dataclass(frozen=True, slots=True)
class SnapshotMeta:
    """
    What a snapshot covers (§7): every entry up to C{lastIndex} (of term
    C{lastTerm}), and the configuration in force at C{lastIndex} (thesis
    §5.1: the latest configuration in the log it replaces), so that a node
    restarted from a snapshot alone knows who its peers are.  A tuple of node
    ids stands for a configuration of those voters without addresses (what
    a snapshot written before membership change recorded).
    """

    lastIndex: int
    lastTerm: int
    configuration: Configuration = EMPTY

    def __post_init__(self):
        if not isinstance(self.configuration, Configuration):
            object.__setattr__(self, "configuration", Configuration.ofVoters(self.configuration))

    @property
    def members(self):
        """Every member's node id."""
        return self.configuration.ids


@dataclass(frozen=True, slots=True)
class PersistentState:
    """
    Everything a node recovers from its storage at start-up: the hard state,
    the latest snapshot's metadata (or C{None}), the log entries after it,
    contiguous from C{snapshot.lastIndex + 1} (or from index 1), and the
    configuration the data dir was bootstrapped with (or C{None}; see
    L{twisted_raft.raft.interfaces.IStorage.bootstrap}).
    """

    hardState: HardState = HardState()
    entries: List[Entry] = field(default_factory=list)
    snapshot: Optional[SnapshotMeta] = None
    bootstrap: Optional[Configuration] = None


@dataclass(frozen=True, slots=True)
class RequestVote:
    """
    §5.2: a candidate asks for a vote.  With C{preVote} (thesis §9.6) it only
    asks whether it I{would} get the vote in C{term}; nobody changes term or
    vote for a pre-vote.
    """

    term: int
    candidateId: int
    lastLogIndex: int
    lastLogTerm: int
    preVote: bool = False
    transfer: bool = False


@dataclass(frozen=True, slots=True)
class TimeoutNow:
    """
    Leadership transfer (thesis §3.10): the leader of C{term} tells a voter
    whose log it has brought up to date to start an election at once.
    """

    term: int
    leaderId: int


@dataclass(frozen=True, slots=True)
class TimeoutNowResult:
    """C{accepted} if the target started an election in C{term} + 1."""

    term: int
    accepted: bool


@dataclass(frozen=True, slots=True)
class RequestVoteResult:
    term: int
    voteGranted: bool


@dataclass(frozen=True, slots=True)
class AppendEntries:
    """§5.3: replicate C{entries} after (prevLogIndex, prevLogTerm); also the heartbeat."""

    term: int
    leaderId: int
    prevLogIndex: int
    prevLogTerm: int
    entries: List[Entry]
    leaderCommit: int


@dataclass(frozen=True, slots=True)
class AppendEntriesResult:
    """
    On success, C{matchIndex} is the last index known to match the leader.
    On a log mismatch, C{conflictTerm} is the follower's term at
    C{prevLogIndex} (0 if its log is too short) and C{conflictIndex} the
    first index the leader should try next (the first index of
    C{conflictTerm}, or the follower's last index + 1), so the leader skips
    back a term per round trip rather than an entry (§5.3, the optimisation
    at the end of that section).
    """

    term: int
    success: bool
    matchIndex: int = 0
    conflictIndex: int = 0
    conflictTerm: int = 0


@dataclass(frozen=True, slots=True)
class InstallSnapshot:
    """
    §7 / Figure 13: one chunk of the leader's snapshot file, C{data} at byte
    C{offset}; C{done} on the last chunk.
    """

    term: int
    leaderId: int
    meta: SnapshotMeta
    offset: int
    data: bytes
    done: bool


@dataclass(frozen=True, slots=True)
class InstallSnapshotResult:
    """
    C{nextOffset} is the byte offset the follower expects next (after a
    mismatch or a restart of the transfer, possibly 0); with C{success} and a
    final chunk, the follower holds the snapshot.
    """

    term: int
    success: bool
    nextOffset: int = 0


@dataclass(frozen=True, slots=True)
class Status:
    nodeId: int
    role: str
    term: int
    leaderId: int
    commitIndex: int
    lastApplied: int
    lastLogIndex: int
    voter: bool = True
    configIndex: int = 0


LEADER = "leader"
FOLLOWER = "follower"
CANDIDATE = "candidate"


class NotLeader(Exception):
    """
    This node cannot serve the request because it is not the leader.  Nothing
    was proposed, so the request may safely be retried elsewhere.
    C{leaderId} is the leader this node knows of, or 0.
    """

    def __init__(self, leaderId: int = 0, message: Optional[str] = None):
        self.leaderId = leaderId
        super().__init__(message or f"not the leader (leader is {leaderId or 'unknown'})")


class CommitUnknown(Exception):
    """
    Whether a proposed entry commits is unknown: leadership was lost (or the
    node stopped) before it was seen to commit.  It may still commit later,
    or never.  (The client contract's word for the same uncertainty is
    L{twisted_raft.client.OutcomeUnknown}.)
    """


class TransferFailed(Exception):
    """A leadership transfer did not elect the target in time; the leader carries on."""


class StorageFailed(Exception):
    """The storage reported a failure: the node can no longer promise durability."""


class SnapshotChanged(Exception):
    """
    The snapshot a transfer was about is not the current one (a newer
    snapshot replaced it, or the receiver lost track): restart from offset 0.
    """
