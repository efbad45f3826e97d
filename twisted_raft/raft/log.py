"""
The in-memory view of a node's Raft log.

The log may start after a snapshot (§7): C{startIndex} and C{startTerm}
describe the last entry compacted away (0 and 0 for a full log), and the
entries held are contiguous from C{startIndex + 1}.

Lookups by index are O(1) and lookups by term O(log n): a log's terms never
decrease, so the first or last index of a term is a binary search.  Nothing
here touches the disk; L{twisted_raft.raft.node} keeps this view and the
storage in step.
"""

from bisect import bisect_left, bisect_right
from operator import attrgetter

_term = attrgetter("term")


class RaftLog:
    def __init__(self, entries=(), startIndex=0, startTerm=0):
        self.startIndex = startIndex
        self.startTerm = startTerm
        self._entries = list(entries)
        for position, entry in enumerate(self._entries, start=startIndex + 1):
            if entry.index != position:
                raise ValueError(f"log not contiguous at position {position}: {entry}")

    @property
    def lastIndex(self):
        return self.startIndex + len(self._entries)

    @property
    def lastTerm(self):
        return self._entries[-1].term if self._entries else self.startTerm

    def term(self, index):
        """
        The term of the entry at C{index}: the snapshot's term at
        C{startIndex}, 0 for index 0, past the end, or compacted away.
        """
        position = index - self.startIndex
        if 1 <= position <= len(self._entries):
            return self._entries[position - 1].term
        if position == 0:
            return self.startTerm
        return 0

    def entry(self, index):
        position = index - self.startIndex
        if position < 1:
            raise IndexError(f"entry {index} was compacted into a snapshot")
        return self._entries[position - 1]

    def slice(self, start, stop):
        """Entries with C{start <= index < stop}; C{start} must not be compacted."""
        if start <= self.startIndex:
            raise IndexError(f"entry {start} was compacted into a snapshot")
        return self._entries[start - self.startIndex - 1 : stop - self.startIndex - 1]

    def append(self, entries):
        for entry in entries:
            if entry.index != self.lastIndex + 1:
                raise ValueError(f"append of {entry.index} after {self.lastIndex}")
            self._entries.append(entry)

    def truncateFrom(self, index):
        """Drop every entry with an index C{>= index}."""
        if index <= self.startIndex:
            raise IndexError(f"cannot truncate compacted entry {index}")
        del self._entries[index - self.startIndex - 1 :]

    def compact(self, upTo):
        """Forget the entries up to C{upTo} (held by a snapshot now)."""
        if upTo <= self.startIndex:
            return
        if upTo > self.lastIndex:
            raise IndexError(f"cannot compact up to {upTo} past the end {self.lastIndex}")
        self.startTerm = self.term(upTo)
        del self._entries[: upTo - self.startIndex]
        self.startIndex = upTo

    def reset(self, index, term):
        """Replace the whole log by a snapshot's position (§7: discard the log)."""
        self._entries = []
        self.startIndex = index
        self.startTerm = term

    def firstIndexOfTerm(self, term):
        """
        The first index we hold of C{term}; if the log starts inside that
        term, the first index after the snapshot; 0 if no entry has it.
        """
        position = bisect_left(self._entries, term, key=_term)
        if position < len(self._entries) and self._entries[position].term == term:
            return self.startIndex + position + 1
        if term and term == self.startTerm:
            return self.startIndex + 1
        return 0

    def lastIndexOfTerm(self, term):
        """The last index holding C{term}, or 0 if no entry we hold has it."""
        position = bisect_right(self._entries, term, key=_term)
        if position and self._entries[position - 1].term == term:
            return self.startIndex + position
        if term and term == self.startTerm and self.startIndex:
            return self.startIndex
        return 0

    def nextAfterConflict(self, conflictIndex, conflictTerm):
        """
        §5.3, the optimisation at its end: where a leader resumes after a
        follower rejected a batch, skipping back a whole term per round trip.
        If we hold the follower's conflicting term, resume after our last
        entry of it; otherwise at the first index the follower has of it.
        """
        nextIndex = conflictIndex
        if conflictTerm:
            last = self.lastIndexOfTerm(conflictTerm)
            if last:
                nextIndex = last + 1
        return min(nextIndex, self.lastIndex + 1)

    def isUpToDate(self, lastIndex, lastTerm):
        """
        §5.4.1, the election restriction: is a log ending at (lastIndex,
        lastTerm) at least as up-to-date as this one?
        """
        if lastTerm != self.lastTerm:
            return lastTerm > self.lastTerm
        return lastIndex >= self.lastIndex
