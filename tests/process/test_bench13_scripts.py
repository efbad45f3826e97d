"""
The acceptance scripts of issue 13 (C{bench/kv_range.py},
C{bench/watch_failover.py}, C{bench/kv_ab.py}) run at a tiny scale against
real node processes: each completes, writes the JSON its docstring and
docs/performance.rst describe, and reaches the verdicts that must hold
whatever the machine's speed (consistent pages, every key once, RSS growth
within the slack, every watch event once and in order through both kills).
Speed is the scripts' business at full scale, not these tests'.  Their
checkers are also fed wrong answers, to show that they would catch them.
"""

import importlib
import json
import os
import subprocess
import sys

import pytest

from tests.support import ROOT
from twisted_raft.kvrecords import KeyValue, RangeResult
from twisted_raft.tools import launcher

BENCH = os.path.join(ROOT, "bench")


def _script(name):
    """A module of bench/ (which puts bench/ first on sys.path, as its scripts run)."""
    if BENCH not in sys.path:
        sys.path.insert(0, BENCH)
    return importlib.import_module(name)


def _run(tmp_path, script, *args, timeout=240):
    out = tmp_path / "out.json"
    done = subprocess.run(
        [sys.executable, os.path.join(BENCH, script), *args, "--json", str(out)],
        cwd=str(tmp_path), env=launcher.environment(), capture_output=True, text=True,
        timeout=timeout,
    )
    report = json.loads(out.read_text()) if out.exists() else None
    return done, report


# -- the checkers, fed wrong answers -------------------------------------------


def _page(revision, *kvs, more=False):
    return RangeResult([KeyValue(k, v, 1, m, 1) for k, v, m in kvs], more, len(kvs), revision)


def test_range_checker_accepts_consistent_pages():
    kv_range = _script("kv_range")
    acked = [(10, "p/a", b"a1"), (10, "p/b", b"b1"), (12, "p/a", b"a2"), (15, "p/b", b"b2")]
    pages = [_page(12, ("p/a", b"a2", 12), more=True), _page(14, ("p/b", b"b1", 10))]
    violations, samples, seen = kv_range.checkPages(pages, ["p/a", "p/b"], acked, [])
    assert (violations, samples) == (0, [])
    assert seen == {"p/a": 1, "p/b": 1}


@pytest.mark.parametrize("page, unknown, why", [
    # an acknowledged write at 12 <= 13 is not shown: a stale page
    (_page(13, ("p/a", b"a1", 10)), [], "was acknowledged"),
    # the right revision with another value
    (_page(12, ("p/a", b"zz", 12)), [], "is not that of the write"),
    # a write after the page's revision
    (_page(11, ("p/a", b"a2", 12)), [], "after the page's revision"),
    # a revision no write of the run made
    (_page(13, ("p/a", b"a3", 13)), [], "no write of this run"),
])
def test_range_checker_catches_inconsistent_pages(page, unknown, why):
    kv_range = _script("kv_range")
    acked = [(10, "p/a", b"a1"), (12, "p/a", b"a2")]
    violations, samples, _ = kv_range.checkPages([page], ["p/a"], acked, unknown)
    assert violations == 1 and why in samples[0], samples


def test_range_checker_allows_a_write_of_unknown_outcome():
    kv_range = _script("kv_range")
    acked = [(10, "p/a", b"a1")]
    page = _page(13, ("p/a", b"a3", 13))
    assert kv_range.checkPages([page], ["p/a"], acked, [("p/a", b"a3")])[0] == 0


def test_range_checker_counts_repeated_and_out_of_order_keys():
    kv_range = _script("kv_range")
    acked = [(10, "p/a", b"a1"), (10, "p/b", b"b1")]
    pages = [_page(10, ("p/b", b"b1", 10), more=True), _page(10, ("p/a", b"a1", 10))]
    violations, samples, seen = kv_range.checkPages(pages, ["p/a", "p/b"], acked, [])
    assert violations == 1 and "not after the key before it" in samples[0]
    pages = [_page(10, ("p/a", b"a1", 10), more=True), _page(10, ("p/a", b"a1", 10))]
    _, _, seen = kv_range.checkPages(pages, ["p/a", "p/b"], acked, [])
    assert seen == {"p/a": 2, "p/b": 0}


def test_watch_comparison_counts_each_kind_of_fault():
    watch = _script("watch_failover")
    log = [(5, "w/a", "put", b"1"), (6, "w/b", "put", b"2"), (7, "w/a", "delete", None)]
    assert watch.compare(log, list(log)) == {
        "duplicates": 0, "gaps": 0, "out_of_order": 0, "mismatched": 0}
    got = watch.compare(log, [log[0], log[2], log[1], log[1], (8, "w/c", "put", b"3")])
    assert got == {"duplicates": 1, "gaps": 0, "out_of_order": 1, "mismatched": 1}
    assert watch.compare(log, [log[0]])["gaps"] == 2


def test_ab_verdict_follows_the_tolerance():
    kv_ab = _script("kv_ab")

    def run(side, ops, p50, p99):
        return {"side": side, "workload": "write", "ops_per_sec": ops, "p50_ms": p50,
                "p99_ms": p99}

    runs = [run("A", 100, 10, 20), run("A", 110, 11, 22), run("B", 104, 10, 20),
            run("B", 96, 10.4, 21)]
    within = kv_ab.summarize(runs, ["write"], 0.05)["write"]
    assert within["median_a"]["ops_per_sec"] == 105 and within["median_b"]["ops_per_sec"] == 100
    assert within["ratio_b_over_a"]["ops_per_sec"] == round(100 / 105, 4)
    assert within["ok"] is True
    assert kv_ab.summarize(runs, ["write"], 0.04)["write"]["ok"] is False
    slower = runs + [run("B", 100, 30, 60), run("B", 100, 30, 60)]
    assert kv_ab.summarize(slower, ["write"], 0.05)["write"]["ok"] is False


