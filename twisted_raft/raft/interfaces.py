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
            L{twisted_raft.raft.messages.PersistentState}.
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


class ITransport(Interface):
    """
    Carries Raft RPCs to peers.  Each call returns a L{Deferred} firing with
    the peer's answer, or failing (peer down, timeout); a failed call needs no
    further handling by the caller beyond its errback.
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
