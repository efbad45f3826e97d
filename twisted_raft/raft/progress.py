"""
The leader's view of each follower (Figure 2, "Volatile state on leaders"),
as an explicit state machine.

A follower's L{Progress} is in one of three states:

 - L{ProgressState.PROBE}: the leader does not know where the follower's log
   matches its own (a new leader, a rejection, a lost batch), so it sends one
   AppendEntries at a time and walks C{nextIndex} back on each rejection
   (§5.3, skipping a term per round trip).
 - L{ProgressState.REPLICATE}: the follower's log is known to match up to
   C{matchIndex}; batches are pipelined (thesis §10.2.1): C{nextIndex} moves
   on optimistically as each is sent, up to a window of C{maxInflight}
   batches and C{maxInflightBytes} bytes in flight.
 - L{ProgressState.SNAPSHOT}: what the follower needs next was compacted
   away, so a chunk of the leader's snapshot is in flight (§7); nothing else
   is sent to it but heartbeats until that chunk is answered.

Transitions: PROBE -> REPLICATE on an accepted batch; REPLICATE -> PROBE on a
rejected or lost batch; any -> SNAPSHOT when a chunk is sent; SNAPSHOT ->
PROBE when it is answered or fails (as in etcd's tracker: once a follower
needed a snapshot, where its log matches is known again only from its next
accepted batch, so pipelining resumes after that, not before; the old
C{probing} flag kept whatever it was before the transfer, which only
differed for a replicating follower that fell below the compacted log).
Where the snapshot transfer stands
(which snapshot, at which byte) outlives one chunk, so a paused transfer
resumes where it stopped.

Nothing here sends anything: L{twisted_raft.raft.replication.Replicator}
asks L{Progress.canSend} and reports what happened.
"""

from enum import Enum


class ProgressState(Enum):
    PROBE = "probe"
    REPLICATE = "replicate"
    SNAPSHOT = "snapshot"


PROBE = ProgressState.PROBE
REPLICATE = ProgressState.REPLICATE
SNAPSHOT = ProgressState.SNAPSHOT


class ChunkOutcome(Enum):
    """What a snapshot chunk's answer means for the transfer."""

    DONE = "done"  # the follower holds the whole snapshot
    NEXT = "next"  # send the next chunk now
    WAIT = "wait"  # refused, or about another transfer: retry at a heartbeat


def batchSize(entries):
    """What a batch of entries weighs, for flow control."""
    return sum(len(e.data) for e in entries) + 16 * len(entries)


