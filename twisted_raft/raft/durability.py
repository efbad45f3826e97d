"""
The persistence barrier (Figure 2, "Rules for Servers": respond to RPCs only
after updating stable storage).

Writes are numbered as they are issued; the storage completes them in order,
so "durable up to write n" is one counter, and a node that must not answer
before everything it wrote is durable waits on L{WriteBarrier.whenDurable}.
"""

from twisted.internet import defer

from twisted_raft.raft.messages import StorageFailed


class WriteBarrier:
    """
    @ivar failed: the L{Failure} of the first write that failed, or C{None};
        once set, nothing is ever durable again (fsyncgate: a write that may
        not have reached the disk cannot be retried safely).
    """

    def __init__(self, onFailure):
        """
        @param onFailure: called with the L{Failure} of the first failed write.
        """
        self._onFailure = onFailure
        self._issued = 0
        self._durable = 0
        self._waiters = []
        self.failed = None

    def track(self, d):
        """Count the write whose completion C{d} reports."""
        self._issued += 1
        d.addCallbacks(self._completed, self.fail, callbackArgs=(self._issued,))

    def _completed(self, _, number):
        self._durable = number
        waiters = self._waiters
        while waiters and waiters[0][0] <= number:
            waiters.pop(0)[1].callback(None)

    def whenDurable(self):
        """A Deferred firing once every write issued so far is durable."""
        if self.failed is not None:
            return defer.fail(StorageFailed(str(self.failed)))
        if self._durable >= self._issued:
            return defer.succeed(None)
        d = defer.Deferred()
        self._waiters.append((self._issued, d))
        return d

    def fail(self, failure):
        """A write (or a read the node cannot go on without) failed: C{failure}."""
        if self.failed is not None:
            return
        self.failed = failure
        waiters, self._waiters = self._waiters, []
        for _, d in waiters:
            d.errback(StorageFailed(str(failure.value)))
        self._onFailure(failure)
