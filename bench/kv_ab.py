"""
Put/Get throughput and latency A/B: the build before issue 13 (A) against
this checkout (B), alternated on the same machine.

    python bench/kv_ab.py [--a-ref fec4e44 | --a-dir DIR] [--rounds 3]
        [--workloads write,read] [--duration 10] [--warmup 2]
        [--concurrency 256] [--connections 8] [--value-size 10]
        [--json docs/results/ab-issue13.json]

A is C{--a-ref} checked out into a temporary git worktree of this
repository (detached, removed afterwards), or an existing checkout given
with C{--a-dir}; B is the checkout this script belongs to.  Each run is
C{python -m twisted_raft.bench} (C{raftkv bench}: its own local 3-node
cluster of real node processes, fsync on, on free 127.0.0.1 ports in a
temporary directory) with that side's root first on C{PYTHONPATH} and as
its working directory, so that the tool and its nodes run that side's code
(each side's C{twisted_raft} is printed and recorded to show it)::

    raftkv bench -C 256 -k 8 -s 10 -D 10 --warmup 2 --workload write|read

(C{read}: linearizable Gets of 1,000 keys written first.)  C{--rounds}
rounds; round 1 runs A then B, round 2 B then A, and so on (drift over a
round falls on both sides), each side running every workload.  Reports
every run, and per workload the medians of A and B of ops/s, p50 and p99
latency, and the ratios B/A.  Verdict: B's median ops/s is at least
C{1 - --tolerance} of A's and its median p50 and p99 at most C{1 +
--tolerance} of A's (the target of issue 13: within 5 %).  Exit status 0 if
it holds, 1 if not, 2 if a run failed.  Also reported, not for the
verdict: the median of each round's own B/A, and the rounds B was slower
in.  Do not run it while anything else shares the machine: single runs of
one build vary by 10-20 %, and an A/A (C{--a-dir} this checkout) shows by
how much a run's medians move with no change at all.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

import _checkout  # noqa: F401 (this checkout first on sys.path)

from twisted_raft.tools import launcher

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
"""This checkout: side B."""


def worktree(ref, into):
    """Check C{ref} out, detached, into the new git worktree C{into}."""
    subprocess.run(["git", "-C", HERE, "worktree", "add", "--detach", into, ref],
                   check=True, stdout=subprocess.DEVNULL)


def removeWorktree(path):
    subprocess.run(["git", "-C", HERE, "worktree", "remove", "--force", path],
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    subprocess.run(["git", "-C", HERE, "worktree", "prune"],
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    shutil.rmtree(path, ignore_errors=True)


def sideEnvironment(root):
    """The environment of a run of side C{root}: its code first."""
    env = launcher.environment()
    rest = [p for p in env["PYTHONPATH"].split(os.pathsep) if p and p != launcher.sourceRoot()]
    env["PYTHONPATH"] = os.pathsep.join([root] + rest)
    return env


def sourceOf(root):
    """Where side C{root}'s runs import C{twisted_raft} from."""
    out = subprocess.run(
        [sys.executable, "-c", "import os, twisted_raft;"
         " print(os.path.dirname(os.path.dirname(os.path.abspath(twisted_raft.__file__))))"],
        cwd=root, env=sideEnvironment(root), check=True, capture_output=True, text=True,
    )
    return out.stdout.strip()


def benchOnce(root, workload, args, out):
    argv = [sys.executable, "-m", "twisted_raft.bench", "-C", str(args.concurrency),
            "-k", str(args.connections), "-s", str(args.value_size),
            "-D", str(args.duration), "--warmup", str(args.warmup),
            "--workload", workload, "--quiet", "--json", out]
    done = subprocess.run(argv, cwd=root, env=sideEnvironment(root),
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"raftkv bench ({root}, {workload}) failed ({done.returncode}):"
                           f" {done.stderr.strip()[-2000:]}")
    with open(out) as f:
        row = json.load(f)["results"][0]
    keep = ("ops_per_sec", "p50_ms", "p99_ms", "p999_ms", "errors", "node_cpu_pct",
            "client_cpu_pct")
    return {k: row.get(k) for k in keep}


def summarize(runs, workloads, tolerance):
    out = {}
    for w in workloads:
        side = {}
        for name in ("A", "B"):
            rows = [r for r in runs if r["side"] == name and r["workload"] == w]
            side[name] = {
                k: statistics.median(r[k] for r in rows)
                for k in ("ops_per_sec", "p50_ms", "p99_ms")
            }
        ratios = {k: round(side["B"][k] / side["A"][k], 4) for k in side["A"]}
        # each round's B/A (its two runs one after the other, so the host's
        # drift over the whole run falls out), then their median: a second
        # view, not the verdict's
        pairs = {}
        for r in runs:
            if r["workload"] == w and "round" in r:
                pairs.setdefault(r["round"], {})[r["side"]] = r
        pairs = [p for p in pairs.values() if len(p) == 2]
        paired = {
            k: round(statistics.median(p["B"][k] / p["A"][k] for p in pairs), 4)
            for k in side["A"]
        } if pairs else None
        out[w] = {
            "median_a": side["A"], "median_b": side["B"], "ratio_b_over_a": ratios,
            "paired_ratio_b_over_a": paired,
            "rounds_b_slower": sum(p["B"]["ops_per_sec"] < p["A"]["ops_per_sec"] for p in pairs),
            "ok": (ratios["ops_per_sec"] >= 1 - tolerance
                   and ratios["p50_ms"] <= 1 + tolerance and ratios["p99_ms"] <= 1 + tolerance),
        }
    return out


