"""
Raft's messages and log entries, as plain immutable values.

These are what the consensus core exchanges with its transport and storage;
how they are encoded on the wire (L{twisted_raft.rpc.wire}) or on disk
(L{twisted_raft.storage}) is the business of those layers.
"""

from dataclasses import dataclass, field
from typing import List, Optional, Tuple


@dataclass(frozen=True, slots=True)
class Entry:
    """
    One log entry.  C{data} is opaque to the core; C{b""} is the no-op a new
    leader appends at the start of its term (§5.4.2, Figure 8).
    """

    index: int
    term: int
    data: bytes = b""


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
    C{lastTerm}), for the cluster of node ids C{members}.
    """

    lastIndex: int
    lastTerm: int
    members: Tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class PersistentState:
    """
    Everything a node recovers from its storage at start-up: the hard state,
    the latest snapshot's metadata (or C{None}), and the log entries after
    it, contiguous from C{snapshot.lastIndex + 1} (or from index 1).
    """

    hardState: HardState = HardState()
    entries: List[Entry] = field(default_factory=list)
    snapshot: Optional[SnapshotMeta] = None


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


class StorageFailed(Exception):
    """The storage reported a failure: the node can no longer promise durability."""


class SnapshotChanged(Exception):
    """
    The snapshot a transfer was about is not the current one (a newer
    snapshot replaced it, or the receiver lost track): restart from offset 0.
    """
