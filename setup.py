import os
import re

from setuptools import setup

HERE = os.path.dirname(os.path.abspath(__file__))


def version():
    """The one place of raftkv's version: twisted_raft.__version__ (read,
    not imported: the package needs its dependencies to import)."""
    with open(os.path.join(HERE, "twisted_raft", "__init__.py"), encoding="utf-8") as f:
        return re.search(r'^__version__ = "([^"]+)"$', f.read(), re.M).group(1)


setup(
    name="raftkv",
    version=version(),
    description="A fault-tolerant replicated key-value store: Raft on Twisted",
    long_description=open("README.rst", encoding="utf-8").read(),
    long_description_content_type="text/x-rst",
    python_requires=">=3.11",
    packages=[
        "twisted_raft",
        "twisted_raft.raft",
        "twisted_raft.storage",
        "twisted_raft.rpc",
        "twisted_raft.testing",
        "twisted_raft.tools",
        "twisted_raft.web",
        "twisted.plugins",
    ],
    # twisted/plugins has no __init__.py on purpose (Twisted's plugin
    # discovery); ship the plugin module as package data of that namespace.
    package_data={
        "twisted.plugins": ["raftkv_plugin.py"],
        # the dashboard's page, script and style, served by the node
        "twisted_raft.web": ["static/*"],
    },
    # fastamp/fastargs use private AMP names (rpc/twistedprivate.py lists
    # them, tests/rpc/test_twistedprivate.py checks them): the range is the
    # releases the tests ran on, 23.10 (the oldest whose iosim takes the
    # clock= the tests pass) to 26.10, below the next year's release.
    # twisted[tls] (pyOpenSSL, service_identity, idna) and cryptography for
    # mutual TLS (twisted_raft/tls.py) and `raftkv certs`; 42 is the first
    # cryptography with the *_utc validity dates tls.py reads.
    # prometheus_client for the node's /metrics (twisted_raft/web/).
    # sortedcontainers for the store's ordered key index (kvindex.py):
    # O(log n) insert, delete and bisect in pure Python, and stable since
    # 2.4 (2021); ranges and counts never scan or copy the store.
    # selenium (test extra) drives Debian's chromium + chromium-driver in
    # the dashboard's browser test; it never downloads a driver (the test
    # points it at /usr/bin/chromedriver) and the test skips without them.
    # pyflakes (test extra): tests/test_static_checks.py fails on a name
    # defined twice or used undefined, which a test run may not reach.
    install_requires=[
        "twisted[tls]>=23.10,<27",
        "cryptography>=42",
        "prometheus_client>=0.17",
        "sortedcontainers>=2.4,<3",
    ],
    extras_require={
        "test": [
            "pytest>=7",
            "pytest-twisted>=1.14",
            "hypothesis>=6",
            "selenium>=4.10",
            "pyflakes>=3",
        ],
        "bench": ["pysyncobj==0.3.17", "matplotlib"],
    },
    entry_points={"console_scripts": ["raftkv = twisted_raft.cli:main"]},
)
