"""
File-backed durable L{IStorage}: L{FileStorage}.

On-disk format (version 1) of a data dir::

    <dir>/lock              held (flock) by the one process using the dir;
                            holds its pid (L{twisted_raft.storage.dirlock})
    <dir>/identity          which node of which cluster owns the dir
    <dir>/state             Raft's hard state (term, votedFor)
    <dir>/bootstrap         the configuration the cluster started with
                            (written once; L{twisted_raft.storage.bootstrap})
    <dir>/wal/<first index, 20 digits>.log   write-ahead log segments
    <dir>/snapshot      the latest snapshot (see L{twisted_raft.storage.snapshot})
    <dir>/snapshot.tmp  a snapshot being written; snapshot.recv: being received

All integers are big-endian; every file is checksummed with CRC-32
(C{zlib.crc32}); nothing is pickled.

C{identity}, C{state} and C{bootstrap} are small files replaced
atomically (write C{<name>.tmp}, fsync, rename, fsync the dir), laid out
as::

    magic (8 bytes: b"RKVIDENT" / b"RKVSTATE" / b"RKVBOOTS") | version u32 |
    payload length u32 | payload | crc32 u32 of all bytes before it

    identity payload:  nodeId u64 | token length u16 | cluster token (UTF-8)
    state payload:     term u64 | votedFor u64
    bootstrap payload: the configuration, as encodeMembers writes it

Each WAL segment is a 24-byte header then records::

    header: magic b"RKVWAL\\r\\n" | version u32 | firstIndex u64 |
            crc32 u32 of the 20 bytes before it
    record: payload length u32 | crc32(type byte + payload) u32 |
            type u8 (1 = entry, 2 = configuration entry) | 3 zero bytes |
            crc32 u32 of the 12 header bytes before it | payload
    entry payload: index u64 | term u64 | data

A new segment is started when the last one has reached C{segmentBytes}.
Entries are contiguous across segments, from index 1 or, once a snapshot
covers the start of the log and the segments it covers were deleted, from
the first segment's first index (at most the snapshot's lastIndex + 1; a
gap raises L{CorruptLogError}).  On load, damage at the
very end of the last segment (a record running past the end of the file, a
last record whose checksum fails and that ends at the end of the file, an
all-zero tail) is a crash mid-write: it is cut off and logged.  Any other
damage raises L{CorruptLogError}, naming the file and byte offset; a
damaged or mismatching C{identity} or a damaged C{state} or C{bootstrap}
raises L{DataDirError}, naming the file (and the offset of the damage).
Nothing damaged is ever repaired: an operator has to look.

Durability: the log's and the hard state's disk work runs, in issue order,
on one writer thread (snapshot files have their own thread, below).
Writes issued while a batch is being written queue up and go together in
the next batch (group commit): the hard state (if any) is replaced once,
then the entries are written and the WAL fsynced once, then every Deferred
of the batch fires in issue order.  A truncation is synced on the spot.  If
a write or fsync fails, that batch's Deferreds fail with the error and the
storage refuses everything afterwards with L{StorageFailed}: after a failed
fsync the page cache cannot be trusted, so the node must stop.  An fsync is
never retried, whatever its errno (even C{ENOSPC}).

Disk full: if a write (not an fsync) fails with C{ENOSPC} or C{EDQUOT}, the
partial write is undone (the WAL segment is cut back to where the failed
append started, a segment created for it is removed, a partial C{state.tmp}
is deleted), the storage does not fail, the batch's Deferreds stay pending,
C{diskFull} becomes true and the batch is retried from where it stopped
every C{diskFullRetryDelay} seconds (on C{clock}); later calls queue behind
it in order.  Once a retry succeeds, C{diskFull} is false again and
everything proceeds.  Entering and leaving that state are each logged once,
as warnings.  Closing the storage while the disk is full tries the batch
once more, and fails it and all queued writes with L{StorageFailed} if there
is still no space.

Snapshots (Raft section 7).  A second one-thread pool, the snapshot thread,
writes snapshots (L{FileStorage.saveSnapshot}), reads them
(L{FileStorage.readSnapshot}, L{FileStorage.loadSnapshot}) and receives
them (L{FileStorage.receiveSnapshot}), so the writer thread keeps
group-committing appends meanwhile.  What changes the log goes through the
writer thread, in order with appends and truncations: deleting the segments
a saved snapshot covers, and installing a received snapshot (fsync, rename,
dir fsync, then discarding the log or deleting covered segments).  Crash
safety: a snapshot is renamed into place, durably, before any segment is
deleted; L{load} finishes whatever a crash interrupted (see
L{twisted_raft.storage.wal}).  A damaged snapshot raises
L{CorruptSnapshotError} (path and offset) at load, in
L{FileStorage.loadSnapshot} and L{FileStorage.installSnapshot} -- the
latter two leave the storage working.  A snapshot write that runs out of
space fails only its Deferred (with L{DiskFull}; the tmp file is removed,
the previous snapshot and the log are untouched); a failed fsync anywhere
fails the storage.  The stored snapshot never goes backwards: a save or an
install of a snapshot older than the current one fails with
L{SnapshotChanged}.

Why one module of over 600 lines: a fifth of it is this description, and
the rest is one queue of disk jobs (L{FileStorage}: ordering, group commit,
the failed and disk-full states, the two threads) with its blocking half
(L{_Disk}, the only code the queue runs); the formats themselves live in
L{wal}, L{snapshot}, L{hardstate} and L{identity}.

Why one module of nearly 900 lines (some 550 of code, the rest the
durability contract above): the queue and its blocking half share the one
ordering that makes "fsynced before acknowledged" true; apart, that
ordering would be split across modules.
"""

