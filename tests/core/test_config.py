"""The node's configuration: defaults in one place, checked when made."""

import pytest

from twisted_raft.config import NodeConfig
from twisted_raft.options import DEFAULT_ELECTION_TIMEOUT, DEFAULT_HEARTBEAT_INTERVAL, Options
from twisted_raft.raft.config import ConfigError, RaftConfig

PEERS = [("127.0.0.1", 7001), ("127.0.0.1", 7002), ("::1", 7003)]


def test_defaults_are_the_documented_ones():
    c = RaftConfig()
    assert c.electionTimeout == (0.3, 0.55) and c.heartbeatInterval == 0.08
    assert c.snapshotEntries == 50000 and c.snapshotBytes == 64 * 1024 * 1024
    assert c.requestTimeout == 0.3  # rpcTimeout None: the minimum election timeout
    assert c.chunkTimeout == 2.0
    assert RaftConfig(rpcTimeout=3.0).chunkTimeout == 3.0


def test_flag_defaults_come_from_the_config():
    assert DEFAULT_ELECTION_TIMEOUT == "300-550" and DEFAULT_HEARTBEAT_INTERVAL == "80"
    o = Options()
    o.parseOptions(["--id", "1", "--peers", "127.0.0.1:1", "--data", "d"])
    assert o.config.raft == RaftConfig()
    assert o.config.segmentBytes == 16 * 1024 * 1024


@pytest.mark.parametrize("changes,message", [
    (dict(electionTimeout=(0.5, 0.3)), "maximum"),
    (dict(electionTimeout=(0.0, 0.3)), "positive"),
    (dict(heartbeatInterval=0.3), "below"),
    (dict(heartbeatInterval=0), "above 0"),
    (dict(maxInflight=0), "maxInflight"),
    (dict(snapshotChunk=1.5), "snapshotChunk"),
    (dict(applyBatch=True), "applyBatch"),
    (dict(snapshotKeep=-1), "snapshotKeep"),
    (dict(rpcTimeout=0), "RPC timeout"),
])
def test_settings_that_cannot_work_are_refused(changes, message):
    with pytest.raises(ConfigError, match=message):
        RaftConfig(**changes)
    with pytest.raises(ConfigError, match=message):
        RaftConfig().replace(**changes)


def test_config_is_immutable():
    with pytest.raises(AttributeError):
        RaftConfig().heartbeatInterval = 1.0


def test_node_config_listens_on_its_own_peer_entry():
    assert NodeConfig(1, PEERS, "d").listen == "tcp:7001:interface=127.0.0.1"
    assert NodeConfig(3, PEERS, "d").listen == "tcp:7003:interface=\\:\\:1"
    assert NodeConfig(2, PEERS, "d", listen="tcp:0").listen == "tcp:0"
    assert NodeConfig(2, PEERS, "d").others == {1: PEERS[0], 3: PEERS[2]}


@pytest.mark.parametrize("args,message", [
    ((4, PEERS, "d"), "out of range"),
    ((1, [], "d"), "no nodes"),
    ((1, PEERS, " "), "data directory"),
])
def test_node_config_refuses_what_cannot_work(args, message):
    with pytest.raises(ConfigError, match=message):
        NodeConfig(*args)
    with pytest.raises(ConfigError, match="token"):
        NodeConfig(1, PEERS, "d", clusterToken="")


@pytest.mark.parametrize("changes,message", [
    (dict(requestTimeout=0), "requestTimeout"),
    (dict(forwardTimeout=-1), "forwardTimeout"),
    (dict(maxTries=0), "maxTries"),
    (dict(reconnectDelay=(0.2, 0.1)), "reconnect delay"),
])
def test_node_config_refuses_timeouts_that_cannot_work(changes, message):
    with pytest.raises(ConfigError, match=message):
        NodeConfig(1, PEERS, "d", **changes)



