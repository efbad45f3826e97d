"""
Deadlines for many requests with one timer.

Every client request a node serves is bounded by the same timeout.
C{Deferred.addTimeout} would schedule (and then cancel) one L{DelayedCall}
per request, with two closures and two callbacks: at thousands of requests a
second that showed in the leader's profile.  Since every request gets the
same timeout, deadlines fall in arrival order: L{Deadlines} keeps them in an
insertion-ordered dict and one timer, always set for the earliest.  A
deadline earlier than one already queued (a shorter timeout, or the clock
stepped back) gets a timer of its own, so the order always holds.
"""

import itertools

from twisted.logger import Logger

_EXPIRED = object()


class Deadlines:
    """
    @param clock: an L{IReactorTime}.
    """

    log = Logger()

    def __init__(self, clock):
        self._clock = clock
        self._waiting = {}  # key -> (deadline, Deferred), or _EXPIRED
        self._keys = itertools.count()
        self._timer = None
        self._last = 0.0

    def __len__(self):
        return len(self._waiting)

    def add(self, d, timeout, onTimeout, *args):
        """
        Cancel C{d} if it has not fired C{timeout} seconds from now; then
        C{onTimeout(failure, *args)} replaces its L{defer.CancelledError}.
        Exactly like C{d.addTimeout(timeout, clock, onTimeoutCancel)}, with
        one timer for all requests.

        @return: C{d}
        """
        deadline = self._clock.seconds() + timeout
        if deadline < self._last:
            # Earlier than a deadline already queued (a shorter timeout, or
            # the clock stepped back): its own timer keeps the queue sorted.
            return d.addTimeout(
                timeout, self._clock, onTimeoutCancel=lambda result, _: onTimeout(result, *args)
            )
        self._last = deadline
        key = next(self._keys)
        self._waiting[key] = (deadline, d)
        if self._timer is None:
            self._timer = self._clock.callLater(timeout, self._expire)
        return d.addBoth(self._finished, key, onTimeout, args)

    def _finished(self, result, key, onTimeout, args):
        entry = self._waiting.pop(key, None)
        if not self._waiting:
            self._last = 0.0
            if self._timer is not None:
                # nothing left to time out: leave no timer behind
                self._timer.cancel()
                self._timer = None
        if entry is _EXPIRED:
            return onTimeout(result, *args)
        return result

    def _first(self):
        """The earliest live C{(key, deadline, Deferred)}, or L{None}."""
        for key, entry in self._waiting.items():
            if entry is not _EXPIRED:
                return key, entry[0], entry[1]
        return None

    def _expire(self):
        self._timer = None
        now = self._clock.seconds()
        # One at a time: cancelling one request may finish or add others.
        while True:
            first = self._first()
            if first is None or first[1] > now:
                break
            key, _, d = first
            self._waiting[key] = _EXPIRED
            try:
                d.cancel()
            except Exception:
                self.log.failure("cancelling a timed-out request failed")
                self._waiting.pop(key, None)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        first = self._first()
        if first is not None:
            self._timer = self._clock.callLater(max(first[1] - now, 0), self._expire)
