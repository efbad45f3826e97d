"""
pytest's hooks for the whole suite.  No module-level reactor import here:
pytest-twisted installs its reactor in pytest_configure, after conftest is
imported.  Shared helpers live in L{tests.support}.
"""


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "integration: starts real twistd processes (deselect with -m 'not integration')",
    )
