"""
Deterministic cluster simulation: many seeded runs of a whole raftkv cluster
on one simulated clock, each checking Raft's invariants at every step and the
clients' history for linearizability at the end.

    python -m twisted_raft.sim --seeds 1000 [--nodes 5] [--faults partition,crash,network]
    python -m twisted_raft.sim --seed 1234 --nodes 5 --trace      # replay one run
    python -m twisted_raft.sim --seeds 1000 --jobs 2 [--json]     # on two cores

A failing run prints its seed, a one-line command that replays it exactly,
and the last messages and events before the failure.

C{--jobs N} splits the seeds into N blocks, each run by a process of its own
(C{python -m twisted_raft.tools.sim --json} over the block): a seed's run is
the same wherever it runs, so the verdicts are those of one process, in a
fraction of the time on N cores.  C{--json} prints the summary as one JSON
object (C{seeds}, C{passed}, C{failed}: the failing seeds, C{ops},
C{membership} and C{kv}: the counts the text summary gives) instead of its
text.

The "membership" faults (on by default) add and promote learners, remove
followers and the leader, and transfer leadership, on a random stream of
their own: C{--faults partition,crash,network} runs a seed exactly as it ran
before membership faults existed (every printed replay command names its
faults).

The "kv" kind (on by default) adds the KV API's workload -- range reads,
transactions, puts with prev_kv, range deletes, checked for multi-key
linearizability -- and watchers checked for completeness at every step
(docs/correctness.rst, "The KV API in the simulation"); it too draws from
streams of its own, so C{--faults partition,crash,network,membership} runs a
seed exactly as it ran before it existed.
"""

import json
import subprocess
import sys
import time
from collections import Counter

from twisted.python import usage

from twisted_raft.testing.invariants import InvariantViolation, RandomRun
from twisted_raft.tools.command import ToolOptions

FAULT_KINDS = ("partition", "crash", "network", "membership", "kv")

# The "network" fault: drops, duplicates, and reordering via random latency.
LOSSY = dict(dropRate=0.05, duplicateRate=0.02, latency=(0.001, 0.02))


class Options(ToolOptions):
    synopsis = "raftkv sim [options]"
    longdesc = (
        "Seeded whole-cluster simulations on one simulated clock, checking Raft's "
        "invariants at every step and the client history for linearizability."
    )
    optParameters = [
        ["seeds", "n", 100, "how many seeds to run (from --first)", int],
        ["first", None, 0, "the first seed", int],
        ["seed", "s", None, "run just this seed (replay)", int],
        ["nodes", None, 3, "cluster size", int],
        ["duration", "d", 3.0, "simulated seconds of faults per run", float],
        ["faults", "f", ",".join(FAULT_KINDS),
         "fault kinds: partition,crash,network,membership,kv (or none)"],
        ["snapshot-entries", None, 20,
         "snapshot every N applied entries (small, so snapshots and installs happen)", int],
        ["jobs", "j", 1, "run the seeds in N processes at once (one per core)", int],
    ]
    optFlags = [
        ["trace", "t", "print every event of the run"],
        ["quiet", "q", "no progress line"],
        ["json", None, "print the summary as one JSON object"],
    ]

    def postOptions(self):
        faults = [f for f in self["faults"].split(",") if f and f != "none"]
        unknown = set(faults) - set(FAULT_KINDS)
        if unknown:
            raise usage.UsageError(f"unknown fault kinds: {', '.join(sorted(unknown))}")
        self["faults"] = faults
        if self["nodes"] < 1:
            raise usage.UsageError("--nodes must be at least 1")
        if self["seeds"] < 1:
            raise usage.UsageError("--seeds must be at least 1")
        if self["jobs"] < 1:
            raise usage.UsageError("--jobs must be at least 1")


def makeRun(seed, nodes, duration, faults, trace=False, snapshotEntries=20, **extra):
    return RandomRun(
        seed,
        nodes,
        duration=duration,
        faults=[f for f in faults if f not in ("network", "membership", "kv")],
        network=LOSSY if "network" in faults else None,
        membership="membership" in faults,
        kv="kv" in faults,
        timers=True,
        stable=1.0,
        trace=trace,
        nodeOptions=dict(
            snapshotEntries=snapshotEntries, snapshotKeep=3, snapshotChunk=256
        ),
        **extra,
    )


def replayCommand(seed, options):
    return (
        f"python -m twisted_raft.sim --seed {seed} --nodes {options['nodes']}"
        f" --duration {options['duration']} --faults {','.join(options['faults']) or 'none'}"
        f" --snapshot-entries {options['snapshot-entries']} --trace"
    )


def runSeeds(options, out=sys.stdout, **extra):
    """
    Run the seeds; return the failing seeds.  C{extra} goes to L{RandomRun}
    (tests pass a broken C{nodeFactory} to see failures reported), and
    keeps the run in this process.
    """
    if options["jobs"] > 1 and options["seed"] is None and options["seeds"] > 1 and not extra:
        totals = _runInProcesses(options, out)
    else:
        totals = _runHere(options, out, **extra)
    if options["json"]:
        out.write(json.dumps(totals) + "\n")
    else:
        _summarize(options, totals, out)
    return totals["failed"]


