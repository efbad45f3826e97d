"""
In-memory L{IStorage} for tests and simulations.
"""

from twisted.internet import defer
from zope.interface import implementer

from twisted_raft.raft.interfaces import IStorage
from twisted_raft.raft.messages import HardState, PersistentState


@implementer(IStorage)
class MemoryStorage:
    """
    Keeps the hard state and log in memory; survives a node's "restart" when
    the same object is handed to a new node.

    With C{clock} and C{delay}, each write becomes durable C{delay} seconds
    after it is issued (in issue order), which lets tests observe that nothing
    is acknowledged before it is durable.  C{durable} holds only what has
    "reached the disk", so C{crash()} loses the rest.
    """

    def __init__(self, clock=None, delay=0.0):
        self.clock = clock
        self.delay = delay
        self.hardState = HardState()
        self.entries = []
        self.durableHardState = HardState()
        self.durableEntries = []
        self.writes = 0
        self._queue = []
        self._generation = 0

    def load(self):
        self.hardState = self.durableHardState
        self.entries = list(self.durableEntries)
        return defer.succeed(PersistentState(self.hardState, list(self.entries)))

    def _write(self, apply):
        apply()
        self.writes += 1
        d = defer.Deferred()
        if self.clock is None or self.delay <= 0:
            self._sync()
            d.callback(None)
            return d
        self._queue.append((d, self.hardState, list(self.entries)))
        self.clock.callLater(self.delay, self._completeOne, self._generation)
        return d

    def _completeOne(self, generation):
        if generation != self._generation:  # crashed since: that write is lost
            return
        d, self.durableHardState, self.durableEntries = self._queue.pop(0)
        d.callback(None)

    def _sync(self):
        # Immediate mode: everything is durable at once, so share the list.
        self.durableHardState = self.hardState
        self.durableEntries = self.entries

    def saveHardState(self, hardState):
        def apply():
            self.hardState = hardState

        return self._write(apply)

    def append(self, entries):
        def apply():
            expected = len(self.entries) + 1
            if entries and entries[0].index != expected:
                raise AssertionError(f"append at {entries[0].index}, expected {expected}")
            self.entries.extend(entries)

        return self._write(apply)

    def truncateSuffix(self, fromIndex):
        def apply():
            del self.entries[fromIndex - 1 :]

        return self._write(apply)

    def crash(self):
        """Forget everything not yet durable (pending Deferreds never fire)."""
        self._queue = []
        self._generation += 1
        self.hardState = self.durableHardState
        self.entries = list(self.durableEntries)

    def close(self):
        return defer.succeed(None)
