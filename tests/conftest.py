"""
pytest's hooks and fixtures for the whole suite.  No module-level reactor
import here: pytest-twisted installs its reactor in pytest_configure, after
conftest is imported.  Shared helpers live in L{tests.support}.
"""

import pytest
from twisted.logger import globalLogPublisher


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
