"""
The three things the consensus core talks to.  Production provides them with
AMP links, files and the reactor; tests with an in-memory network, memory
storage and L{twisted.internet.task.Clock} -- through the same core.
"""

from zope.interface import Interface


class IStorage(Interface):
    """
    Durable storage for Raft's hard state and log.

    Every method returns a L{Deferred} that fires only once the change is
    durable (fsynced), and operations complete in the order they were issued:
    when the Deferred of one call fires, everything issued before it is durable
    too.  Implementations must never block the reactor thread.
    """

    def load():
        """
        Read back what was stored.

        @return: a L{Deferred} firing with a
            L{twisted_raft.raft.messages.PersistentState}: the hard state, the
            latest snapshot's metadata (or C{None}) and the log entries after
            the snapshot.  Log entries up to the snapshot's C{lastIndex} are
            not returned.  If the log holds the snapshot's C{lastIndex} with
            another term than the snapshot's, every entry after it belongs to
            a divergent, uncommitted history (a crash during
            L{installSnapshot}) and is dropped.
        """

    def saveHardState(hardState):
        """
        Durably replace the stored term and vote
        (a L{twisted_raft.raft.messages.HardState}).
        """

    def append(entries):
        """
        Durably append C{entries} (contiguous, ascending
        L{twisted_raft.raft.messages.Entry} objects) after the stored log.
        The first one's index is the stored last index + 1.
        """

    def truncateSuffix(fromIndex):
        """
        Durably remove every stored entry whose index is C{>= fromIndex}.
        """

    def close():
        """
        Finish pending writes and release resources; returns a L{Deferred}.
        """

    def bootstrap(configuration):
        """
        Durably record the L{twisted_raft.raft.membership.Configuration} a
        new cluster starts with (from the operator's C{--peers}), so that
        L{load} returns it as C{PersistentState.bootstrap} from now on and a
        later C{--peers} cannot change who the members are.  Called by the
        core only on storage with no snapshot, no log and no bootstrap
        configuration.
        """

    # -- snapshots (§7) -------------------------------------------------------
    #
    # A snapshot is one file: a header with its SnapshotMeta, the state
    # machine's payload, a checksum.  Writing one never holds up the log:
    # saveSnapshot runs on its own thread while appends keep committing.

    def saveSnapshot(meta, write):
        """
        Durably store a snapshot covering C{meta}, then delete the log
        segments it makes redundant (those holding only entries
        C{<= meta.lastIndex}).

        @param write: a callable taking a binary file object, called on a
            storage thread (not the reactor's), writing the state machine's
            payload; see L{IStateMachine.snapshotWriter}.
        @return: a L{Deferred} firing once the snapshot is durable (written to
            a temporary name, fsynced, renamed, directory fsynced).
        """

    def readSnapshot(meta, offset, size):
        """
        Read up to C{size} bytes at C{offset} of the current snapshot file (as
        sent by InstallSnapshot).

        @return: a L{Deferred} firing with C{(data, totalSize)}; failing with
            L{SnapshotChanged} if the current snapshot is not C{meta}.
        """

    def receiveSnapshot(meta, offset, data):
        """
        Write one received chunk of a leader's snapshot file for C{meta}.
        C{offset} 0 starts a new transfer; any other offset must be at most
        the bytes received so far for this C{meta}.  A chunk that starts
        before that end is a retransmission (its answer was lost): only the
        bytes it adds past the end are written, so a lost answer costs one
        chunk, not the transfer (the bytes of one C{meta} never change, and
        the checksum checked at install would catch it if they did).

        @return: a L{Deferred} firing with the number of bytes received so
            far, or failing with L{SnapshotChanged} on an offset past them or
            another meta (the sender restarts from offset 0).
        """

    def installSnapshot(meta, discardLog):
        """
        Make the completely received snapshot for C{meta} the node's snapshot:
        verify its checksum and meta (failing with L{CorruptSnapshotError}),
        fsync, rename into place, fsync the directory; then, in order with
        the log's writes, either discard the whole log so that the next
        append is at C{meta.lastIndex + 1} (C{discardLog}) or delete the
        segments the snapshot covers.

        @return: a L{Deferred} firing once all of that is durable.
        """

    def loadSnapshot(parse):
        """
        Read the current snapshot's payload on a storage thread and return
        C{parse(fileobj)} (see L{IStateMachine.parseSnapshot}).

        @return: a L{Deferred} firing with C{(meta, parse's result)}, or with
            C{None} if there is no snapshot.
        """


class ITransport(Interface):
    """
    Carries Raft RPCs to peers.  Each call returns a L{Deferred} firing with
    the peer's answer, or failing (peer down, timeout); a failed call needs no
    further handling by the caller beyond its errback.
    """

    def installSnapshot(peerId, request):
        """
        Send a L{twisted_raft.raft.messages.InstallSnapshot} chunk; the
        Deferred fires with a
        L{twisted_raft.raft.messages.InstallSnapshotResult}.
        """

    def requestVote(peerId, request):
        """
        Send a L{twisted_raft.raft.messages.RequestVote}; the Deferred fires
        with a L{twisted_raft.raft.messages.RequestVoteResult}.
        """

    def appendEntries(peerId, request):
        """
        Send a L{twisted_raft.raft.messages.AppendEntries}; the Deferred fires
        with a L{twisted_raft.raft.messages.AppendEntriesResult}.
        """

    def timeoutNow(peerId, request):
        """
        Send a L{twisted_raft.raft.messages.TimeoutNow}; the Deferred fires
        with a L{twisted_raft.raft.messages.TimeoutNowResult}.
        """


class IStateMachine(Interface):
    """
    The replicated state machine that committed entries are applied to.
    """

    def apply(index, data):
        """
        Apply one committed entry's C{data} (never the empty no-op), exactly
        once and in log order.  Must not block.

        @return: the result handed back to whoever proposed the entry.
        """

    def snapshotWriter():
        """
        Capture the state as of now (on the reactor thread, in O(1) or close:
        the reactor must not stall, e.g. a copy-on-write view) and return a
        callable C{write(fileobj)} that serialises that view.  C{write} runs on
        a storage thread while entries keep being applied, so it must not see
        later changes.
        """

    def snapshotDone():
        """
        The last view captured by L{snapshotWriter} is no longer needed
        (called on the reactor thread, whether the snapshot succeeded or not).
        """

    def parseSnapshot(fileobj):
        """
        Parse a payload written by C{snapshotWriter()(fileobj)}; thread-safe,
        touching no state.  @return: an opaque object for L{restoreSnapshot}.
        """

    def restoreSnapshot(parsed):
        """
        Replace the whole state with what L{parseSnapshot} returned (on the
        reactor thread).
        """
