"""
One Raft node: roles, elections, terms, and the wiring of the core's units.

The node does no I/O of its own.  It reaches peers through an L{ITransport},
persists through an L{IStorage} and applies to an L{IStateMachine}; time
comes from the C{clock} (an L{IReactorTime}) it is given.  Section numbers
refer to the extended Raft paper (Ongaro & Ousterhout, 2014) and Ongaro's
thesis (2014).

Each rule that can stand alone lives in a unit of its own, which this class
drives:

 - L{twisted_raft.raft.quorum}: every majority (§5.2 votes, §5.3 commit,
   thesis §6.2 CheckQuorum, §6.4 ReadIndex rounds), over a configuration;
 - L{twisted_raft.raft.progress}: each follower's replication state (probe,
   replicate, snapshot) and in-flight window (§5.3, thesis §10.2.1);
 - L{twisted_raft.raft.replication}: the leader sending followers what
   their progress says they lack, and taking in the answers (§5.3);
 - L{twisted_raft.raft.readindex}: the ReadIndex queue (thesis §6.4);
 - L{twisted_raft.raft.snapshots}: taking and installing snapshots, and
   sending and receiving them (§7);
 - L{twisted_raft.raft.durability}: the persistence barrier;
 - L{twisted_raft.raft.log}: the in-memory log and its index/term questions;
 - L{twisted_raft.raft.transfer}: leadership transfer, the leader's side
   (thesis §3.10).

What stays here is what owns the node's term, role and indexes, and so
touches several units at once: roles and terms (§5.1), elections (§5.2,
§5.4.1, PreVote thesis §9.6, the lease of §4.2.3, CheckQuorum §6.2), the
client entry points (propose, ReadIndex), the follower's RPC handlers
(§5.3, and TimeoutNow's), commit (§5.4.2) and apply, and -- since
membership change -- when a configuration takes effect and who may
campaign (thesis §4.1, §4.2.2), each of which changes the role, holds or
releases proposals, or reacts to the commit index.  The pure parts of
membership already live apart (L{twisted_raft.raft.membership},
L{twisted_raft.raft.conflog}).

Durability (Figure 2, "Rules for Servers"): a node answers a vote or an
AppendEntries only once every storage write issued before the answer is
durable; the leader counts its own log towards a quorum only up to the index
its storage has made durable, while followers receive the same entries in
parallel.

Why it is still over 1,100 lines (some 780 of code): what stays is what
owns the term, the role and the indexes (above); each further unit would
reach back into them as L{LeadershipTransfers} does.
"""

import random as _random

from twisted.internet import defer
from twisted.logger import Logger

from twisted_raft.raft.config import RaftConfig
from twisted_raft.raft.conflog import ConfigurationLog
from twisted_raft.raft.durability import WriteBarrier
from twisted_raft.raft.log import RaftLog
from twisted_raft.raft.membership import (
    ChangeInProgress,
    ChangeKind,
    Configuration,
    InvalidChange,
    NotCaughtUp,
    encodeMembers,
)
from twisted_raft.raft.messages import (
    CANDIDATE,
    CONFIGURATION,
    DATA,
    FOLLOWER,
    LEADER,
    AppendEntriesResult,
    Entry,
    HardState,
    InstallSnapshotResult,
    NotLeader,
    CommitUnknown,
    RequestVote,
    RequestVoteResult,
    Status,
    StorageFailed,
    TimeoutNowResult,
    TransferFailed,
)
from twisted_raft.raft.quorum import MajorityConfig, VoteResult
from twisted_raft.raft.readindex import ReadIndex
from twisted_raft.raft.replication import Replicator
from twisted_raft.raft.snapshots import SnapshotReceiver, Snapshotter
from twisted_raft.raft.transfer import LeadershipTransfers


def _value(_, value):
    """A callback that answers C{value} (no closure per answer)."""
    return value


def _stopped():
    return defer.fail(NotLeader(0, "node stopped"))


