"""
Snapshots (§7): a node's own (L{Snapshotter}: taking one, installing the
leader's), and their transfer (Figure 13): the leader's L{SnapshotSender}
and the follower's L{SnapshotReceiver} of InstallSnapshot chunks.

A node snapshots its state machine once enough has been applied since its
last snapshot, and compacts its log up to it (keeping a few entries, so a
follower just behind gets entries rather than the whole snapshot).

The leader sends a follower its snapshot when what the follower needs next
was compacted away.  One chunk is in flight at a time (flow control, and the
follower writes each before it answers); heartbeats keep flowing separately,
so a large transfer never starves them.  A transfer of a snapshot that has
since been replaced starts over with the new one.

The follower writes chunks in order, one at a time, and on the last one
makes the snapshot its own (L{Snapshotter.install}).  It answers
C{success=True} with the next offset it expects; after the final chunk that
means "installed".  A follower that already holds everything the snapshot
covers answers L{SKIP_TRANSFER}, which ends the transfer at once.
"""

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from twisted_raft.raft.messages import (
    InstallSnapshot,
    InstallSnapshotResult,
    SnapshotChanged,
    SnapshotMeta,
)


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
            lambda received: InstallSnapshotResult(term, True, received),
            lambda f: f.trap(SnapshotChanged) and InstallSnapshotResult(term, False, 0),
        )
        return d

    def _received(self, received, request):
        # received: the bytes held so far, where the leader goes on from (a
        # retransmitted chunk, whose answer was lost, adds nothing new)
        self.receiving = False
        if request.done and not self._install(request.meta):
            raise SnapshotChanged(f"{request.meta} could not be installed; starting over")
        return self._whenDurable().addCallback(lambda _: received)

    def _notReceived(self, failure):
        self.receiving = False
        return failure


