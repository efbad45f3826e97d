"""
One Raft node: roles, election, replication, commit and apply.

The node does no I/O of its own.  It reaches peers through an L{ITransport},
persists through an L{IStorage} and applies to an L{IStateMachine}; time
comes from the C{clock} (an L{IReactorTime}) it is given.  Section numbers
refer to the extended Raft paper (Ongaro & Ousterhout, 2014) and Ongaro's
thesis (2014).

Durability (Figure 2, "Rules for Servers"): a node answers a vote or an
AppendEntries only once every storage write issued before the answer is
durable; the leader counts its own log towards a quorum only up to the index
its storage has made durable, while followers receive the same entries in
parallel.
"""

import random as _random

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from twisted_raft.raft.log import RaftLog
from twisted_raft.raft.messages import (
    CANDIDATE,
    FOLLOWER,
    LEADER,
    AppendEntries,
    AppendEntriesResult,
    Entry,
    HardState,
    InstallSnapshot,
    InstallSnapshotResult,
    NotLeader,
    CommitUnknown,
    RequestVote,
    RequestVoteResult,
    SnapshotChanged,
    SnapshotMeta,
    Status,
    StorageFailed,
)


SKIP_TRANSFER = 2**62
"""An InstallSnapshot C{nextOffset} past any snapshot's end: "I have it all"."""


def _size(entries):
    """What a batch of entries weighs, for flow control."""
    return sum(len(e.data) for e in entries) + 16 * len(entries)


class _Peer:
    """The leader's view of one follower (Figure 2, "Volatile state on leaders")."""

    __slots__ = (
        "nextIndex", "matchIndex", "inflight", "inflightBytes", "probing", "snapshotBusy",
        "ackedRound", "lastAck", "snapshotMeta", "snapshotOffset",
    )

    def __init__(self, nextIndex, now):
        self.nextIndex = nextIndex
        self.matchIndex = 0
        # Pipelining: AppendEntries carrying entries that are in flight, and
        # their size.  While probing (the follower's log is not known to
        # match, e.g. after a rejection) only one is in flight at a time.
        self.inflight = 0
        self.inflightBytes = 0
        self.probing = True
        self.snapshotBusy = False
        self.ackedRound = 0
        self.lastAck = now
        # An InstallSnapshot transfer under way: which snapshot, how far.
        self.snapshotMeta = None
        self.snapshotOffset = 0


