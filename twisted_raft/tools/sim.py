"""
Deterministic cluster simulation: many seeded runs of a whole raftkv cluster
on one simulated clock, each checking Raft's invariants at every step and the
clients' history for linearizability at the end.

    python -m twisted_raft.sim --seeds 1000 [--nodes 5] [--faults partition,crash,network]
    python -m twisted_raft.sim --seed 1234 --nodes 5 --trace      # replay one run

A failing run prints its seed, a one-line command that replays it exactly,
and the last messages and events before the failure.

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
    ]
    optFlags = [
        ["trace", "t", "print every event of the run"],
        ["quiet", "q", "no progress line"],
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
    (tests pass a broken C{nodeFactory} to see failures reported).
    """
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
    out.write(
        f"\n{len(seeds)} seeds of {options['nodes']} nodes"
        f" (faults: {','.join(options['faults']) or 'none'}): "
        f"{len(seeds) - len(failures)} passed, {len(failures)} failed\n"
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
    return failures


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
