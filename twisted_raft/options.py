"""
Command-line options of the C{raftkv} twistd plugin (C{twistd -n raftkv ...}).

Importing this module must not import the reactor: the twistd plugin module
imports it while Twisted scans for plugins.
"""

import os

from twisted.python import usage

from twisted_raft.config import DEFAULT_CLUSTER_TOKEN, NodeConfig
from twisted_raft.raft.config import ConfigError, RaftConfig

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
    text = text.strip()
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise usage.UsageError(f"unparsable peer address {text!r}: expected [host]:port")
        port = rest[1:]
    else:
        host, sep, port = text.rpartition(":")
        if not sep or ":" in host:
            raise usage.UsageError(
                f"unparsable peer address {text!r}: expected host:port"
                " (IPv6 as [addr]:port)"
            )
    if not host:
        raise usage.UsageError(f"unparsable peer address {text!r}: empty host")
    if not port.isdigit():
        raise usage.UsageError(f"unparsable peer address {text!r}: bad port {port!r}")
    port = int(port)
    if not 1 <= port <= 65535:
        raise usage.UsageError(f"peer address {text!r}: port {port} out of range 1-65535")
    return host, port


def parsePeers(text):
    """
    Parse a comma-separated list of peer addresses (node ids are the 1-based
    positions in the list).

    @raise usage.UsageError: on an empty list, a bad entry or a duplicate.
    """
    items = [t for t in (s.strip() for s in text.split(",")) if t]
    if not items:
        raise usage.UsageError("--peers is empty")
    peers = []
    seen = {}
    for i, item in enumerate(items, start=1):
        host, port = parsePeer(item)
        norm = (host.lower(), port)
        if norm in seen:
            raise usage.UsageError(
                f"--peers lists {item!r} twice (entries {seen[norm]} and {i})"
            )
        seen[norm] = i
        peers.append((host, port))
    return peers


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
    After parsing, C{self["peers"]} is a list of C{(host, port)},
    C{self["election-timeout"]} a C{(min, max)} tuple of seconds,
    C{self["heartbeat-interval"]} seconds and C{self["listen"]} an endpoint
    string (the node's own C{--peers} entry by default).
    """

    synopsis = (
        "--id N --peers HOST:PORT,HOST:PORT,... --data DIR [options]"
    )
    longdesc = (
        "Run one node of a raftkv cluster.  Every node gets the same --peers "
        "list (its own address included); --id is this node's 1-based "
        "position in it.  Durable state lives in --data, which is bound to "
        "this node id and cluster token on first start.  Example, node 1 of 3:"
        "  twistd -n --pidfile= raftkv --id 1 "
        "--peers 127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003 --data data/n1"
    )

    optParameters = [
        ["id", None, None, "this node's id: its 1-based position in --peers (required)"],
        ["peers", None, None,
         "comma-separated host:port of every node, this one included, in id order"
         " (required; IPv6 as [addr]:port)"],
        ["data", None, None, "data directory of this node (required; created if missing)"],
        ["listen", None, None,
         "server endpoint to listen on (default: tcp:PORT:interface=HOST from this"
         " node's --peers entry)"],
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
    ]

    def postOptions(self):
        # The checks below speak of the flags as typed; the same rules hold
        # for any NodeConfig, which checks them again when it is made.
        for required in ("id", "peers", "data"):
            if self[required] is None:
                raise usage.UsageError(f"--{required} is required")
        try:
            nodeId = int(self["id"])
        except ValueError:
            raise usage.UsageError(f"--id {self['id']!r} is not an integer")
        peers = parsePeers(self["peers"])
        if not 1 <= nodeId <= len(peers):
            raise usage.UsageError(
                f"--id {nodeId} is out of range: --peers lists {len(peers)} nodes,"
                f" so the id must be 1..{len(peers)}"
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
        self["id"] = nodeId
        self["peers"] = peers
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
        **{
            field: options[flag]
            for flag, field in _LIMIT_FLAGS
            if options.get(flag) is not None
        },
    )
