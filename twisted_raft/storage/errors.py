"""
Errors raised by the file-backed storage when a data dir cannot be used,
and the classification of disk errors (full disk versus failed fsync).
"""

import errno


class DataDirError(Exception):
    """
    The data dir cannot be used: it belongs to another node or cluster, has an
    unknown format version, or one of its files is damaged.  The node must not
    start on it; an operator has to look.
    """


class CorruptLogError(DataDirError):
    """
    The write-ahead log is damaged somewhere other than a torn tail left by a
    crash mid-write, so recovering would silently lose acknowledged entries.

    @ivar path: the segment file.
    @ivar offset: the byte offset of the bad header or record in it.
    @ivar reason: what is wrong there.
    """

    def __init__(self, path, offset, reason):
        self.path = path
        self.offset = offset
        self.reason = reason
        super().__init__(
            f"corrupt write-ahead log segment {path} at byte offset {offset}: "
            f"{reason}; refusing to start rather than drop data"
        )


class CorruptSnapshotError(DataDirError):
    """
    A snapshot file is damaged: truncated, of an unknown kind or format
    version, or a checksum does not match.  (A state machine's own check of
    the payload inside an intact file raises its own error, for the key-value
    store L{twisted_raft.kv.MalformedSnapshotPayload}.)  Never silently ignored: at start-up
    the node refuses the data dir; a received snapshot that fails its checks is
    refused (and its transfer must restart) without failing the storage.

    @ivar path: the snapshot file.
    @ivar offset: the byte offset at which the damage was detected.
    @ivar reason: what is wrong there.
    """

    def __init__(self, path, offset, reason):
        self.path = path
        self.offset = offset
        self.reason = reason
        super().__init__(f"corrupt snapshot {path} at byte offset {offset}: {reason}")


#: errno values meaning "no space left": a full disk or an exhausted quota.
DISK_FULL_ERRNOS = frozenset(
    e for e in (getattr(errno, "ENOSPC", None), getattr(errno, "EDQUOT", None)) if e is not None
)


class FsyncError(OSError):
    """
    An fsync failed (with the errno of the original error, which is its
    C{__cause__}).  Always fatal, whatever the errno, even C{ENOSPC}: after a
    failed fsync the kernel may have dropped the dirty pages, so retrying
    could report success for data that never reached the disk ("fsyncgate").
    """


class DiskFull(OSError):
    """
    A write (not an fsync) failed for lack of space (C{ENOSPC}/C{EDQUOT});
    whatever it had partially written has been undone, so the same write can
    be retried later.  Used inside the storage only; the storage keeps the
    affected calls pending while it retries.
    """


def isDiskFull(error):
    """
    Whether C{error} is a recoverable out-of-space error from a write:
    C{ENOSPC} or C{EDQUOT}, but never from an fsync.
    """
    return (
        isinstance(error, OSError)
        and not isinstance(error, FsyncError)
        and error.errno in DISK_FULL_ERRNOS
    )


def checkedFsync(fsync):
    """
    Wrap C{fsync} so that any L{OSError} it raises becomes an L{FsyncError}
    (same errno), which L{isDiskFull} never takes for a full disk.
    """

    def checked(fd):
        try:
            fsync(fd)
        except FsyncError:
            raise
        except OSError as e:
            raise FsyncError(e.errno, f"fsync failed: {e.strerror or e}") from e

    checked.wrapped = fsync
    return checked


class DataDirLocked(DataDirError):
    """
    Another process holds the data dir's lock (L{dirlock}): two writers on
    one write-ahead log would corrupt it, so this one must not start.

    @ivar path: the data dir.
    @ivar pid: the holder's process id as it wrote it in the lock file, or
        L{None} if it could not be read.
    """

    def __init__(self, path, pid=None):
        self.path = path
        self.pid = pid
        holder = "another raftkv process" if pid is None else f"another raftkv process (pid {pid})"
        super().__init__(
            f"data dir {path} is locked: {holder} holds it; "
            f"refusing to start a second node on it"
        )
