"""
Command-line options of the C{raftkv} twistd plugin (C{twistd -n raftkv ...}).

Importing this module must not import the reactor: the twistd plugin module
imports it while Twisted scans for plugins.
"""

import os

from twisted.python import usage

from twisted_raft.config import DEFAULT_CLUSTER_TOKEN, NodeConfig, parseAddress
from twisted_raft.logs import DEFAULT_FORMAT, DEFAULT_LEVEL, parseFormat, parseLevel
from twisted_raft.raft.config import ConfigError, RaftConfig
from twisted_raft.raft.membership import MAX_NODE_ID

SINGLE_TIMEOUT_SPREAD = 1.83
"""A single C{--election-timeout} number N means the range N to 1.83 x N."""


def formatSize(size):
    """C{67108864} -> C{"64MiB"}: the largest unit that divides C{size}."""
    for unit, factor in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if size % factor == 0:
            return f"{size // factor}{unit}"
    return str(size)


_DEFAULTS = RaftConfig()
DEFAULT_ELECTION_TIMEOUT = "-".join(f"{t * 1000:g}" for t in _DEFAULTS.electionTimeout)
DEFAULT_HEARTBEAT_INTERVAL = f"{_DEFAULTS.heartbeatInterval * 1000:g}"


def parsePeer(text):
    """
    Parse one C{host:port} (or C{[ipv6]:port}) peer address.

    @return: C{(host, port)}
    @raise usage.UsageError: if it cannot be parsed or the port is out of range.
    """
    try:
        return parseAddress(text)
    except ConfigError as e:
        raise usage.UsageError(str(e))


def parseHTTPEndpoint(text):
    """
    Check C{--http}: a server endpoint string Twisted can parse (C{tcp:},
    C{ssl:} with its key and certificate files, C{unix:}, ...).

    @return: C{text}, stripped.
    @raise usage.UsageError: if it is empty or Twisted cannot parse it.
    """
    # Imported here: this module is imported by the plugin scan, which must
    # stay cheap.  Parsing builds an endpoint object without listening (an
    # ssl: one reads its files now, so a missing file is caught here).
    from twisted.internet.endpoints import serverFromString

    text = text.strip()
    if not text:
        raise usage.UsageError("--http is empty")
    try:
        serverFromString(None, text)
    except Exception as e:
        raise usage.UsageError(f"--http {text!r} is not a server endpoint: {e}")
    return text


def _peerId(item, text):
    if not text.strip().isdigit() or not 1 <= int(text) <= MAX_NODE_ID:
        raise usage.UsageError(
            f"--peers entry {item!r}: id {text.strip()!r} is not an integer 1..{MAX_NODE_ID}"
        )
    return int(text)


def parsePeers(text):
    """
    Parse C{--peers}: a comma-separated list of C{HOST:PORT} (node ids are
    the 1-based positions in the list), or of C{ID=HOST:PORT} (ids as
    written, in any order).  One list uses one form.

    @return: a list of C{(host, port)} for the positional form, a dict
        C{{id: (host, port)}} for the other.
    @raise usage.UsageError: on an empty list, a bad entry, mixed forms, or
        a duplicate id or address.
    """
    items = [t for t in (s.strip() for s in text.split(",")) if t]
    if not items:
        raise usage.UsageError("--peers is empty")
    withIds = ["=" in item for item in items]
    if any(withIds) and not all(withIds):
        raise usage.UsageError(
            "--peers mixes ID=HOST:PORT and HOST:PORT entries: write every entry one way"
        )
    byId = {}
    seen = {}
    for i, item in enumerate(items, start=1):
        if withIds[0]:
            nodeId, _, address = item.partition("=")
            nodeId = _peerId(item, nodeId)
            if nodeId in byId:
                raise usage.UsageError(f"--peers lists id {nodeId} twice")
        else:
            nodeId, address = i, item
        host, port = parsePeer(address)
        norm = (host.lower(), port)
        if norm in seen:
            raise usage.UsageError(
                f"--peers lists {address.strip()!r} twice (entries {seen[norm]} and {i})"
            )
        seen[norm] = i
        byId[nodeId] = (host, port)
    return dict(sorted(byId.items())) if withIds[0] else list(byId.values())


