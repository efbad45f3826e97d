"""
Deadlines for many requests with one timer.

Every client request a node serves is bounded by the same timeout.
C{Deferred.addTimeout} would schedule (and then cancel) one L{DelayedCall}
per request, with two closures and two callbacks: at thousands of requests a
second that showed in the leader's profile.  Since every request gets the
same timeout, deadlines fall in arrival order: L{Deadlines} keeps them in an
insertion-ordered dict and one timer, always set for the earliest.
"""

import itertools

_EXPIRED = object()


class Deadlines:
    """
    @param clock: an L{IReactorTime}.
    """

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
        key = next(self._keys)
        # never earlier than a deadline already queued: the dict stays sorted
        deadline = self._last = max(self._clock.seconds() + timeout, self._last)
        self._waiting[key] = (deadline, d)
        if self._timer is None:
            self._timer = self._clock.callLater(max(deadline - self._clock.seconds(), 0), self._expire)
        return d.addBoth(self._finished, key, onTimeout, args)

    def _finished(self, result, key, onTimeout, args):
        entry = self._waiting.pop(key, None)
        if not self._waiting and self._timer is not None:
            # nothing left to time out: leave no timer behind
            self._timer.cancel()
            self._timer = None
        if entry is _EXPIRED:
            return onTimeout(result, *args)
        return result

    def _expire(self):
        self._timer = None
        now = self._clock.seconds()
        due = []
        for key, entry in self._waiting.items():
            if entry is _EXPIRED:
                continue
            deadline, d = entry
            if deadline > now:
                break
            due.append((key, d))
        for key, d in due:
            self._waiting[key] = _EXPIRED
        for key, d in due:
            d.cancel()
        if self._timer is None:
            self._schedule()

    def _schedule(self):
        for entry in self._waiting.values():
            if entry is not _EXPIRED:
                self._timer = self._clock.callLater(
                    max(entry[0] - self._clock.seconds(), 0), self._expire
                )
                return

    def cancelTimer(self):
        """Stop the timer (the requests are left to their own fate)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

