"""
A private reactor in a thread of its own: what L{twisted_raft.blocking}
runs the Deferred client on, so that blocking code can use it.

Each L{ReactorThread} makes a new reactor instance (epoll on Linux, else
select), never the global C{twisted.internet.reactor}: that one is
installed once per process, cannot be restarted once stopped, and may
already belong to the program (a Twisted program, or pytest-twisted), so a
client built on it could neither coexist with the program's own reactor nor
be made again after a close.  Its reactor runs without signal handlers (it
is not the main thread's) in a daemon thread, so a program that forgets to
close it can still exit.

Other threads reach the reactor only through L{ReactorThread.submit} and
L{ReactorThread.call}: everything the reactor owns is touched in its thread
alone.  L{ReactorThread.stop} stops it, joins the thread and closes the
reactor's wake-up pipe; a call submitted after that, or one the stop left
unanswered, fails with L{ReactorStopped}.

The hand-over is the blocking client's whole overhead, paid on every call
by every thread, so it is kept to what it must cost (measured in
C{docs/performance.rst}, "Issue 14"): calls wait in one queue that the
reactor empties in a single turn, the reactor is woken (a byte on its
pipe, C{callFromThread}) only when that queue goes from empty to not
empty, and a caller waits on a bare lock that the reactor releases with
the answer (L{Pending}), not on a L{concurrent.futures.Future}'s condition
variable, lock-guarded bookkeeping and callbacks.  With many threads
calling at once the reactor takes them in batches, woken once per batch.
"""

import threading
from collections import deque

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure


class ReactorStopped(RuntimeError):
    """The reactor thread is stopped (or was never started)."""


def newReactor():
    """A new reactor instance, not installed as the global one."""
    try:
        from twisted.internet.epollreactor import EPollReactor
    except ImportError:  # not Linux
        from twisted.internet.selectreactor import SelectReactor

        return SelectReactor()
    return EPollReactor()


class Pending:
    """
    The answer to one call handed to the reactor thread, as the caller
    waits for it: the part of L{concurrent.futures.Future} that the
    blocking client uses, on one lock.

    The lock is taken from birth and released once, by the reactor
    thread, when the answer is set; a waiter takes and gives it back, so
    any number of waits (or a wait after the answer) pass.
    """

    __slots__ = ("_lock", "_settled", "_result", "_error")

    def __init__(self):
        self._lock = threading.Lock()
        self._lock.acquire()
        self._settled = False
        self._result = self._error = None

    def done(self):
        """Whether the answer is in."""
        return self._settled

    def result(self, timeout=None):
        """
        Wait for the answer (at most C{timeout} seconds; C{None}: for
        good) and return it, or raise its exception.

        @raise TimeoutError: no answer within C{timeout}.
        """
        if not self._lock.acquire(True, -1 if timeout is None else max(timeout, 0)):
            raise TimeoutError(f"no answer within {timeout:g}s")
        self._lock.release()
        if self._error is not None:
            try:
                raise self._error
            finally:
                self = None  # no cycle through the traceback's frame
        return self._result

    def _settle(self, result=None, error=None):
        """Answer it, once (reactor thread only: no two settle at once)."""
        if not self._settled:
            self._result, self._error = result, error
            self._settled = True
            self._lock.release()