def sideParser(doc):
    """The parser of an A/B script (C{doc} its docstring), with the options
    that say what side A is."""
    parser = argparse.ArgumentParser(
        description=" ".join(doc.split("\n\n")[0].split()),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--a-ref", default="fec4e44",
                        help="git ref of side A, checked out into a temporary worktree")
    parser.add_argument("--a-dir", default=None,
                        help="an existing checkout to use as side A instead of --a-ref")
    return parser


def sideA(args, scratch):
    """
    C{(root, made)}: side A's checkout, C{--a-dir} or C{--a-ref} checked
    out into C{scratch}; C{made} is the worktree to remove afterwards
    (L{removeWorktree}), or C{None}.
    """
    if args.a_dir is not None:
        return os.path.abspath(args.a_dir), None
    made = os.path.join(scratch, "a")
    worktree(args.a_ref, made)
    return made, made


def main():
    parser = sideParser(__doc__)
    parser.add_argument("--rounds", type=int, default=3, help="runs of each side per workload")
    parser.add_argument("--workloads", default="write,read",
                        help="comma-separated raftkv bench workloads")
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds before measuring")
    parser.add_argument("--concurrency", type=int, default=256, help="requests in flight")
    parser.add_argument("--connections", type=int, default=8, help="client connections")
    parser.add_argument("--value-size", type=int, default=10, help="bytes per value")
    parser.add_argument("--tolerance", type=float, default=0.05,
                        help="largest B/A loss of ops/s (and gain of latency) allowed")
    parser.add_argument("--json", default=None, metavar="PATH", help="write the results here")
    args = parser.parse_args()
    workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    if args.rounds < 1 or not workloads:
        parser.error("need --rounds >= 1 and at least one workload")

    scratch = tempfile.mkdtemp(prefix="raftkv-kv-ab-")
    made = None
    try:
        a, made = sideA(args, scratch)
        sides = {"A": a, "B": HERE}
        sources = {name: sourceOf(root) for name, root in sides.items()}
        for name, root in sides.items():
            print(f"{name}: {root} (twisted_raft from {sources[name]})")
            if os.path.realpath(sources[name]) != os.path.realpath(root):
                raise RuntimeError(f"side {name} would not run its own code")
        runs = []
        for r in range(args.rounds):
            order = ("A", "B") if r % 2 == 0 else ("B", "A")
            for name in order:
                for w in workloads:
                    out = os.path.join(scratch, f"{name}-{r}-{w}.json")
                    row = {"side": name, "round": r + 1, "workload": w,
                           **benchOnce(sides[name], w, args, out)}
                    runs.append(row)
                    print(f"round {r + 1} {name} {w}: {row['ops_per_sec']:.0f} ops/s,"
                          f" p50 {row['p50_ms']} ms, p99 {row['p99_ms']} ms,"
                          f" {row['errors']} errors")
        summary = summarize(runs, workloads, args.tolerance)
        for w, s in summary.items():
            ra = s["ratio_b_over_a"]
            print(f"{w}: medians A {s['median_a']['ops_per_sec']:.0f},"
                  f" B {s['median_b']['ops_per_sec']:.0f} ops/s; B/A ops/s"
                  f" {ra['ops_per_sec']:.3f}, p50 {ra['p50_ms']:.3f}, p99 {ra['p99_ms']:.3f}")
            pr = s["paired_ratio_b_over_a"]
            print(f"{w}: per round, median B/A ops/s {pr['ops_per_sec']:.3f},"
                  f" p50 {pr['p50_ms']:.3f}, p99 {pr['p99_ms']:.3f};"
                  f" B slower in {s['rounds_b_slower']} of {args.rounds} rounds")
        ok = all(s["ok"] for s in summary.values())
        report = {
            "config": {k: v for k, v in vars(args).items() if k != "json"},
            "cpus": os.cpu_count(), "python": sys.version.split()[0],
            "sides": sides, "sources": sources,
            "command": "raftkv bench -C {} -k {} -s {} -D {:g} --warmup {:g} --workload W".format(
                args.concurrency, args.connections, args.value_size, args.duration, args.warmup),
            "runs": runs, "workloads": summary, "ok": ok,
        }
        if args.json:
            with open(args.json, "w") as f:
                json.dump(report, f, indent=2)
            print(f"results written to {args.json}")
        print("verdict:", "ok" if ok else "FAILED")
        return 0 if ok else 1
    except (RuntimeError, subprocess.CalledProcessError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        if made is not None:
            removeWorktree(made)
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