class RaftNode:
    """
    @ivar role: L{FOLLOWER}, L{CANDIDATE} or L{LEADER}.
    @ivar leaderId: the leader this node knows of in its term, 0 if none.
    @ivar configuration: the L{Configuration} in force: the latest in the
        log (thesis §4.1); C{configs} keeps those still in the log.
    @ivar peerIds: the other members' ids (voters and learners), sorted.
    @ivar voters: the L{MajorityConfig} of every voter (this node included
        if it is one).
    @ivar raftLog: the in-memory L{RaftLog}.
    @ivar replication: the leader's side of replication (L{Replicator}).
    @ivar reads: the L{ReadIndex} queue.
    @ivar snapshots: our own snapshots (L{Snapshotter}); C{snapshot} is the
        latest one's L{SnapshotMeta}.
    @ivar receiver: the follower's side of snapshot transfers.
    @ivar leaderChangesSeen: how many times this node has come to know a
        new leadership (its C{leader_change} events; for metrics: plain
        counters, so the core does no I/O and costs an addition).
    @ivar proposalsCommitted: proposals of this node, as leader, that
        committed and were applied.
    @ivar proposalsFailed: proposals of this node, as leader, whose outcome
        was lost (leadership lost, entry replaced, node stopped).
    """

    logger = Logger()

    def __init__(
        self, nodeId, peerIds, storage, transport, stateMachine, clock,
        config=None, rng=None, onFatalError=None, configuration=None,
    ):
        """
        @param config: a L{RaftConfig} (every knob and its trade-off); the
            defaults if C{None}.
        @param rng: the source of randomised election timeouts (seeded in
            simulations, so a run can be replayed).
        @param onFatalError: called with the L{Failure} once storage has
            failed and the node has stopped.
        @param configuration: the L{Configuration} a new cluster starts with,
            used only if the storage holds none (then it is stored); by
            default C{peerIds} and this node as voters.  A node that joins
            an existing cluster passes an empty one: it waits to be added.
        """
        self.nodeId = nodeId
        if configuration is None:
            configuration = Configuration.ofVoters(set(peerIds) | {nodeId})
        self._bootstrap = configuration
        self.configs = ConfigurationLog(configuration)
        self._useConfiguration(configuration)
        self._configWatchers = []
        self.storage = storage
        self.transport = transport
        self.stateMachine = stateMachine
        self.clock = clock
        self.config = config if config is not None else RaftConfig()
        self.rng = rng or _random.Random()
        self.onFatalError = onFatalError

        self.role = FOLLOWER
        self.currentTerm = 0
        self.votedFor = 0
        self.leaderId = 0
        self._leaderSeen = (0, 0)  # the last leadership logged: (leaderId, term)
        self.commitIndex = 0
        self.lastApplied = 0
        self.raftLog = RaftLog()
        self.running = False

        self.barrier = WriteBarrier(self._storageFailed)
        # The last index of our log that storage has made durable (what the
        # leader counts as its own towards a commit quorum).
        self._durableLastIndex = 0

        self._electionTimer = None
        self._heartbeatTimer = None
        self._votes = set()
        self._preVotes = set()
        self._preVoteTerm = 0
        self._lastLeaderContact = None
        self._leaderWaiters = []
        self.leaderChangesSeen = 0
        self.proposalsCommitted = 0
        self.proposalsFailed = 0

        self._unflushed = []
        self._flushCall = None
        self._pending = {}
        self.reads = ReadIndex(nodeId)
        self._readCall = None

        self.snapshots = Snapshotter(self)
        self.replication = Replicator(self)
        self.transfers = LeadershipTransfers(self)
        self.receiver = SnapshotReceiver(storage, self.snapshots.install, self.barrier.whenDurable)

    # -- life cycle -------------------------------------------------------

    def start(self):
        """Recover from storage and start the election timer."""

        def loaded(state):
            self.currentTerm = state.hardState.term
            self.votedFor = state.hardState.votedFor
            snapshot = self.snapshots.meta = state.snapshot
            base = (snapshot.lastIndex, snapshot.lastTerm) if snapshot else (0, 0)
            self.raftLog = RaftLog(state.entries, *base)
            self._loadConfiguration(state)
            self._durableLastIndex = self.raftLog.lastIndex
            if snapshot is not None:
                # Restart time is the snapshot plus the log after it (§7).
                parse = self.stateMachine.parseSnapshot
                return self.storage.loadSnapshot(parse).addCallback(restored)

        def restored(loaded):
            meta, parsed = loaded
            self.stateMachine.restoreSnapshot(parsed)
            self.commitIndex = self.lastApplied = meta.lastIndex

        def started(_):
            self.running = True
            self.logger.info(
                "node {nodeId} recovered term={term} votedFor={votedFor} "
                "snapshot={snapshot} lastIndex={lastIndex}",
                raftkv_event="node_recovered",
                nodeId=self.nodeId,
                term=self.currentTerm,
                votedFor=self.votedFor,
                snapshot=self.raftLog.startIndex,
                lastIndex=self.raftLog.lastIndex,
            )
            self._resetElectionTimer()
            self._notifyConfiguration()
            return self

        return self.storage.load().addCallback(loaded).addCallback(started)

    def _loadConfiguration(self, state):
        """
        The configuration in force after a restart: the latest in the log,
        above the snapshot's (§7: a node restarted from a snapshot alone
        knows the committed configuration), else the bootstrap one, which a
        new data dir stores once so that a later C{--peers} cannot change
        who the members are.
        """
        if state.snapshot is not None:
            base = state.snapshot.configuration
        elif state.bootstrap is not None:
            base = state.bootstrap
        else:
            base = self._bootstrap
            if base.members:
                self.barrier.track(self.storage.bootstrap(base))
        self.configs = ConfigurationLog(base)
        self.configs.append(state.entries)
        self._useConfiguration(self.configs.latest)

    def stop(self):
        """Stop all timers and fail whatever waits on this node."""
        self.running = False
        for call in (self._electionTimer, self._heartbeatTimer, self._flushCall, self._readCall):
            if call is not None and call.active():
                call.cancel()
        self._electionTimer = self._heartbeatTimer = self._flushCall = self._readCall = None
        self._failPending(CommitUnknown("node stopped"), NotLeader(0, "node stopped"))
        self.transfers.end(NotLeader(0, "node stopped"))

    @property
    def snapshot(self):
        """The L{SnapshotMeta} of our latest snapshot, or C{None}."""
        return self.snapshots.meta

    # -- persistence ------------------------------------------------------

    @property
    def failed(self):
        """The L{Failure} of the storage write that stopped this node, or C{None}."""
        return self.barrier.failed

    def _storageFailed(self, failure):
        # fsyncgate: once a write may not be durable we cannot promise
        # anything, so the node stops rather than carrying on.
        # The storage logs the failure itself (with its traceback).
        self.logger.critical(
            "node {nodeId} stops: its storage failed ({error})",
            raftkv_event="node_fatal", nodeId=self.nodeId, error=failure.getErrorMessage(),
        )
        self.stop()
        if self.onFatalError is not None:
            self.onFatalError(failure)

    def _saveHardState(self):
        self.barrier.track(self.storage.saveHardState(HardState(self.currentTerm, self.votedFor)))

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
        # Before the barrier's errback, so a failed write is never taken as durable.
        d.addCallback(appended)
        self.barrier.track(d)

    def _answerWhenDurable(self, result):
        return self.barrier.whenDurable().addCallback(_value, result)

    # -- timers -----------------------------------------------------------

    def _resetElectionTimer(self):
        if self._electionTimer is not None and self._electionTimer.active():
            self._electionTimer.cancel()
        self._electionTimer = None
        if self.running and self.role != LEADER and self._mayCampaign():
            timeout = self.rng.uniform(*self.config.electionTimeout)
            self._electionTimer = self.clock.callLater(timeout, self._electionTimeout)

    def _mayCampaign(self):
        """
        Only a voter campaigns: a learner and a node not yet added (an empty
        configuration) wait to hear from a leader.  So does a removed node,
        once it knows its removal is committed.  Until then (thesis §4.2.2)
        it still campaigns, without counting its own vote: it may be needed
        to commit its removal -- a leader that removed itself and then lost
        touch with the others may hold the only log that a majority of the
        new configuration can still elect, and the old configuration's
        voters cannot win without its vote, which goes only to logs as up to
        date as its own.
        """
        configuration = self.configuration
        if configuration.isVoter(self.nodeId):
            return True
        if configuration.index <= self.commitIndex:
            return False
        # Uncommitted as far as we know.  Only the configuration before it
        # can be: one change is in flight at a time, so any earlier one was
        # committed before it was proposed.
        previous = self.configs.previous()
        return previous is not None and previous.isVoter(self.nodeId)

    def _commitAdvanced(self):
        """A removed node that now knows its removal is committed stops campaigning."""
        if self._electionTimer is not None and not self._mayCampaign():
            self._resetElectionTimer()

    def _electionTimeout(self):
        self._electionTimer = None
        if self.config.preVote:
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
            and self.clock.seconds() - self._lastLeaderContact < self.config.electionTimeout[0]
        )

    def _scheduleHeartbeat(self):
        self._heartbeatTimer = self.clock.callLater(self.config.heartbeatInterval, self._heartbeat)

    def _heartbeat(self):
        self._heartbeatTimer = None
        if self.role != LEADER:
            return
        if not self._checkQuorum():
            return
        self.replication.broadcast()
        self.transfers.push()
        self._scheduleHeartbeat()

    def _checkQuorum(self):
        """
        CheckQuorum (thesis §6.2): a leader that has not heard from a quorum
        within an election timeout steps down, so a leader cut off from the
        majority stops claiming leadership.
        """
        now, within = self.clock.seconds(), self.config.electionTimeout[1]
        if self.replication.tracker.quorumActive(now, within):
            return True
        self.logger.info(
            "leader {nodeId} lost contact with a quorum in term {term}; stepping down",
            raftkv_event="leader_step_down",
            nodeId=self.nodeId,
            term=self.currentTerm,
        )
        self._becomeFollower(self.currentTerm, 0)
        return False

    # -- roles ------------------------------------------------------------

    def _becomeFollower(self, term, leaderId):
        wasLeader = self.role == LEADER
        if term > self.currentTerm:
            self.logger.info(
                "node {nodeId} term {old} -> {new}",
                raftkv_event="term_change",
                nodeId=self.nodeId,
                old=self.currentTerm,
                new=term,
            )
            self.currentTerm = term
            self.votedFor = 0
            self._saveHardState()
        self._setRole(FOLLOWER)
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
            self.transfers.releaseHeld()
        self._resetElectionTimer()

    def _setRole(self, role):
        """
        Take C{role} in the current term: the one place the role changes,
        so each change is exactly one C{role_change} event (the text of a
        change to leader is what C{raftkv chaos} reads in the logs).
        """
        old, self.role = self.role, role
        if old == role:
            return
        self.logger.info(
            "node {nodeId} became leader for term {term}" if role == LEADER
            else "node {nodeId} is now {to} in term {term} (was {from})",
            raftkv_event="role_change",
            nodeId=self.nodeId,
            term=self.currentTerm,
            **{"from": old, "to": role},
        )

    def _setLeader(self, leaderId):
        """
        Note the leader of the current term, 0 if none is known.  A new
        known leadership (a leader id in a term: the same node elected
        again is a new one) is one C{leader_change} event; losing it is
        none (it shows as the election, step-down or term change that loses
        it), so a leader's crash gives each survivor exactly one.
        """
        if leaderId and (leaderId, self.currentTerm) != self._leaderSeen:
            self._leaderSeen = (leaderId, self.currentTerm)
            self.leaderChangesSeen += 1
            self.logger.info(
                "node {nodeId} sees leader {leader_id} in term {term}",
                raftkv_event="leader_change",
                nodeId=self.nodeId,
                leader_id=leaderId,
                term=self.currentTerm,
            )
        self.leaderId = leaderId
        if leaderId:
            waiters, self._leaderWaiters = self._leaderWaiters, []
            for d in waiters:
                d.callback(leaderId)
            if leaderId != self.nodeId:
                self.transfers.end(None, leaderId)

    def _failPending(self, writeError, readError):
        pending, self._pending = self._pending, {}
        self.proposalsFailed += len(pending)
        for _, d in pending.values():
            d.errback(writeError)
        self.reads.failAll(readError)

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

    def _askVotes(self, term, preVote, answered, *args, transfer=False):
        """Send a (pre-)vote request for C{term} to every other voter."""
        request = RequestVote(
            term, self.nodeId, self.raftLog.lastIndex, self.raftLog.lastTerm,
            preVote=preVote, transfer=transfer,
        )
        for peerId in self.voters.voters:
            if peerId == self.nodeId:
                continue
            d = self.transport.requestVote(peerId, request)
            d.addTimeout(self.config.requestTimeout, self.clock)
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
        if (
            self._preVoteTerm
            and self._mayCampaign()
            and self.voters.voteResult(self._preVotes) is VoteResult.WON
        ):
            self._preVoteTerm = 0
            self._startElection()

    def _startElection(self, transfer=False):
        """
        §5.2: become a candidate, vote for ourselves, ask the others; with
        C{transfer}, at the leader's request (thesis §3.10).
        """
        self._preVoteTerm = 0
        if not self.running or self.role == LEADER or not self._mayCampaign():
            return
        self.currentTerm += 1
        self.votedFor = self.nodeId
        self._setRole(CANDIDATE)
        self._setLeader(0)
        self._votes = set()
        term = self.currentTerm
        self.logger.info(
            "node {nodeId} starts an election for term {term}",
            raftkv_event="election_start", nodeId=self.nodeId, term=term, transfer=transfer,
        )
        self._saveHardState()
        self._resetElectionTimer()
        # Our own vote counts only once it is durable: a candidate that
        # crashed before that could otherwise vote twice in one term.
        self.barrier.whenDurable().addCallback(self._requestVotes, term, transfer).addErrback(
            lambda f: None
        )

    def _requestVotes(self, _, term, transfer):
        if self.role != CANDIDATE or self.currentTerm != term:
            return
        self._votes.add(self.nodeId)
        self._askVotes(term, False, self._voteAnswered, term, transfer=transfer)
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
        if (
            self.role == CANDIDATE
            and self._mayCampaign()
            and self.voters.voteResult(self._votes) is VoteResult.WON
        ):
            self._becomeLeader()

    def _becomeLeader(self):
        self._setRole(LEADER)
        if self._electionTimer is not None and self._electionTimer.active():
            self._electionTimer.cancel()
        self._electionTimer = None
        # A transfer started in an earlier term of ours failed: we lead again.
        self.transfers.end(TransferFailed("this node was elected again"))
        self.replication.start()
        self.reads.reset(self.voters.voters)
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
            was proposed (only ever at once: the server reroutes on it),
            L{CommitUnknown} if leadership was lost after, or
            L{StorageFailed}.
        """
        failed = self.barrier.failed
        if failed is not None:
            return defer.fail(StorageFailed(str(failed.value)))
        if self.role != LEADER or not self.running:
            return defer.fail(NotLeader(self.leaderId))
        d = defer.Deferred()
        if self.transfers.hold(data, d):
            return d
        self._proposePending(data, DATA, d)
        return d

    def _proposePending(self, data, kind, d):
        index = self._propose(data, kind)
        self._pending[index] = (self.currentTerm, d)
        if self._flushCall is None:
            # Group everything proposed in this reactor turn into one append,
            # one fsync and one AppendEntries per follower.
            self._flushCall = self.clock.callLater(0, self._flush)

    def _propose(self, data, kind=DATA):
        entry = Entry(self.raftLog.lastIndex + 1, self.currentTerm, data, kind)
        self.raftLog.append([entry])
        self._unflushed.append(entry)
        if kind is CONFIGURATION:
            self.configs.append([entry])
            self._configurationChanged()
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
            self.replication.replicateAll()

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
        self.reads.add(d)
        if self._readCall is None:
            # Every read that arrives in this turn shares one heartbeat round.
            self._readCall = self.clock.callLater(0, self._readRound)
        return d

    def _readRound(self):
        self._readCall = None
        if self.role != LEADER:
            return
        self.reads.newRound()
        self.replication.broadcast()
        self._serveReads()

    def _serveReads(self):
        reads = self.reads
        if reads.awaitingRound and self.role == LEADER:
            # Reads wait until this term has committed an entry (its no-op),
            # else our commit index may lag the previous leader's (§6.4).
            if self.raftLog.term(self.commitIndex) == self.currentTerm:
                reads.confirm(self.voters, self.commitIndex)
        if reads.awaitingApply:
            reads.release(self.lastApplied)

    def whenLeaderKnown(self):
        """A Deferred firing with the leader's id as soon as one is known."""
        if self.leaderId:
            return defer.succeed(self.leaderId)
        d = defer.Deferred()
        self._leaderWaiters.append(d)
        return d

    @property
    def proposalsPending(self):
        """Proposals of this node waiting to commit (or held while leadership moves)."""
        return len(self._pending) + self.transfers.held

    @property
    def lastLeaderContact(self):
        """When (C{clock.seconds()}) this node last accepted an AppendEntries or
        InstallSnapshot of a leader, or C{None}."""
        return self._lastLeaderContact

    def heardFromQuorum(self):
        """
        As leader: has a quorum answered within the maximum election timeout
        (CheckQuorum's question, thesis §6.2)?  C{False} on any other node.
        """
        if self.role != LEADER:
            return False
        return self.replication.tracker.quorumActive(
            self.clock.seconds(), self.config.electionTimeout[1]
        )

    def status(self):
        configuration = self.configuration
        return Status(
            self.nodeId,
            self.role,
            self.currentTerm,
            self.leaderId,
            self.commitIndex,
            self.lastApplied,
            self.raftLog.lastIndex,
            configuration.isVoter(self.nodeId),
            configuration.index,
        )

    # -- membership (thesis chapter 4) ------------------------------------------

    def watchConfiguration(self, watcher):
        """
        Call C{watcher(configuration)} with the configuration in force now
        (once the node has started), after every change of it (an entry
        appended or truncated, a snapshot installed), and once more when it
        becomes committed (C{configuration.index <= node.commitIndex}).
        """
        self._configWatchers.append(watcher)
        if self.running:
            watcher(self.configuration)

    def _commitMoved(self, before):
        """
        The commit index moved on from C{before}: if that committed the
        configuration in force, tell the watchers again (whoever it removed
        is now removed for good).  @return: whether it did.
        """
        self._commitAdvanced()
        if before < self.configuration.index <= self.commitIndex:
            self._notifyConfiguration()
            return True
        return False

    def acceptsPeer(self, peerId):
        """
        May node C{peerId} speak Raft to this node?  (The rule for peer
        authentication to apply, and that the simulated network applies.)

        Refused only once this node knows that C{peerId} was removed: it is a
        member of a configuration this node still holds from before the
        committed one (as far as this node knows), and of none from the
        committed one on.  Anything stricter cuts off nodes the cluster
        still needs: a configuration not known to be committed may yet be
        truncated, and the member it drops may be the very leader that will
        truncate it (or the candidate the old configuration elects); and a
        node never heard of may be a member added while this node was
        behind -- perhaps the leader that must catch it up.  Every node also
        hears the leader it follows (a leader that removed itself hands
        over with TimeoutNow after its removal commits).  A removed node
        that is still heard is harmless: its vote requests lose to PreVote,
        the leader lease and the log comparison (thesis §4.2.3).
        """
        if peerId == self.leaderId:
            return True
        configs = self.configs
        committed = configs.at(self.commitIndex).index
        past = False
        for configuration in configs.configurations:
            if peerId in configuration:
                if configuration.index >= committed:
                    return True
                past = True
        return not past

    def _notifyConfiguration(self):
        if self.running:
            for watcher in list(self._configWatchers):
                watcher(self.configuration)

    def _useConfiguration(self, configuration):
        self.configuration = configuration
        self.voters = MajorityConfig(configuration.voters)
        self.peerIds = [i for i in configuration.ids if i != self.nodeId]

    def _configurationChanged(self):
        """
        The latest configuration in the log changed: use it at once, whether
        or not it is committed (thesis §4.1).
        """
        configuration = self.configs.latest
        if configuration == self.configuration:
            return
        self._useConfiguration(configuration)
        self.replication.tracker.voters = self.voters
        self.logger.info(
            "node {nodeId} uses the configuration of index {index}: voters {voters}"
            ", learners {learners}",
            raftkv_event="configuration_change",
            nodeId=self.nodeId,
            index=configuration.index,
            voters=list(configuration.voters),
            learners=list(configuration.learners),
        )
        if self.role == LEADER:
            self.replication.syncMembers()
        elif not self._mayCampaign():
            # Removed for good, or demoted by a truncation: stop.
            if self.role == CANDIDATE:
                self._becomeFollower(self.currentTerm, 0)
            elif self._electionTimer is not None:
                self._resetElectionTimer()
        elif self._electionTimer is None:
            # Promoted: campaign when no leader is heard from.
            self._resetElectionTimer()
        self._notifyConfiguration()

    def _configurationCommitted(self):
        """
        The leader's configuration is committed: a member it removed no
        longer gets the log, and a leader that removed itself, having
        managed the cluster until now without counting itself (thesis
        §4.2.2), hands leadership to the most up-to-date voter (§3.10)
        rather than leave the others to wait out an election timeout, and
        steps down whether or not that works.
        """
        self.replication.syncMembers()
        if self.configuration.isVoter(self.nodeId):
            return
        self.logger.info(
            "leader {nodeId} is no longer a voter; handing over leadership in term {term}",
            raftkv_event="leader_removed",
            nodeId=self.nodeId,
            term=self.currentTerm,
        )
        self.transferLeadership().addBoth(self._stepDownRemoved, self.currentTerm)

    def _stepDownRemoved(self, _, term):
        if self.running and self.role == LEADER and self.currentTerm == term:
            self._becomeFollower(term, 0)

    def changeMembership(self, change):
        """
        Propose one single-server change (a L{ConfChange}, thesis §4.1).

        @return: a Deferred firing with C{(index, configuration)} once the
            configuration entry is committed; failing at once, with nothing
            proposed, with L{NotLeader}, L{InvalidChange},
            L{ChangeInProgress} (retry shortly) or L{NotCaughtUp}; later like
            L{propose}.
        """
        failed = self.barrier.failed
        if failed is not None:
            return defer.fail(StorageFailed(str(failed.value)))
        if self.role != LEADER or not self.running:
            return defer.fail(NotLeader(self.leaderId))
        if self.transfers.active:
            return defer.fail(ChangeInProgress("a leadership transfer is under way"))
        if self.raftLog.term(self.commitIndex) != self.currentTerm:
            # Until an entry of its own term commits, this leader may not
            # know the latest committed configuration (the single-server
            # change bug, found in 2015: see docs/design.rst).
            return defer.fail(
                ChangeInProgress("the leader has not yet committed an entry of its term")
            )
        configuration = self.configuration
        if configuration.index > self.commitIndex:
            return defer.fail(
                ChangeInProgress(f"the change at index {configuration.index} is not committed yet")
            )
        try:
            new = change.applyTo(configuration)
        except InvalidChange as e:
            return defer.fail(e)
        if new.voters != configuration.voters:
            refused = self._withoutLiveQuorum(new)
            if refused is not None:
                return defer.fail(refused)
        if change.kind is ChangeKind.PROMOTE:
            progress = self.replication.tracker.progress.get(change.nodeId)
            match = progress.matchIndex if progress is not None else 0
            lag = self.raftLog.lastIndex - match
            if lag > self.config.maxPromotionLag:
                return defer.fail(
                    NotCaughtUp(
                        f"node {change.nodeId} holds the log up to index {match}, {lag} entries"
                        f" behind the leader; it can be promoted once within"
                        f" {self.config.maxPromotionLag}"
                    )
                )
        self.logger.info(
            "leader {nodeId} proposes: {kind} node {target}",
            raftkv_event="membership_propose",
            nodeId=self.nodeId,
            kind=change.kind.value,
            target=change.nodeId,
        )
        d = defer.Deferred()
        self._proposePending(encodeMembers(new), CONFIGURATION, d)
        return d

    def _withoutLiveQuorum(self, new):
        """
        Would the voters of C{new} lack a quorum that has answered within an
        election timeout?  Then the change is refused (a L{ChangeInProgress}
        is returned): made, it could not commit, and the cluster would wait
        for a down node to come back (etcd's strict reconfiguration check).
        """
        now, within = self.clock.seconds(), self.config.electionTimeout[1]
        progress = self.replication.tracker.progress
        active = {p for p, pr in progress.items() if now - pr.lastAck <= within}
        active.add(self.nodeId)
        if MajorityConfig(new.voters).hasQuorum(active):
            return None
        answering = sorted(v for v in new.voters if v in active)
        return ChangeInProgress(
            f"after this change the voters {list(new.voters)} would have no quorum that"
            f" answers (only {answering} answered within {within * 1000:g} ms); retry"
            " once the others are back"
        )

    def _mostUpToDateVoter(self):
        """The other voter whose log matches ours furthest (lowest id on a tie), or 0."""
        progress = self.replication.tracker.progress
        voters = [v for v in self.configuration.voters if v != self.nodeId and v in progress]
        if not voters:
            return 0
        return max(voters, key=lambda v: (progress[v].matchIndex, -v))

    # -- leadership transfer (thesis §3.10) ---------------------------------------

    def transferLeadership(self, targetId=0):
        """
        Hand leadership to the voter C{targetId} (0: the most up-to-date
        one): bring its log up to date, then tell it to start an election at
        once.  New proposals wait meanwhile.

        @return: a Deferred firing with the new leader's id once it is known;
            failing with L{NotLeader}, L{InvalidChange} (no such voter) or
            L{TransferFailed} (no new leader within an election timeout: this
            leader carries on, and proposes what waited).
        """
        return self.transfers.start(targetId)

    def handleTimeoutNow(self, request):
        """
        The leader asks this voter to take over (thesis §3.10): start an
        election at once, without PreVote, its vote requests overriding the
        other voters' leases.
        """
        if not self.running:
            return _stopped()
        if request.term < self.currentTerm or (
            request.term == self.currentTerm and self.leaderId not in (0, request.leaderId)
        ):
            return defer.succeed(TimeoutNowResult(self.currentTerm, False))
        if request.term > self.currentTerm:
            self._becomeFollower(request.term, request.leaderId)
        if self.role == LEADER or not self.configuration.isVoter(self.nodeId):
            return defer.succeed(TimeoutNowResult(self.currentTerm, False))
        self.logger.info(
            "node {nodeId} takes over from leader {leaderId} of term {term}",
            raftkv_event="transfer_take_over",
            nodeId=self.nodeId,
            leaderId=request.leaderId,
            term=request.term,
        )
        self._startElection(transfer=True)
        return defer.succeed(TimeoutNowResult(request.term, True))

    # -- commit and apply ---------------------------------------------------

    def _advanceCommit(self):
        """
        §5.3/§5.4.2: the commit index is the highest index held durably by a
        quorum, and it moves only onto an entry of the current term.
        """
        if self.role != LEADER:
            return
        candidate = self.replication.tracker.committedIndex(self._durableLastIndex)
        if candidate > self.commitIndex and self.raftLog.term(candidate) == self.currentTerm:
            before = self.commitIndex
            self.commitIndex = candidate
            self._applyCommitted()
            if self._commitMoved(before) and self.role == LEADER:
                self._configurationCommitted()

    def _applyCommitted(self):
        snapshots = self.snapshots
        if snapshots.restoring:
            return  # the state machine is being replaced by a snapshot
        stop = min(self.commitIndex, self.lastApplied + self.config.applyBatch)
        size = 0
        while self.lastApplied < stop:
            index = self.lastApplied + 1
            entry = self.raftLog.entry(index)
            result = None
            size += len(entry.data)
            if entry.kind is CONFIGURATION:
                result = self.configs.at(index)
            elif entry.data:
                try:
                    result = self.stateMachine.apply(index, entry.data)
                except Exception as e:
                    # Deterministic on every node; the proposer gets the error.
                    self.logger.failure(
                        "applying entry {index} failed", raftkv_event="apply_failed", index=index
                    )
                    result = e
            self.lastApplied = index
            pending = self._pending.pop(index, None)
            if pending is not None:
                term, d = pending
                if term == entry.term:
                    self.proposalsCommitted += 1
                    d.callback((index, result))
                else:
                    self.proposalsFailed += 1
                    d.errback(CommitUnknown("the entry was replaced by another leader's"))
        if self.lastApplied < self.commitIndex:
            # Apply a long backlog a slice per reactor turn.
            self.clock.callLater(0, self._applyCommitted)
        self._serveReads()
        snapshots.appliedBytes += size
        snapshots.maybeTake()

    # -- RPC handlers (follower side) ---------------------------------------

    def handleRequestVote(self, request):
        """§5.2 and §5.4.1; answered only once our term and vote are durable."""
        if not self.running:
            return _stopped()
        if request.term > self.currentTerm and self._inLease() and not request.transfer:
            # A leader that asked for this election (TimeoutNow) overrides
            # the lease (thesis §3.10, §4.2.3).
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
        return self._answerWhenDurable(RequestVoteResult(self.currentTerm, granted))

    def _acceptLeader(self, request):
        """
        A current leader's AppendEntries or InstallSnapshot (§5.1, §5.2): follow
        it, in its term if that is newer, and count the contact for the lease
        (thesis §4.2.3) and against a pending pre-vote.
        """
        if request.term > self.currentTerm or self.role != FOLLOWER:
            self._becomeFollower(request.term, request.leaderId)
        else:
            self._setLeader(request.leaderId)
            self._resetElectionTimer()
        self._lastLeaderContact = self.clock.seconds()
        self._preVoteTerm = 0

    def handleAppendEntries(self, request):
        """§5.3; answered only once every entry and term change is durable."""
        if not self.running:
            return _stopped()
        if request.term < self.currentTerm:
            return defer.succeed(AppendEntriesResult(self.currentTerm, False))
        self._acceptLeader(request)
        term, raftLog = self.currentTerm, self.raftLog
        prev, prevTerm, entries = request.prevLogIndex, request.prevLogTerm, request.entries
        match = prev + len(entries)
        if prev < raftLog.startIndex:
            # Entries up to our snapshot are committed, so they match: look
            # only at what follows it.
            entries = entries[raftLog.startIndex - prev :]
            prev, prevTerm = raftLog.startIndex, raftLog.startTerm
        if prev > raftLog.lastIndex:
            return self._answerWhenDurable(
                AppendEntriesResult(term, False, conflictIndex=raftLog.lastIndex + 1)
            )
        conflictTerm = raftLog.term(prev)
        if conflictTerm != prevTerm:
            return self._answerWhenDurable(
                AppendEntriesResult(
                    term,
                    False,
                    conflictIndex=raftLog.firstIndexOfTerm(conflictTerm),
                    conflictTerm=conflictTerm,
                )
            )
        for n, entry in enumerate(entries):
            if entry.index > raftLog.lastIndex:
                self._appendToLog(entries[n:])
                break
            if raftLog.term(entry.index) != entry.term:
                self._truncate(entry.index)
                self._appendToLog(entries[n:])
                break
        if request.leaderCommit > self.commitIndex:
            newCommit = min(request.leaderCommit, match)
            if newCommit > self.commitIndex:
                before = self.commitIndex
                self.commitIndex = newCommit
                self._applyCommitted()
                self._commitMoved(before)
        return self._answerWhenDurable(AppendEntriesResult(term, True, matchIndex=match))

    def _appendToLog(self, entries):
        self.raftLog.append(entries)
        self._store(entries)
        if self.configs.append(entries):
            self._configurationChanged()

    def _truncate(self, fromIndex):
        """Drop a conflicting suffix, in memory and durably (§5.3)."""
        if fromIndex <= self.commitIndex:
            # Raft's Log Matching and Leader Completeness make this
            # impossible; if it happens, refusing is the only safe answer.
            raise AssertionError(
                f"node {self.nodeId}: asked to truncate committed entry {fromIndex} "
                f"(commit index {self.commitIndex})"
            )
        self.logger.info(
            "node {nodeId} truncates its log from {index}",
            raftkv_event="log_truncate", nodeId=self.nodeId, index=fromIndex,
        )
        self.raftLog.truncateFrom(fromIndex)
        self._durableLastIndex = min(self._durableLastIndex, fromIndex - 1)
        self.barrier.track(self.storage.truncateSuffix(fromIndex))
        if self.configs.truncateFrom(fromIndex):
            self._configurationChanged()

    def handleInstallSnapshot(self, request):
        """
        §7 / Figure 13: receive one chunk of the leader's snapshot (see
        L{SnapshotReceiver}); the last one is installed by L{Snapshotter}.
        """
        if not self.running:
            return _stopped()
        if request.term < self.currentTerm:
            return defer.succeed(InstallSnapshotResult(self.currentTerm, False, 0))
        self._acceptLeader(request)
        busy = self.snapshots.busy
        return self.receiver.receive(request, self.currentTerm, self.commitIndex, busy)
