"""
The client test matrix: every kind of client (the C{driver} fixture:
Twisted's Deferreds, the blocking client, ...) against one real
three-node cluster: single-key operations, exactly-once sessions, errors,
and retries across a SIGKILL of the leader.
"""

import uuid

import pytest

from tests.clients.support import leaderOf, restart
from twisted_raft.client import (
    Compare,
    NotProposed,
    PutOp,
    RangeOp,
)
from twisted_raft.rpc.commands import InvalidArgument, Unavailable, ValueTooLarge
from twisted_raft.tools import launcher

pytestmark = pytest.mark.integration


@pytest.fixture
def client(driver, cluster):
    c = driver.client(cluster.peers, timeout=20)
    try:
        yield c
    finally:
        c.close()


def _key(driver, name):
    return f"{driver.name}/{uuid.uuid4().hex[:8]}/{name}"


def test_put_get_delete(driver, client):
    key = _key(driver, "k")
    revision = client.put(key, b"v1")
    assert revision > 0
    assert client.get(key) == b"v1"
    assert client.get(key, stale=True) in (b"v1", None)  # a follower may lag
    assert client.put(key, b"v2") > revision
    assert client.get(key) == b"v2"
    deleted, at = client.delete(key)
    assert deleted and at > revision
    assert client.get(key) is None
    assert client.delete(key)[0] is False


def test_compare_and_set(driver, client):
    key = _key(driver, "cas")
    ok, revision = client.compareAndSet(key, None, b"1")
    assert ok and revision > 0
    assert client.compareAndSet(key, None, b"2")[0] is False
    assert client.compareAndSet(key, b"0", b"2")[0] is False
    assert client.compareAndSet(key, b"1", b"2")[0] is True
    assert client.get(key) == b"2"


def test_ranges_and_transactions(driver, client):
    prefix = _key(driver, "")
    for i in range(3):
        client.put(f"{prefix}{i}", b"%d" % i)
    page = client.rangeAll(prefix, prefix=True)
    assert [kv.key for kv in page.kvs] == [f"{prefix}{i}" for i in range(3)]
    assert all(kv.version == 1 for kv in page.kvs)
    r = client.txn(
        compare=[Compare(f"{prefix}0", "value", "==", b"0")],
        success=[PutOp(f"{prefix}0", b"zero"), RangeOp(prefix, prefix=True, countOnly=True)],
    )
    assert r.succeeded and r.responses[1].count == 3
    assert client.get(f"{prefix}0") == b"zero"


def test_a_repeated_session_sequence_is_applied_once(driver, cluster):
    """Two clients with one client id send sequence 1 each: the second is
    answered as the first (its revision), and changes nothing."""
    key = _key(driver, "session")
    clientId = uuid.uuid4().hex
    first = driver.client(cluster.peers, timeout=20, clientId=clientId)
    try:
        revision = first.put(key, b"first")
    finally:
        first.close()
    again = driver.client(cluster.peers, timeout=20, clientId=clientId)
    try:
        assert again.put(key, b"second") == revision
        assert again.get(key) == b"first"
        assert again.rangeAll(key).kvs[0].version == 1
        assert again.put(key, b"third") > revision  # sequence 2: a new write
        assert again.get(key) == b"third"
    finally:
        again.close()


def test_value_too_large(driver, client):
    with pytest.raises(ValueTooLarge):
        client.put(_key(driver, "big"), b"x" * (1024 * 1024 + 1))


def test_invalid_argument(driver, client):
    with pytest.raises(InvalidArgument):
        client.put("k" * 5000, b"v")  # a key is at most 4,096 bytes
    with pytest.raises(InvalidArgument):
        client.put("", b"v")


def test_unavailable_when_no_node_answers(driver):
    nobody = launcher.localAddresses(2)  # free ports: nothing listens
    c = driver.client(nobody, timeout=1.0, connectTimeout=0.5)
    try:
        with pytest.raises(Unavailable, match="no node answered"):
            c.get("k")
        with pytest.raises(NotProposed):
            c.put("k", b"v")
    finally:
        c.close()


def test_writes_and_reads_go_on_across_a_leader_sigkill(driver, client, cluster):
    key = _key(driver, "failover")
    before = client.put(key, b"before")
    leader = leaderOf(cluster, client)
    cluster.kill(leader)
    try:
        # sent while the cluster has no leader: retried until a new one takes it
        after = client.put(key, b"after")
        assert after > before
        assert client.get(key) == b"after"
        assert leaderOf(cluster, client) != leader
        assert client.compareAndSet(key, b"after", b"cas")[0] is True
    finally:
        restart(cluster, leader)
