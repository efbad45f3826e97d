"""
The node's Prometheus metrics (C{GET /metrics}): every metric name in one
place (L{NAMES}), what records them (L{NodeMetrics}) and the resource that
serves them (L{MetricsResource}).

Why it is cheap:

 - Gauges (term, indexes, roles, members, pending proposals, the leader's
   view of its followers) are not kept up to date at all: L{NodeCollector}
   reads them from the node when a scrape asks (C{node.status()} and a few
   attributes), so they cost nothing per request, and a scrape costs
   O(members), never O(keys) or O(log).
 - The core's counters (leader changes, proposals committed and failed) are
   plain ints it keeps anyway: the core does no I/O and imports nothing of
   this.
 - What is observed per client request or per AppendEntries goes into a
   L{Buckets}: a bisect and two additions, about 0.25 us, where
   C{prometheus_client}'s C{Histogram.observe} takes about 1.2 us (2.6 us
   with C{.labels()}), measured with C{timeit} on the development machine.
   These run on the reactor thread only, so they need no lock.
 - What is observed off the reactor thread (WAL fsyncs on the writer
   thread, snapshot saves on the snapshot thread) goes into
   C{prometheus_client} histograms, which are thread-safe; they happen at
   most once per write batch, where a microsecond is nothing beside the
   fsync itself.
 - Without C{--http} none of this exists: storage, peer links and server
   keep C{None} hooks, and the cost is an attribute check.

One L{CollectorRegistry} per node, never the process-wide default: tests
run several nodes in one process.  It also holds C{prometheus_client}'s
L{ProcessCollector} (C{process_start_time_seconds}, CPU, memory, open
files).  No node id or address is part of a name; a C{peer} label is the
peer's node id.
"""

from bisect import bisect_left

from prometheus_client import CollectorRegistry, Histogram, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from twisted_raft.raft.messages import LEADER
from twisted_raft.web.readonly import ReadOnlyResource

LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
    0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)
"""Upper bounds (seconds) of the request, round-trip and fsync histograms:
from a fast fsync or a local answer to a request that waits out a timeout."""

SNAPSHOT_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
"""Upper bounds (seconds) of the snapshot save histogram: up to minutes for
millions of keys on a slow disk."""

# name: (type, help).  The names are a public contract: extend, never rename.
NAMES = {
    "raftkv_has_leader": ("gauge", "1 if this node knows a leader of its current term"),
    "raftkv_is_leader": ("gauge", "1 if this node is the leader"),
    "raftkv_is_learner": ("gauge", "1 if this node is a learner (a member without a vote)"),
    "raftkv_leader_changes_seen_total": (
        "counter", "Times this node came to know a leader other than the one it knew",
    ),
    "raftkv_term": ("gauge", "The node's current term"),
    "raftkv_commit_index": ("gauge", "The highest log index known to be committed"),
    "raftkv_applied_index": ("gauge", "The highest log index applied to the key-value store"),
    "raftkv_last_log_index": ("gauge", "The index of the last entry in this node's log"),
    "raftkv_snapshot_index": ("gauge", "The last index the node's latest snapshot covers"),
    "raftkv_members": ("gauge", "Members of the configuration in force, voters and learners"),
    "raftkv_voters": ("gauge", "Voting members of the configuration in force"),
    "raftkv_proposals_committed_total": (
        "counter", "Proposals this node made as leader that committed and were applied",
    ),
    "raftkv_proposals_failed_total": (
        "counter",
        "Proposals this node made as leader whose outcome was lost (leadership lost,"
        " entry replaced, node stopped)",
    ),
    "raftkv_proposals_pending": ("gauge", "Proposals of this node waiting to commit"),
    "raftkv_peer_match_index": (
        "gauge", "On the leader: the highest log index known to be held by each peer",
    ),
    "raftkv_wal_fsync_duration_seconds": (
        "histogram", "Seconds each fsync of the write-ahead log's appends took",
    ),
    "raftkv_snapshot_save_duration_seconds": (
        "histogram", "Seconds each snapshot save (written and made durable) took",
    ),
    "raftkv_peer_round_trip_time_seconds": (
        "histogram",
        "Seconds from sending an AppendEntries (heartbeats included) to a peer to its"
        " answer, which waits for the peer's disk",
    ),
    "raftkv_peer_sent_failures_total": (
        "counter", "Raft RPCs to a peer that failed: not sent, errored or timed out",
    ),
    "raftkv_client_requests_total": (
        "counter", "Client requests answered, by command and code (OK or the error code)",
    ),
    "raftkv_client_request_duration_seconds": (
        "histogram", "Seconds from a client request's arrival to its answer",
    ),
    "raftkv_watches": ("gauge", "Watches open on this node"),
    "raftkv_watches_ended_total": (
        "counter",
        "Watches this node ended, by code: COMPACTED (the watcher fell behind the event"
        " history) or UNAVAILABLE (out of touch with a leader, or an internal error)",
    ),
}


