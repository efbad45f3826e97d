"""
Membership change under load (issue 11's acceptance measurements).

    python bench/membership.py steps|rolling|transfer|recover|all
        [--writers 8] [--readers 2] [--warmup 2] [--between 1]
        [--restarts 3] [--no-baseline] [--count 100] [--keys 2000] [--after 200]
        [--election-timeout MS] [--node-arg=--flag=value ...]
        [--data DIR] [--json PATH]

Each scenario starts its own local cluster of real twistd processes on
127.0.0.1 (L{twisted_raft.tools.launcher}) and drives it with the client
library; what each does and measures is in
L{twisted_raft.tools.membershipbench}:

  - steps: add a 4th node, remove the leader, add a 5th, remove one more,
    under a write load: per step its duration and longest write gap;
  - rolling: restart the 3 nodes in turn with SIGTERM under load, then
    (unless --no-baseline) with SIGKILL, the baseline without the
    leadership handover: client-visible errors, the longest write gap;
  - transfer: --count leadership transfers in a row under load: successes,
    time to the new leader (median, p99, max), the longest write gap;
  - recover: write --keys keys, stop all 3, delete 2 data dirs, raftkv
    recover the third, start it, add 2 fresh nodes, write --after more.

Each ends by checking the history for linearizability, reading back every
acknowledged write and comparing every member's data and configuration.
Prints a summary per scenario; --json writes every figure.  Exit status 0
if every target of the issue is met, 1 if not (what was missed is printed),
2 bad usage.  Node data and logs are kept under --data DIR if given, else
in a temporary directory that is removed unless a target was missed.
"""

import argparse
import json
import os
import shutil
import sys
import tempfile

import _checkout  # noqa: F401 (this checkout first on sys.path)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument("scenario", choices=["steps", "rolling", "transfer", "recover", "all"])
    p.add_argument("--writers", type=int, default=8, help="concurrent writers (default 8)")
    p.add_argument("--readers", type=int, default=2,
                   help="concurrent readers of keys being written (default 2)")
    p.add_argument("--timeout", type=float, default=5.0,
                   help="the client library's timeout per operation, retries included")
    p.add_argument("--warmup", type=float, default=2.0,
                   help="seconds of load before the first step")
    p.add_argument("--between", type=float, default=1.0, help="seconds of load between steps")
    p.add_argument("--restarts", type=int, default=3, choices=[1, 2, 3],
                   help="rolling: nodes to restart (default all 3)")
    p.add_argument("--no-baseline", action="store_true",
                   help="rolling: skip the SIGKILL baseline")
    p.add_argument("--count", type=int, default=100, help="transfer: transfers (default 100)")
    p.add_argument("--keys", type=int, default=2000, help="recover: writes before the loss")
    p.add_argument("--after", type=int, default=200, help="recover: writes after the recovery")
    p.add_argument("--election-timeout", default=None,
                   help="the nodes' --election-timeout in ms (default theirs, 300-550)")
    p.add_argument("--node-arg", action="append", default=[],
                   help="an extra flag for every node (repeatable)")
    p.add_argument("--data", default=None, help="keep the nodes' data dirs and logs under DIR")
    p.add_argument("--json", default=None, metavar="PATH", help="write every figure as JSON here")
    a = p.parse_args(argv)

    from twisted.internet import defer, task

    from twisted_raft.tools import membershipbench as mb

    if a.data:
        root = os.path.abspath(a.data)
        os.makedirs(root, exist_ok=True)
    else:
        root = tempfile.mkdtemp(prefix="raftkv-membership-")
    settings = mb.Settings(
        root=root, writers=a.writers, readers=a.readers, timeout=a.timeout, warmup=a.warmup,
        between=a.between, electionTimeout=a.election_timeout, nodeArgs=a.node_arg,
        say=lambda line: print(line, flush=True),
    )
    names = mb.SCENARIOS if a.scenario == "all" else (a.scenario,)
    runs = {
        "steps": lambda reactor: mb.steps(reactor, settings),
        "rolling": lambda reactor: mb.rollingBoth(reactor, settings, not a.no_baseline,
                                                   a.restarts),
        "transfer": lambda reactor: mb.transfer(reactor, settings, a.count),
        "recover": lambda reactor: mb.recover(reactor, settings, a.keys, a.after),
    }
    report = {"settings": {k: v for k, v in vars(a).items() if k != "json"},
              "results": {}, "missed": []}

    def write():
        if a.json:
            with open(a.json, "w") as f:
                json.dump(report, f, indent=2)

    async def go(reactor):
        for name in names:
            print(f"== {name}", flush=True)
            try:
                result = await runs[name](reactor)
            except Exception as e:
                report["missed"].append(f"{name}: did not complete: {type(e).__name__}: {e}")
                print(f"{name} did not complete: {type(e).__name__}: {e}", flush=True)
                write()
                continue
            report["results"][name] = result
            report["missed"] += mb.targets(result)
            print(mb.describe(result), flush=True)
            write()
        if a.json:
            print(f"written to {a.json}")
        if report["missed"]:
            print("TARGETS MISSED:\n  " + "\n  ".join(report["missed"]))
            print(f"node data and logs kept in {root}", flush=True)
            raise SystemExit(1)
        print("targets met", flush=True)
        if not a.data:
            shutil.rmtree(root, ignore_errors=True)

    # react() exits the process when go() is done: with status 1 if a target
    # was missed.
    task.react(lambda reactor: defer.ensureDeferred(go(reactor)))


if __name__ == "__main__":
    sys.exit(main())