class Progress:
    """
    One follower, as its leader sees it.

    @ivar nextIndex: the index of the next entry to send it.
    @ivar matchIndex: the highest index known to be replicated on it.
    @ivar inflight: batches of entries sent and not yet answered or lost.
    @ivar inflightBytes: their size.
    @ivar lastAck: when it last answered this leader (CheckQuorum, thesis §6.2).
    @ivar snapshotMeta: the snapshot being transferred to it, or C{None}.
    @ivar snapshotOffset: the byte of that snapshot it expects next.
    """

    __slots__ = (
        "state", "nextIndex", "matchIndex", "inflight", "inflightBytes", "lastAck",
        "snapshotMeta", "snapshotOffset", "maxInflight", "maxInflightBytes",
    )

    def __init__(self, nextIndex, now, maxInflight, maxInflightBytes):
        self.state = PROBE
        self.nextIndex = nextIndex
        self.matchIndex = 0
        self.inflight = 0
        self.inflightBytes = 0
        self.lastAck = now
        self.snapshotMeta = None
        self.snapshotOffset = 0
        self.maxInflight = maxInflight
        self.maxInflightBytes = maxInflightBytes

    def __repr__(self):
        return (
            f"<Progress {self.state.value} next={self.nextIndex} match={self.matchIndex}"
            f" inflight={self.inflight}/{self.inflightBytes}B>"
        )

    # -- states -------------------------------------------------------------

    def becomeReplicate(self):
        self.state = REPLICATE

    def becomeSnapshot(self, meta):
        """A chunk of C{meta} goes out; a transfer of an older snapshot starts over."""
        if self.snapshotMeta != meta:
            self.snapshotMeta, self.snapshotOffset = meta, 0
        self.state = SNAPSHOT

    @property
    def busy(self):
        """Is anything but a heartbeat in flight to it?"""
        return bool(self.inflight) or self.state is SNAPSHOT

    def canSend(self):
        """May another batch (or snapshot chunk) go out now?"""
        state = self.state
        if state is REPLICATE:
            return self.inflight < self.maxInflight and self.inflightBytes < self.maxInflightBytes
        if state is PROBE:
            return not self.inflight
        return False

    # -- AppendEntries ------------------------------------------------------

    def sent(self, prevLogIndex, entries, size):
        """A batch of C{entries} after C{prevLogIndex}, weighing C{size}, went out."""
        self.inflight += 1
        self.inflightBytes += size
        if self.state is REPLICATE:
            # Optimistically: the next batch follows this one (§10.2.1 of
            # the thesis, pipelining).
            self.nextIndex = prevLogIndex + len(entries) + 1

    def landed(self, size):
        """A batch weighing C{size} was answered, or is lost."""
        self.inflight -= 1
        self.inflightBytes -= size

    def accepted(self, matchIndex, batch):
        """
        The follower holds our log up to C{matchIndex}; if it said so about a
        C{batch} of entries (not a bare heartbeat), its log is known to match
        ours, so batches may be pipelined.
        """
        if matchIndex > self.matchIndex:
            self.matchIndex = matchIndex
        if self.nextIndex < matchIndex + 1:
            self.nextIndex = matchIndex + 1
        if batch and self.state is PROBE:
            self.state = REPLICATE

    def rejected(self, nextIndex):
        """
        A batch was rejected by the consistency check (§5.3): resume at
        C{nextIndex}, one batch at a time, never below what is known to match.
        """
        self.nextIndex = max(nextIndex, self.matchIndex + 1, 1)
        if self.state is REPLICATE:
            self.state = PROBE

    def lost(self, prevLogIndex):
        """
        A batch after C{prevLogIndex} was lost or timed out: resend from it
        (the earliest lost one), one batch at a time until one is answered.
        Not from matchIndex + 1: a new leader does not know that yet (0), and
        below its compacted log that would mean sending a snapshot to a
        follower that may have every entry (§5.3: nextIndex is only a guess;
        the consistency check walks it back if need be).
        """
        self.nextIndex = max(self.matchIndex + 1, min(self.nextIndex, prevLogIndex + 1))
        if self.state is REPLICATE:
            self.state = PROBE

    # -- InstallSnapshot (§7) ------------------------------------------------

    def chunkAnswered(self, meta, success, done, nextOffset):
        """
        A chunk of C{meta} was answered: C{success}, and the follower expects
        C{nextOffset} next.  Returns a L{ChunkOutcome}.
        """
        if self.state is SNAPSHOT:
            self.state = PROBE
        if self.snapshotMeta != meta:
            return ChunkOutcome.WAIT
        if success and done:
            self.snapshotMeta = None
            self.accepted(meta.lastIndex, False)
            return ChunkOutcome.DONE
        self.snapshotOffset = nextOffset
        return ChunkOutcome.NEXT if success else ChunkOutcome.WAIT

    def chunkFailed(self, changed):
        """A chunk was not sent or not answered; with C{changed}, start over."""
        if self.state is SNAPSHOT:
            self.state = PROBE
        if changed:
            self.snapshotMeta = None


class ProgressTracker:
    """
    Every follower's L{Progress}, for the leader of one term, and the quorum
    questions asked of them.

    @ivar voters: the L{twisted_raft.raft.quorum.MajorityConfig}.
    @ivar progress: C{{peerId: Progress}} of every member the leader
        replicates to (voters and learners, itself excluded).
    """

    __slots__ = ("voters", "selfId", "progress", "_ownMatch")

    def __init__(self, voters, selfId):
        self.voters = voters
        self.selfId = selfId
        self.progress = {}
        self._ownMatch = 0

    def reset(self, peerIds, nextIndex, now, maxInflight, maxInflightBytes):
        """A new term's leadership: every follower starts probing at C{nextIndex}."""
        self.progress = {
            p: Progress(nextIndex, now, maxInflight, maxInflightBytes)
            for p in peerIds
            if p != self.selfId
        }

    def sync(self, peerIds, nextIndex, now, maxInflight, maxInflightBytes):
        """
        The members changed: a new one starts probing at C{nextIndex}, one
        that left is forgotten, the others keep their progress.

        @return: the ids of the new ones.
        """
        wanted = set(peerIds)
        wanted.discard(self.selfId)
        progress = self.progress
        for gone in [p for p in progress if p not in wanted]:
            del progress[gone]
        new = sorted(wanted.difference(progress))
        for p in new:
            progress[p] = Progress(nextIndex, now, maxInflight, maxInflightBytes)
        return new

    def _matchOf(self, voterId):
        progress = self.progress.get(voterId)
        return self._ownMatch if progress is None else progress.matchIndex

    def committedIndex(self, ownMatch):
        """
        §5.3: the highest index held by a quorum, the leader counting its own
        log up to C{ownMatch} (the index its storage made durable).
        """
        self._ownMatch = ownMatch
        return self.voters.committedIndex(self._matchOf)

    def quorumActive(self, now, within):
        """
        CheckQuorum (thesis §6.2): has a quorum, the leader included, been
        heard from within C{within} seconds?
        """
        active = {self.selfId}
        active.update(i for i, p in self.progress.items() if now - p.lastAck <= within)
        return self.voters.hasQuorum(active)