import os
import time
from collections import deque

from twisted.internet import defer
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from twisted_raft.raft.interfaces import IStorage
from twisted_raft.raft.messages import (
    Entry,
    EntryKind,
    HardState,
    PersistentState,
    SnapshotChanged,
    StorageFailed,
)
from twisted_raft.storage import bootstrap, hardstate, identity
from twisted_raft.storage.dirlock import DataDirLock
from twisted_raft.storage.errors import (
    CorruptLogError,
    CorruptSnapshotError,
    DataDirError,
    DataDirLocked,
    DiskFull,
    FsyncError,
    checkedFsync,
)
from twisted_raft.storage.smallfile import fsyncDir
from twisted_raft.storage.snapshot import SnapshotFiles, checkMeta
from twisted_raft.storage.wal import WriteAheadLog

__all__ = [
    "FileStorage",
    "DataDirError",
    "CorruptLogError",
    "CorruptSnapshotError",
    "DataDirLocked",
    "SnapshotChanged",
]

IDENTITY_FILE = "identity"
STATE_FILE = "state"
BOOTSTRAP_FILE = "bootstrap"
WAL_DIR = "wal"

_LOAD = "load"
_CLOSE = "close"
_HARDSTATE = "hardState"
_APPEND = "append"
_TRUNCATE = "truncate"
_COMPACT = "compact"
_INSTALL = "install"
_BOOTSTRAP = "bootstrap"
_WRITES = (_HARDSTATE, _APPEND, _TRUNCATE, _BOOTSTRAP)


