"""
The watcher of a C{raftkv chaos} run: one L{Watcher} (through the client
library, as a user would watch) on the workload's prefix from the run's
start, whose deliveries, with the run's acknowledged writes, a final read
and the nodes' logs, L{WatchCheck} judges.

The watcher resumes on another node by itself when its node dies, among
the client's addresses as they are at each attempt: with C{--membership}
the run keeps them current (L{RaftKVClient.setAddresses}), so the watch
follows the members through the library alone, as a user's would.
"""

import time

from twisted.internet import defer, task

from twisted_raft.tools.watchcheck import WatchCheck


class WatchRun:
    """
    @param newClient: C{newClient()} -> a L{RaftKVClient} following the
        members (its addresses kept current by the run).
    @param closeClient: C{closeClient(client)} -> Deferred.
    """

    def __init__(self, reactor, newClient, closeClient, prefix, log):
        self.reactor = reactor
        self.newClient = newClient
        self.closeClient = closeClient
        self.prefix = prefix
        self.log = log
        self.client = None
        self.watcher = None
        self.check = None
        self._lock = defer.DeferredLock()
        self._ending = False

    @defer.inlineCallbacks
    def start(self, patience=30.0):
        """
        Wait for the metadata epoch, read the prefix (linearizable) and
        watch it from just after that read's revision.  @return: Deferred
        firing once a node accepted the watch.
        """
        self.client = self.newClient()
        end = time.monotonic() + patience
        # The workload must write after the cluster's metadata epoch
        # (twisted_raft.kvepoch): below it a key's create_revision and
        # version are provisional and read as the epoch's once it applies,
        # which the version check would take for a missed event.  An empty
        # transaction applies only after the epoch (before it, UNAVAILABLE).
        while True:
            try:
                yield self.client.txn()
                break
            except Exception as e:
                if time.monotonic() > end:
                    raise RuntimeError(f"the cluster's metadata epoch never applied: {e}")
                yield task.deferLater(self.reactor, 0.2, lambda: None)
        while True:
            try:
                initial = yield self.client.rangeAll(self.prefix, prefix=True)
                break
            except Exception as e:
                if time.monotonic() > end:
                    raise RuntimeError(f"the initial read of {self.prefix!r} failed: {e}")
                yield task.deferLater(self.reactor, 0.2, lambda: None)
        self.check = WatchCheck(self.prefix, initial.revision + 1, initial.kvs)
        self._open(initial.revision + 1)
        try:
            yield self.watcher.whenStarted().addTimeout(patience, self.reactor)
        except defer.TimeoutError:
            raise RuntimeError(f"no node accepted the watch of {self.prefix!r} in "
                               f"{patience:g}s") from None

    def _open(self, revision):
        watcher = self.watcher = self.client.watch(
            self.prefix, prefix=True, startRevision=revision, onEvents=self.check.delivered,
        )
        watcher.done.addErrback(self._ended, watcher)

    def _ended(self, failure, watcher):
        from twisted_raft.rpc.commands import Compacted

        if watcher is not self.watcher:
            return None
        if failure.check(Compacted):
            self.check.compacted = failure.value.compact_revision
            self.log(f"[chaos] the watcher was refused as COMPACTED at revision "
                     f"{watcher.nextRevision} (oldest held: {self.check.compacted})")
        elif not self._ending:
            self.check.failure = f"{failure.type.__name__}: {failure.getErrorMessage()}"[:300]
            self.log(f"[chaos] the watcher failed: {self.check.failure}")
        return None

    def acknowledged(self, kind, key, value, revision):
        if self.check is not None:
            self.check.acknowledged(kind, key, value, revision)

    @defer.inlineCallbacks
    def finish(self, revision, patience=15.0):
        """
        Wait (up to C{patience} s) until the watcher was handed everything
        up to C{revision}, then cancel it.
        """
        yield self._lock.acquire()
        try:
            end = time.monotonic() + patience
            watcher = self.watcher
            while (not watcher.done.called and (watcher.nextRevision or 0) <= revision
                   and time.monotonic() < end):
                yield task.deferLater(self.reactor, 0.1, lambda: None)
            self._ending = True
            self.check.resumes += watcher.resumes
            yield watcher.cancel().addErrback(lambda f: None)
            self.check.endRevision = watcher.nextRevision
        finally:
            self._lock.release()

    @defer.inlineCallbacks
    def stop(self):
        """Cancel the watch (if still on) and close the client."""
        self._ending = True
        if self.watcher is not None and not self.watcher.done.called:
            yield self.watcher.cancel().addErrback(lambda f: None)
        if self.client is not None:
            yield self.closeClient(self.client)
