"""
Tests for C{raftkv bench} (L{twisted_raft.tools.bench}) and the pure parts of the
PySyncObj side (L{twisted_raft.tools.pysyncobj_bench}); PySyncObj itself is an
optional dependency and is never run here.
"""

import json
import os
import subprocess
import sys

import pytest
from twisted.internet import defer
from twisted.python import usage

from twisted_raft.tools import bench, benchreport, launcher, pysyncobj_bench

def parse(*argv):
    o = bench.Options()
    o.parseOptions(list(argv))
    return o


# -- options ------------------------------------------------------------------------


def test_defaults():
    o = parse()
    assert o["workload"] == "write"
    assert o["concurrencies"] == [16]
    assert o["cluster"] is None
    assert o["compare"] is None


def test_sweep_and_cluster():
    o = parse("--sweep", "1,4, 16", "--cluster", "127.0.0.1:1,127.0.0.1:2")
    assert o["concurrencies"] == [1, 4, 16]
    assert o["cluster"] == ["127.0.0.1:1", "127.0.0.1:2"]


@pytest.mark.parametrize("argv", [
    ["--workload", "scan"],
    ["--read-ratio", "1.5"],
    ["--concurrency", "0"],
    ["--connections", "0"],
    ["--value-size", "-1"],
    ["--value-size", str(1024 * 1024 + 1)],
    ["--keys", "0"],
    ["--duration", "0"],
    ["--warmup", "-1"],
    ["--timeout", "0"],
    ["--sweep", "1,x"],
    ["--sweep", "0,4"],
    ["--cluster", "nonsense"],
    ["--cluster", "127.0.0.1:1", "--data", "/tmp/x"],
    ["--compare", "etcd"],
    ["--compare", "pysyncobj", "--workload", "read"],
    ["--pysyncobj-mode", "fast"],
    ["--concurrency", "5000", "--connections", "1"],
    ["--concurrency", "x"],
])
def test_bad_options(argv):
    with pytest.raises(usage.UsageError):
        parse(*argv)


def test_bad_option_exits_2(capsys):
    assert bench.main(["--workload", "scan"]) == bench.EXIT_USAGE
    assert "--workload" in capsys.readouterr().err


def test_cli_wiring():
    """C{raftkv bench ...} reaches the bench's own option parser (exit 2)."""
    p = subprocess.run(
        [sys.executable, "-c", "from twisted_raft.cli import main; main()", "bench", "--duration", "-1"],
        env=launcher.environment(), capture_output=True, text=True, timeout=30,
    )
    assert p.returncode == 2
    assert "--duration" in p.stderr


# -- statistics ------------------------------------------------------------------


def test_percentile_nearest_rank():
    samples = list(range(1, 101))  # 1..100
    assert benchreport.percentile(samples, 50) == 50
    assert benchreport.percentile(samples, 99) == 99
    assert benchreport.percentile(samples, 99.9) == 100
    assert benchreport.percentile(samples, 100) == 100
    assert benchreport.percentile([7], 50) == 7
    assert benchreport.percentile([7], 99.9) == 7
    assert benchreport.percentile([], 50) is None
    thousand = list(range(1, 1001))
    assert benchreport.percentile(thousand, 99.9) == 999
    assert benchreport.percentile(thousand, 99) == 990


def test_summarize():
    # 1000 samples: 1 ms .. 1000 ms
    latencies = [i / 1000.0 for i in range(1000, 0, -1)]
    s = benchreport.summarize(latencies, errors=3, duration=4.0)
    assert s["ops"] == 1000
    assert s["errors"] == 3
    assert s["ops_per_sec"] == 250.0
    assert s["p50_ms"] == 500.0
    assert s["p99_ms"] == 990.0
    assert s["p999_ms"] == 999.0
    assert s["max_ms"] == 1000.0
    assert s["mean_ms"] == pytest.approx(500.5)


def test_summarize_empty():
    s = benchreport.summarize([], errors=2, duration=1.0)
    assert s["ops"] == 0 and s["ops_per_sec"] == 0.0
    assert s["p50_ms"] is None and s["p99_ms"] is None and s["mean_ms"] is None