class _Disk:
    """
    The blocking half of L{FileStorage}: touched only on the writer thread.
    """

    def __init__(self, path, nodeId, clusterToken, segmentBytes, fsync, pwrite=os.pwrite):
        self.path = path
        self.nodeId = nodeId
        self.clusterToken = clusterToken
        # Errors from fsync become FsyncError, never taken for a full disk.
        self.fsync = fsync = checkedFsync(fsync)
        self.pwrite = pwrite
        self.identityPath = os.path.join(path, IDENTITY_FILE)
        self.statePath = os.path.join(path, STATE_FILE)
        self.bootstrapPath = os.path.join(path, BOOTSTRAP_FILE)
        self.wal = WriteAheadLog(os.path.join(path, WAL_DIR), segmentBytes, fsync, pwrite)
        self.snapshots = SnapshotFiles(path, fsync, pwrite)
        self.createdDir = False  # set by FileStorage.start, which locks the dir

    def load(self):
        path = self.path
        if not os.path.isdir(path):
            if os.path.exists(path):
                raise DataDirError(f"data dir {path} exists and is not a directory")
            os.makedirs(path, mode=0o700)
            self.createdDir = True
        if self.createdDir:
            fsyncDir(os.path.dirname(os.path.abspath(path)), self.fsync)
        if not identity.check(path, self.identityPath, self.nodeId, self.clusterToken):
            walDir = self.wal.directory
            if os.path.exists(self.statePath) or os.path.exists(self.bootstrapPath) or (
                self.snapshots.exists()
            ) or (
                os.path.isdir(walDir) and any(n.endswith(".log") for n in os.listdir(walDir))
            ):
                raise DataDirError(
                    f"data dir {path} holds raftkv data but no identity file "
                    f"{self.identityPath}; refusing to adopt it"
                )
            identity.write(
                self.identityPath, self.nodeId, self.clusterToken, self.fsync, self.pwrite
            )
        if not os.path.isdir(self.wal.directory):
            os.makedirs(self.wal.directory)
            fsyncDir(path, self.fsync)
        for leftover in (
            self.statePath + ".tmp", self.identityPath + ".tmp", self.bootstrapPath + ".tmp"
        ):
            if os.path.exists(leftover):
                os.unlink(leftover)
        hard = hardstate.read(self.statePath)
        boot = bootstrap.read(self.bootstrapPath)
        snapshot = self.snapshots.recover()
        entries, warnings = self.wal.recover(snapshot)
        state = PersistentState(hard, entries, snapshot, boot)
        return state, warnings, self.wal.lastIndex

    def compact(self, lastIndex):
        self.wal.compact(lastIndex)

    def install(self, transfer, discardLog):
        """
        Install the claimed received snapshot, then discard the log or
        delete the segments it covers.

        @return: whether it became the current snapshot (see
            L{SnapshotFiles.install}).
        """
        installed = self.snapshots.install(transfer)
        lastIndex = transfer.meta.lastIndex
        # Only after the rename is durable: a crash in between leaves the new
        # snapshot and the old log, which load() reconciles.
        if discardLog or self.wal.lastIndex < lastIndex:
            self.wal.discard(lastIndex)
        else:
            self.wal.compact(lastIndex)
        return installed

    def writeBatch(self, job):
        """
        Run the L{_Job} C{job} from where it stopped: after L{DiskFull} the
        failed step has been undone and the job may be run again.
        """
        if not job.hardDone:
            hard = None
            for kind, arg in job.writes:
                if kind == _HARDSTATE:
                    hard = arg
            # The hard state first: a term or vote durable ahead of the
            # entries is always a valid state to restart from.
            if hard is not None:
                hardstate.write(self.statePath, hard, self.fsync, self.pwrite)
            job.hardDone = True
        while job.done < len(job.writes):
            kind, arg = job.writes[job.done]
            if kind == _APPEND:
                self.wal.append(arg)
            elif kind == _TRUNCATE:
                self.wal.truncateSuffix(arg)
            elif kind == _BOOTSTRAP:
                bootstrap.write(self.bootstrapPath, arg, self.fsync, self.pwrite)
            job.done += 1
        self.wal.sync()

    def close(self):
        self.wal.close()
        self.snapshots.close()


class _Op:
    __slots__ = ("kind", "arg", "deferred")

    def __init__(self, kind, arg):
        self.kind = kind
        self.arg = arg
        self.deferred = defer.Deferred()


class _Job:
    """
    A write batch's progress, so that a retry after L{DiskFull} resumes where
    it stopped.  Touched by the writer thread while it runs, by the reactor
    thread only in between.
    """

    __slots__ = ("writes", "hardDone", "done")

    def __init__(self, writes):
        self.writes = writes
        self.hardDone = False
        self.done = 0


