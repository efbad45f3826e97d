"""
Helpers of the client tests that run real nodes (through the launcher, as
the process tests do: L{tests.process.support.Cluster}), all blocking.
"""

import time

from tests.process.support import Cluster
from twisted_raft.client import BlockingClient

START_TIMEOUT = 30.0


def startCluster(base, tls=None):
    """Start three nodes in C{base} and return once one write succeeded."""
    c = Cluster(base, tls=tls)
    c.start()
    try:
        waitUntilServing(c)
    except BaseException:
        c.killAll()
        raise
    return c


def credentials(c):
    return None if c.tls is None else c.tls.credentials()


def waitUntilServing(c, deadline=START_TIMEOUT):
    """Return once the cluster takes a write (the client retries meanwhile)."""
    with BlockingClient(c.peers, timeout=deadline, tls=credentials(c)) as client:
        client.put("__ready", b"")


def leaderOf(c, client):
    """The id of the node that leads now, as C{client} finds it."""
    return client.status()["node_id"]


def restart(c, nodeId, deadline=START_TIMEOUT):
    """Start the killed node C{nodeId} again; return once it follows a leader."""
    c.start(nodeId)
    end = time.monotonic() + deadline
    with BlockingClient(c.peers, timeout=2.0, tls=credentials(c)) as client:
        while True:
            try:
                s = client.status(c.peers[nodeId - 1])
                if s["leader_id"] > 0:
                    return
            except Exception:
                pass
            if time.monotonic() > end:
                raise AssertionError(f"node {nodeId} did not rejoin\n{c.logs()}")
            time.sleep(0.1)  # polling a restart, not waiting for luck