def test_ab_pairs_each_round_as_a_second_view():
    kv_ab = _script("kv_ab")

    def run(side, rnd, ops):
        return {"side": side, "round": rnd, "workload": "write", "ops_per_sec": ops,
                "p50_ms": 1000 / ops, "p99_ms": 2000 / ops}

    # the host halves its speed after round 1: the medians mix both speeds,
    # each round compares like with like
    runs = [run("A", 1, 200), run("B", 1, 190), run("A", 2, 100), run("B", 2, 95),
            run("A", 3, 100), run("B", 3, 105)]
    s = kv_ab.summarize(runs, ["write"], 0.05)["write"]
    assert s["paired_ratio_b_over_a"]["ops_per_sec"] == 0.95
    assert s["rounds_b_slower"] == 2


# -- the scripts at a tiny scale ---------------------------------------------------


@pytest.mark.integration
def test_kv_range_small(tmp_path):
    done, report = _run(
        tmp_path, "kv_range.py", "--keys", "2000", "--page-keys", "150",
        "--write-rate", "200", "--writes-before", "0.3", "--rss-keys", "5000",
        "--rss-page-keys", "500", "--settle", "0.5",
    )
    assert done.returncode == 0, done.stdout + done.stderr
    paging, rss = report["paging"], report["rss"]
    assert paging["pages"] == 14 and paging["keys_seen"] == 2000
    assert paging["keys_missing"] == 0 and paging["keys_repeated"] == 0
    assert paging["violations"] == 0, paging["violation_samples"]
    assert paging["writes"]["acked"] > 0 and paging["last_revision"] >= paging["first_revision"]
    assert rss["keys_read"] == 5000 and rss["pages"] == 10
    assert rss["rss_peak"] >= rss["rss_before"] > 0 and rss["largest_page_bytes"] > 0
    assert rss["growth"] <= rss["allowed_growth"]
    assert paging["ok"] and rss["ok"] and report["ok"]


@pytest.mark.integration
def test_watch_failover_small(tmp_path):
    done, report = _run(
        tmp_path, "watch_failover.py", "--write-rate", "200", "--duration", "6",
        "--first-kill", "1.5", "--second-kill", "3.5", "--pause", "1",
    )
    assert done.returncode == 0, done.stdout + done.stderr
    watch = report["watch"]
    assert [k["which"] for k in report["kills"]] == ["watcher's node", "leader"]
    assert report["kills"][0]["node"] == watch["first_node"] != watch["first_leader"]
    assert watch["expected_events"] > 0 and watch["events"] == watch["expected_events"]
    assert (watch["duplicates"], watch["gaps"], watch["out_of_order"],
            watch["mismatched"]) == (0, 0, 0, 0)
    assert watch["resumes"] >= 1 and watch["caught_up"]
    assert watch["lag_ms"]["events_with_ack"] > 0
    assert report["writes"]["acked"] > 0 and report["ok"]


@pytest.mark.integration
def test_kv_ab_small(tmp_path):
    # This checkout as both sides (no git worktree in a test); a tolerance
    # no pair of tiny runs can miss, so the verdict is known.
    done, report = _run(
        tmp_path, "kv_ab.py", "--a-dir", ROOT, "--rounds", "1", "--duration", "0.5",
        "--warmup", "0.2", "--concurrency", "8", "--connections", "2", "--tolerance", "1000",
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert [(r["side"], r["workload"]) for r in report["runs"]] == [
        ("A", "write"), ("A", "read"), ("B", "write"), ("B", "read")]
    assert all(r["ops_per_sec"] > 0 and r["errors"] == 0 for r in report["runs"])
    assert set(report["workloads"]) == {"write", "read"}
    for summary in report["workloads"].values():
        assert set(summary["ratio_b_over_a"]) == {"ops_per_sec", "p50_ms", "p99_ms"}
        assert summary["ok"] is True
    assert os.path.realpath(report["sources"]["B"]) == os.path.realpath(ROOT)
    assert report["ok"] is True


@pytest.mark.parametrize("workload", ["apply-put", "apply-session", "request-put"])
def test_kv_instructions_workloads_run(workload, tmp_path):
    # what callgrind counts: each workload completes on this checkout's code
    # (a put that failed would exit non-zero), with and without its loop
    for extra in ([], ["--skip"]):
        done = subprocess.run(
            [sys.executable, os.path.join(BENCH, "kv_instructions.py"), "--child", ROOT,
             workload, "256", *extra],
            cwd=str(tmp_path), env=launcher.environment(), capture_output=True, text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stdout + done.stderr


def test_kv_instructions_refuses_a_side_that_would_not_run_its_own_code(tmp_path):
    done = subprocess.run(
        [sys.executable, os.path.join(BENCH, "kv_instructions.py"), "--child",
         str(tmp_path), "apply-put", "256"],
        cwd=str(tmp_path), env=launcher.environment(), capture_output=True, text=True,
        timeout=120,
    )
    assert done.returncode != 0 and "would not run its own code" in done.stderr