def readTokenFile(path, token):
    """
    The cluster token in the first line of C{path} (C{--cluster-token-file}),
    its surrounding whitespace stripped.  C{token} is what C{--cluster-token}
    says: given too (not the default), it is a usage error.
    """
    if token != DEFAULT_CLUSTER_TOKEN:
        raise usage.UsageError("give --cluster-token or --cluster-token-file, not both")
    try:
        with open(path, encoding="utf-8") as f:
            token = f.readline().strip()
    except OSError as e:
        raise usage.UsageError(f"--cluster-token-file {path}: {e.strerror}")
    except UnicodeDecodeError:  # its message would quote a byte of the token
        raise usage.UsageError(f"--cluster-token-file {path}: not UTF-8 text")
    if not token:
        raise usage.UsageError(f"--cluster-token-file {path} holds no token")
    return token


def _number(text, what):
    try:
        value = float(text)
    except ValueError:
        raise usage.UsageError(f"{what}: {text!r} is not a number of milliseconds")
    if not value > 0 or value != value or value == float("inf"):
        raise usage.UsageError(f"{what}: {text!r} must be a positive number of milliseconds")
    return value


def parseElectionTimeout(text):
    """
    C{"MIN-MAX"} or C{"MIN"} (milliseconds; a single number means MIN to
    1.83 x MIN).

    @return: C{(min, max)} in seconds.
    """
    text = text.strip()
    if "-" in text:
        lo, _, hi = text.partition("-")
        lo = _number(lo, "--election-timeout")
        hi = _number(hi, "--election-timeout")
    else:
        lo = _number(text, "--election-timeout")
        hi = lo * SINGLE_TIMEOUT_SPREAD
    if hi <= lo:
        raise usage.UsageError(
            f"--election-timeout {text!r}: the maximum must be above the minimum"
            " (randomised timeouts avoid split votes)"
        )
    return lo / 1000.0, hi / 1000.0


_UNITS = {"": 1, "B": 1, "KIB": 1024, "MIB": 1024**2, "GIB": 1024**3,
          "KB": 1000, "MB": 1000**2, "GB": 1000**3}


def parseSize(text, flag):
    """C{"64MiB"} -> 67108864; a plain number is bytes."""
    raw = str(text).strip().upper()
    number = raw.rstrip("KMGIB")
    unit = raw[len(number):]
    try:
        value = float(number) * _UNITS[unit]
    except (ValueError, KeyError):
        raise usage.UsageError(f"{flag} {text!r} is not a size like 1048576, 512KiB or 64MiB")
    if value < 1:
        raise usage.UsageError(f"{flag} must be positive")
    return int(value)


def _positiveInt(text, flag):
    try:
        value = int(text)
    except (TypeError, ValueError):
        raise usage.UsageError(f"{flag} {text!r} is not an integer")
    if value < 1:
        raise usage.UsageError(f"{flag} must be at least 1")
    return value


