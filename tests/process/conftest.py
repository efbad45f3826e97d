"""Fixtures shared by the process tests."""

import pytest

from tests.process.support import Cluster


@pytest.fixture
def cluster(tmp_path):
    """Three nodes of real twistd processes (not started), killed after the test."""
    c = Cluster(tmp_path)
    try:
        yield c
    finally:
        c.killAll()


@pytest.fixture
def httpCluster(tmp_path):
    """As L{cluster}, every node also serving C{--http} on a free port."""
    c = Cluster(tmp_path, http=True)
    try:
        yield c
    finally:
        c.killAll()
