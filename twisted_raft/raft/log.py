"""
The in-memory view of a node's Raft log.

Lookups by index are O(1) and lookups by term O(log n): a log's terms never
decrease, so the first or last index of a term is a binary search.  Nothing
here touches the disk; L{twisted_raft.raft.node} keeps this view and the
storage in step.
"""

from bisect import bisect_left, bisect_right
from operator import attrgetter

_term = attrgetter("term")


class RaftLog:
    def __init__(self, entries=()):
        self._entries = list(entries)
        for position, entry in enumerate(self._entries, start=1):
            if entry.index != position:
                raise ValueError(f"log not contiguous at position {position}: {entry}")

    @property
    def lastIndex(self):
        return len(self._entries)

    @property
    def lastTerm(self):
        return self._entries[-1].term if self._entries else 0

    def term(self, index):
        """The term of the entry at C{index}; 0 for index 0 or past the end."""
        if 1 <= index <= len(self._entries):
            return self._entries[index - 1].term
        return 0

    def entry(self, index):
        return self._entries[index - 1]

    def slice(self, start, stop):
        """Entries with C{start <= index < stop}."""
        return self._entries[start - 1 : stop - 1]

    def append(self, entries):
        for entry in entries:
            if entry.index != len(self._entries) + 1:
                raise ValueError(f"append of {entry.index} after {len(self._entries)}")
            self._entries.append(entry)

    def truncateFrom(self, index):
        """Drop every entry with an index C{>= index}."""
        del self._entries[index - 1 :]

    def firstIndexOfTerm(self, term):
        """The first index holding C{term}, or 0 if no entry has it."""
        position = bisect_left(self._entries, term, key=_term)
        if position < len(self._entries) and self._entries[position].term == term:
            return position + 1
        return 0

    def lastIndexOfTerm(self, term):
        """The last index holding C{term}, or 0 if no entry has it."""
        position = bisect_right(self._entries, term, key=_term)
        if position and self._entries[position - 1].term == term:
            return position
        return 0

    def isUpToDate(self, lastIndex, lastTerm):
        """
        §5.4.1, the election restriction: is a log ending at (lastIndex,
        lastTerm) at least as up-to-date as this one?
        """
        if lastTerm != self.lastTerm:
            return lastTerm > self.lastTerm
        return lastIndex >= self.lastIndex