class Snapshotter:
    """
    One node's own snapshots.

    It reads and changes its L{twisted_raft.raft.node.RaftNode}'s log, commit
    and apply state, as taking and installing a snapshot must.

    @ivar meta: the L{SnapshotMeta} of our latest snapshot, or C{None}.
    @ivar taking: is a snapshot of ours being written?
    @ivar restoring: is the state machine being replaced by the leader's?
    @ivar appliedBytes: entry data applied since the last snapshot.
    """

    logger = Logger()

    def __init__(self, node):
        self.node = node
        self.config = node.config
        self.meta = None
        self.taking = False
        self.restoring = False
        self.appliedBytes = 0

    @property
    def busy(self):
        """Taking or restoring: a snapshot received now must wait (see L{SnapshotReceiver})."""
        return self.taking or self.restoring

    def maybeTake(self):
        """
        Snapshot the state machine once enough has been applied since the
        last snapshot.  The state machine captures a copy-on-write view at
        once and the storage serialises and fsyncs it on its own thread, so
        neither the reactor nor the log's writes wait for it.
        """
        node, config = self.node, self.config
        if self.taking or self.restoring or not node.running:
            return
        since = node.lastApplied - (self.meta.lastIndex if self.meta else 0)
        if since < config.snapshotEntries and self.appliedBytes < config.snapshotBytes:
            return
        if since <= 0:
            return
        configuration = node.configs.at(node.lastApplied)
        if not configuration.members:
            # A node that joined holds no configuration for the entries
            # before its first configuration entry (the cluster's bootstrap
            # configuration is not an entry); the snapshot must record the
            # one in force (§7), so it waits until it has applied one.
            return
        meta = SnapshotMeta(node.lastApplied, node.raftLog.term(node.lastApplied), configuration)
        self.taking = True
        self.appliedBytes = 0
        write = node.stateMachine.snapshotWriter()
        node.storage.saveSnapshot(meta, write).addCallbacks(
            self._saved, self._notSaved, callbackArgs=(meta,), errbackArgs=(meta,)
        )

    def _saved(self, _, meta):
        node = self.node
        self.taking = False
        node.stateMachine.snapshotDone()
        if self.meta is None or meta.lastIndex > self.meta.lastIndex:
            self.meta = meta
        self.logger.info(
            "node {nodeId} took a snapshot at {index}",
            raftkv_event="snapshot_taken", nodeId=node.nodeId, index=meta.lastIndex,
        )
        upTo = self._compactUpTo(meta.lastIndex)
        node.raftLog.compact(upTo)
        node.configs.compact(upTo)

    def _compactUpTo(self, lastIndex):
        """
        Where to compact the log after a snapshot at C{lastIndex}: keep at
        most C{snapshotKeep} entries and about C{snapshotKeepBytes} of data
        behind it (§7: a follower a little behind gets entries, not a whole
        snapshot), and nothing that is not applied yet.
        """
        node, config = self.node, self.config
        raftLog = node.raftLog
        upTo = max(lastIndex - config.snapshotKeep, raftLog.startIndex)
        kept = 0
        index = lastIndex
        while index > upTo:
            kept += len(raftLog.entry(index).data)
            if kept > config.snapshotKeepBytes:
                upTo = index
                break
            index -= 1
        return min(node.lastApplied, upTo)

    def _notSaved(self, failure, meta):
        self.taking = False
        self.node.stateMachine.snapshotDone()
        if failure.check(SnapshotChanged):
            # A newer snapshot (installed from the leader) got there first.
            self.logger.info(
                "snapshot at {index} superseded",
                raftkv_event="snapshot_superseded", index=meta.lastIndex,
            )
        else:
            self.logger.failure(
                "snapshot at {index} failed", failure,
                raftkv_event="snapshot_failed", index=meta.lastIndex,
            )

    def install(self, meta):
        """
        Make a completely received snapshot ours: keep the log after it if
        our log holds the snapshot's last entry, else discard the whole log;
        then replace the state machine with the snapshot's state (§7,
        Figure 13).  C{True} once under way (or if there is nothing to do),
        C{False} if the storage refused it at once (an incomplete or damaged
        transfer: nothing changed, and the leader starts the transfer over).
        """
        node = self.node
        if meta.lastIndex <= node.commitIndex or self.restoring:
            return True
        raftLog = node.raftLog
        keep = raftLog.startIndex <= meta.lastIndex <= raftLog.lastIndex and (
            raftLog.term(meta.lastIndex) == meta.lastTerm
        )
        # Issued before the log changes in memory, in order with the writes
        # issued before and after it; refused at once if the transfer is not
        # complete and sound.
        installed = node.storage.installSnapshot(meta, not keep)
        if installed.called and isinstance(installed.result, Failure):
            self.logger.warn(
                "node {nodeId} could not install snapshot at {index}: {why}",
                raftkv_event="snapshot_install_refused",
                nodeId=node.nodeId,
                index=meta.lastIndex,
                why=installed.result.getErrorMessage(),
            )
            installed.addErrback(lambda f: None)
            return False
        self.logger.info(
            "node {nodeId} installs snapshot at {index} (term {term}); log {what}",
            raftkv_event="snapshot_install",
            nodeId=node.nodeId,
            index=meta.lastIndex,
            term=meta.lastTerm,
            what="tail kept" if keep else "discarded",
        )
        if keep:
            raftLog.compact(meta.lastIndex)
            node.configs.compact(meta.lastIndex)
        else:
            raftLog.reset(meta.lastIndex, meta.lastTerm)
            node._durableLastIndex = min(node._durableLastIndex, meta.lastIndex)
            # The configuration recorded with the snapshot replaces
            # whatever the discarded log held (§7, thesis §5.1).
            if node.configs.reset(meta.configuration):
                node._configurationChanged()
        self.meta = meta
        self.restoring = True
        before = node.commitIndex
        node.commitIndex = max(before, meta.lastIndex)
        node._commitMoved(before)
        node.barrier.track(installed)
        installed.addCallback(self._loadInstalled, meta)
        return True

    def _loadInstalled(self, _, meta):
        node = self.node
        if node.failed is None and node.running:
            parse = node.stateMachine.parseSnapshot
            d = node.storage.loadSnapshot(parse)
            d.addCallbacks(self._restore, node.barrier.fail, callbackArgs=(meta,))

    def _restore(self, loaded, meta):
        _, parsed = loaded
        node = self.node
        node.stateMachine.restoreSnapshot(parsed)
        node.lastApplied = meta.lastIndex
        self.appliedBytes = 0
        self.restoring = False
        node._applyCommitted()
