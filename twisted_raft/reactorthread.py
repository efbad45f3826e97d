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
L{ReactorThread.call} (C{callFromThread}): everything the reactor owns is
touched in its thread alone.  L{ReactorThread.stop} stops it, joins the
thread and closes the reactor's wake-up pipe; a call submitted after that,
or one the stop left unanswered, fails with L{ReactorStopped}.
"""

import concurrent.futures
import threading

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


class ReactorThread:
    """
    A new reactor running in a daemon thread named C{name}.

    @ivar reactor: the reactor; use it only in its thread (L{submit}).
    """

    def __init__(self, name="raftkv-reactor"):
        self.reactor = newReactor()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._lock = threading.Lock()  # guards _state and _pending
        self._state = "new"  # then "running", "stopping", "stopped"
        self._pending = set()  # Futures not yet answered
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
            # The wake-up pipe is the reactor's only file descriptors not
            # closed by garbage collection (epoll's are): close it here so
            # that clients made and closed in a loop leak nothing.
            waker = getattr(self.reactor, "waker", None)
            if waker is not None:
                self.reactor.removeReader(waker)
                waker.connectionLost(None)
            with self._lock:
                self._state = "stopped"
                pending, self._pending = self._pending, set()
            for future in pending:
                _settle(future, exception=ReactorStopped("the reactor thread stopped"))

    def inThread(self):
        """Whether the caller runs in the reactor's thread."""
        return threading.current_thread() is self._thread

    def submit(self, f, *args, **kwargs):
        """
        Run C{f(*args, **kwargs)} in the reactor thread.

        @return: a L{concurrent.futures.Future} of its result; if C{f}
            returns a L{Deferred}, of the Deferred's result (its failure's
            exception).
        @raise ReactorStopped: the thread is not running.
        """
        future = concurrent.futures.Future()

        def run():
            try:
                result = f(*args, **kwargs)
            except BaseException as e:
                _settle(future, exception=e)
                return
            if isinstance(result, Deferred):
                result.addBoth(_settleWith, future)
            else:
                _settle(future, result=result)

        with self._lock:
            if self._state != "running":
                raise ReactorStopped("the reactor thread is not running")
            self._pending.add(future)
            future.add_done_callback(self._forget)
            # under the lock: stop() cannot come between the check and this
            self.reactor.callFromThread(run)
        return future

    def _forget(self, future):
        with self._lock:
            self._pending.discard(future)

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


def _settle(future, result=None, exception=None):
    """Answer C{future} unless it was answered already."""
    if future.done():
        return
    try:
        if exception is not None:
            future.set_exception(exception)
        else:
            future.set_result(result)
    except concurrent.futures.InvalidStateError:
        pass


def _settleWith(result, future):
    if isinstance(result, Failure):
        _settle(future, exception=result.value)
    else:
        _settle(future, result=result)
    return None