class Buckets:
    """
    A histogram for the reactor thread: counts per bucket and a sum, turned
    into Prometheus's cumulative buckets only when scraped.  Not
    thread-safe (one thread observes).
    """

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds=LATENCY_BUCKETS):
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # the last: above every bound
        self.sum = 0.0

    def observe(self, value):
        # bisect_left: a value equal to a bound counts in it (Prometheus's le).
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def cumulative(self):
        """C{[(le, count), ...]} ending with C{("+Inf", total)}."""
        out, total = [], 0
        for bound, count in zip(self.bounds + (float("inf"),), self.counts):
            total += count
            out.append(("+Inf" if bound == float("inf") else repr(bound), total))
        return out


class NodeMetrics:
    """
    Everything recorded for one node's C{/metrics}, and its registry.

    L{attach} hands the hooks to the node's storage, peer links and server;
    what the node keeps itself is read at scrape time by L{NodeCollector}.

    @ivar registry: this node's own L{CollectorRegistry}.
    @ivar roundTrips: C{{peerId: Buckets}}.
    @ivar sendFailures: C{{peerId: count}}.
    @ivar requests: C{{(command, code): count}}.
    @ivar requestDurations: C{{command: Buckets}}.
    @ivar server: the node's L{NodeServerFactory} once L{attach}ed (its
        watches are read at scrape time), or C{None}.
    """

    server = None

    def __init__(self, node, processCollector=True):
        """
        @param node: the L{RaftNode} (or anything with its attributes).
        @param processCollector: register C{prometheus_client}'s
            L{ProcessCollector} (C{process_*} of this process).
        """
        self.node = node
        self.roundTrips = {}
        self.sendFailures = {}
        self.requests = {}
        self.requestDurations = {}
        self.registry = registry = CollectorRegistry()
        self.fsyncDuration = Histogram(
            "raftkv_wal_fsync_duration_seconds",
            NAMES["raftkv_wal_fsync_duration_seconds"][1],
            buckets=LATENCY_BUCKETS, registry=registry,
        )
        self.snapshotSaveDuration = Histogram(
            "raftkv_snapshot_save_duration_seconds",
            NAMES["raftkv_snapshot_save_duration_seconds"][1],
            buckets=SNAPSHOT_BUCKETS, registry=registry,
        )
        registry.register(NodeCollector(self))
        if processCollector:
            ProcessCollector(registry=registry)

    def attach(self, storage=None, transport=None, server=None):
        """Give the hooks to whichever of these the node has."""
        if storage is not None and hasattr(type(storage), "onSnapshotSave"):
            storage.onFsync = self.fsyncDuration.observe
            storage.onSnapshotSave = self.snapshotSaveDuration.observe
        if transport is not None:
            transport.onRoundTrip = self.roundTrip
            transport.onSendFailure = self.sendFailed
        if server is not None:
            server.onClientRequest = self.clientRequest
            self.server = server

    # -- the hooks (reactor thread) --------------------------------------

    def roundTrip(self, peerId, seconds):
        buckets = self.roundTrips.get(peerId)
        if buckets is None:
            buckets = self.roundTrips[peerId] = Buckets()
        buckets.observe(seconds)

    def sendFailed(self, peerId):
        self.sendFailures[peerId] = self.sendFailures.get(peerId, 0) + 1

    def clientRequest(self, command, code, seconds):
        key = (command, code)
        requests = self.requests
        requests[key] = requests.get(key, 0) + 1
        buckets = self.requestDurations.get(command)
        if buckets is None:
            buckets = self.requestDurations[command] = Buckets()
        buckets.observe(seconds)

    # -- exposition -------------------------------------------------------

    def render(self):
        """The Prometheus text exposition of this node's registry (bytes)."""
        return generate_latest(self.registry)


