"""
The whole configuration of one raftkv node: who it is, where its data
lives, how it is reached, and the Raft core's knobs (L{RaftConfig}).

The twistd flags (L{twisted_raft.options}) are parsed into a L{NodeConfig};
the service (L{twisted_raft.service}) and the core read it.  Defaults live
here and in L{twisted_raft.raft.config} only.
"""

from dataclasses import dataclass, field

from twisted_raft.raft.config import ConfigError, MiB, RaftConfig
from twisted_raft.raft.membership import EMPTY, MAX_NODE_ID, Configuration

DEFAULT_CLUSTER_TOKEN = "raftkv"
"""The cluster token a node uses unless told otherwise: public, so without
TLS a node started with it warns that peer traffic is unauthenticated."""


def parseAddress(text):
    """
    Parse one C{HOST:PORT} (or C{[IPv6]:PORT}) address: a C{--peers} entry,
    or a member's address in the replicated configuration.

    @return: C{(host, port)}
    @raise ConfigError: if it cannot be parsed or the port is out of range.
    """
    text = text.strip()
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise ConfigError(f"unparsable peer address {text!r}: expected [host]:port")
        port = rest[1:]
    else:
        host, sep, port = text.rpartition(":")
        if not sep or ":" in host:
            raise ConfigError(
                f"unparsable peer address {text!r}: expected host:port"
                " (IPv6 as [addr]:port)"
            )
    if not host:
        raise ConfigError(f"unparsable peer address {text!r}: empty host")
    if not port.isdigit():
        raise ConfigError(f"unparsable peer address {text!r}: bad port {port!r}")
    port = int(port)
    if not 1 <= port <= 65535:
        raise ConfigError(f"peer address {text!r}: port {port} out of range 1-65535")
    return host, port