class ReactorThread:
    """
    A new reactor running in a daemon thread named C{name}.

    @ivar reactor: the reactor; use it only in its thread (L{submit}).
    """

    def __init__(self, name="raftkv-reactor"):
        self.reactor = newReactor()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._lock = threading.Lock()  # guards _state, _queue and _scheduled
        self._state = "new"  # then "running", "stopping", "stopped"
        self._queue = deque()  # (Pending, f, args, kwargs) not yet run
        self._scheduled = False  # whether the reactor will empty _queue
        self._waiting = set()  # reactor thread only: Pendings waiting on a Deferred
        self._runError = None

    @property
    def name(self):
        return self._thread.name

    def start(self, timeout=10.0):
        """Start the thread; return once its reactor runs."""
        running = threading.Event()
        self.reactor.callWhenRunning(running.set)
        with self._lock:
            if self._state != "new":
                raise ReactorStopped("a reactor thread starts once")
            self._state = "running"
        self._thread.start()
        if not running.wait(timeout):
            self.stop()
            raise ReactorStopped(f"the reactor did not start: {self._runError!r}")
        return self

    def _run(self):
        try:
            self.reactor.run(installSignalHandlers=False)
        except BaseException as e:  # reported by start() or to the callers
            self._runError = e
        finally:
            # First refuse new calls and answer those left: from here on
            # nobody wakes the reactor (submit wakes it under the lock,
            # only while running), so its pipe can be closed after.
            with self._lock:
                self._state = "stopped"
                queued, self._queue = self._queue, deque()
            waiting, self._waiting = self._waiting, set()
            for pending in [p for p, _, _, _ in queued] + list(waiting):
                pending._settle(error=ReactorStopped("the reactor thread stopped"))
            # The wake-up pipe is the reactor's only file descriptors not
            # closed by garbage collection (epoll's are): close it here so
            # that clients made and closed in a loop leak nothing.
            waker = getattr(self.reactor, "waker", None)
            if waker is not None:
                self.reactor.removeReader(waker)
                waker.connectionLost(None)

    def inThread(self):
        """Whether the caller runs in the reactor's thread."""
        return threading.current_thread() is self._thread

    def submit(self, f, *args, **kwargs):
        """
        Run C{f(*args, **kwargs)} in the reactor thread.

        @return: a L{Pending} of its result; if C{f} returns a L{Deferred},
            of the Deferred's result (its failure's exception).
        @raise ReactorStopped: the thread is not running.
        """
        pending = Pending()
        with self._lock:
            # under the lock: the thread's end (which answers whatever is
            # queued, then closes the wake-up pipe) cannot come between the
            # check and the append or the wake-up
            if self._state != "running":
                raise ReactorStopped("the reactor thread is not running")
            self._queue.append((pending, f, args, kwargs))
            if not self._scheduled:
                try:
                    self.reactor.callFromThread(self._runQueued)
                except BaseException:
                    # (a Ctrl-C here): the reactor was not woken, so the
                    # next call must try again, and this one is not made
                    self._queue.pop()
                    raise
                self._scheduled = True
        return pending

    def _runQueued(self):
        with self._lock:
            queued, self._queue = self._queue, deque()
            self._scheduled = False
        for pending, f, args, kwargs in queued:
            try:
                result = f(*args, **kwargs)
            except BaseException as e:
                pending._settle(error=e)
                continue
            if isinstance(result, Deferred):
                self._waiting.add(pending)
                result.addBoth(self._answer, pending)
            else:
                pending._settle(result)

    def _answer(self, result, pending):
        self._waiting.discard(pending)
        if isinstance(result, Failure):
            pending._settle(error=result.value)
        else:
            pending._settle(result)
        return None

    def call(self, f, *args, **kwargs):
        """L{submit}, then wait for the result (raising its exception)."""
        if self.inThread():
            raise RuntimeError("a blocking call from the reactor's own thread would deadlock")
        return self.submit(f, *args, **kwargs).result()

    def stop(self, timeout=None):
        """
        Stop the reactor (once what was submitted before has run), join the
        thread (at most C{timeout} seconds: C{None} waits for good).
        Idempotent; calls from the reactor's own thread only ask it to stop.

        @return: whether the thread has ended.
        """
        with self._lock:
            state = self._state
            if state == "running":
                self._state = "stopping"
                self.reactor.callFromThread(self.reactor.stop)
            elif state == "new":
                self._state = "stopped"
                return True
        if self.inThread():
            return False
        self._thread.join(timeout)
        return not self._thread.is_alive()
