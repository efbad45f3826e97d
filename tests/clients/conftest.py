"""
Fixtures of the client tests: the client matrix's C{driver} (one per kind
of client, L{tests.clients.drivers}) and a module's real cluster.
"""

import pytest

from tests.clients.drivers import DRIVERS
from tests.clients.support import startCluster


@pytest.fixture(params=DRIVERS, ids=lambda d: d.name)
def driver(request):
    return request.param


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """Three real nodes with a leader, for the whole module."""
    c = startCluster(tmp_path_factory.mktemp("cluster"))
    try:
        yield c
    finally:
        c.killAll()