class RaftNode:
    """
    @ivar role: L{FOLLOWER}, L{CANDIDATE} or L{LEADER}.
    @ivar leaderId: the leader this node knows of in its term, 0 if none.
    """

    log = Logger()

    def __init__(
        self,
        nodeId,
        peerIds,
        storage,
        transport,
        stateMachine,
        clock,
        electionTimeout=(0.3, 0.55),
        heartbeatInterval=0.08,
        rng=None,
        rpcTimeout=None,
        maxBatchEntries=1024,
        maxBatchBytes=1024 * 1024,
        applyBatch=10000,
        onFatalError=None,
        preVote=True,
        snapshotEntries=50000,
        snapshotBytes=64 * 1024 * 1024,
        snapshotKeep=1000,
        snapshotChunk=256 * 1024,
        maxInflight=4,
        maxInflightBytes=4 * 1024 * 1024,
    ):
        self.nodeId = nodeId
        self.peerIds = sorted(p for p in set(peerIds) if p != nodeId)
        self.storage = storage
        self.transport = transport
        self.stateMachine = stateMachine
        self.clock = clock
        self.electionTimeout = electionTimeout
        self.heartbeatInterval = heartbeatInterval
        self.rng = rng or _random.Random()
        self.rpcTimeout = rpcTimeout or electionTimeout[0]
        self.maxBatchEntries = maxBatchEntries
        self.maxBatchBytes = maxBatchBytes
        # Several AppendEntries in flight per follower, bounded in number and
        # bytes (flow control), so the leader need not wait for each answer.
        self.maxInflight = maxInflight
        self.maxInflightBytes = maxInflightBytes
        self.applyBatch = applyBatch
        self.onFatalError = onFatalError
        self.preVote = preVote
        # Snapshot when this many entries, or bytes of entry data, have been
        # applied since the last one; keep snapshotKeep entries in memory
        # behind it for followers that lag a little.
        self.snapshotEntries = snapshotEntries
        self.snapshotBytes = snapshotBytes
        self.snapshotKeep = snapshotKeep
        self.snapshotChunk = snapshotChunk
        self.snapshot = None
        self._snapshotting = False
        self._restoring = False
        self._receiving = False
        self._appliedBytes = 0
        self.quorum = (len(self.peerIds) + 1) // 2 + 1

        self.role = FOLLOWER
        self.currentTerm = 0
        self.votedFor = 0
        self.leaderId = 0
        self.commitIndex = 0
        self.lastApplied = 0
        self.raftLog = RaftLog()
        self.failed = None
        self.running = False

        # Persistence barrier: writes are numbered as issued; storage
        # completes them in order, so "durable up to n" is one counter.
        self._issued = 0
        self._durable = 0
        self._durableWaiters = []
        self._durableLastIndex = 0

        self._electionTimer = None
        self._heartbeatTimer = None
        self._votes = set()
        self._preVotes = set()
        self._preVoteTerm = 0
        self._lastLeaderContact = None
        self._peers = {}
        self._unflushed = []
        self._flushCall = None
        self._pending = {}
        self._leaderWaiters = []

        # ReadIndex (thesis §6.4): each read waits for a heartbeat round that
        # started after it and was acknowledged by a quorum in this term.
        self._round = 0
        self._readsAwaitingRound = []
        self._readsAwaitingApply = []
        self._readCall = None

    # -- life cycle -------------------------------------------------------

    def start(self):
        """Recover from storage and start the election timer."""

        def loaded(state):
            self.currentTerm = state.hardState.term
            self.votedFor = state.hardState.votedFor
            snapshot = state.snapshot
            if snapshot is None:
                self.raftLog = RaftLog(state.entries)
                self._durableLastIndex = self.raftLog.lastIndex
                return None
            self.snapshot = snapshot
            self.raftLog = RaftLog(state.entries, snapshot.lastIndex, snapshot.lastTerm)
            self._durableLastIndex = self.raftLog.lastIndex
            # Restart time is the snapshot plus the log after it (§7).
            return self.storage.loadSnapshot(self.stateMachine.parseSnapshot).addCallback(
                restored
            )

        def restored(loaded):
            meta, parsed = loaded
            self.stateMachine.restoreSnapshot(parsed)
            self.commitIndex = self.lastApplied = meta.lastIndex

        def started(_):
            self.running = True
            self.log.info(
                "node {nodeId} recovered term={term} votedFor={votedFor} "
                "snapshot={snapshot} lastIndex={lastIndex}",
                nodeId=self.nodeId,
                term=self.currentTerm,
                votedFor=self.votedFor,
                snapshot=self.raftLog.startIndex,
                lastIndex=self.raftLog.lastIndex,
            )
            self._resetElectionTimer()
            return self

        return self.storage.load().addCallback(loaded).addCallback(started)

    def stop(self):
        """Stop all timers and fail whatever waits on this node."""
        self.running = False
        for call in (self._electionTimer, self._heartbeatTimer, self._flushCall, self._readCall):
            if call is not None and call.active():
                call.cancel()
        self._electionTimer = self._heartbeatTimer = self._flushCall = self._readCall = None
        self._failPending(CommitUnknown("node stopped"), NotLeader(0, "node stopped"))

    # -- persistence ------------------------------------------------------

    def _persist(self, d):
        self._issued += 1
        d.addCallbacks(self._persisted, self._storageFailed, callbackArgs=(self._issued,))

    def _persisted(self, _, number):
        self._durable = number
        waiters = self._durableWaiters
        while waiters and waiters[0][0] <= number:
            waiters.pop(0)[1].callback(None)

    def _whenDurable(self):
        """A Deferred firing once every write issued so far is durable."""
        if self.failed is not None:
            return defer.fail(StorageFailed(str(self.failed)))
        if self._durable >= self._issued:
            return defer.succeed(None)
        d = defer.Deferred()
        self._durableWaiters.append((self._issued, d))
        return d

    def _storageFailed(self, failure):
        # fsyncgate: once a write may not be durable we cannot promise
        # anything, so the node stops rather than carrying on.
        if self.failed is not None:
            return
        self.failed = failure
        self.log.failure("storage failed; node {nodeId} stops", failure, nodeId=self.nodeId)
        waiters, self._durableWaiters = self._durableWaiters, []
        for _, d in waiters:
            d.errback(StorageFailed(str(failure.value)))
        self.stop()
        if self.onFatalError is not None:
            self.onFatalError(failure)

    def _saveHardState(self):
        self._persist(self.storage.saveHardState(HardState(self.currentTerm, self.votedFor)))

    def _appendToLog(self, entries):
        self.raftLog.append(entries)
        self._store(entries)

    def _store(self, entries):
        """Write entries already in the in-memory log to storage."""
        last, lastTerm = entries[-1].index, entries[-1].term

        def appended(_):
            # Only if a truncation issued meanwhile has not replaced them: the
            # same term at `last` means, by Log Matching, the same prefix.
            if last > self._durableLastIndex and self.raftLog.term(last) == lastTerm:
                self._durableLastIndex = last
            self._advanceCommit()

        d = self.storage.append(entries)
        # Before _persist's errback, so a failed write is never taken as durable.
        d.addCallback(appended)
        self._persist(d)

    # -- timers -----------------------------------------------------------

    def _resetElectionTimer(self):
        if self._electionTimer is not None and self._electionTimer.active():
            self._electionTimer.cancel()
        self._electionTimer = None
        if self.running and self.role != LEADER:
            timeout = self.rng.uniform(*self.electionTimeout)
            self._electionTimer = self.clock.callLater(timeout, self._electionTimeout)

    def _electionTimeout(self):
        self._electionTimer = None
        if self.preVote:
            self._startPreVote()
        else:
            self._startElection()

    def _inLease(self):
        """
        Have we heard from a live leader within the minimum election timeout?
        Then a vote request is ignored (thesis §4.2.3): a leader that is
        alive must not be deposed by a node that merely lost touch with it.
        """
        if self.role == LEADER:
            return True
        return (
            self._lastLeaderContact is not None
            and self.clock.seconds() - self._lastLeaderContact < self.electionTimeout[0]
        )

    def _scheduleHeartbeat(self):
        self._heartbeatTimer = self.clock.callLater(self.heartbeatInterval, self._heartbeat)

    def _heartbeat(self):
        self._heartbeatTimer = None
        if self.role != LEADER:
            return
        if not self._checkQuorum():
            return
        self._broadcast()
        self._scheduleHeartbeat()

    def _checkQuorum(self):
        """
        CheckQuorum (thesis §6.2): a leader that has not heard from a quorum
        within an election timeout steps down, so a leader cut off from the
        majority stops claiming leadership.
        """
        now = self.clock.seconds()
        recent = 1 + sum(
            1
            for peer in self._peers.values()
            if now - peer.lastAck <= self.electionTimeout[1]
        )
        if recent >= self.quorum:
            return True
        self.log.info(
            "leader {nodeId} lost contact with a quorum in term {term}; stepping down",
            nodeId=self.nodeId,
            term=self.currentTerm,
        )
        self._becomeFollower(self.currentTerm, 0)
        return False

    # -- roles ------------------------------------------------------------

    def _becomeFollower(self, term, leaderId):
        wasLeader = self.role == LEADER
        if term > self.currentTerm:
            self.log.info(
                "node {nodeId} term {old} -> {new}",
                nodeId=self.nodeId,
                old=self.currentTerm,
                new=term,
            )
            self.currentTerm = term
            self.votedFor = 0
            self._saveHardState()
        self.role = FOLLOWER
        self._setLeader(leaderId)
        if wasLeader:
            if self._heartbeatTimer is not None and self._heartbeatTimer.active():
                self._heartbeatTimer.cancel()
            self._heartbeatTimer = None
            self._flush()
            self._failPending(
                CommitUnknown("leadership lost before the entry was seen to commit"),
                NotLeader(leaderId, "leadership lost during the read"),
            )
        self._resetElectionTimer()

    def _setLeader(self, leaderId):
        if leaderId != self.leaderId:
            if leaderId:
                self.log.info(
                    "node {nodeId} sees leader {leaderId} in term {term}",
                    nodeId=self.nodeId,
                    leaderId=leaderId,
                    term=self.currentTerm,
                )
            self.leaderId = leaderId
        if leaderId:
            waiters, self._leaderWaiters = self._leaderWaiters, []
            for d in waiters:
                d.callback(leaderId)

    def _failPending(self, writeError, readError):
        pending, self._pending = self._pending, {}
        for _, d in pending.values():
            d.errback(writeError)
        reads = self._readsAwaitingRound + self._readsAwaitingApply
        self._readsAwaitingRound, self._readsAwaitingApply = [], []
        for _, d in reads:
            d.errback(readError)

    def _startPreVote(self):
        """
        PreVote (thesis §9.6): before raising its term, a node asks whether
        a quorum would vote for it.  A node that was merely cut off (its
        peers still hear from a leader) gets no pre-votes, so it never
        raises the term and never deposes a healthy leader when it returns.
        """
        if not self.running or self.role == LEADER:
            return
        # The leader is kept until an election really starts: a few lost
        # heartbeats are no reason to stop forwarding to it.
        term = self.currentTerm
        self._preVoteTerm = term + 1
        self._preVotes = {self.nodeId}
        self._resetElectionTimer()
        self._askVotes(term + 1, True, self._preVoteAnswered, term)
        self._countPreVotes()

    def _askVotes(self, term, preVote, answered, *args):
        """Send a (pre-)vote request for C{term} to every peer."""
        request = RequestVote(
            term, self.nodeId, self.raftLog.lastIndex, self.raftLog.lastTerm, preVote=preVote
        )
        for peerId in self.peerIds:
            d = self.transport.requestVote(peerId, request)
            d.addTimeout(self.rpcTimeout, self.clock)
            d.addCallbacks(answered, lambda f: None, callbackArgs=(peerId,) + args)

    def _preVoteAnswered(self, result, peerId, term):
        if not self.running:
            return
        if not result.voteGranted and result.term > self.currentTerm:
            self._becomeFollower(result.term, 0)
            return
        if self.currentTerm != term or self.role == LEADER or self._preVoteTerm != term + 1:
            return
        if result.voteGranted:
            self._preVotes.add(peerId)
            self._countPreVotes()

    def _countPreVotes(self):
        if self._preVoteTerm and len(self._preVotes) >= self.quorum:
            self._preVoteTerm = 0
            self._startElection()

    def _startElection(self):
        """§5.2: become a candidate, vote for ourselves, ask the others."""
        self._preVoteTerm = 0
        if not self.running or self.role == LEADER:
            return
        self.role = CANDIDATE
        self.currentTerm += 1
        self.votedFor = self.nodeId
        self._setLeader(0)
        self._votes = set()
        term = self.currentTerm
        self.log.info(
            "node {nodeId} starts an election for term {term}", nodeId=self.nodeId, term=term
        )
        self._saveHardState()
        self._resetElectionTimer()
        # Our own vote counts only once it is durable: a candidate that
        # crashed before that could otherwise vote twice in one term.
        self._whenDurable().addCallback(self._requestVotes, term).addErrback(lambda f: None)

    def _requestVotes(self, _, term):
        if self.role != CANDIDATE or self.currentTerm != term:
            return
        self._votes.add(self.nodeId)
        self._askVotes(term, False, self._voteAnswered, term)
        self._countVotes()

    def _voteAnswered(self, result, peerId, term):
        if not self.running:
            return
        if result.term > self.currentTerm:
            self._becomeFollower(result.term, 0)
            return
        if self.role != CANDIDATE or self.currentTerm != term:
            return
        if result.voteGranted:
            self._votes.add(peerId)
            self._countVotes()

    def _countVotes(self):
        if self.role == CANDIDATE and len(self._votes) >= self.quorum:
            self._becomeLeader()

    def _becomeLeader(self):
        self.log.info(
            "node {nodeId} became leader for term {term}", nodeId=self.nodeId, term=self.currentTerm
        )
        self.role = LEADER
        if self._electionTimer is not None and self._electionTimer.active():
            self._electionTimer.cancel()
        self._electionTimer = None
        now = self.clock.seconds()
        nextIndex = self.raftLog.lastIndex + 1
        self._peers = {p: _Peer(nextIndex, now) for p in self.peerIds}
        self._setLeader(self.nodeId)
        # §5.4.2 / Figure 8: entries of earlier terms commit only beneath one
        # of ours, so a new leader starts its term with a no-op entry.
        self._propose(b"")
        self._flush()
        self._scheduleHeartbeat()

    # -- client requests --------------------------------------------------

    def propose(self, data):
        """
        Append C{data} to the log as leader.

        @return: a Deferred firing with C{(index, result)} once the entry is
            committed and applied here; failing with L{NotLeader} if nothing
            was proposed, L{CommitUnknown} if leadership was lost after, or
            L{StorageFailed}.
        """
        if self.failed is not None:
            return defer.fail(StorageFailed(str(self.failed.value)))
        if self.role != LEADER or not self.running:
            return defer.fail(NotLeader(self.leaderId))
        d = defer.Deferred()
        index = self._propose(data)
        self._pending[index] = (self.currentTerm, d)
        if self._flushCall is None:
            # Group everything proposed in this reactor turn into one append,
            # one fsync and one AppendEntries per follower.
            self._flushCall = self.clock.callLater(0, self._flush)
        return d

    def _propose(self, data):
        entry = Entry(self.raftLog.lastIndex + 1, self.currentTerm, data)
        self.raftLog.append([entry])
        self._unflushed.append(entry)
        return entry.index

    def _flush(self):
        if self._flushCall is not None and self._flushCall.active():
            self._flushCall.cancel()
        self._flushCall = None
        if not self._unflushed:
            return
        entries, self._unflushed = self._unflushed, []
        self._store(entries)
        if self.role == LEADER:
            # Followers get the entries while our own fsync is under way.
            for peerId, peer in self._peers.items():
                self._replicate(peerId, peer)

    def readIndex(self):
        """
        ReadIndex (thesis §6.4): a Deferred firing once the local state
        machine reflects every write committed before this call, with
        leadership confirmed by a quorum after the call.  Fails with
        L{NotLeader} on a node that is not (or stops being) the leader.
        """
        if self.role != LEADER or not self.running:
            return defer.fail(NotLeader(self.leaderId))
        d = defer.Deferred()
        self._readsAwaitingRound.append((self._round + 1, d))
        if self._readCall is None:
            # Every read that arrives in this turn shares one heartbeat round.
            self._readCall = self.clock.callLater(0, self._readRound)
        return d

    def _readRound(self):
        self._readCall = None
        if self.role != LEADER:
            return
        self._round += 1
        self._broadcast()
        self._serveReads()

    def _serveReads(self):
        if self.role == LEADER and self._readsAwaitingRound:
            # Reads wait until this term has committed an entry (its no-op),
            # else our commit index may lag the previous leader's.
            if self.raftLog.term(self.commitIndex) == self.currentTerm:
                rounds = sorted(
                    [self._round] + [p.ackedRound for p in self._peers.values()], reverse=True
                )
                confirmed = rounds[self.quorum - 1]
                waiting = []
                for required, d in self._readsAwaitingRound:
                    if required <= confirmed:
                        self._readsAwaitingApply.append((self.commitIndex, d))
                    else:
                        waiting.append((required, d))
                self._readsAwaitingRound = waiting
        if self._readsAwaitingApply:
            ready = [r for r in self._readsAwaitingApply if r[0] <= self.lastApplied]
            if ready:
                self._readsAwaitingApply = [
                    r for r in self._readsAwaitingApply if r[0] > self.lastApplied
                ]
                for _, d in ready:
                    d.callback(None)

    def whenLeaderKnown(self):
        """A Deferred firing with the leader's id as soon as one is known."""
        if self.leaderId:
            return defer.succeed(self.leaderId)
        d = defer.Deferred()
        self._leaderWaiters.append(d)
        return d

    def status(self):
        return Status(
            self.nodeId,
            self.role,
            self.currentTerm,
            self.leaderId,
            self.commitIndex,
            self.lastApplied,
            self.raftLog.lastIndex,
        )

    # -- replication (leader side) ------------------------------------------

    def _broadcast(self):
        for peerId, peer in self._peers.items():
            busy = peer.inflight or peer.snapshotBusy
            self._sendAppend(peerId, peer, heartbeatOnly=bool(busy))

    def _canSend(self, peer):
        if peer.snapshotBusy:
            return False
        if peer.probing:
            return not peer.inflight
        return peer.inflight < self.maxInflight and peer.inflightBytes < self.maxInflightBytes

    def _replicate(self, peerId, peer):
        """Send what the follower lacks, as far as the pipeline window allows."""
        while self._canSend(peer) and peer.nextIndex <= self.raftLog.lastIndex:
            snapshot = peer.nextIndex <= self.raftLog.startIndex
            inflight = peer.inflight
            self._sendAppend(peerId, peer)
            if snapshot or peer.inflight <= inflight:
                # One snapshot chunk at a time; and a send that failed at once
                # (a peer that is down: connection refused) is retried at the
                # next heartbeat, not in a tight loop.
                break

    def _sendAppend(self, peerId, peer, heartbeatOnly=False):
        """
        Send entries from C{peer.nextIndex}, or, while a batch is in flight,
        a bare heartbeat anchored at C{matchIndex} (which the follower is known
        to hold), so heartbeats never queue behind a large batch.
        """
        if heartbeatOnly:
            # Anchored where the follower is known to match (or at our
            # snapshot, if that is further): a heartbeat carries no entries.
            prev, entries = max(peer.matchIndex, self.raftLog.startIndex), []
        elif peer.nextIndex <= self.raftLog.startIndex:
            # What it needs next was compacted away: send the snapshot (§7).
            self._sendSnapshot(peerId, peer)
            return
        else:
            prev = peer.nextIndex - 1
            entries = self._batchFrom(peer.nextIndex)
            peer.inflight += 1
            peer.inflightBytes += _size(entries)
            if not peer.probing:
                # Optimistically: the next batch follows this one (§10.2.1
                # of the thesis, pipelining).
                peer.nextIndex = prev + len(entries) + 1
        request = AppendEntries(
            self.currentTerm,
            self.nodeId,
            prev,
            self.raftLog.term(prev),
            entries,
            self.commitIndex,
        )
        d = self.transport.appendEntries(peerId, request)
        d.addTimeout(self.rpcTimeout, self.clock)
        d.addCallbacks(
            self._appendAnswered,
            self._appendFailed,
            callbackArgs=(peerId, request, self._round, heartbeatOnly),
            errbackArgs=(peerId, request, heartbeatOnly),
        )

    def _sendSnapshot(self, peerId, peer):
        """
        Send the next chunk of our snapshot to a follower that is too far
        behind.  One chunk is in flight at a time (flow control), and
        heartbeats keep flowing separately, so a large transfer never starves
        them; a transfer of a snapshot that has since been replaced starts
        over with the new one.
        """
        meta = self.snapshot
        if peer.snapshotMeta != meta:
            peer.snapshotMeta, peer.snapshotOffset = meta, 0
        peer.snapshotBusy = True
        term, offset, round = self.currentTerm, peer.snapshotOffset, self._round

        def send(chunk):
            data, total = chunk
            request = InstallSnapshot(
                term, self.nodeId, meta, offset, data, offset + len(data) >= total
            )
            d = self.transport.installSnapshot(peerId, request)
            d.addTimeout(max(self.rpcTimeout, 2.0), self.clock)
            return d.addCallback(self._snapshotAnswered, peerId, request, round)

        def failed(failure):
            if self.role == LEADER and self.currentTerm == term:
                peer.snapshotBusy = False
                if failure.check(SnapshotChanged):
                    peer.snapshotMeta = None

        d = self.storage.readSnapshot(meta, offset, self.snapshotChunk)
        d.addCallback(send).addErrback(failed)

    def _heardFrom(self, result, peerId, request, round):
        """
        A follower answered C{request}: step down if it knows a newer term;
        else, if we still lead in the request's term, note the contact (for
        CheckQuorum and ReadIndex) and return its L{_Peer}.
        """
        if not self.running:
            return None
        if result.term > self.currentTerm:
            self._becomeFollower(result.term, 0)
            return None
        if self.role != LEADER or request.term != self.currentTerm:
            return None
        peer = self._peers[peerId]
        peer.lastAck = self.clock.seconds()
        if round > peer.ackedRound:
            peer.ackedRound = round
        return peer

    def _snapshotAnswered(self, result, peerId, request, round):
        peer = self._heardFrom(result, peerId, request, round)
        if peer is None:
            return
        peer.snapshotBusy = False
        if peer.snapshotMeta != request.meta:
            return
        if result.success and request.done:
            self.log.info(
                "follower {peerId} installed snapshot at {index}",
                peerId=peerId,
                index=request.meta.lastIndex,
            )
            peer.snapshotMeta = None
            peer.matchIndex = max(peer.matchIndex, request.meta.lastIndex)
            peer.nextIndex = max(peer.nextIndex, peer.matchIndex + 1)
            self._advanceCommit()
            self._replicate(peerId, peer)
        else:
            peer.snapshotOffset = result.nextOffset
            if not result.success:
                return  # try again at the next heartbeat
            self._sendSnapshot(peerId, peer)
        self._serveReads()

    def _batchFrom(self, start):
        stop = min(self.raftLog.lastIndex + 1, start + self.maxBatchEntries)
        entries = self.raftLog.slice(start, stop)
        size = 0
        for n, entry in enumerate(entries):
            size += len(entry.data) + 16
            if size > self.maxBatchBytes and n:
                return entries[:n]
        return entries

    def _appendFailed(self, failure, peerId, request, heartbeatOnly):
        peer = self._peers.get(peerId)
        if peer is not None and request.term == self.currentTerm and not heartbeatOnly:
            self._landed(peer, request)
            # Lost or timed out: resend from this batch (the earliest lost
            # one), one batch at a time until one is answered.  Not from
            # matchIndex + 1: a new leader does not know that yet (0), and
            # below its compacted log that would mean sending a snapshot to
            # a follower that may have every entry (§5.3: nextIndex is only
            # a guess; the consistency check walks it back if need be).
            peer.probing = True
            peer.nextIndex = max(
                peer.matchIndex + 1, min(peer.nextIndex, request.prevLogIndex + 1)
            )

    def _landed(self, peer, request):
        peer.inflight -= 1
        peer.inflightBytes -= _size(request.entries)

    def _appendAnswered(self, result, peerId, request, round, heartbeatOnly):
        peer = self._heardFrom(result, peerId, request, round)
        if peer is None:
            return
        if not heartbeatOnly:
            self._landed(peer, request)
        if result.success:
            if result.matchIndex > peer.matchIndex:
                peer.matchIndex = result.matchIndex
            if peer.nextIndex < peer.matchIndex + 1:
                peer.nextIndex = peer.matchIndex + 1
            if not heartbeatOnly:
                peer.probing = False
            self._advanceCommit()
        elif not heartbeatOnly:
            peer.nextIndex = self._nextAfterConflict(peer, result)
            peer.probing = True
        self._replicate(peerId, peer)
        self._serveReads()

    def _nextAfterConflict(self, peer, result):
        """
        §5.3: skip back a whole term per round trip.  If we hold the
        follower's conflicting term, resume after our last entry of it;
        otherwise resume at the first index the follower has of that term.
        """
        nextIndex = result.conflictIndex
        if result.conflictTerm:
            last = self.raftLog.lastIndexOfTerm(result.conflictTerm)
            if last:
                nextIndex = last + 1
        nextIndex = min(nextIndex, self.raftLog.lastIndex + 1)
        return max(nextIndex, peer.matchIndex + 1, 1)

    def _advanceCommit(self):
        """
        §5.3/§5.4.2: the commit index is the highest index held durably by a
        quorum, and it moves only onto an entry of the current term.
        """
        if self.role != LEADER:
            return
        matches = sorted(
            [self._durableLastIndex] + [p.matchIndex for p in self._peers.values()],
            reverse=True,
        )
        candidate = matches[self.quorum - 1]
        if candidate > self.commitIndex and self.raftLog.term(candidate) == self.currentTerm:
            self.commitIndex = candidate
            self._applyCommitted()

    # -- apply --------------------------------------------------------------

    def _applyCommitted(self):
        if self._restoring:
            return  # the state machine is being replaced by a snapshot
        stop = min(self.commitIndex, self.lastApplied + self.applyBatch)
        while self.lastApplied < stop:
            index = self.lastApplied + 1
            entry = self.raftLog.entry(index)
            result = None
            self._appliedBytes += len(entry.data)
            if entry.data:
                try:
                    result = self.stateMachine.apply(index, entry.data)
                except Exception as e:
                    # Deterministic on every node; the proposer gets the error.
                    self.log.failure("applying entry {index} failed", index=index)
                    result = e
            self.lastApplied = index
            pending = self._pending.pop(index, None)
            if pending is not None:
                term, d = pending
                if term == entry.term:
                    d.callback((index, result))
                else:
                    d.errback(CommitUnknown("the entry was replaced by another leader's"))
        if self.lastApplied < self.commitIndex:
            # Apply a long backlog a slice per reactor turn.
            self.clock.callLater(0, self._applyCommitted)
        self._serveReads()
        self._maybeSnapshot()

    # -- snapshots (§7) -------------------------------------------------------

    def _maybeSnapshot(self):
        """
        Snapshot the state machine once enough has been applied since the
        last snapshot.  The state machine captures a copy-on-write view at
        once and the storage serialises and fsyncs it on its own thread, so
        neither the reactor nor the log's writes wait for it.
        """
        if self._snapshotting or self._restoring or not self.running:
            return
        since = self.lastApplied - (self.snapshot.lastIndex if self.snapshot else 0)
        if since < self.snapshotEntries and self._appliedBytes < self.snapshotBytes:
            return
        if since <= 0:
            return
        meta = SnapshotMeta(
            self.lastApplied,
            self.raftLog.term(self.lastApplied),
            tuple(sorted(self.peerIds + [self.nodeId])),
        )
        self._snapshotting = True
        self._appliedBytes = 0
        write = self.stateMachine.snapshotWriter()

        def saved(_):
            self._snapshotting = False
            self.stateMachine.snapshotDone()
            if self.snapshot is None or meta.lastIndex > self.snapshot.lastIndex:
                self.snapshot = meta
            self.log.info(
                "node {nodeId} took a snapshot at {index}", nodeId=self.nodeId, index=meta.lastIndex
            )
            self.raftLog.compact(min(self.lastApplied, meta.lastIndex - self.snapshotKeep))

        def failed(failure):
            self._snapshotting = False
            self.stateMachine.snapshotDone()
            if failure.check(SnapshotChanged):
                # A newer snapshot (installed from the leader) got there first.
                self.log.info("snapshot at {index} superseded", index=meta.lastIndex)
            else:
                self.log.failure("snapshot at {index} failed", failure, index=meta.lastIndex)

        self.storage.saveSnapshot(meta, write).addCallbacks(saved, failed)

    # -- RPC handlers (follower side) ---------------------------------------

    def handleRequestVote(self, request):
        """§5.2 and §5.4.1; answered only once our term and vote are durable."""
        if not self.running:
            return defer.fail(NotLeader(0, "node stopped"))
        if request.term > self.currentTerm and self._inLease():
            return defer.succeed(RequestVoteResult(self.currentTerm, False))
        if request.preVote:
            # Answered from memory: a pre-vote changes nothing here.
            if request.term > self.currentTerm and self.raftLog.isUpToDate(
                request.lastLogIndex, request.lastLogTerm
            ):
                return defer.succeed(RequestVoteResult(request.term, True))
            return defer.succeed(RequestVoteResult(self.currentTerm, False))
        if request.term > self.currentTerm:
            self._becomeFollower(request.term, 0)
        granted = False
        if (
            request.term == self.currentTerm
            and self.role == FOLLOWER
            and self.votedFor in (0, request.candidateId)
            and self.raftLog.isUpToDate(request.lastLogIndex, request.lastLogTerm)
        ):
            if self.votedFor != request.candidateId:
                self.votedFor = request.candidateId
                self._saveHardState()
            granted = True
            self._resetElectionTimer()
        result = RequestVoteResult(self.currentTerm, granted)
        return self._whenDurable().addCallback(lambda _: result)

    def handleAppendEntries(self, request):
        """§5.3; answered only once every entry and term change is durable."""
        if not self.running:
            return defer.fail(NotLeader(0, "node stopped"))
        if request.term < self.currentTerm:
            return defer.succeed(AppendEntriesResult(self.currentTerm, False))
        if request.term > self.currentTerm or self.role != FOLLOWER:
            self._becomeFollower(request.term, request.leaderId)
        else:
            self._setLeader(request.leaderId)
            self._resetElectionTimer()
        self._lastLeaderContact = self.clock.seconds()
        self._preVoteTerm = 0
        term = self.currentTerm
        log = self.raftLog
        prev, prevTerm, entries = request.prevLogIndex, request.prevLogTerm, request.entries
        match = prev + len(entries)
        if prev < log.startIndex:
            # Entries up to our snapshot are committed, so they match: look
            # only at what follows it.
            entries = entries[log.startIndex - prev :]
            prev, prevTerm = log.startIndex, log.startTerm
        if prev > log.lastIndex:
            result = AppendEntriesResult(term, False, conflictIndex=log.lastIndex + 1)
            return self._whenDurable().addCallback(lambda _: result)
        if log.term(prev) != prevTerm:
            conflictTerm = log.term(prev)
            result = AppendEntriesResult(
                term,
                False,
                conflictIndex=log.firstIndexOfTerm(conflictTerm),
                conflictTerm=conflictTerm,
            )
            return self._whenDurable().addCallback(lambda _: result)
        for n, entry in enumerate(entries):
            if entry.index > log.lastIndex:
                self._appendToLog(entries[n:])
                break
            if log.term(entry.index) != entry.term:
                self._truncate(entry.index)
                self._appendToLog(entries[n:])
                break
        if request.leaderCommit > self.commitIndex:
            newCommit = min(request.leaderCommit, match)
            if newCommit > self.commitIndex:
                self.commitIndex = newCommit
                self._applyCommitted()
        result = AppendEntriesResult(term, True, matchIndex=match)
        return self._whenDurable().addCallback(lambda _: result)

    def handleInstallSnapshot(self, request):
        """
        §7 / Figure 13: receive one chunk of the leader's snapshot; on the
        last one, make it ours: keep the log after it if our log holds the
        snapshot's last entry, else discard the whole log; then replace the
        state machine with the snapshot's state.
        """
        if not self.running:
            return defer.fail(NotLeader(0, "node stopped"))
        if request.term < self.currentTerm:
            return defer.succeed(InstallSnapshotResult(self.currentTerm, False, 0))
        if request.term > self.currentTerm or self.role != FOLLOWER:
            self._becomeFollower(request.term, request.leaderId)
        else:
            self._setLeader(request.leaderId)
            self._resetElectionTimer()
        self._lastLeaderContact = self.clock.seconds()
        self._preVoteTerm = 0
        term, meta = self.currentTerm, request.meta
        nextOffset = request.offset + len(request.data)
        if meta.lastIndex <= self.commitIndex:
            # We already hold all of it: skip to the end of the transfer.
            return self._whenDurable().addCallback(
                lambda _: InstallSnapshotResult(term, True, SKIP_TRANSFER)
            )
        if self._receiving or (request.done and (self._snapshotting or self._restoring)):
            # One chunk at a time (a chunk retransmitted after a pause must not
            # race the one being written), and our own snapshot must not land
            # after this one: ask again later.
            return defer.succeed(InstallSnapshotResult(term, False, request.offset))

        def received(_):
            self._receiving = False
            if request.done and not self._installSnapshot(meta):
                raise SnapshotChanged(f"{meta} could not be installed; starting over")
            return self._whenDurable()

        def failed(failure):
            self._receiving = False
            return failure

        self._receiving = True
        d = self.storage.receiveSnapshot(meta, request.offset, request.data)
        d.addCallbacks(received, failed)
        d.addCallbacks(
            lambda _: InstallSnapshotResult(term, True, nextOffset),
            lambda f: f.trap(SnapshotChanged) and InstallSnapshotResult(term, False, 0),
        )
        return d

    def _installSnapshot(self, meta):
        """
        Make a completely received snapshot ours; C{False} if the storage
        refused it at once (an incomplete or damaged transfer: nothing
        changed, and the leader starts the transfer over).
        """
        if meta.lastIndex <= self.commitIndex or self._restoring:
            return True
        log = self.raftLog
        keep = log.startIndex <= meta.lastIndex <= log.lastIndex and (
            log.term(meta.lastIndex) == meta.lastTerm
        )
        # Issued before the log changes in memory, in order with the writes
        # issued before and after it; refused at once if the transfer is not
        # complete and sound.
        installed = self.storage.installSnapshot(meta, not keep)
        if installed.called and isinstance(installed.result, Failure):
            self.log.warn(
                "node {nodeId} could not install snapshot at {index}: {why}",
                nodeId=self.nodeId,
                index=meta.lastIndex,
                why=installed.result.getErrorMessage(),
            )
            installed.addErrback(lambda f: None)
            return False
        self.log.info(
            "node {nodeId} installs snapshot at {index} (term {term}); log {what}",
            nodeId=self.nodeId,
            index=meta.lastIndex,
            term=meta.lastTerm,
            what="tail kept" if keep else "discarded",
        )
        if keep:
            log.compact(meta.lastIndex)
        else:
            log.reset(meta.lastIndex, meta.lastTerm)
            self._durableLastIndex = min(self._durableLastIndex, meta.lastIndex)
        self.snapshot = meta
        self._restoring = True
        self.commitIndex = max(self.commitIndex, meta.lastIndex)
        self._persist(installed)

        def load(_):
            if self.failed is None and self.running:
                parse = self.stateMachine.parseSnapshot
                self.storage.loadSnapshot(parse).addCallbacks(restore, failed)

        def restore(loaded):
            _, parsed = loaded
            self.stateMachine.restoreSnapshot(parsed)
            self.lastApplied = meta.lastIndex
            self._appliedBytes = 0
            self._restoring = False
            self._applyCommitted()

        def failed(failure):
            self._storageFailed(failure)

        installed.addCallback(load)

    def _truncate(self, fromIndex):
        """Drop a conflicting suffix, in memory and durably (§5.3)."""
        if fromIndex <= self.commitIndex:
            # Raft's Log Matching and Leader Completeness make this
            # impossible; if it happens, refusing is the only safe answer.
            raise AssertionError(
                f"node {self.nodeId}: asked to truncate committed entry {fromIndex} "
                f"(commit index {self.commitIndex})"
            )
        self.log.info(
            "node {nodeId} truncates its log from {index}", nodeId=self.nodeId, index=fromIndex
        )
        self.raftLog.truncateFrom(fromIndex)
        self._durableLastIndex = min(self._durableLastIndex, fromIndex - 1)
        self._persist(self.storage.truncateSuffix(fromIndex))