def _runHere(options, out, **extra):
    seeds = (
        [options["seed"]]
        if options["seed"] is not None
        else range(options["first"], options["first"] + options["seeds"])
    )
    failures = []
    started = time.monotonic()
    ops = 0
    changes = Counter()
    kvStats = Counter()
    for n, seed in enumerate(seeds, start=1):
        run = makeRun(seed, options["nodes"], options["duration"], options["faults"],
                      options["trace"], options["snapshot-entries"], **extra)
        try:
            run.run()
        except InvariantViolation as e:
            failures.append(seed)
            out.write(f"\nFAILED seed {seed}: {e}\n")
            out.write(f"replay: {replayCommand(seed, options)}\n")
            out.write("last events and messages:\n" + run.report() + "\n")
        ops += len(run.history)
        if run.membership is not None:
            changes.update(run.membership.stats)
        if run.kv is not None:
            kvStats.update(run.kv.stats)
            kvStats.update(run.watches.stats)
        if not options["quiet"] and (out.isatty() or n % 100 == 0):
            out.write(
                f"\r{n}/{len(seeds)} seeds, {len(failures)} failed, {ops} client ops,"
                f" {time.monotonic() - started:.1f}s"
            )
            out.flush()
    return {"seeds": len(seeds), "passed": len(seeds) - len(failures), "failed": failures,
            "ops": ops, "membership": dict(changes), "kv": dict(kvStats)}


def _runInProcesses(options, out):
    """
    L{_runHere} over C{--jobs} blocks of the seeds, each in a process of
    its own; their failure reports in seed order, then the totals.
    """
    from twisted_raft.tools.launcher import environment

    first, count = options["first"], options["seeds"]
    jobs = min(options["jobs"], count)
    bounds = [first + count * k // jobs for k in range(jobs + 1)]
    common = ["--nodes", str(options["nodes"]), "--duration", repr(options["duration"]),
              "--faults", ",".join(options["faults"]) or "none",
              "--snapshot-entries", str(options["snapshot-entries"]), "--quiet", "--json"]
    children = [
        subprocess.Popen(
            [sys.executable, "-m", "twisted_raft.tools.sim", "--first", str(start),
             "--seeds", str(end - start), *common],
            stdout=subprocess.PIPE, env=environment(), text=True,
        )
        for start, end in zip(bounds, bounds[1:])
    ]
    totals = {"seeds": 0, "passed": 0, "failed": [], "ops": 0}
    membership, kvStats = Counter(), Counter()
    for child in children:
        text, _ = child.communicate()
        *reports, last = text.rstrip("\n").split("\n") or [""]
        try:
            block = json.loads(last)
        except ValueError:
            raise RuntimeError(
                f"a sim process exited with status {child.returncode} and no summary"
            ) from None
        if reports:
            out.write("\n".join(reports) + "\n")
        for key in ("seeds", "passed", "ops"):
            totals[key] += block[key]
        totals["failed"] += block["failed"]
        membership.update(block["membership"])
        kvStats.update(block["kv"])
    totals["membership"], totals["kv"] = dict(membership), dict(kvStats)
    return totals


def _summarize(options, totals, out):
    changes, kvStats = Counter(totals["membership"]), Counter(totals["kv"])
    out.write(
        f"\n{totals['seeds']} seeds of {options['nodes']} nodes"
        f" (faults: {','.join(options['faults']) or 'none'}): "
        f"{totals['passed']} passed, {len(totals['failed'])} failed\n"
    )
    if "membership" in options["faults"]:
        out.write(
            "membership changes committed: "
            + ", ".join(f"{changes[k]} {k}" for k in ("add", "promote", "remove", "remove-leader"))
            + f"; leadership transfers: {changes['transfer']} done,"
            f" {changes['transfer-failed']} failed; changes given up: {changes['gave-up']}\n"
        )
    if "kv" in options["faults"]:
        out.write(
            f"kv workload: {kvStats['range']} ranges, {kvStats['txn']} transactions"
            f" ({kvStats['txn-refused']} refused before the metadata epoch),"
            f" {kvStats['put-prev-kv']} puts with prev_kv, {kvStats['delete-range']} range"
            f" deletes; watchers: {kvStats['events']} events delivered,"
            f" {kvStats['resumes']} resumes on another node, {kvStats['compacted']} refusals"
            f" as compacted, {kvStats['reread']} re-reads\n"
        )


def main(argv=None):
    options = Options()
    try:
        options.parseOptions(sys.argv[1:] if argv is None else argv)
    except usage.UsageError as e:
        sys.stderr.write(f"{options}\nerror: {e}\n")
        return 2
    return 1 if runSeeds(options) else 0


if __name__ == "__main__":
    sys.exit(main())
