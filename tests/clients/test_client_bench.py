"""
C{bench/client_throughput.py} (issue 14's throughput figures) runs at a
tiny scale against real nodes: every kind of client completes operations
without errors, and the report has the ratios docs/performance.rst quotes.
Speed is the script's business at full scale, not this test's.
"""

import json
import os
import subprocess
import sys

import pytest

from tests.support import ROOT
from twisted_raft.tools import launcher

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("workload", ["write", "read"])
def test_client_throughput_small(tmp_path, workload):
    out = tmp_path / "out.json"
    done = subprocess.run(
        [sys.executable, os.path.join(ROOT, "bench", "client_throughput.py"), "--rounds", "1",
         "--duration", "0.5", "--warmup", "0.2", "--threads", "4", "--tasks", "8",
         "--keys", "20", "--workload", workload, "--json", str(out)],
        cwd=str(tmp_path), env=launcher.environment(), capture_output=True, text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(out.read_text())
    assert [(r["client"], r["concurrency"]) for r in report["runs"]] == [
        ("twisted", 4), ("blocking", 4), ("twisted", 8), ("asyncio", 8)]
    assert all(r["ops_per_sec"] > 0 and r["errors"] == 0 for r in report["runs"])
    assert set(report["ratio_to_twisted"]) == {"blocking x4", "asyncio x8"}
