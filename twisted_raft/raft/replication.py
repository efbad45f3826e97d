"""
The leader's side of log replication (§5.3; §7 for followers that need a
snapshot; pipelining, thesis §10.2.1).

A L{Replicator} sends each follower what its
L{twisted_raft.raft.progress.Progress} says it lacks, as far as that
progress's state and window allow, and feeds the answers back into it.  A
batch in flight never holds up a heartbeat: while one is out, heartbeats
carry no entries and are anchored where the follower is known to match.

It reads the leader's state from its L{twisted_raft.raft.node.RaftNode}
(term, log, commit index, snapshot, ReadIndex round) and reports back
through three of its methods: C{_becomeFollower} when a follower knows a
newer term, C{_advanceCommit} when a follower's match index may have moved,
and C{_serveReads} when a follower acknowledged a round.
"""

from twisted.logger import Logger

from twisted_raft.raft.messages import LEADER, AppendEntries
from twisted_raft.raft.progress import ChunkOutcome, ProgressTracker, batchSize
from twisted_raft.raft.snapshots import SnapshotSender


class Replicator:
    """
    @ivar tracker: every follower's L{Progress}, reset for each term led.
    """

    logger = Logger()

    def __init__(self, node):
        self.node = node
        self.config = node.config
        self.tracker = ProgressTracker(node.voters, node.nodeId)
        self.sender = SnapshotSender(
            node.nodeId, node.storage, node.transport, node.clock, node.config,
            self.snapshotAnswered, self._leadsIn,
        )

    def start(self):
        """A new term's leadership: probe every follower from our log's end."""
        node, config = self.node, self.config
        self.tracker.voters = node.voters
        self.tracker.reset(
            self._targets(), node.raftLog.lastIndex + 1, node.clock.seconds(),
            config.maxInflight, config.maxInflightBytes,
        )

    def _targets(self):
        """
        Whom the leader sends the log to: every member, voter or learner,
        and, until its removal commits, a member just removed, so that it
        learns of its removal and stops (thesis §4.2.2).
        """
        node = self.node
        targets = set(node.configuration.ids)
        previous = node.configs.previous()
        if previous is not None and node.configuration.index > node.commitIndex:
            targets.update(previous.ids)
        targets.discard(node.nodeId)
        return targets

    def syncMembers(self):
        """The configuration changed: replicate to whoever is now a member."""
        node, config = self.node, self.config
        targets = self._targets()
        for peerId, progress in list(self.tracker.progress.items()):
            if peerId not in targets:
                # Its removal is committed: one last heartbeat carries the
                # commit index, so that it knows and stops campaigning (a
                # removed node campaigns until then: see RaftNode._mayCampaign).
                self._send(peerId, progress, heartbeatOnly=True)
        new = self.tracker.sync(
            targets, node.raftLog.lastIndex + 1, node.clock.seconds(),
            config.maxInflight, config.maxInflightBytes,
        )
        for peerId in new:
            self.replicate(peerId, self.tracker.progress[peerId])

    def _leadsIn(self, term):
        node = self.node
        return node.role == LEADER and node.currentTerm == term

    def replicateAll(self):
        """New entries are in our log: send them on (§5.3)."""
        for peerId, progress in self.tracker.progress.items():
            self.replicate(peerId, progress)

    def broadcast(self):
        """A heartbeat round: every follower hears from us, with entries if it may."""
        for peerId, progress in self.tracker.progress.items():
            self._send(peerId, progress, heartbeatOnly=progress.busy)

    def replicate(self, peerId, progress):
        """Send what the follower lacks, as far as its state and window allow."""
        raftLog = self.node.raftLog
        while progress.canSend() and progress.nextIndex <= raftLog.lastIndex:
            snapshot = progress.nextIndex <= raftLog.startIndex
            inflight = progress.inflight
            self._send(peerId, progress)
            if snapshot or progress.inflight <= inflight:
                # One snapshot chunk at a time; and a send that failed at once
                # (a peer that is down: connection refused) is retried at the
                # next heartbeat, not in a tight loop.
                break

    def _send(self, peerId, progress, heartbeatOnly=False):
        """
        Send entries from C{progress.nextIndex}, or, while a batch is in
        flight, a bare heartbeat anchored at C{matchIndex} (which the follower
        is known to hold), so heartbeats never queue behind a large batch.
        """
        node = self.node
        raftLog, round = node.raftLog, node.reads.round
        if heartbeatOnly:
            # Anchored where the follower is known to match (or at our
            # snapshot, if that is further): a heartbeat carries no entries.
            prev, entries = max(progress.matchIndex, raftLog.startIndex), []
        elif progress.nextIndex <= raftLog.startIndex:
            # What it needs next was compacted away: send the snapshot (§7).
            self.sender.send(peerId, progress, node.snapshot, node.currentTerm, round)
            return
        else:
            prev = progress.nextIndex - 1
            entries = self._batchFrom(progress.nextIndex)
            progress.sent(prev, entries, batchSize(entries))
        request = AppendEntries(
            node.currentTerm, node.nodeId, prev, raftLog.term(prev), entries, node.commitIndex
        )
        d = node.transport.appendEntries(peerId, request)
        d.addTimeout(self.config.requestTimeout, node.clock)
        d.addCallbacks(
            self.appendAnswered,
            self._appendFailed,
            callbackArgs=(peerId, request, round, heartbeatOnly),
            errbackArgs=(peerId, request, heartbeatOnly),
        )

    def _batchFrom(self, start):
        raftLog, config = self.node.raftLog, self.config
        entries = raftLog.slice(start, min(raftLog.lastIndex + 1, start + config.maxBatchEntries))
        size = 0
        for n, entry in enumerate(entries):
            size += len(entry.data) + 16
            if size > config.maxBatchBytes and n:
                return entries[:n]
        return entries

    def _heardFrom(self, result, peerId, request, round):
        """
        A follower answered C{request}: step down if it knows a newer term;
        else, if we still lead in the request's term, note the contact (for
        CheckQuorum and ReadIndex) and return its L{Progress}.
        """
        node = self.node
        if not node.running:
            return None
        if result.term > node.currentTerm:
            node._becomeFollower(result.term, 0)
            return None
        if node.role != LEADER or request.term != node.currentTerm:
            return None
        progress = self.tracker.progress.get(peerId)
        if progress is None:
            return None  # no longer a member
        progress.lastAck = node.clock.seconds()
        node.reads.ack(peerId, round)
        return progress

    def _appendFailed(self, failure, peerId, request, heartbeatOnly):
        progress = self.tracker.progress.get(peerId)
        if progress is not None and request.term == self.node.currentTerm and not heartbeatOnly:
            progress.landed(batchSize(request.entries))
            progress.lost(request.prevLogIndex)

    def appendAnswered(self, result, peerId, request, round, heartbeatOnly):
        """C{peerId} answered C{request}, sent during ReadIndex C{round}."""
        progress = self._heardFrom(result, peerId, request, round)
        if progress is None:
            return
        node = self.node
        if not heartbeatOnly:
            progress.landed(batchSize(request.entries))
        if result.success:
            progress.accepted(result.matchIndex, not heartbeatOnly)
            node._advanceCommit()
            if node.transfers.target == peerId:
                node.transfers.push()
        elif not heartbeatOnly:
            progress.rejected(
                node.raftLog.nextAfterConflict(result.conflictIndex, result.conflictTerm)
            )
        self.replicate(peerId, progress)
        node._serveReads()

    def snapshotAnswered(self, result, peerId, request, round):
        """C{peerId} answered a chunk of a snapshot transfer."""
        progress = self._heardFrom(result, peerId, request, round)
        if progress is None:
            return
        node = self.node
        outcome = progress.chunkAnswered(
            request.meta, result.success, request.done, result.nextOffset
        )
        if outcome is ChunkOutcome.DONE:
            self.logger.info(
                "follower {peerId} installed snapshot at {index}",
                raftkv_event="snapshot_sent",
                peerId=peerId,
                index=request.meta.lastIndex,
            )
            node._advanceCommit()
            self.replicate(peerId, progress)
        elif outcome is ChunkOutcome.NEXT:
            round = node.reads.round
            self.sender.send(peerId, progress, node.snapshot, node.currentTerm, round)
        else:
            return  # try again at the next heartbeat
        node._serveReads()