class Options(usage.Options):
    """
    After parsing, C{self["peers"]} is what L{parsePeers} made of C{--peers}
    (a list of C{(host, port)} for plain entries, a dict C{{id: (host,
    port)}} for C{ID=HOST:PORT} ones, C{{}} with C{--join} and no
    C{--peers}), C{self["join"]} a bool, C{self["election-timeout"]} a
    C{(min, max)} tuple of seconds, C{self["heartbeat-interval"]} seconds
    and C{self["listen"]} an endpoint string (the node's own C{--peers}
    entry by default); C{self.config} is the L{NodeConfig}.
    C{self["log-level"]} is C{debug}, C{info}, C{warn} or C{error} and
    C{self["log-format"]} C{text} or C{json} (see L{twisted_raft.logs}:
    they decide over the runner's own log flags).
    """

    synopsis = (
        "--id N --peers HOST:PORT,HOST:PORT,... --data DIR [options]\n"
        "  (a node joining a running cluster: --id N --join --data DIR"
        " --listen ENDPOINT [--peers ID=HOST:PORT,...] [options])"
    )
    longdesc = (
        "Run one node of a raftkv cluster.  A new cluster: every node gets the "
        "same --peers list (its own address included); --id is this node's "
        "1-based position in it, or entries are written ID=HOST:PORT.  --peers "
        "bootstraps a new cluster only: after that the replicated configuration "
        "decides who is a member (raftkv member add/remove), and a node's own "
        "--peers entry for a member only overrides the address it dials.  A node "
        "joining a running cluster starts with --join, empty, and waits to be "
        "added.  Durable state lives in --data, which is bound to this node id "
        "and cluster token on first start.  Example, node 1 of 3:"
        "  twistd -n --pidfile= raftkv --id 1 "
        "--peers 127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003 --data data/n1"
    )

    optFlags = [
        ["join", None,
         "a new node for a running cluster: start with no configuration, never"
         " campaign, wait for the leader to add it (ignored once the data dir"
         " holds a configuration)"],
    ]

    optParameters = [
        ["id", None, None,
         "this node's id: its 1-based position in --peers, or its ID= there (required)"],
        ["peers", None, None,
         "comma-separated host:port of every node, this one included, in id order,"
         " or ID=HOST:PORT entries (required unless --join; IPv6 as [addr]:port)"],
        ["data", None, None, "data directory of this node (required; created if missing)"],
        ["listen", None, None,
         "server endpoint to listen on (default: tcp:PORT:interface=HOST from this"
         " node's --peers entry; required with --join when there is none)"],
        ["cluster-token", None, DEFAULT_CLUSTER_TOKEN,
         "the cluster's shared secret: peers prove they know it (it is never sent);"
         " the data dir is bound to it.  The default is public: set a long random"
         " token, or use TLS"],
        ["cluster-token-file", None, None,
         "read the cluster token from this file's first line instead (keeps it out of"
         " the process list)"],
        ["tls-ca", None, None,
         "CA certificate (PEM): with --tls-cert and --tls-key, every connection is"
         " mutual TLS with certificates signed by this CA"],
        ["tls-cert", None, None,
         "this node's certificate (PEM), Common Name raftkv-node-<id>; re-read on SIGHUP"],
        ["tls-key", None, None, "this node's private key (PEM); re-read on SIGHUP"],
        ["election-timeout", None, DEFAULT_ELECTION_TIMEOUT,
         "election timeout range in ms, MIN-MAX; a single number N means N to"
         " 1.83*N"],
        ["heartbeat-interval", None, DEFAULT_HEARTBEAT_INTERVAL,
         "leader heartbeat interval in ms; must be below the election timeout minimum"],
        ["snapshot-entries", None, str(_DEFAULTS.snapshotEntries),
         "snapshot the state machine after this many log entries since the last snapshot"],
        ["snapshot-bytes", None, formatSize(_DEFAULTS.snapshotBytes),
         "... or after this much entry data (a number of bytes, or with KiB/MiB/GiB)"],
        ["segment-bytes", None, formatSize(NodeConfig.segmentBytes),
         "size at which a new write-ahead log segment is started; compaction deletes"
         " whole segments"],
        ["max-connections", None, str(NodeConfig.maxConnections),
         "client connections open at once; more are closed at once (authenticated"
         " peer links do not count)"],
        ["max-requests-per-connection", None, str(NodeConfig.maxRequestsPerConnection),
         "requests in flight on one connection; at the limit the node stops reading"
         " it until answers go out"],
        ["max-pending-bytes", None, formatSize(NodeConfig.maxPendingBytes),
         "bytes of write requests held unanswered; beyond it writes get UNAVAILABLE"
         " 'not proposed: overloaded'"],
        ["http", None, None,
         "server endpoint for HTTP: /metrics (Prometheus), /health and a live"
         " dashboard at / (e.g. tcp:9101:interface=127.0.0.1; off by default)"],
        ["log-level", None, DEFAULT_LEVEL,
         "least level logged: debug, info, warn or error (debug adds a line per"
         " client connection)"],
        ["log-format", None, DEFAULT_FORMAT,
         "text (Twisted's usual lines) or json (one JSON object per line: time in"
         " ISO 8601 UTC, level, node_id, event, message and the event's fields)"],
    ]

    def postOptions(self):
        # The checks below speak of the flags as typed; the same rules hold
        # for any NodeConfig, which checks them again when it is made.
        join = bool(self["join"])
        for required in ("id", "peers", "data"):
            if self[required] is None and not (join and required == "peers"):
                raise usage.UsageError(
                    f"--{required} is required" + (" (unless --join)" if required == "peers" else "")
                )
        try:
            nodeId = int(self["id"])
        except ValueError:
            raise usage.UsageError(f"--id {self['id']!r} is not an integer")
        peers = {} if self["peers"] is None else parsePeers(self["peers"])
        if isinstance(peers, list):
            if not 1 <= nodeId <= len(peers) and not (join and nodeId >= 1):
                raise usage.UsageError(
                    f"--id {nodeId} is out of range: --peers lists {len(peers)} nodes,"
                    f" so the id must be 1..{len(peers)}"
                )
        elif not 1 <= nodeId <= MAX_NODE_ID:
            raise usage.UsageError(f"--id {nodeId} is out of range 1..{MAX_NODE_ID}")
        elif nodeId not in peers and not join:
            raise usage.UsageError(
                f"--id {nodeId} is not in --peers (it lists ids"
                f" {', '.join(map(str, peers))})"
            )
        ownEntry = nodeId in peers if isinstance(peers, dict) else nodeId <= len(peers)
        if join and not ownEntry and not self["listen"]:
            raise usage.UsageError(
                f"--join: node {nodeId} has no --peers entry of its own, so --listen is"
                " required"
            )
        if not self["data"].strip():
            raise usage.UsageError("--data is empty")
        if self["cluster-token-file"] is not None:
            self["cluster-token"] = readTokenFile(self["cluster-token-file"], self["cluster-token"])
        if not self["cluster-token"]:
            raise usage.UsageError("--cluster-token must not be empty")
        tlsFlags = ("tls-ca", "tls-cert", "tls-key")
        given = [f for f in tlsFlags if self[f] is not None]
        if given and len(given) < 3:
            missing = ", ".join(f"--{f}" for f in tlsFlags if self[f] is None)
            raise usage.UsageError(f"TLS needs --tls-ca, --tls-cert and --tls-key: {missing} missing")
        for flag in given:
            if not os.path.isfile(self[flag]):
                raise usage.UsageError(f"--{flag} {self[flag]}: no such file")
        election = parseElectionTimeout(self["election-timeout"])
        heartbeat = _number(self["heartbeat-interval"], "--heartbeat-interval") / 1000.0
        if heartbeat >= election[0]:
            raise usage.UsageError(
                f"--heartbeat-interval {self['heartbeat-interval']} ms must be below"
                f" the election timeout minimum ({election[0] * 1000:g} ms)"
            )
        self["snapshot-entries"] = _positiveInt(self["snapshot-entries"], "--snapshot-entries")
        self["snapshot-bytes"] = parseSize(self["snapshot-bytes"], "--snapshot-bytes")
        self["segment-bytes"] = parseSize(self["segment-bytes"], "--segment-bytes")
        self["max-connections"] = _positiveInt(self["max-connections"], "--max-connections")
        self["max-requests-per-connection"] = _positiveInt(
            self["max-requests-per-connection"], "--max-requests-per-connection"
        )
        self["max-pending-bytes"] = parseSize(self["max-pending-bytes"], "--max-pending-bytes")
        if self["http"] is not None:
            self["http"] = parseHTTPEndpoint(self["http"])
        self["log-level"] = parseLevel(self["log-level"])
        self["log-format"] = parseFormat(self["log-format"])
        self["id"] = nodeId
        self["peers"] = peers
        self["join"] = join
        self["election-timeout"] = election
        self["heartbeat-interval"] = heartbeat
        try:
            self.config = nodeConfig(self)
        except ConfigError as e:
            raise usage.UsageError(str(e))
        self["listen"] = self.config.listen


