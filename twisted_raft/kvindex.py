"""
The store's ordered key index, copy-on-write like the store's key dict
(L{twisted_raft.kv._CowMap}), so ranges read keys in order without copying
or scanning the store and a snapshot writer can walk a frozen index in key
order on another thread.

The index is a C{sortedcontainers.SortedList} of keys: O(log n) insert,
delete and bisect, pure Python, well kept; its bisects give a range's size
in O(log n) without touching the keys.
"""

import heapq

from sortedcontainers import SortedList


def _count(keys, lo, hi, loInclusive):
    """How many of C{keys} (a SortedList) are in C{lo..hi} (hi excluded)."""
    start = keys.bisect_left(lo) if loInclusive else keys.bisect_right(lo)
    stop = len(keys) if hi is None else keys.bisect_left(hi)
    return max(0, stop - start)


class SortedKeys:
    """
    The set of keys, in order.

    Normally C{base} is the whole set.  L{freeze} hands C{base} out for a
    snapshot writer; until the overlay is folded, a key created is kept in
    C{added} and a key of C{base} deleted in C{removed} (so
    C{added} and C{base} are disjoint and C{removed} is within C{base}),
    and C{base} is not mutated while frozen.  After L{thaw}, changes go to
    C{base} again (undoing any overlay entry for the key) and L{foldSome}
    drains the overlay; its cost is proportional to the keys created or
    deleted while frozen, never to the size of the index.

    Reading a frozen C{base} on the reactor thread while the writer
    iterates it is safe: the bisects only (re)build the SortedList's
    positional index, which iteration does not use.

    The callers say whether a key is new: L{insert} only a key absent from
    the set, L{remove} only a key in it (the store knows from its dict).
    """

    __slots__ = ("base", "added", "removed", "frozen")

    def __init__(self, base=None):
        self.base = SortedList() if base is None else base
        self.added = None
        self.removed = None
        self.frozen = False

    def __len__(self):
        if self.added is None:
            return len(self.base)
        return len(self.base) - len(self.removed) + len(self.added)

    def insert(self, key):
        added = self.added
        if added is None:
            self.base.add(key)
        elif key in self.removed:  # still in base
            self.removed.remove(key)
        elif self.frozen:
            added.add(key)
        else:
            self.base.add(key)

    def remove(self, key):
        added = self.added
        if added is None:
            self.base.remove(key)
        elif key in added:  # not in base
            added.remove(key)
        elif self.frozen:
            self.removed.add(key)
        else:
            self.base.remove(key)

    def freeze(self):
        """Fold any leftover overlay, then freeze and return C{base}."""
        self.frozen = False
        self.foldSome(None)
        self.added = SortedList()
        self.removed = SortedList()
        self.frozen = True
        return self.base

    def thaw(self):
        self.frozen = False
        if not self.added and not self.removed:
            self.added = self.removed = None

    def foldSome(self, n):
        """
        Fold up to C{n} (C{None}: all) overlay keys into C{base}.
        @return: the number of keys left to fold.
        """
        if self.added is None:
            return 0
        assert not self.frozen
        base, added, removed = self.base, self.added, self.removed
        budget = self.pending() if n is None else n
        while budget and removed:
            base.remove(removed.pop())
            budget -= 1
        while budget and added:
            base.add(added.pop())
            budget -= 1
        left = self.pending()
        if not left:
            self.added = self.removed = None
        return left

    def pending(self):
        return 0 if self.added is None else len(self.added) + len(self.removed)

    def count(self, lo, hi, loInclusive=True):
        """How many keys are in C{lo..hi} (C{hi} excluded, C{None}: no bound)."""
        n = _count(self.base, lo, hi, loInclusive)
        if self.added is not None:
            n += _count(self.added, lo, hi, loInclusive) - _count(
                self.removed, lo, hi, loInclusive
            )
        return n

    def irange(self, lo, hi, loInclusive=True):
        """
        The keys in C{lo..hi} in order, lazily: O(log n) to start, then O(1)
        per key (plus, during a snapshot, the keys deleted since it began).
        Valid until the index next changes.
        """
        inclusive = (loInclusive, False)
        keys = self.base.irange(lo, hi, inclusive)
        if self.added is None:
            return keys
        removed = self.removed
        if removed:
            keys = (k for k in keys if k not in removed)
        if not self.added:
            return keys
        return heapq.merge(keys, self.added.irange(lo, hi, inclusive))
