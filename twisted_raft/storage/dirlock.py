"""
The data dir's lock: one process at a time on a data dir.

Two node processes on one data dir would both append to the write-ahead log
and replace the hard state, each unaware of the other's writes.  A
L{FileStorage} therefore takes an exclusive C{flock} on C{<dir>/lock} before
it reads or writes anything else in the dir, and holds it for its life.  The
kernel drops the lock when the file is closed or the process exits, however
it exits, so a crashed node never leaves a stale lock behind; the file
itself stays (removing it would let a process that opened the old file and
one that creates a new one both "hold" the lock).

C{flock} locks belong to an open file description, not to a process: a second
C{open} and C{flock} of the same file in the same process fails as well,
which is what the unit tests rely on.  The lock is taken with C{LOCK_NB}, so
it never waits and never blocks the reactor.  After locking, the holder
writes its pid into the file, for the refusal message of the next one.
"""

import fcntl
import os

from twisted_raft.storage.errors import DataDirError, DataDirLocked

LOCK_NAME = "lock"


class DataDirLock:
    """
    The held lock of one data dir (see L{lock}).

    @ivar path: the data dir.
    @ivar created: whether taking the lock created the dir (its parent
        still has to be fsynced to make the new entry durable, off the
        reactor thread).
    """

    def __init__(self, path, fd, created):
        self.path = path
        self.created = created
        self._fd = fd

    @classmethod
    def lock(cls, path):
        """
        Lock the data dir C{path}, creating the dir if it does not exist.

        @return: the L{DataDirLock}, held until L{release}.
        @raise DataDirLocked: another open file description (another
            process, or another storage in this one) holds it; nothing in
            the dir was changed.
        @raise DataDirError: C{path} exists and is not a directory, or the
            lock file cannot be opened.
        """
        created = False
        if not os.path.isdir(path):
            if os.path.exists(path):
                raise DataDirError(f"data dir {path} exists and is not a directory")
            os.makedirs(path, mode=0o700)  # its files are private: the token
            created = True
        lockPath = os.path.join(path, LOCK_NAME)
        try:
            # no O_TRUNC: the holder's pid must survive a refused open
            fd = os.open(lockPath, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as e:
            raise DataDirError(f"cannot open the lock file {lockPath}: {e.strerror or e}") from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            pid = _readPid(fd)
            os.close(fd)
            raise DataDirLocked(path, pid) from None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, b"%d\n" % (os.getpid(),), 0)
        except OSError:
            pass  # the pid is only for the message; the lock is what counts
        return cls(path, fd, created)

    @property
    def held(self):
        return self._fd is not None

    def release(self):
        """Release the lock (closing its file does); again is a no-op."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


def _readPid(fd):
    try:
        text = os.pread(fd, 32, 0)
        pid = int(text.strip() or b"-")
    except (OSError, ValueError):
        return None
    return pid if pid > 0 else None
