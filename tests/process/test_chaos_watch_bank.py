"""
Short C{raftkv chaos} runs against real node processes, each with the
leader SIGKILLed: the kv workload with its watcher (every change delivered
once, in order, equal to the committed log), and C{--workload bank}
(transfers in transactions, the total audited at every read).
"""

import json
import subprocess
import sys

import pytest

from twisted_raft.tools import faults, launcher

pytestmark = pytest.mark.integration

SEED, SECONDS = 2, 10


def test_the_schedule_of_seed_2():
    """One SIGKILL of the leader (so a change to the schedule shows here,
    not as a run that quietly tests less)."""
    schedule = faults.makeSchedule(SEED, SECONDS, 3, ["kill"])
    assert [(f.kind, f.leader) for f in schedule] == [("kill", True)]


def run(tmp_path, *args):
    summaryFile = tmp_path / "summary.json"
    proc = subprocess.run(
        [sys.executable, "-m", "twisted_raft.chaos", "--seconds", str(SECONDS), "--seed",
         str(SEED), "--faults", "kill", "--json", str(summaryFile),
         "--data", str(tmp_path / "data"), *args],
        cwd=str(tmp_path), env=launcher.environment(), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, timeout=180,
    )
    out = proc.stdout.decode("utf-8", "replace")
    assert proc.returncode == 0, out[-6000:]
    summary = json.loads(summaryFile.read_text())
    assert summary["result"] == "OK" and len(summary["faults"]) == 1
    assert summary["faults"][0]["description"].startswith("SIGKILL")
    return summary, out


def checkWatch(watch):
    assert watch["ok"] and watch["status"] == "ok" and watch["compacted"] is None
    assert watch["events"] > 100
    assert watch["acknowledged"] > 100
    assert watch["acknowledged_checked"] == watch["acknowledged"]
    assert watch["end_revision"] > watch["final_revision"]
    assert watch["log_checked_revisions"] > 0 and len(watch["log_windows"]) == 3


def test_chaos_watch_completeness(tmp_path):
    summary, out = run(tmp_path)
    assert summary["workload"] == "kv" and summary["bank"] == {"enabled": False}
    assert summary["linearizability"]["verdict"] == "linearizable"
    checkWatch(summary["watch"])
    assert "watch: ok: " in out


def test_chaos_bank_transfers(tmp_path):
    summary, out = run(tmp_path, "--workload", "bank", "--clients", "20")
    assert summary["workload"] == "bank" and summary["keys"] == 10
    assert summary["linearizability"]["verdict"] == "not checked"
    bank = summary["bank"]
    assert bank["ok"] and bank["created"] and bank["accounts"] == 10
    assert bank["total"] == 10 * 1000 and bank["violations"] == 0
    assert bank["transfers"] > 10 and bank["audited_reads"] > bank["transfers"]
    assert bank["final_revision"] is not None
    checkWatch(summary["watch"])
    assert "bank: ok: total 10000 at every read" in out