_LIMIT_FLAGS = (
    ("max-connections", "maxConnections"),
    ("max-requests-per-connection", "maxRequestsPerConnection"),
    ("max-pending-bytes", "maxPendingBytes"),
)
"""The overload limits' flags and L{NodeConfig} fields; a dict of options
without them (older callers of L{nodeConfig}) gets the defaults."""


def nodeConfig(options):
    """
    The L{NodeConfig} that parsed L{Options} (or a dict with the same keys
    and parsed values) stand for.

    @raise ConfigError: if the settings cannot work together.
    """
    raft = RaftConfig(
        electionTimeout=options["election-timeout"],
        heartbeatInterval=options["heartbeat-interval"],
        snapshotEntries=options["snapshot-entries"],
        snapshotBytes=options["snapshot-bytes"],
    )
    return NodeConfig(
        nodeId=options["id"],
        peers=options["peers"],
        dataDir=options["data"],
        listen=options.get("listen") or None,
        clusterToken=options["cluster-token"],
        tlsCA=options.get("tls-ca"),
        tlsCert=options.get("tls-cert"),
        tlsKey=options.get("tls-key"),
        segmentBytes=options["segment-bytes"],
        raft=raft,
        join=bool(options.get("join")),
        http=options.get("http") or None,
        **{
            field: options[flag]
            for flag, field in _LIMIT_FLAGS
            if options.get(flag) is not None
        },
    )
