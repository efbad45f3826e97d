"""
What a program that only uses raftkv as a client pulls in (issue 14,
packaging): the client library imports no part of the node (the store, the
Raft core, storage, the server, the web pages) and none of the node's own
dependencies, and installs no global reactor; and the distribution's
unconditional requirements hold no test or benchmark package.
"""

import importlib.metadata
import json
import subprocess
import sys

from twisted_raft.tools import launcher

CLIENT_MODULES = ["twisted_raft.client", "twisted_raft.blocking", "twisted_raft.aio"]
"""What a client program imports: the Deferred, blocking and asyncio
clients (the last two are exported by C{twisted_raft.client} too)."""

SERVER_ONLY = [
    "prometheus_client", "sortedcontainers", "twisted.web", "twisted.internet.reactor",
    "twisted_raft.kv", "twisted_raft.service", "twisted_raft.raft.node",
    "twisted_raft.storage", "twisted_raft.rpc.server", "twisted_raft.web",
]
"""Modules (and packages, with everything under them) a client must not import."""


def test_the_client_imports_nothing_of_the_node():
    code = (
        "import importlib, json, sys\n"
        f"for name in {CLIENT_MODULES!r}:\n"
        "    importlib.import_module(name)\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], env=launcher.environment(),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    loaded = json.loads(done.stdout)
    assert "twisted_raft.client" in loaded
    found = [m for m in loaded for bad in SERVER_ONLY if m == bad or m.startswith(bad + ".")]
    assert found == []


def test_the_test_and_bench_packages_are_extras():
    requirements = importlib.metadata.requires("raftkv")
    always = [r for r in requirements if "extra ==" not in r]
    names = {r.split(";")[0].split("[")[0].split("<")[0].split(">")[0].split("=")[0].strip()
             for r in always}
    assert names == {"twisted", "cryptography", "prometheus_client", "sortedcontainers"}
    extras = {r for r in requirements if "extra ==" in r}
    for package in ("pytest", "pytest-twisted", "selenium", "pysyncobj", "matplotlib"):
        assert any(r.startswith(package) for r in extras), package
