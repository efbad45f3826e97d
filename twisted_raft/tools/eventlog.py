"""
The events a stopped node's committed log made, read offline from its data
dir: what C{raftkv chaos} checks its watcher against.

The data dir holds a snapshot (the state up to its index) and the
write-ahead log after it.  L{readWindow} loads the snapshot into a fresh
L{KVStore} and applies the logged entries after it up to C{upTo} (the
commit index every member had applied at the end of the run, so every one
of them is committed), exactly as a node does (L{twisted_raft.raft.node}:
C{DATA} entries with data go to the state machine), with a history large
enough to keep every event.  The revisions at or below the snapshot's
index cannot be replayed: their events were folded into the snapshot.

Nothing is written: the log is read with C{repair=False} (a torn tail is
left as it is and not read), and nothing is locked (the nodes are dead).
"""

import os

from twisted_raft.kv import KVStore
from twisted_raft.raft.messages import DATA
from twisted_raft.storage import snapshot as snapfile
from twisted_raft.storage.files import WAL_DIR
from twisted_raft.storage.wal import WriteAheadLog
from twisted_raft.tools.watchcheck import LogWindow

_SEGMENT_BYTES = 16 * 1024 * 1024  # read only: the size new segments would get
_UNBOUNDED = 1 << 62


def readWindow(node, dataDir, prefix, upTo):
    """
    The events of keys starting with C{prefix} that node C{node}'s data
    dir C{dataDir} holds for the revisions after its snapshot up to C{upTo}.

    @rtype: L{LogWindow} (C{first} the first revision after the snapshot,
        C{last} the last one read: C{upTo}, or the log's end if before).
    @raise DataDirError: the data dir is damaged (a subclass names the file).
    @raise OSError: it cannot be read.
    """
    store = KVStore(historyEvents=_UNBOUNDED, historyBytes=_UNBOUNDED)
    meta = None
    try:
        reader = snapfile.SnapshotReader(os.path.join(dataDir, snapfile.FILE_NAME))
    except FileNotFoundError:
        pass
    else:
        with reader:
            parsed = store.parseSnapshot(reader.payload)
            reader.finish()
            meta = reader.meta
        store.restoreSnapshot(parsed)
    snapLast = 0 if meta is None else meta.lastIndex
    wal = WriteAheadLog(os.path.join(dataDir, WAL_DIR), _SEGMENT_BYTES, os.fsync)
    try:
        entries, _ = wal.recover(meta, repair=False)
    finally:
        wal.close()
    last = snapLast
    for entry in entries:
        if entry.index > upTo:
            break
        last = entry.index
        if entry.kind is DATA and entry.data:
            try:
                store.apply(entry.index, entry.data)
            except Exception:
                pass  # as on the node: an entry that fails changes nothing
    if last <= snapLast:
        return LogWindow(node, snapLast + 1, snapLast, [], snapLast)
    batch = store.watchEvents(snapLast + 1, prefix, prefix=True)
    events = [e for e in batch.events if e.mod_revision <= last]
    return LogWindow(node, snapLast + 1, last, events, snapLast)
