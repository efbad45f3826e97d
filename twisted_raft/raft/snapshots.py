"""
Snapshot transfer (§7, Figure 13): the leader's sender and the follower's
receiver of InstallSnapshot chunks.

The leader sends a follower its snapshot when what the follower needs next
was compacted away.  One chunk is in flight at a time (flow control, and the
follower writes each before it answers); heartbeats keep flowing separately,
so a large transfer never starves them.  A transfer of a snapshot that has
since been replaced starts over with the new one.

The follower writes chunks in order, one at a time, and on the last one
makes the snapshot its own (L{twisted_raft.raft.node.RaftNode}'s install:
keep the log after it if the log holds the snapshot's last entry, else
discard the whole log, then replace the state machine).  It answers
C{success=True} with the next offset it expects; after the final chunk that
means "installed".  A follower that already holds everything the snapshot
covers answers L{SKIP_TRANSFER}, which ends the transfer at once.
"""

from twisted.internet import defer

from twisted_raft.raft.messages import InstallSnapshot, InstallSnapshotResult, SnapshotChanged


SKIP_TRANSFER = 2**62
"""An InstallSnapshot C{nextOffset} past any snapshot's end: "I have it all"."""


class SnapshotSender:
    """
    The leader's side: read the next chunk of a follower's transfer from the
    storage and send it; the answer goes to C{answered} and the transfer's
    position lives in the follower's L{twisted_raft.raft.progress.Progress}.
    """

    def __init__(self, leaderId, storage, transport, clock, config, answered, stillLeading):
        """
        @param answered: called with C{(result, peerId, request, round)}.
        @param stillLeading: called with a term: do we still lead in it?
        """
        self.leaderId = leaderId
        self.storage = storage
        self.transport = transport
        self.clock = clock
        self.config = config
        self._answered = answered
        self._stillLeading = stillLeading

    def send(self, peerId, progress, meta, term, round):
        """Send the next chunk of C{meta} to C{peerId} (in C{term}, during C{round})."""
        progress.becomeSnapshot(meta)
        offset = progress.snapshotOffset
        d = self.storage.readSnapshot(meta, offset, self.config.snapshotChunk)
        d.addCallback(self._send, peerId, meta, offset, term, round)
        d.addErrback(self._failed, progress, term)

    def _send(self, chunk, peerId, meta, offset, term, round):
        data, total = chunk
        request = InstallSnapshot(
            term, self.leaderId, meta, offset, data, offset + len(data) >= total
        )
        d = self.transport.installSnapshot(peerId, request)
        d.addTimeout(self.config.chunkTimeout, self.clock)
        return d.addCallback(self._answered, peerId, request, round)

    def _failed(self, failure, progress, term):
        # Not read, not answered or not sent: retried at the next heartbeat.
        if self._stillLeading(term):
            progress.chunkFailed(failure.check(SnapshotChanged) is not None)


class SnapshotReceiver:
    """
    The follower's side: write each chunk through the storage, one at a time,
    and install the snapshot once the last chunk is written.
    """

    def __init__(self, storage, install, whenDurable):
        """
        @param install: called with a completely received snapshot's
            L{SnapshotMeta}; returns C{False} if it could not be installed
            (nothing changed, the transfer must start over).
        @param whenDurable: returns a Deferred firing once every write issued
            so far is durable.
        """
        self.storage = storage
        self._install = install
        self._whenDurable = whenDurable
        self.receiving = False

    def receive(self, request, term, commitIndex, busy):
        """
        Take one chunk in C{term}: a Deferred firing with the answer.

        @param commitIndex: ours; a snapshot up to it is nothing new.
        @param busy: are we taking or restoring a snapshot of our own?  Then
            the final chunk must wait, so ours does not land after it.
        """
        meta = request.meta
        if meta.lastIndex <= commitIndex:
            # We already hold all of it: skip to the end of the transfer.
            return self._whenDurable().addCallback(
                lambda _: InstallSnapshotResult(term, True, SKIP_TRANSFER)
            )
        if self.receiving or (request.done and busy):
            # One chunk at a time (a chunk retransmitted after a pause must not
            # race the one being written), and our own snapshot must not land
            # after this one: ask again later.
            return defer.succeed(InstallSnapshotResult(term, False, request.offset))
        self.receiving = True
        d = self.storage.receiveSnapshot(meta, request.offset, request.data)
        d.addCallbacks(self._received, self._notReceived, callbackArgs=(request,))
        d.addCallbacks(
            lambda _: InstallSnapshotResult(term, True, request.offset + len(request.data)),
            lambda f: f.trap(SnapshotChanged) and InstallSnapshotResult(term, False, 0),
        )
        return d

    def _received(self, _, request):
        self.receiving = False
        if request.done and not self._install(request.meta):
            raise SnapshotChanged(f"{request.meta} could not be installed; starting over")
        return self._whenDurable()

    def _notReceived(self, failure):
        self.receiving = False
        return failure