@implementer(IStorage)
class FileStorage:
    """
    Raft's hard state and log in files under C{path}, for node C{nodeId} of
    the cluster C{clusterToken} (a str or bytes naming the cluster).

    Call L{start}, then L{load} (and wait for it) before any write.

    @param fsync: L{os.fsync} or a stand-in (tests inject failures).
    @param pwrite: L{os.pwrite} or a stand-in, used for every write to a
        file (tests inject C{ENOSPC}).
    @param clock: the L{IReactorTime} on which disk-full retries are
        scheduled; C{reactor} if not given.
    @param diskFullRetryDelay: seconds between attempts while the disk is
        full.
    @param closeOnShutdown: close by itself before the reactor shuts down.
        An owner that closes it (the node's service, which first hands
        leadership over and so still needs to write) passes C{False}.

    @ivar batches: how many write batches have been run (for tests).
    @ivar diskFull: true while a write waits for space (read it on the
        reactor thread): writes are not failed but stay pending.
    @ivar diskFullRetries: how many write attempts have failed for lack of
        space so far.
    @ivar onSnapshotSave: C{None}, or called on the snapshot thread with the
        seconds each snapshot save took (written and made durable); with
        L{onFsync}, the node's metrics.  Called off the reactor thread: the
        callable must be thread-safe.
    """

    onSnapshotSave = None

    log = Logger()

    def __init__(
        self,
        path,
        nodeId,
        clusterToken,
        reactor,
        segmentBytes=16 * 1024 * 1024,
        fsync=os.fsync,
        pwrite=os.pwrite,
        clock=None,
        diskFullRetryDelay=0.5,
        closeOnShutdown=True,
    ):
        if not isinstance(nodeId, int) or nodeId <= 0:
            raise ValueError(f"node id must be a positive int, not {nodeId!r}")
        identity.tokenBytes(clusterToken)  # validates
        self.path = os.fspath(path)
        self.nodeId = nodeId
        self.clusterToken = clusterToken
        self._reactor = reactor
        self._clock = reactor if clock is None else clock
        self.diskFullRetryDelay = diskFullRetryDelay
        self._closeOnShutdown = closeOnShutdown
        self._disk = _Disk(self.path, nodeId, clusterToken, segmentBytes, fsync, pwrite)
        self._pool = ThreadPool(minthreads=1, maxthreads=1, name=f"raftkv-storage-{nodeId}")
        self._snapPool = ThreadPool(
            minthreads=1, maxthreads=1, name=f"raftkv-snapshot-{nodeId}"
        )
        self._snapBusy = 0  # jobs issued to the snapshot thread, not yet finished
        self._snapIdleWaiters = []
        self._pending = deque()
        self._busy = False
        self._started = False
        self._closing = False
        self._closeWaiters = []
        self._closed = False
        self._failure = None
        self._loadIssued = False
        self._lastIndex = None  # known once load() has finished
        self._bootstrapped = None  # the bootstrap record, known once loaded or issued
        self._shutdownTrigger = None
        self._retryCall = None  # a scheduled retry while the disk is full
        self._lock = None  # the data dir's DataDirLock, from start to close
        self._waiting = None  # (batch, job) waiting for space
        self.batches = 0
        self.diskFull = False
        self.diskFullRetries = 0

    # -- lifecycle --------------------------------------------------------

    def start(self):
        """
        Lock the data dir (creating it if needed), then start the writer and
        snapshot threads.

        @raise DataDirLocked: another process (or another storage) holds the
            data dir; nothing in it was read or written, and this storage
            stays unstarted.
        @raise DataDirError: the data dir cannot be locked.
        """
        if self._started or self._closing:
            return
        # Before anything else in the dir is read or written; the calls do
        # not wait (LOCK_NB) and touch only the dir's metadata.
        self._lock = DataDirLock.lock(self.path)
        self._disk.createdDir = self._lock.created
        self._started = True
        self._pool.start()
        self._snapPool.start()
        if self._closeOnShutdown:
            self._shutdownTrigger = self._reactor.addSystemEventTrigger(
                "before", "shutdown", self.close
            )
        self._kick()

    def close(self):
        """
        Finish pending snapshot jobs and writes, close the files and stop
        the snapshot and writer threads.
        Also runs before reactor shutdown if not called earlier.
        """
        d = defer.Deferred()
        if self._closed:
            d.callback(None)
            return d
        self._closeWaiters.append(d)
        if self._closing:
            return d
        self._closing = True
        if not self._started:
            self._stopped(None)
        else:
            # Snapshot-thread jobs finish first (and may still queue the
            # segment deletion of a saved snapshot), then the writer closes.
            self._whenSnapshotIdle().addCallback(lambda _: self._closeWriter())
        return d

    def _closeWriter(self):
        op = _Op(_CLOSE, None)
        op.deferred.addBoth(self._stopped)
        self._pending.append(op)
        if self._retryCall is not None:
            # Waiting for space: one last attempt now; if it fails too,
            # the waiting writes fail (see _batchFailed).
            self._retryCall.cancel()
            self._retry()
        self._kick()

    def _stopped(self, result):
        if self._started:
            if self._shutdownTrigger is not None:
                try:
                    self._reactor.removeSystemEventTrigger(self._shutdownTrigger)
                except (ValueError, KeyError):
                    pass  # it already fired: this close is the shutdown
                self._shutdownTrigger = None
            self._pool.stop()
            self._snapPool.stop()
        if self._lock is not None:
            # last: the files are closed, so the next holder finds them whole
            self._lock.release()
        self._closed = True
        waiters, self._closeWaiters = self._closeWaiters, []
        for waiter in waiters:
            if isinstance(result, Failure):
                waiter.errback(result)
            else:
                waiter.callback(None)

    # -- IStorage ---------------------------------------------------------

    def load(self):
        """
        Check the data dir (creating it on first use) and read it back.

        @return: a Deferred firing with a L{PersistentState}, or failing with
            L{DataDirError} / L{CorruptLogError}.
        """
        refusal = self._refusal(needLoad=False)
        if refusal is not None:
            return refusal
        if self._loadIssued:
            return defer.fail(RuntimeError("FileStorage.load() may be called only once"))
        self._loadIssued = True
        return self._enqueue(_LOAD, None)

    def saveHardState(self, hardState):
        refusal = self._refusal()
        if refusal is not None:
            return refusal
        if not isinstance(hardState, HardState) or hardState.term < 0 or hardState.votedFor < 0:
            return defer.fail(ValueError(f"not a valid hard state: {hardState!r}"))
        return self._enqueue(_HARDSTATE, hardState)

    def append(self, entries):
        refusal = self._refusal()
        if refusal is not None:
            return refusal
        entries = list(entries)
        expected = self._lastIndex + 1
        for entry in entries:
            if not isinstance(entry, Entry) or entry.index != expected:
                return defer.fail(
                    ValueError(f"append of {entry!r}: expected an Entry at index {expected}")
                )
            if (
                entry.term < 0
                or not isinstance(entry.data, bytes)
                or not isinstance(entry.kind, EntryKind)
            ):
                return defer.fail(ValueError(f"not a valid entry: {entry!r}"))
            expected += 1
        self._lastIndex = expected - 1
        return self._enqueue(_APPEND, entries)

    def truncateSuffix(self, fromIndex):
        refusal = self._refusal()
        if refusal is not None:
            return refusal
        fromIndex = max(int(fromIndex), 1)
        self._lastIndex = min(self._lastIndex, fromIndex - 1)
        return self._enqueue(_TRUNCATE, fromIndex)

    def bootstrap(self, configuration):
        """
        Write the C{bootstrap} file (in order with the log's writes, on the
        writer thread; atomically: tmp file, fsync, rename, dir fsync).

        @return: a Deferred firing once it is durable; failing with
            C{ValueError} if C{configuration} is not a storable
            L{twisted_raft.raft.membership.Configuration}, or with
            L{DataDirError} if the data dir has a bootstrap configuration
            already (it is written once).
        """
        refusal = self._refusal()
        if refusal is not None:
            return refusal
        try:
            bootstrap.encodePayload(configuration)
        except ValueError as e:
            return defer.fail(e)
        if self._bootstrapped is not None:
            return defer.fail(
                DataDirError(
                    f"data dir {self.path} has a bootstrap configuration already"
                    f" ({self._disk.bootstrapPath}); it is written once"
                )
            )
        self._bootstrapped = configuration.at(0)
        return self._enqueue(_BOOTSTRAP, self._bootstrapped)

    # -- snapshots ----------------------------------------------------------

    def saveSnapshot(self, meta, write):
        """
        Write a snapshot for C{meta} on the snapshot thread (C{write(fileobj)}
        writes the payload), make it durable, then delete the segments it
        covers on the writer thread, in order with the log's writes.

        @return: a Deferred firing with C{None} once all that is done, or
            failing with L{DiskFull} (out of space; nothing changed),
            L{SnapshotChanged} (a newer snapshot is stored already), whatever
            C{write} raised, or, if an fsync failed, the L{FsyncError} (the
            storage has failed).
        """
        refusal = self._refusalFor(meta)
        if refusal is not None:
            return refusal

        def saved(_):
            if self._failure is not None:
                return self._refusal()
            # Queued even while closing: close() waits for this first.
            return self._enqueue(_COMPACT, meta.lastIndex)

        return self._onSnapshotThread(self._saveTimed, meta, write, then=saved)

    def _saveTimed(self, meta, write):
        # On the snapshot thread.
        observe = self.onSnapshotSave
        if observe is None:
            return self._disk.snapshots.save(meta, write)
        started = time.monotonic()
        result = self._disk.snapshots.save(meta, write)
        observe(time.monotonic() - started)
        return result

    @property
    def onFsync(self):
        """C{None}, or called on the writer thread with the seconds each fsync
        of the log's appends took (L{WriteAheadLog.onFsync})."""
        return self._disk.wal.onFsync

    @onFsync.setter
    def onFsync(self, observe):
        self._disk.wal.onFsync = observe

    def readSnapshot(self, meta, offset, size):
        """
        @return: a Deferred firing with C{(data, totalSize)} read from the
            current snapshot file, or failing with L{SnapshotChanged} if that
            is not C{meta}'s.
        """
        refusal = self._refusal()
        if refusal is not None:
            return refusal
        return self._onSnapshotThread(self._disk.snapshots.read, meta, offset, size)

    def receiveSnapshot(self, meta, offset, data):
        """
        Write a received chunk into C{snapshot.recv} (no fsync).

        @return: a Deferred firing with the bytes received so far, or failing
            with L{SnapshotChanged} (offset 0 restarts), or with L{DiskFull}
            (the transfer is dropped).
        """
        refusal = self._refusalFor(meta)
        if refusal is not None:
            return refusal
        return self._onSnapshotThread(self._disk.snapshots.receive, meta, offset, bytes(data))

    def installSnapshot(self, meta, discardLog):
        """
        Install the completely received snapshot for C{meta}: call it only
        once the Deferred of the last L{receiveSnapshot} has fired.

        Checked at once, from the checksum computed while receiving: if it is
        incomplete or damaged this fails with L{CorruptSnapshotError} (the
        storage keeps working; the transfer must restart at offset 0); with
        L{SnapshotChanged} if no transfer of C{meta} is known or the stored
        snapshot is newer.  Otherwise, in order with the log's writes: fsync,
        rename to C{snapshot}, fsync the dir, then discard the log (the next
        append is at C{meta.lastIndex + 1}) if C{discardLog}, else delete the
        segments it covers.  C{discardLog=False} assumes the caller checked
        that the log holds C{meta.lastIndex} with C{meta.lastTerm}; a log
        ending before C{meta.lastIndex} is discarded anyway.
        """
        refusal = self._refusal()
        if refusal is not None:
            return refusal
        try:
            transfer = self._disk.snapshots.claim(meta)
        except (CorruptSnapshotError, SnapshotChanged) as e:
            return defer.fail(e)
        if discardLog or self._lastIndex < meta.lastIndex:
            self._lastIndex = meta.lastIndex
        return self._enqueue(_INSTALL, (transfer, discardLog))

    def loadSnapshot(self, parse):
        """
        @return: a Deferred firing with C{(meta, parse(payload fileobj))},
            run on the snapshot thread with the whole file's checksum
            verified (else L{CorruptSnapshotError}), or with C{None} if there
            is no snapshot.
        """
        refusal = self._refusal()
        if refusal is not None:
            return refusal
        return self._onSnapshotThread(self._disk.snapshots.loadPayload, parse)

    def _onSnapshotThread(self, f, *args, then=None):
        self._snapBusy += 1
        d = deferToThreadPool(self._reactor, self._snapPool, f, *args)

        def failed(failure):
            if failure.check(FsyncError):
                self._fail(failure)
            return failure

        d.addErrback(failed)
        followUp = []
        if then is not None:
            # Queue the follow-up before this job counts as finished (a close
            # waiting for the snapshot thread then queues behind it), but do
            # not count its wait: it may wait for disk space.
            d.addCallback(lambda result: followUp.append(then(result)))

        def finished(result):
            self._snapBusy -= 1
            if not self._snapBusy:
                waiters, self._snapIdleWaiters = self._snapIdleWaiters, []
                for waiter in waiters:
                    waiter.callback(None)
            return result

        d.addBoth(finished)
        if then is not None:
            d.addCallback(lambda _: followUp[0])
        return d

    def _whenSnapshotIdle(self):
        if not self._snapBusy:
            return defer.succeed(None)
        d = defer.Deferred()
        self._snapIdleWaiters.append(d)
        return d

    def _fail(self, failure):
        """The storage can no longer promise durability."""
        if self._failure is None:
            self._failure = failure
            self.log.failure(
                "storage in {path} failed; refusing all further writes",
                failure,
                raftkv_event="storage_failed",
                path=self.path,
            )
        self._kick()

    # -- the queue --------------------------------------------------------

    def _refusalFor(self, meta):
        """
        L{_refusal}, or a failed Deferred if C{meta} is not a valid snapshot
        meta (L{checkMeta}'s C{ValueError}), or L{None} to go ahead.
        """
        refusal = self._refusal()
        if refusal is not None:
            return refusal
        try:
            checkMeta(meta)
        except ValueError as e:
            return defer.fail(e)
        return None

    def _refusal(self, needLoad=True):
        if self._failure is not None:
            return defer.fail(
                StorageFailed(
                    f"storage in {self.path} failed earlier "
                    f"({self._failure.getErrorMessage()}); nothing more is written"
                )
            )
        if self._closing:
            return defer.fail(StorageFailed(f"storage in {self.path} is closed"))
        if not self._started:
            return defer.fail(RuntimeError("FileStorage.start() has not been called"))
        if needLoad and self._lastIndex is None:
            return defer.fail(RuntimeError("FileStorage.load() has not completed"))
        return None

    def _enqueue(self, kind, arg):
        op = _Op(kind, arg)
        self._pending.append(op)
        self._kick()
        return op.deferred

    def _kick(self):
        if self._busy or not self._started or self._closed or not self._pending:
            return
        if self._failure is not None:
            self._flushFailed()
            if not self._pending:
                return
        first = self._pending[0]
        if first.kind in _WRITES:
            batch = []
            while self._pending and self._pending[0].kind in _WRITES:
                batch.append(self._pending.popleft())
            job = _Job([(op.kind, op.arg) for op in batch])
            self.batches += 1
        else:
            batch = [self._pending.popleft()]
            job = None
        self._run(batch, job)

    def _run(self, batch, job):
        self._busy = True
        kind = batch[0].kind
        if job is not None:
            call = (self._disk.writeBatch, job)
        elif kind == _LOAD:
            call = (self._disk.load,)
        elif kind == _COMPACT:
            call = (self._disk.compact, batch[0].arg)
        elif kind == _INSTALL:
            call = (self._disk.install,) + batch[0].arg
        else:
            call = (self._disk.close,)
        d = deferToThreadPool(self._reactor, self._pool, *call)
        d.addCallbacks(
            self._batchDone, self._batchFailed, (batch, job), None, (batch, job), None
        )

    def _retry(self):
        self._retryCall = None
        batch, job = self._waiting
        self._waiting = None
        self._run(batch, job)

    def _waitForSpace(self, failure, batch, job):
        """
        A write batch ran out of space (its partial writes undone): keep its
        Deferreds pending and try it again later.  Stays busy meanwhile, so
        later calls queue behind it.
        """
        self.diskFullRetries += 1
        if not self.diskFull:
            self.diskFull = True
            self.log.warn(
                "disk full: storage in {path} cannot write ({error}); {count} write(s)"
                " wait, retrying every {delay}s; nothing acknowledged is lost",
                raftkv_event="disk_full",
                path=self.path,
                error=failure.getErrorMessage(),
                count=len(batch),
                delay=self.diskFullRetryDelay,
            )
        self._waiting = (batch, job)
        self._retryCall = self._clock.callLater(self.diskFullRetryDelay, self._retry)

    def _flushFailed(self):
        """
        Refuse every queued op after a failure; only a close still runs.
        """
        kept = deque()
        refused = []
        while self._pending:
            op = self._pending.popleft()
            (kept if op.kind == _CLOSE else refused).append(op)
        self._pending = kept
        for op in refused:
            op.deferred.errback(
                StorageFailed(
                    f"storage in {self.path} failed "
                    f"({self._failure.getErrorMessage()}); nothing more is written"
                )
            )

    def _batchDone(self, result, batch, job):
        self._busy = False
        if job is not None and self.diskFull:
            self.diskFull = False
            self.log.warn(
                "disk space available again: storage in {path} writes again"
                " (after {retries} attempt(s) failed for lack of space)",
                raftkv_event="disk_space_back",
                path=self.path,
                retries=self.diskFullRetries,
            )
        if batch[0].kind == _LOAD:
            state, warnings, lastIndex = result
            for fmt, fields in warnings:
                self.log.warn(fmt, raftkv_event="storage_recovery", **fields)
            if self._lastIndex is None:
                self._lastIndex = lastIndex
                self._bootstrapped = state.bootstrap
            result = state
        elif batch[0].kind == _INSTALL:
            if not result:
                self.log.warn(
                    "received snapshot {meta} not installed: a newer snapshot was saved"
                    " meanwhile (the log was still discarded/compacted as asked)",
                    raftkv_event="snapshot_install_superseded",
                    meta=batch[0].arg[0].meta,
                )
            result = None
        else:
            result = None
        # Start the next batch first, so the disk works while callbacks run;
        # it cannot complete before these have fired.
        self._kick()
        for op in batch:
            op.deferred.callback(result)

    def _batchFailed(self, failure, batch, job):
        if job is not None and failure.check(DiskFull):
            if not self._closing:
                self._waitForSpace(failure, batch, job)
                return
            failure = Failure(
                StorageFailed(
                    f"storage in {self.path} closed while the disk was full"
                    f" ({failure.getErrorMessage()}); not written"
                )
            )
        self._busy = False
        if batch[0].kind != _CLOSE and self._failure is None:
            self._failure = failure
            if batch[0].kind != _LOAD:  # a failed load is the caller's to report
                self.log.failure(
                    "storage in {path} failed; refusing all further writes",
                    failure,
                    raftkv_event="storage_failed",
                    path=self.path,
                )
        for op in batch:
            op.deferred.errback(failure)
        self._kick()
