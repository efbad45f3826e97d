"""
The client test matrix over mutual TLS: every kind of client (the
C{driver} fixture) against a real three-node cluster that requires it
(the launcher's L{LocalTLS}).
"""

import uuid

import pytest

from tests.clients.support import startCluster
from twisted_raft.rpc.commands import Unavailable
from twisted_raft.tools import launcher

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def tlsCluster(tmp_path_factory):
    base = tmp_path_factory.mktemp("tls")
    tls = launcher.LocalTLS(str(base / launcher.TLS_DIR), 3)
    c = startCluster(base, tls=tls)
    try:
        yield c
    finally:
        c.killAll()


def test_operations_over_tls(driver, tlsCluster):
    client = driver.client(tlsCluster.peers, timeout=20, tls=tlsCluster.tls.credentials())
    try:
        key = f"{driver.name}/{uuid.uuid4().hex[:8]}"
        revision = client.put(key, b"secret")
        assert client.get(key) == b"secret"
        assert client.compareAndSet(key, b"secret", b"new") == (True, revision + 1) or \
            client.get(key) == b"new"
        assert client.delete(key)[0] is True
    finally:
        client.close()


def test_no_client_certificate_no_answer(driver, tlsCluster):
    client = driver.client(tlsCluster.peers, timeout=1.0, connectTimeout=0.5)
    try:
        with pytest.raises(Unavailable, match="no node answered"):
            client.get("k")
    finally:
        client.close()
