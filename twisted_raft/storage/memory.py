"""
In-memory L{IStorage} for tests and simulations.
"""

import io

from twisted.internet import defer
from zope.interface import implementer

from twisted_raft.raft.interfaces import IStorage
from twisted_raft.raft.messages import HardState, PersistentState, SnapshotChanged


@implementer(IStorage)
class MemoryStorage:
    """
    Keeps the hard state, the log and the snapshot in memory; survives a
    node's "restart" when the same object is handed to a new node.

    With C{clock} and C{delay}, each write becomes durable C{delay} seconds
    after it is issued (in issue order), which lets tests observe that nothing
    is acknowledged before it is durable.  The C{durable*} attributes hold
    only what has "reached the disk", so C{crash()} loses the rest.

    C{entries} is the stored log, contiguous, starting at any index (entries
    covered by a snapshot are deleted, as on disk); C{bootstrapConfiguration}
    the configuration recorded by L{bootstrap} (or C{None}).
    """

    def __init__(self, clock=None, delay=0.0):
        self.clock = clock
        self.delay = delay
        self.hardState = HardState()
        self.entries = []
        self.snapshot = None  # (SnapshotMeta, bytes)
        self.bootstrapConfiguration = None
        self.durableHardState = HardState()
        self.durableEntries = []
        self.durableSnapshot = None
        self.durableBootstrap = None
        self.writes = 0
        self._received = None  # (SnapshotMeta, bytearray)
        self._queue = []
        self._generation = 0

    def _nextIndex(self):
        if self.entries:
            return self.entries[-1].index + 1
        return self.snapshot[0].lastIndex + 1 if self.snapshot else 1

    def _position(self, index):
        """Where entry C{index} is (or would be) in C{entries}."""
        first = self.entries[0].index if self.entries else self._nextIndex()
        return max(0, index - first)

    def load(self):
        self.hardState = self.durableHardState
        self.entries = list(self.durableEntries)
        self.snapshot = self.durableSnapshot
        self.bootstrapConfiguration = self.durableBootstrap
        meta = self.snapshot[0] if self.snapshot else None
        if meta is not None:
            at = [e for e in self.entries if e.index == meta.lastIndex]
            if at and at[0].term != meta.lastTerm:
                # A divergent, uncommitted suffix left by an interrupted install.
                self.entries = []
            else:
                self.entries = [e for e in self.entries if e.index > meta.lastIndex]
        return defer.succeed(
            PersistentState(
                self.hardState, list(self.entries), meta, self.bootstrapConfiguration
            )
        )

    def _write(self, apply):
        apply()
        self.writes += 1
        d = defer.Deferred()
        if self.clock is None or self.delay <= 0:
            self._sync()
            d.callback(None)
            return d
        self._queue.append(
            (d, self.hardState, list(self.entries), self.snapshot, self.bootstrapConfiguration)
        )
        self.clock.callLater(self.delay, self._completeOne, self._generation)
        return d

    def _completeOne(self, generation):
        if generation != self._generation:  # crashed since: that write is lost
            return
        (
            d,
            self.durableHardState,
            self.durableEntries,
            self.durableSnapshot,
            self.durableBootstrap,
        ) = self._queue.pop(0)
        d.callback(None)

    def _sync(self):
        # Immediate mode: everything is durable at once, so share the list.
        self.durableHardState = self.hardState
        self.durableEntries = self.entries
        self.durableSnapshot = self.snapshot
        self.durableBootstrap = self.bootstrapConfiguration

    def saveHardState(self, hardState):
        def apply():
            self.hardState = hardState

        return self._write(apply)

    def append(self, entries):
        def apply():
            expected = self._nextIndex()
            if entries and entries[0].index != expected:
                raise AssertionError(f"append at {entries[0].index}, expected {expected}")
            self.entries.extend(entries)

        return self._write(apply)

    def truncateSuffix(self, fromIndex):
        def apply():
            del self.entries[self._position(fromIndex) :]

        return self._write(apply)

    def bootstrap(self, configuration):
        if self.bootstrapConfiguration is not None:
            return defer.fail(
                AssertionError(
                    f"bootstrap({configuration!r}), but {self.bootstrapConfiguration!r}"
                    " is recorded already"
                )
            )

        def apply():
            self.bootstrapConfiguration = configuration.at(0)

        return self._write(apply)

    # -- snapshots ----------------------------------------------------------

    def _compact(self, meta):
        self.entries = [e for e in self.entries if e.index > meta.lastIndex]

    def saveSnapshot(self, meta, write):
        buffer = io.BytesIO()
        write(buffer)
        data = buffer.getvalue()

        def apply():
            self.snapshot = (meta, data)
            self._compact(meta)

        return self._write(apply)

    def readSnapshot(self, meta, offset, size):
        if self.snapshot is None or self.snapshot[0] != meta:
            return defer.fail(SnapshotChanged(f"no snapshot {meta}"))
        data = self.snapshot[1]
        return defer.succeed((data[offset : offset + size], len(data)))

    def receiveSnapshot(self, meta, offset, data):
        if offset == 0:
            self._received = (meta, bytearray())
        elif self._received is None or self._received[0] != meta or len(self._received[1]) < offset:
            return defer.fail(SnapshotChanged(f"unexpected chunk at {offset} of {meta}"))
        received = self._received[1]
        # a retransmitted chunk adds only what lies past the end received
        received.extend(data[len(received) - offset :])
        return defer.succeed(len(received))

    def installSnapshot(self, meta, discardLog):
        if self._received is None or self._received[0] != meta:
            return defer.fail(SnapshotChanged(f"{meta} was not received"))
        data = bytes(self._received[1])
        self._received = None

        def apply():
            self.snapshot = (meta, data)
            if discardLog:
                self.entries = []
            else:
                self._compact(meta)

        return self._write(apply)

    def loadSnapshot(self, parse):
        if self.snapshot is None:
            return defer.succeed(None)
        meta, data = self.snapshot
        return defer.succeed((meta, parse(io.BytesIO(data))))

    def crash(self):
        """Forget everything not yet durable (pending Deferreds never fire)."""
        self._queue = []
        self._generation += 1
        self.hardState = self.durableHardState
        self.entries = list(self.durableEntries)
        self.snapshot = self.durableSnapshot
        self.bootstrapConfiguration = self.durableBootstrap
        self._received = None

    def close(self):
        return defer.succeed(None)