def test_overload_limits_default_and_parse():
    o = Options()
    o.parseOptions(["--id", "1", "--peers", "127.0.0.1:1", "--data", "d"])
    c = o.config
    assert (c.maxConnections, c.maxRequestsPerConnection, c.maxPendingBytes) == (
        512, 1024, 16 * 1024 * 1024
    )
    o = Options()
    o.parseOptions(["--id", "1", "--peers", "127.0.0.1:1", "--data", "d",
                    "--max-connections", "3", "--max-requests-per-connection", "7",
                    "--max-pending-bytes", "2MiB"])
    c = o.config
    assert (c.maxConnections, c.maxRequestsPerConnection, c.maxPendingBytes) == (
        3, 7, 2 * 1024 * 1024
    )


@pytest.mark.parametrize("flag,value,message", [
    ("--max-connections", "0", "at least 1"),
    ("--max-connections", "many", "not an integer"),
    ("--max-requests-per-connection", "-2", "at least 1"),
    ("--max-pending-bytes", "lots", "not a size"),
])
def test_bad_overload_limits_are_usage_errors(flag, value, message):
    from twisted.python import usage

    with pytest.raises(usage.UsageError, match=message):
        Options().parseOptions(["--id", "1", "--peers", "127.0.0.1:1", "--data", "d",
                                flag, value])


@pytest.mark.parametrize("name", ["maxConnections", "maxRequestsPerConnection",
                                  "maxPendingBytes"])
def test_node_config_refuses_limits_that_cannot_work(name):
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ConfigError, match=name):
            NodeConfig(1, PEERS, "d", **{name: bad})


# -- peers by id, and joining ------------------------------------------------


def test_node_config_keeps_peers_by_id():
    c = NodeConfig(2, PEERS, "d")
    assert c.peers == {1: PEERS[0], 2: PEERS[1], 3: PEERS[2]}
    c = NodeConfig(7, {9: ("h", 9), 7: ("h", "7")}, "d")
    assert list(c.peers.items()) == [(7, ("h", 7)), (9, ("h", 9))]
    assert c.others == {9: ("h", 9)}
    assert c.listen == "tcp:7:interface=h"


def test_bootstrap_configuration_is_every_peer_a_voter_at_its_address():
    from twisted_raft.raft.membership import Member

    c = NodeConfig(1, {1: ("127.0.0.1", 7001), 5: ("::1", 7005)}, "d")
    assert c.bootstrap.members == (Member(1, "127.0.0.1:7001", True), Member(5, "[::1]:7005", True))
    assert c.bootstrap.index == 0


def test_a_joining_node_starts_with_no_configuration():
    from twisted_raft.raft.membership import EMPTY

    c = NodeConfig(4, PEERS, "d", listen="tcp:7004", join=True)
    assert c.join and c.bootstrap == EMPTY
    assert c.others == {1: PEERS[0], 2: PEERS[1], 3: PEERS[2]}  # address overrides
    c = NodeConfig(4, {}, "d", listen="tcp:7004", join=True)
    assert c.peers == {} and c.bootstrap == EMPTY
    # its own entry gives it its listen address, as for any node
    c = NodeConfig(4, {4: ("127.0.0.1", 7004)}, "d", join=True)
    assert c.listen == "tcp:7004:interface=127.0.0.1"


@pytest.mark.parametrize("args,kwargs,message", [
    ((4, {1: ("h", 1), 3: ("h", 3)}, "d"), {}, "not among the peers"),
    ((0, PEERS, "d"), {}, "out of range"),
    ((True, PEERS, "d"), {}, "out of range"),
    ((1, {0: ("h", 1)}, "d"), {}, "peer id 0"),
    ((1, {1: ("h", 1), 2: ("H", 1)}, "d"), {}, "same address"),
    ((4, PEERS, "d"), {"join": True}, "listen endpoint"),
    ((4, {}, "d"), {"join": True}, "listen endpoint"),
])
def test_node_config_refuses_peers_that_cannot_work(args, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        NodeConfig(*args, **kwargs)


def test_parse_and_format_address_are_inverse():
    from twisted_raft.config import formatAddress, parseAddress

    for text in ("127.0.0.1:8001", "[::1]:8001", "node-3.example:65535"):
        assert formatAddress(*parseAddress(text)) == text
    for bad in ("h", "h:0", "::1:5", "[::1]5", ":1", "h:x"):
        with pytest.raises(ConfigError):
            parseAddress(bad)
