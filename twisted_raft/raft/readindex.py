"""
ReadIndex (thesis §6.4): linearizable reads without writing to the log.

A read waits for two things:

 1. a heartbeat I{round} that started after the read arrived and that a
    quorum acknowledged in the leader's term, which proves that no other
    leader had taken over when the read arrived; the leader's commit index at
    that moment becomes the read's index (and the leader must have committed
    an entry of its own term first, §6.4 step 1, which the node checks);
 2. the local state machine having applied that index.

Rounds are numbered by the leader; each follower's highest acknowledged
round is kept here, and the confirmed round is the highest that a quorum
reached: the same quorum arithmetic as the commit index
(L{twisted_raft.raft.quorum.MajorityConfig.committedIndex}).  Every read that
arrives in one reactor turn shares one round.

Nothing here sends or schedules anything: L{twisted_raft.raft.node} starts
the rounds and reports commit and apply, and
L{twisted_raft.raft.replication.Replicator} reports acknowledgements.
"""


class ReadIndex:
    """
    The leader's queue of reads.

    @ivar round: the latest round started.
    @ivar awaitingRound: C{[(round, Deferred)]}, reads waiting for a quorum to
        acknowledge C{round}.
    @ivar awaitingApply: C{[(index, Deferred)]}, reads confirmed, waiting for
        C{index} to be applied.
    """

    def __init__(self, selfId):
        self.selfId = selfId
        self.round = 0
        self.acked = {}
        self.awaitingRound = []
        self.awaitingApply = []

    def reset(self, voterIds):
        """A new leadership: no follower has acknowledged any of its rounds."""
        self.acked = dict.fromkeys(voterIds, 0)
        self.acked[self.selfId] = self.round

    def add(self, d):
        """Queue a read, to fire C{d} once confirmed and applied; it needs the next round."""
        self.awaitingRound.append((self.round + 1, d))

    def newRound(self):
        """Start a round (the leader broadcasts heartbeats carrying it)."""
        self.round += 1
        self.acked[self.selfId] = self.round
        return self.round

    def ack(self, peerId, round):
        """C{peerId} answered a message sent during C{round}."""
        if round > self.acked.get(peerId, 0):
            self.acked[peerId] = round

    def confirm(self, voters, commitIndex):
        """
        Reads whose round a quorum of C{voters} acknowledged are confirmed at
        C{commitIndex}: they wait for it to be applied.
        """
        acked = self.acked
        confirmed = voters.committedIndex(lambda v: acked.get(v, 0))
        waiting = []
        for required, d in self.awaitingRound:
            if required <= confirmed:
                self.awaitingApply.append((commitIndex, d))
            else:
                waiting.append((required, d))
        self.awaitingRound = waiting

    def release(self, lastApplied):
        """Fire the confirmed reads whose index is applied."""
        ready = [r for r in self.awaitingApply if r[0] <= lastApplied]
        if ready:
            self.awaitingApply = [r for r in self.awaitingApply if r[0] > lastApplied]
            for _, d in ready:
                d.callback(None)

    def failAll(self, error):
        """Leadership is lost (or the node stops): every queued read fails."""
        reads = self.awaitingRound + self.awaitingApply
        self.awaitingRound, self.awaitingApply = [], []
        for _, d in reads:
            d.errback(error)
