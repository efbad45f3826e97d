"""
A short C{raftkv chaos --membership} run against real node processes: a
fresh node joins (learner, caught up, promoted) and the leader is removed
while SIGKILL and a partition strike and four clients read and write; the
run must pass every check (linearizability, convergence of data and
configuration, one leader per term, one configuration per index, the
nodes' metrics, health answers and JSON logs) and its C{--json} must show
the changes and the observability checks.
"""

import json
import subprocess
import sys

import pytest

from twisted_raft.tools import faults, launcher

pytestmark = pytest.mark.integration

SEED, SECONDS = 22, 20


def test_the_schedule_of_seed_22():
    """What the run below is planned to do (so a change to the schedule
    shows here, not as a run that quietly tests less)."""
    changes = faults.makeChanges(SEED, SECONDS, 3, list(faults.CHANGE_KINDS))
    assert [c.kind for c in changes] == ["add", "remove-leader", "transfer"]
    kinds = [f.kind for f in faults.makeSchedule(SEED, SECONDS, 3, list(faults.FAULT_KINDS))]
    assert kinds == ["kill", "halves"]


def test_chaos_with_membership_changes(tmp_path):
    summaryFile = tmp_path / "summary.json"
    historyFile = tmp_path / "history.jsonl"
    proc = subprocess.run(
        [sys.executable, "-m", "twisted_raft.chaos", "--seconds", str(SECONDS), "--seed",
         str(SEED), "--membership", "--json", str(summaryFile), "--history", str(historyFile),
         "--data", str(tmp_path / "data")],
        cwd=str(tmp_path), env=launcher.environment(), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, timeout=180,
    )
    out = proc.stdout.decode("utf-8", "replace")
    assert proc.returncode == 0, out[-6000:]
    summary = json.loads(summaryFile.read_text())
    assert summary["result"] == "OK"
    assert summary["linearizability"]["verdict"] == "linearizable"
    assert summary["convergence"]["ok"] and summary["members"]["ok"]
    checks = summary["leaders_and_configurations"]
    assert checks["ok"] and checks["terms_with_leader"] >= 2
    assert checks["leader_log_lines"] >= 2 and checks["member_list_answers"] > 0
    membership = summary["membership"]
    assert membership["enabled"] and membership["scheduled"] == 3
    steps = membership["steps"]

    def applied(action):
        return [s["target"] for s in steps if s["action"] == action
                and (s["outcome"] == "done" or s["settled"] == "applied")]

    # the add comes first, at 3 voters: node 4 joins, then votes
    assert applied("add-learner") == [4] and applied("promote") == [4], out[-4000:]
    assert membership["tried"] >= 3
    assert membership["done"] + membership["failed"] + membership["unknown"] == membership["tried"]
    # a node removed is not a member at the end
    members = summary["members"]["voters"] + summary["members"]["learners"]
    for step in steps:
        if step["action"] in ("remove", "remove-leader") and (
            step["outcome"] == "done" or step["settled"] == "applied"
        ):
            assert step["target"] not in members
    assert checks["acknowledged_changes"] >= 2
    assert checks["acknowledged_changes_verified"] >= 2
    lines = [json.loads(line) for line in historyFile.read_text().splitlines()]
    assert sum(1 for d in lines if d["type"] == "change") == membership["tried"]
    # every node served /metrics and /health and logged JSON throughout
    seen = summary["observability"]
    assert seen["ok"] and seen["violations"] == [] and seen["violation_count"] == 0, seen
    assert seen["metrics_answers"] >= 2 * SECONDS and seen["health_answers"] >= 2 * SECONDS
    assert seen["scrapes"] == seen["metrics_answers"] + seen["health_answers"]
    assert seen["final"]["ok"] and seen["final"]["problems"] == []
    # three nodes started, restarted once with every proxy, node 4 added,
    # and the SIGKILLed node restarted
    assert seen["lifetimes"] >= 8 and seen["log_lines"] > seen["lifetimes"]
    assert seen["role_changes"] >= 2 and seen["leader_changes"] >= 2
    assert [line for line in out.splitlines() if line.startswith("observability: ok:")], out
    for i in (1, 2, 3, 4):
        first = json.loads((tmp_path / "data" / f"n{i}.log").read_text().splitlines()[0])
        assert first["event"] == launcher.START_EVENT and first["node_id"] == i
