"""
Every knob of the Raft core, its default and its trade-off, in one place.

A L{RaftConfig} is immutable and checked when it is made, so a node never
runs with settings that cannot work (a heartbeat slower than the election
timeout, a zero batch).  The twistd flags (L{twisted_raft.options}), the
node's service and the core all read their defaults from here; a flag that
sets one of these knobs only parses text into it.

Times are in seconds, sizes in bytes.
"""

from dataclasses import dataclass, fields, replace

KiB = 1024
MiB = 1024 * KiB


class ConfigError(ValueError):
    """A setting, or a combination of settings, that cannot work."""


@dataclass(frozen=True)
class RaftConfig:
    """
    Settings of one Raft node (L{twisted_raft.raft.node.RaftNode}).

    @ivar electionTimeout: C{(min, max)}: a follower that hears from no leader
        for a time drawn uniformly from this range starts an election (§5.2).
        Lower means faster failover; too low (near the round-trip time plus an
        fsync) means needless elections under load.  The spread keeps two
        nodes from timing out together and splitting the vote again and again
        (§5.2, §9.3 of the thesis).
    @ivar heartbeatInterval: how often a leader sends AppendEntries with no
        new entries.  Must be well below C{electionTimeout[0]} so a few lost
        heartbeats do not cost an election; lower costs more messages when the
        cluster is idle, and makes linearizable reads wait less for a round.
    @ivar rpcTimeout: how long a vote or AppendEntries request may go
        unanswered before it counts as lost and is sent again; C{None} means
        C{electionTimeout[0]}.  Shorter retries a lost batch sooner but may
        resend one that was only slow.
    @ivar snapshotChunkTimeout: the same for one InstallSnapshot chunk (at
        least C{rpcTimeout}): a chunk is large and the follower fsyncs it.
    @ivar preVote: ask whether a quorum would grant a vote before raising the
        term (thesis §9.6), so a node that was cut off cannot depose a healthy
        leader when it returns.  Off only for tests of plain Raft.
    @ivar maxBatchEntries: at most this many entries per AppendEntries.
    @ivar maxBatchBytes: ... and at most about this many bytes of entry data.
        Larger batches mean fewer messages for a follower that is behind;
        smaller ones keep each message (and the heartbeat queued behind it on
        the same stream) quick.
    @ivar maxInflight: AppendEntries carrying entries that may be unanswered
        at once per follower (pipelining, thesis §10.2.1); 1 is stop-and-wait.
        More hides round trips under load, at the cost of more to resend when
        a batch is lost.
    @ivar maxInflightBytes: ... and at most about this many bytes in flight
        per follower, which bounds the memory a slow follower costs.
    @ivar applyBatch: apply at most this many committed entries per reactor
        turn, so a long backlog (a follower catching up, a restart) never
        holds the reactor for long; smaller is more responsive, larger has
        less overhead.
    @ivar snapshotEntries: take a snapshot once this many entries were applied
        since the last one (§7).  Lower bounds the log (disk, restart time)
        more tightly but snapshots more often.
    @ivar snapshotBytes: ... or once this many bytes of entry data were.
    @ivar snapshotKeep: entries kept in memory behind a snapshot, so a
        follower that lags a little gets entries instead of a whole snapshot.
    @ivar snapshotKeepBytes: ... and at most about this many bytes of entry
        data, so that large entries (a flood of 1 MiB writes) cannot make
        the kept entries a large share of memory.
    @ivar maxPromotionLag: a learner is promoted to voter only once its log
        is within this many entries of the leader's (thesis §4.2.1: a voter
        that is far behind would stall commits while it catches up).
        Lower makes a promotion wait longer under a heavy write load; higher
        may pause commits briefly after a promotion.
    @ivar snapshotChunk: bytes per InstallSnapshot chunk.  Larger chunks send
        a snapshot in fewer round trips; smaller ones fit AMP's per-value
        limit in fewer pieces and delay other traffic on the link less.
    """

    electionTimeout: tuple = (0.3, 0.55)
    heartbeatInterval: float = 0.08
    rpcTimeout: float = None
    snapshotChunkTimeout: float = 2.0
    preVote: bool = True
    maxBatchEntries: int = 1024
    maxBatchBytes: int = 1 * MiB
    maxInflight: int = 4
    maxInflightBytes: int = 4 * MiB
    applyBatch: int = 10000
    snapshotEntries: int = 50000
    snapshotBytes: int = 64 * MiB
    snapshotKeep: int = 1000
    snapshotKeepBytes: int = 16 * MiB
    snapshotChunk: int = 256 * KiB
    maxPromotionLag: int = 1000

    def __post_init__(self):
        # Frozen, but a list from a caller is kept as the tuple it stands for.
        object.__setattr__(self, "electionTimeout", tuple(self.electionTimeout))
        lo, hi = self.electionTimeout
        if not lo > 0:
            raise ConfigError(f"election timeout {lo * 1000:g} ms must be positive")
        if not hi > lo:
            raise ConfigError(
                f"election timeout {lo * 1000:g}-{hi * 1000:g} ms: the maximum must be above"
                " the minimum (randomised timeouts avoid split votes)"
            )
        if not 0 < self.heartbeatInterval < lo:
            raise ConfigError(
                f"heartbeat interval {self.heartbeatInterval * 1000:g} ms must be above 0"
                f" and below the election timeout minimum ({lo * 1000:g} ms)"
            )
        if self.rpcTimeout is not None and not self.rpcTimeout > 0:
            raise ConfigError(f"RPC timeout {self.rpcTimeout!r} must be positive")
        if not self.snapshotChunkTimeout > 0:
            raise ConfigError(f"snapshot chunk timeout {self.snapshotChunkTimeout!r} must be positive")
        for name in _POSITIVE_INTEGERS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, not {value!r}")
        if not isinstance(self.snapshotKeep, int) or self.snapshotKeep < 0:
            raise ConfigError(f"snapshotKeep must be an integer >= 0, not {self.snapshotKeep!r}")

    @property
    def requestTimeout(self):
        """The RPC timeout in force: C{rpcTimeout}, else the minimum election timeout."""
        return self.rpcTimeout if self.rpcTimeout is not None else self.electionTimeout[0]

    @property
    def chunkTimeout(self):
        """The timeout in force for one InstallSnapshot chunk."""
        return max(self.requestTimeout, self.snapshotChunkTimeout)

    def replace(self, **changes):
        """A copy with C{changes} (checked like a new one)."""
        return replace(self, **changes)


_POSITIVE_INTEGERS = tuple(
    f.name
    for f in fields(RaftConfig)
    if f.type is int and f.name != "snapshotKeep"
)

__all__ = ["RaftConfig", "ConfigError", "KiB", "MiB"]