# -- output ------------------------------------------------------------------------


ROWS = [
    {"system": "raftkv", "workload": "write", "concurrency": 1, "value_size": 10,
     "ops_per_sec": 412.3, "p50_ms": 2.345, "p99_ms": 5.5, "p999_ms": 9.0, "errors": 0},
    {"system": "raftkv", "workload": "write", "concurrency": 64, "value_size": 10,
     "ops_per_sec": 5123.0, "p50_ms": 11.0, "p99_ms": 150.25, "p999_ms": None, "errors": 2},
]


def test_format_table():
    text = benchreport.formatTable(ROWS)
    lines = text.splitlines()
    assert lines[0].split() == ["system", "workload", "conc", "value", "B", "ops/s", "p50",
                                "ms", "p99", "ms", "p99.9", "ms", "errors"]
    assert set(lines[1].replace(" ", "")) == {"-"}
    assert lines[2].split() == ["raftkv", "write", "1", "10", "412.3", "2.35", "5.50", "9.00", "0"]
    assert lines[3].split() == ["raftkv", "write", "64", "10", "5123.0", "11.00", "150.2", "-", "2"]
    # columns line up
    assert len({len(l) for l in lines[:2]}) == 1
    assert text.endswith("\n")


def test_report_and_ratio():
    comparison = {"ops_per_sec": 10246.0, "config": {"mode": "max"}}
    full = benchreport.report({"workload": "write"}, ROWS, comparison)
    assert full["results"] == ROWS
    assert full["pysyncobj"] is comparison
    assert full["ratio_ops_per_sec"] == 0.5
    json.loads(json.dumps(full))  # JSON-able
    assert benchreport.ratioLine(ROWS[1], comparison) == "raftkv/PySyncObj ops/s: 0.500 (5123 / 10246)"
    assert benchreport.ratioLine(ROWS[1], {"ops_per_sec": 0}) is None
    assert "pysyncobj" not in benchreport.report({}, ROWS)


