"""
Durable storage for Raft (L{twisted_raft.raft.interfaces.IStorage}): the
write-ahead log, the hard state, the snapshot and the data dir's identity.
Everything returns Deferreds.  In L{files}, blocking disk work runs on two
dedicated one-thread pools: the writer thread (log appends and truncations,
the hard state, installing a snapshot, in issue order) and the snapshot
thread (writing, reading and receiving snapshot files, which may take long
and must not hold up the log).

    - L{files}: L{files.FileStorage}, the file-backed storage, and the data
      dir's layout.
    - L{wal}: the segmented write-ahead log.
    - L{snapshot}: the snapshot file and its format.
    - L{hardstate}: the C{state} file (term and vote).
    - L{identity}: the C{identity} file (node, cluster, format version).
    - L{bootstrap}: the C{bootstrap} file (the configuration a cluster
      started with).
    - L{recover}: offline recovery from a lost quorum (C{raftkv recover}).
    - L{smallfile}: small checksummed files replaced atomically.
    - L{dirlock}: the data dir's lock (one process per dir).
    - L{errors}: data-dir errors and the disk-full/fsync-failure split.
    - L{memory}: L{memory.MemoryStorage}, in memory, for tests and simulations.
"""
