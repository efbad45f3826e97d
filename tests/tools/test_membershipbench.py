"""
The membership bench's pure parts: write gaps, the issue's targets, the
summary.  (The scenarios themselves run real nodes:
tests/process/test_membership_bench.py.)
"""

import pytest

from twisted_raft.tools import membershipbench as mb
from twisted_raft.tools.membershipload import gapFigures, longestGap


# -- write gaps -------------------------------------------------------------------


def test_the_longest_gap_inside_the_window():
    acks = [0.0, 1.0, 1.1, 1.5, 1.6, 3.0]
    assert longestGap(acks, 1.05, 1.55) == (pytest.approx(0.4), 1.1)


def test_gaps_straddling_the_window_count_in_full():
    acks = [0.0, 1.0, 3.0, 3.1, 3.2]
    # the window starts in the middle of the 1.0 -> 3.0 gap
    assert longestGap(acks, 2.5, 3.15) == (pytest.approx(2.0), 1.0)
    # ... and ends in the middle of it
    assert longestGap([0.0, 0.1, 1.0, 3.0], 0.05, 1.5) == (pytest.approx(2.0), 1.0)


def test_a_gap_after_the_window_does_not_count():
    acks = [0.0, 0.1, 0.2, 0.3, 5.0]
    gap, at = longestGap(acks, 0.0, 0.25)
    assert gap == pytest.approx(0.1)


def test_no_write_before_the_window_counts_from_its_start():
    assert longestGap([2.0, 2.1], 1.0, 2.05) == (pytest.approx(1.0), 1.0)


def test_no_write_after_the_window_runs_to_its_end():
    assert longestGap([0.0, 0.1], 0.05, 2.0) == (pytest.approx(1.9), 0.1)
    assert longestGap([], 1.0, 1.5) == (pytest.approx(0.5), 1.0)


def test_gap_figures_are_milliseconds_and_relative_to_the_start():
    assert gapFigures([10.0, 10.25, 10.3], 10.1, 10.3) == {
        "longest_gap_ms": 250.0, "gap_at_s": -0.1,
    }


# -- the targets --------------------------------------------------------------------


def _checks(**kw):
    checks = {"ops": 10, "linearizable": True, "linearizability": "linearizable",
              "acknowledged": 5, "lost": 0, "lost_samples": [], "converged": True,
              "divergence": [], "members": [1, 2, 3], "config_revision": 0}
    checks.update(kw)
    return checks


def _load(**kw):
    load = {"writers": 2, "readers": 1, "seconds": 1.0, "writes": 5, "acknowledged": 5,
            "writes_per_sec": 5.0, "reads": 3, "write_errors": 0, "read_errors": 0,
            "error_samples": [], "longest_gap_ms": 10.0, "gap_at_s": 0.1}
    load.update(kw)
    return load


def _rolling(signal="TERM", gap=120.0, load=None, checks=None):
    return {"scenario": "rolling", "signal": signal, "longest_gap_ms": gap,
            "restarts": [{"node": 1, "was_leader": True, "handed_over": signal == "TERM",
                          "stop_s": 0.1, "answering_s": 0.5, "rejoin_s": 1.0,
                          "longest_gap_ms": gap, "gap_at_s": 0.0}],
            "load": load or _load(), "checks": checks or _checks()}


def _transfer(succeeded=100, within=100):
    return {"scenario": "transfer", "count": 100, "succeeded": succeeded, "failures": [],
            "to_new_leader_ms": {"median": 20.0, "p99": 60.0, "max": 80.0},
            "within_election_timeout": within, "election_timeout_ms": [300.0, 550.0],
            "longest_gap_ms": 90.0, "load": _load(), "checks": _checks()}


def test_a_rolling_restart_that_meets_every_target():
    assert mb.targets(_rolling()) == []


def test_a_sigterm_rolling_restart_misses_on_a_long_gap_or_a_client_error():
    assert mb.targets(_rolling(gap=300.5)) == [
        "rolling SIGTERM: longest write gap 300.5 ms (target < 300 ms)"]
    assert mb.targets(_rolling(load=_load(read_errors=1))) == [
        "rolling SIGTERM: 1 client-visible errors"]


def test_the_sigkill_baseline_has_no_gap_target_but_no_errors_either():
    both = {"scenario": "rolling-both", "sigterm": _rolling(),
            "sigkill": _rolling("KILL", gap=600.0)}
    assert mb.targets(both) == []
    both["sigkill"] = _rolling("KILL", load=_load(write_errors=2))
    assert mb.targets(both) == ["rolling SIGKILL: 2 client-visible errors"]


def test_transfers_must_all_succeed_within_an_election_timeout():
    assert mb.targets(_transfer()) == []
    assert mb.targets(_transfer(succeeded=99, within=99)) == ["transfer: 99 of 100 succeeded"]
    assert mb.targets(_transfer(within=98)) == [
        "transfer: 2 new leaders later than one election timeout"]


def test_every_scenario_misses_on_a_violation_a_lost_write_or_divergence():
    result = _rolling(checks=_checks(linearizable=False, lost=3,
                                     converged=False, divergence=["n2 differs on 1 keys"]))
    assert mb.targets(result) == [
        "rolling: history not linearizable",
        "rolling: 3 acknowledged writes lost",
        "rolling: not converged: n2 differs on 1 keys",
    ]
    assert mb.targets(_rolling(checks=_checks(linearizable=None))) == [
        "rolling: history check inconclusive"]


def test_a_recovered_cluster_must_take_every_write():
    result = {"scenario": "recover", "after": _load(write_errors=1), "checks": _checks()}
    assert mb.targets(result) == ["recover: the recovered cluster did not take every write"]
    result["after"] = _load()
    assert mb.targets(result) == []


# -- the summary and the settings ----------------------------------------------------


def test_the_summary_says_what_was_measured_and_what_failed():
    text = mb.describe(_rolling(checks=_checks(linearizable=False, converged=False)))
    assert "rolling restart with SIGTERM under load: longest write gap 120 ms" in text
    assert "handed over" in text
    assert "NOT LINEARIZABLE" in text and "NOT CONVERGED" in text
    text = mb.describe(_transfer(succeeded=99))
    assert "99 succeeded; new leader after median 20 ms, p99 60 ms, max 80 ms" in text
    assert "(300-550 ms)" in text


def test_the_election_timeout_is_the_nodes_default_or_their_flag():
    assert mb.Settings(root="r").electionRange() == (0.3, 0.55)
    assert mb.Settings(root="r", electionTimeout="200-400").electionRange() == (0.2, 0.4)
    lo, hi = mb.Settings(root="r", electionTimeout="100").electionRange()
    assert (lo, hi) == (0.1, pytest.approx(0.183))