def test_plot(tmp_path):
    pytest.importorskip("matplotlib")
    path = tmp_path / "p.png"
    benchreport.plot(ROWS, str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# -- the PySyncObj side's pure parts ------------------------------------------------------


def test_pysyncobj_combine():
    reports = [
        {"ok": 3, "errors": 0, "sent": 4, "latencies_ms": [1.0, 2.0, 3.0]},
        {"ok": 1, "errors": 1, "sent": 2, "latencies_ms": [4.0], "late": True},
    ]
    r = pysyncobj_bench.combine(reports, duration=2.0)
    assert r["ops"] == 4 and r["errors"] == 1
    assert r["ops_per_sec"] == 2.0
    assert r["p50_ms"] == 2.0 and r["max_ms"] == 4.0
    assert r["sent"] == 6 and r["success_rate"] == round(4 / 6, 4)
    assert r["per_node_ok"] == [3, 1]
    assert r["late_start"] is True


def test_pysyncobj_worker_argv():
    config = {"value_size": 10, "keys": 5, "warmup": 1, "duration": 2.5, "mode": "max",
              "window": 100, "rate_per_node": 7}
    argv = pysyncobj_bench.workerArgv("127.0.0.1:1", ["127.0.0.1:2", "127.0.0.1:3"], config,
                                      123.5, python="py")
    assert argv[:4] == ["py", "-m", "twisted_raft.tools.pysyncobj_bench", "worker"]
    args = pysyncobj_bench._parseWorker(argv[4:])
    assert args.selfAddr == "127.0.0.1:1"
    assert args.partners == "127.0.0.1:2,127.0.0.1:3"
    assert (args.value_size, args.keys, args.warmup, args.duration) == (10, 5, 1.0, 2.5)
    assert (args.mode, args.window, args.rate, args.start_at) == ("max", 100, 7, 123.5)


# -- end to end ----------------------------------------------------------------------


@pytest.mark.integration
def test_short_run_against_local_cluster(tmp_path):
    out = tmp_path / "r.json"
    p = subprocess.run(
        [sys.executable, "-m", "twisted_raft.bench", "--duration", "2", "--warmup", "0.5",
         "--concurrency", "4", "--connections", "2", "--value-size", "10", "--keys", "50",
         "--json", str(out)],
        env=launcher.environment(), capture_output=True, text=True, timeout=90, cwd=str(tmp_path),
    )
    assert p.returncode == 0, p.stdout + p.stderr
    result = json.loads(out.read_text())
    (row,) = result["results"]
    assert row["ops"] > 0
    assert row["errors"] == 0
    assert row["concurrency"] == 4 and row["connections"] == 2
    assert row["p50_ms"] > 0
    assert "ops/s" in p.stdout  # the table
    # the local cluster's temporary data dir is gone and no node is left
    root = p.stdout.split("(data ", 1)[1].split(")", 1)[0]
    assert not os.path.exists(root)


# -- the closed loop, without a cluster ------------------------------------------


class FakeClient:
    """Answers at once (advancing the fake clock) or holds every request."""

    def __init__(self, now, hold=False, error=None):
        self.now = now
        self.hold = hold
        self.error = error
        self.held = []

    def put(self, key, value):
        if self.error is not None:
            raise self.error
        self.now[0] += 0.01
        if self.hold:
            d = defer.Deferred()
            self.held.append(d)
            return d
        return defer.succeed(None)


def test_load_with_answers_at_once_counts_without_recursing():
    from twisted.internet import task

    now = [0.0]
    load = bench.Load(task.Clock(), [FakeClient(now)], "write", 4, 10, 100,
                      warmup=0.0, duration=30.0, clock=lambda: now[0])
    d = defer.ensureDeferred(load.run())
    assert d.called  # 3,000 synchronous answers: no RecursionError
    summary = d.result
    assert load.completed == 3000 and summary["ops"] >= 2999


def test_load_with_pending_answers():
    from twisted.internet import task

    now = [0.0]
    client = FakeClient(now, hold=True)
    load = bench.Load(task.Clock(), [client], "write", 3, 10, 100,
                      warmup=0.0, duration=1.0, clock=lambda: now[0])
    d = defer.ensureDeferred(load.run())
    assert len(client.held) == 3 and not d.called
    now[0] = 2.0  # past the window: each worker stops after its answer
    for held in list(client.held):
        held.callback(None)
    assert d.called and load.completed == 3 and load.latencies == []


def test_a_bug_in_the_loop_fails_the_run_instead_of_hanging():
    from twisted.internet import task

    now = [0.0]
    load = bench.Load(task.Clock(), [FakeClient(now, error=RuntimeError("bug"))], "write",
                      2, 10, 100, warmup=0.0, duration=1.0, clock=lambda: now[0])
    d = defer.ensureDeferred(load.run())
    failures = []
    d.addErrback(failures.append)
    assert len(failures) == 1 and failures[0].check(RuntimeError)


def test_progress_right_after_the_window_opens_shows_no_window_rate():
    """
    The tick that follows the warmup comes a hair after the window opens,
    just after a burst of answers: their count over that hair is no rate.
    (It printed 31,704 ops/s "in window" against 3,730 now.)
    """
    from twisted.internet import task

    now, lines, reactor = [0.0], [], task.Clock()
    client = FakeClient(now, hold=True)
    load = bench.Load(reactor, [client], "write", 40, 10, 100, warmup=2.0, duration=10.0,
                      out=lines.append, clock=lambda: now[0])
    d = defer.ensureDeferred(load.run())

    def answer(at):
        now[0] = at
        held, client.held = client.held, []
        for h in held:
            h.callback(None)

    now[0] = 1.0
    reactor.advance(1.0)
    answer(2.0005)  # a burst just inside the window
    now[0] = 2.001  # the tick, a millisecond into it
    reactor.advance(1.0)
    answer(3.0)
    now[0] = 3.001  # (each request the fake client takes moves its clock on)
    reactor.advance(1.0)
    assert len(load.latencies) == 80
    warmup, first, second = lines
    assert " warmup " in warmup
    assert " measure " in first and "- ops/s in window so far" in first, first
    assert "80 ops/s in window so far" in second, second  # 80 answers over 1.0 s
    now[0] = 20.0
    answer(20.0)
    assert d.called
