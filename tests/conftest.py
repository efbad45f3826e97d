"""
pytest's hooks and fixtures for the whole suite.  No module-level reactor
import here: pytest-twisted installs its reactor in pytest_configure, after
conftest is imported.  Shared helpers live in L{tests.support}.
"""

import os

import pytest
from hypothesis import settings
from twisted.logger import globalLogPublisher

# Property tests draw the same examples on every run (derived from each
# test's name), so CI is deterministic: a failure reproduces, and a rare
# slow example cannot make one run in a hundred red.  Set
# RAFTKV_HYPOTHESIS=explore to draw new examples each run, as a search.
settings.register_profile("deterministic", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("RAFTKV_HYPOTHESIS", "deterministic"))


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "integration: starts real twistd processes (deselect with -m 'not integration')",
    )


@pytest.fixture
def logged():
    """Every log event emitted during the test."""
    events = []
    observer = events.append
    globalLogPublisher.addObserver(observer)
    yield events
    globalLogPublisher.removeObserver(observer)