def _family(name, labels=()):
    kind, doc = NAMES[name]
    if kind == "gauge":
        return GaugeMetricFamily(name, doc, labels=labels)
    if kind == "counter":
        return CounterMetricFamily(name, doc, labels=labels)
    return HistogramMetricFamily(name, doc, labels=labels)


def _histogram(name, label, series):
    family = _family(name, [label])
    for key in sorted(series):
        buckets = series[key]
        family.add_metric([str(key)], buckets.cumulative(), buckets.sum)
    return family


class NodeCollector:
    """
    A C{prometheus_client} collector that reads the node's state when
    scraped: O(members) per scrape, nothing per request.
    """

    def __init__(self, metrics):
        self.metrics = metrics

    def collect(self):
        metrics = self.metrics
        node = metrics.node
        status = node.status()
        configuration = node.configuration
        isLeader = status.role == LEADER
        member = status.nodeId in configuration

        def gauge(name, value):
            family = _family(name)
            family.add_metric([], value)
            return family

        def counter(name, value):
            family = _family(name)
            family.add_metric([], value)
            return family

        yield gauge("raftkv_has_leader", 1 if status.leaderId else 0)
        yield gauge("raftkv_is_leader", 1 if isLeader else 0)
        yield gauge("raftkv_is_learner", 1 if member and not status.voter else 0)
        yield counter("raftkv_leader_changes_seen_total", node.leaderChangesSeen)
        yield gauge("raftkv_term", status.term)
        yield gauge("raftkv_commit_index", status.commitIndex)
        yield gauge("raftkv_applied_index", status.lastApplied)
        yield gauge("raftkv_last_log_index", status.lastLogIndex)
        snapshot = node.snapshot
        yield gauge("raftkv_snapshot_index", snapshot.lastIndex if snapshot else 0)
        yield gauge("raftkv_members", len(configuration))
        yield gauge("raftkv_voters", len(configuration.voters))
        yield counter("raftkv_proposals_committed_total", node.proposalsCommitted)
        yield counter("raftkv_proposals_failed_total", node.proposalsFailed)
        yield gauge("raftkv_proposals_pending", node.proposalsPending)

        match = _family("raftkv_peer_match_index", ["peer"])
        if isLeader:
            progress = node.replication.tracker.progress
            for peerId in sorted(progress):
                match.add_metric([str(peerId)], progress[peerId].matchIndex)
        yield match

        yield _histogram("raftkv_peer_round_trip_time_seconds", "peer", metrics.roundTrips)
        failures = _family("raftkv_peer_sent_failures_total", ["peer"])
        for peerId in sorted(metrics.sendFailures):
            failures.add_metric([str(peerId)], metrics.sendFailures[peerId])
        yield failures

        requests = _family("raftkv_client_requests_total", ["command", "code"])
        for key in sorted(metrics.requests):
            requests.add_metric(list(key), metrics.requests[key])
        yield requests
        yield _histogram(
            "raftkv_client_request_duration_seconds", "command", metrics.requestDurations
        )

        watches = metrics.server.watches if metrics.server is not None else None
        yield gauge("raftkv_watches", watches.count if watches is not None else 0)
        ended = _family("raftkv_watches_ended_total", ["code"])
        if watches is not None:
            for code in sorted(watches.ended):
                ended.add_metric([code], watches.ended[code])
        yield ended


class MetricsResource(ReadOnlyResource):
    """
    C{GET /metrics} (and C{HEAD}): the Prometheus text format.  Any other
    method: C{405}.
    """

    def __init__(self, metrics):
        super().__init__()
        self.metrics = metrics

    def render_GET(self, request):
        body = self.metrics.render()
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode("ascii"))
        request.setHeader(b"cache-control", b"no-store")
        return body