def formatAddress(host, port):
    """C{(host, port)} as C{HOST:PORT}, an IPv6 host in brackets (L{parseAddress}'s inverse)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _peerMapping(peers):
    """
    C{{id: (host, port)}} from a mapping of that, or from a sequence of
    C{(host, port)} whose ids are their 1-based positions.
    """
    items = peers.items() if hasattr(peers, "items") else enumerate(peers, start=1)
    mapping = {}
    for nodeId, (host, port) in items:
        if isinstance(nodeId, bool) or not isinstance(nodeId, int) or not 1 <= nodeId <= MAX_NODE_ID:
            raise ConfigError(
                f"peer id {nodeId!r} is out of range: ids are integers 1..{MAX_NODE_ID}"
            )
        mapping[nodeId] = (host, int(port))
    seen = {}
    for nodeId, (host, port) in sorted(mapping.items()):
        key = (host.lower(), port)
        if key in seen:
            raise ConfigError(
                f"nodes {seen[key]} and {nodeId} have the same address {formatAddress(host, port)}"
            )
        seen[key] = nodeId
    return dict(sorted(mapping.items()))


def listenEndpoint(host, port):
    """The server endpoint string for listening on C{host}:C{port}."""
    # Colons of an IPv6 address are escaped in endpoint strings.
    return f"tcp:{port}:interface={host.replace(':', chr(92) + ':')}"


@dataclass(frozen=True)
class NodeConfig:
    """
    @ivar nodeId: this node's id (with positional peers, its 1-based
        position in C{peers}).
    @ivar peers: C{{id: (host, port)}}, sorted by id (given as that mapping,
        or as a sequence of C{(host, port)} whose ids are their 1-based
        positions).  Unless C{join}, every node of the cluster, this one
        included: the bootstrap configuration of a new cluster (L{bootstrap}).
        Once the cluster has a replicated configuration that decides who is
        a member; an entry here then only overrides the address this node
        dials for that member (proxies, NAT).
    @ivar dataDir: the node's data directory, bound to this node id and
        cluster token on first start.
    @ivar listen: the server endpoint string the node listens on; C{None}
        means this node's own C{peers} entry (then it must have one).
    @ivar clusterToken: the cluster's shared secret: a peer connection must
        prove it knows it (L{twisted_raft.rpc.peerauth}) before it may speak
        Raft, and a data dir is bound to it.  Never sent, logged or shown.
        The default is public, so it authenticates nothing: set a long
        random one, or use TLS.
    @ivar tlsCA: with C{tlsCert} and C{tlsKey} (all three or none), PEM
        files that turn on mutual TLS: every connection, from peers and
        clients, must present a certificate signed by C{tlsCA}, and this
        node presents C{tlsCert}, whose Common Name must be
        C{raftkv-node-<nodeId>}.  Re-read on SIGHUP.
    @ivar tlsCert: this node's certificate (PEM).
    @ivar tlsKey: its private key (PEM).
    @ivar segmentBytes: a new write-ahead log segment starts once the last
        one holds this much.  Compaction deletes whole segments, so smaller
        segments free disk sooner after a snapshot, at the cost of more files
        (and more fsyncs of the directory).
    @ivar requestTimeout: how long the node may take over one client request
        in all, forwarding and retries included, before it answers
        UNAVAILABLE.  Longer rides out a slower election; shorter hands the
        client back control sooner (its library retries elsewhere).
    @ivar leaderTimeout: how long a request waits for a leader to become
        known (an election under way) before it fails.
    @ivar retryDelay: the pause between two tries to reach the leader.
    @ivar maxTries: tries to reach the leader before giving up.
    @ivar forwardTimeout: how long a request forwarded to the leader may go
        unanswered.  The peer link is kept when it passes: a slow commit is
        no sign of a broken link.
    @ivar reconnectDelay: C{(first, most)} seconds between tries to reconnect
        to a peer (exponential back-off).  Kept well below the election
        timeout, so a peer that restarts is heard again before anyone gives
        up on it; Twisted's default grows to a minute.
    @ivar maxConnections: client connections open at once; one more takes
        the place of the one idle longest (nothing received for a second,
        nothing in flight), or is closed at once if none is idle.  A peer's
        connection stops counting
        once it has proven it is a member node, so a flood cannot starve the
        peer links.  Each connection may hold a request being received (up to
        about 1 MiB), so this bounds that memory; lower also refuses
        legitimate clients sooner.
    @ivar maxRequestsPerConnection: requests received on one connection and
        not yet answered; at the limit the node stops reading that socket
        (TCP back-pressure, no error) until an answer goes out.  It applies
        to peer links too, which pipeline AppendEntries and forwarded
        requests, and to benchmark clients (256 in flight per connection),
        so it is generous; lower bounds a single greedy client's share of
        the node more tightly.
    @ivar maxPendingBytes: bytes of write requests held at once (received
        and not yet done with: proposed here and not yet committed or
        failed, even if the client's request timed out, or being forwarded
        to the leader).  Beyond it a write is answered at once with UNAVAILABLE
        C{"not proposed: overloaded"} (safe to retry), and its client's
        connection is not read until half the budget is free; a quarter of
        the budget is kept for small writes (under 64 KiB), so large ones
        cannot crowd them out; a write is always accepted when nothing else
        is pending, however large.  The log commits in order, so under a
        flood of large writes a small one waits behind up to this much data:
        higher absorbs bigger bursts at the cost of memory and of latency
        for everyone behind them (at the ~50 MiB/s a 2-core machine
        commits, 16 MiB is a third of a second).
    @ivar raft: the Raft core's settings.
    @ivar join: a new node joining a running cluster: it starts with no
        configuration (L{EMPTY}), never campaigns and waits for the leader
        to add it; C{peers} may then be empty or leave this node out.  Once
        its data dir holds a configuration the core ignores this.
    @ivar http: a server endpoint string for the node's HTTP server
        (C{/metrics}, C{/health} and the dashboard), or C{None} (the default:
        no HTTP server).  It serves no secret and changes nothing, but it
        shows the cluster's shape and load to whoever reaches it: bind it to
        a trusted interface, or use an C{ssl:} endpoint behind a proxy that
        authenticates.
    """

    nodeId: int
    peers: tuple
    dataDir: str
    listen: str = None
    clusterToken: str = DEFAULT_CLUSTER_TOKEN
    tlsCA: str = None
    tlsCert: str = None
    tlsKey: str = None
    segmentBytes: int = 16 * MiB
    requestTimeout: float = 5.0
    leaderTimeout: float = 2.5
    retryDelay: float = 0.1
    maxTries: int = 20
    forwardTimeout: float = 6.0
    reconnectDelay: tuple = (0.05, 0.15)
    maxConnections: int = 512
    maxRequestsPerConnection: int = 1024
    maxPendingBytes: int = 16 * MiB
    raft: RaftConfig = field(default_factory=RaftConfig)
    join: bool = False
    http: str = None

    def __post_init__(self):
        peers = _peerMapping(self.peers)
        object.__setattr__(self, "peers", peers)
        object.__setattr__(self, "join", bool(self.join))
        nodeId = self.nodeId
        if isinstance(nodeId, bool) or not isinstance(nodeId, int) or not 1 <= nodeId <= MAX_NODE_ID:
            raise ConfigError(
                f"node id {nodeId!r} is out of range: ids are integers 1..{MAX_NODE_ID}"
            )
        if not self.join:
            if not peers:
                raise ConfigError("the cluster has no nodes")
            if nodeId not in peers:
                if list(peers) == list(range(1, len(peers) + 1)):
                    raise ConfigError(
                        f"node id {nodeId} is out of range: the cluster lists {len(peers)}"
                        f" nodes, so the id must be 1..{len(peers)}"
                    )
                raise ConfigError(
                    f"node id {nodeId} is not among the peers (ids"
                    f" {', '.join(map(str, peers))})"
                )
        elif self.listen is None and nodeId not in peers:
            raise ConfigError(
                f"joining node {nodeId} has no peers entry of its own, so it needs a"
                " listen endpoint"
            )
        if not str(self.dataDir).strip():
            raise ConfigError("the data directory is empty")
        if not self.clusterToken:
            raise ConfigError("the cluster token must not be empty")
        tlsFiles = (self.tlsCA, self.tlsCert, self.tlsKey)
        if any(tlsFiles) and not all(tlsFiles):
            raise ConfigError("TLS needs all three of the CA, certificate and key files")
        if not isinstance(self.segmentBytes, int) or self.segmentBytes < 1:
            raise ConfigError(f"segment size {self.segmentBytes!r} must be a positive integer")
        for name in ("requestTimeout", "leaderTimeout", "retryDelay", "forwardTimeout"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} {getattr(self, name)!r} must be positive")
        if not isinstance(self.maxTries, int) or self.maxTries < 1:
            raise ConfigError(f"maxTries {self.maxTries!r} must be a positive integer")
        for name in ("maxConnections", "maxRequestsPerConnection", "maxPendingBytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} {value!r} must be a positive integer")
        first, most = self.reconnectDelay
        if not 0 < first <= most:
            raise ConfigError(f"reconnect delay {self.reconnectDelay!r}: need 0 < first <= most")
        if self.listen is None:
            object.__setattr__(self, "listen", listenEndpoint(*peers[nodeId]))

    @property
    def tls(self):
        """Whether mutual TLS is on."""
        return self.tlsCA is not None

    @property
    def others(self):
        """C{{id: (host, port)}} of every other node in C{peers}."""
        return {i: addr for i, addr in self.peers.items() if i != self.nodeId}

    @property
    def bootstrap(self):
        """
        The configuration this node starts with when its data dir holds none:
        L{EMPTY} for a joining node, else every node of C{peers} a voter, at
        its address as given.
        """
        if self.join:
            return EMPTY
        return Configuration.ofVoters(
            self.peers, {i: formatAddress(*addr) for i, addr in self.peers.items()}
        )
