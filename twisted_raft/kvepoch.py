"""
Who proposes the metadata epoch: the leader, once per cluster.

The KV store refuses transactions until a C{METADATA_EPOCH} entry has been
applied (L{twisted_raft.kv.KVStore}: before it, key metadata may differ
between nodes).  Nothing else writes that entry, so every node runs a
L{MetadataEpochProposer}: while its node leads and its store has no floor,
it proposes one.

The core has no role callback, so the proposer looks every
L{EPOCH_CHECK_INTERVAL} seconds (a few attribute reads).  Once it sees
leadership and no floor, it first does a ReadIndex (thesis §6.4): that
returns only once the leader's term has committed an entry and the store
has applied everything committed, so an epoch that an earlier leader got
committed is seen there, not proposed again.  A proposal that fails (lost
leadership, outcome unknown, storage) is retried at a later look while the
store still needs it; one that lands twice changes nothing the second time.
"""

from twisted.internet import defer, task
from twisted.logger import Logger

from twisted_raft.kv import encodeMetadataEpoch
from twisted_raft.raft.messages import LEADER

EPOCH_CHECK_INTERVAL = 0.1
"""Seconds between two looks at the node's role and the store's floor."""


class MetadataEpochProposer:
    """
    Proposes C{METADATA_EPOCH} through C{node} (a L{RaftNode}) while it
    leads and C{store} (its L{KVStore}) needs one; one attempt at a time.

    @ivar proposals: how many proposals were made (for tests and logs).
    """

    log = Logger()

    def __init__(self, node, store, clock, interval=EPOCH_CHECK_INTERVAL):
        self.node = node
        self.store = store
        self.clock = clock
        self.interval = interval
        self.proposals = 0
        self._attempt = None  # the Deferred of the attempt under way
        self._loop = None

    def start(self):
        loop = self._loop = task.LoopingCall(self.check)
        loop.clock = self.clock
        loop.start(self.interval, now=True).addErrback(
            lambda f: self.log.failure("metadata epoch proposer stopped", f)
        )

    def stop(self):
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None

    @property
    def running(self):
        return self._loop is not None

    def _wanted(self):
        node = self.node
        return node.running and node.role == LEADER and self.store.needsMetadataEpoch()

    def check(self):
        if self._attempt is not None or not self._wanted():
            return
        d = self._attempt = defer.maybeDeferred(self.node.readIndex)
        d.addCallback(self._propose)
        d.addCallbacks(self._proposed, self._failed)
        d.addBoth(self._done)

    def _propose(self, _):
        if not self._wanted():
            return None  # the log already held one, or leadership went
        self.proposals += 1
        return self.node.propose(encodeMetadataEpoch())

    def _proposed(self, answer):
        if answer is not None:
            index, floor = answer
            self.log.info(
                "metadata epoch proposed and applied at index {index}: the metadata"
                " floor is {floor}",
                raftkv_event="metadata_epoch", index=index, floor=floor,
            )

    def _failed(self, failure):
        self.log.info(
            "metadata epoch not proposed ({error}); trying again while this node leads",
            error=failure.getErrorMessage(),
        )

    def _done(self, _):
        self._attempt = None
