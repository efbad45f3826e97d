"""
Instructions per write, counted by valgrind's callgrind: the build before
issue 13 (A) against this checkout (B), free of the machine's noise.

    python bench/kv_instructions.py [--a-ref fec4e44 | --a-dir DIR]
        [--workloads apply-put,apply-session,request-put]
        [--json docs/results/instructions-issue13.json]

Wall and process time on a shared two-core machine swing by 5-30 % between
runs (see C{bench/kv_ab.py}); an instruction count does not, so a change
of a few per cent in what a write costs shows.  Each workload runs in one
process, in memory, with that side's code first on C{sys.path}:

  - C{apply-put}: C{KVStore.apply} of 10-byte puts to 1,000 keys (what a
    follower does per entry, without a session);
  - C{apply-session}: the same wrapped in a client session, as the client
    library sends them (what every node does per write);
  - C{request-put}: the client library's C{put} to a node's
    C{NodeServerFactory} over in-memory AMP (L{twisted.test.iosim}), the
    node the side's own test stub that applies each entry at once (the
    side's C{tests.support.StubNode}): client, wire, server and apply, 128
    in flight, but no Raft and no disk (and L{iosim}'s own cost, the same
    on both sides, in every figure).

Each is counted at two sizes, each with and without its measured loop (the
set-up, imports and the encoding of the workload cancel out):
instructions per operation = the difference / the extra operations.
Prints and writes one figure per side and workload and B/A.  Needs
C{valgrind} on C{PATH}; about 20 s per count, 4 counts per side and
workload.
"""

import gc
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

WORKLOADS = ("apply-put", "apply-session", "request-put")
SIZES = {"apply-put": (5_000, 25_000), "apply-session": (5_000, 25_000),
         "request-put": (1_280, 6_400)}
"""Operations at the two sizes counted, per workload."""


# -- the workloads, run in the child (the side's code first on sys.path) ---------


def applyWorkload(n, session, measure):
    from twisted_raft import kv

    puts = [kv.encodePut(f"bench-{i % 1000:04d}", b"x" * 10) for i in range(n)]
    if session:
        puts = [kv.encodeSession("c" * 32, i + 1, p) for i, p in enumerate(puts)]
    store = kv.KVStore()
    if hasattr(kv, "encodeMetadataEpoch"):  # B: as on a cluster past its epoch
        store.apply(999_999, kv.encodeMetadataEpoch())
    if measure:
        for i, entry in enumerate(puts):
            store.apply(1_000_000 + i, entry)


def requestWorkload(n, measure):
    from twisted.internet.defer import succeed
    from twisted.internet.task import Clock
    from twisted.test import iosim

    from twisted_raft.client import RaftKVClient
    from twisted_raft.connections import ClientAMP
    from twisted_raft.rpc.server import NodeServerFactory

    from tests.support import StubNode, authority

    clock = Clock()
    node = StubNode()
    factory = NodeServerFactory(node, node.store, None, authority(1), clock)
    pumps = []

    def connect(address):
        server, client = factory.buildProtocol(None), ClientAMP()
        pumps.append(iosim.connect(server, iosim.makeFakeServer(server), client,
                                   iosim.makeFakeClient(client), greet=False))
        return succeed(client)

    def flush():
        moved = True
        while moved:
            moved = False
            for pump in pumps:
                moved = pump.pump(advanceClock=False) or moved

    client = RaftKVClient(["127.0.0.1:1"], reactor=clock, connect=connect)
    answers = []
    client.put("warm", b"x").addBoth(answers.append)  # connects
    flush()
    batch = 128
    for i in range(n // batch if measure else 0):
        for j in range(batch):
            client.put(f"bench-{(i * batch + j) % 1000:04d}", b"x" * 10).addBoth(answers.append)
        flush()
    if not all(isinstance(a, int) for a in answers):
        raise SystemExit(f"a put failed: {next(a for a in answers if not isinstance(a, int))}")


def child(root, workload, n, measure):
    sys.path.insert(0, root)
    import twisted_raft

    if not os.path.realpath(twisted_raft.__file__).startswith(os.path.realpath(root) + os.sep):
        raise SystemExit(f"{root} would not run its own code: {twisted_raft.__file__}")
    gc.disable()  # the collector's pauses are not the code's cost
    if workload == "request-put":
        requestWorkload(n, measure)
    else:
        applyWorkload(n, workload == "apply-session", measure)


# -- the counting ----------------------------------------------------------------


def count(root, workload, n, measure):
    """Instructions callgrind counted for one run of the child."""
    import kv_ab

    argv = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
            sys.executable, os.path.abspath(__file__), "--child", root, workload, str(n)]
    if not measure:
        argv.append("--skip")
    # one hash seed for every count: dict and set layouts move the request
    # path's count by up to 1.6 % from seed to seed
    env = dict(kv_ab.sideEnvironment(root), PYTHONHASHSEED="0")
    done = subprocess.run(argv, cwd=root, env=env, capture_output=True, text=True)
    found = re.search(r"Collected : (\d+)", done.stderr)
    if done.returncode != 0 or found is None:
        raise RuntimeError(f"{workload} on {root} failed: {done.stderr.strip()[-2000:]}")
    return int(found.group(1))


def perOperation(root, workload):
    small, large = SIZES[workload]
    measured = count(root, workload, large, True) - count(root, workload, small, True)
    setUp = count(root, workload, large, False) - count(root, workload, small, False)
    return round((measured - setUp) / (large - small))


def main():
    if sys.argv[1:2] == ["--child"]:
        # nothing of this checkout imported yet: the side's code comes first
        root, workload, n = sys.argv[2], sys.argv[3], int(sys.argv[4])
        return child(root, workload, n, "--skip" not in sys.argv)
    import _checkout  # noqa: F401 (this checkout first on sys.path)
    import kv_ab
    parser = kv_ab.sideParser(__doc__)
    parser.add_argument("--workloads", default=",".join(WORKLOADS),
                        help="comma-separated, of " + ", ".join(WORKLOADS))
    parser.add_argument("--json", default=None, metavar="PATH", help="write the results here")
    args = parser.parse_args()
    workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    unknown = sorted(set(workloads) - set(WORKLOADS))
    if unknown or not workloads:
        parser.error(f"unknown or no workloads: {', '.join(unknown)}")
    if shutil.which("valgrind") is None:
        parser.error("valgrind is not on PATH (Debian: apt-get install valgrind)")
    scratch = tempfile.mkdtemp(prefix="raftkv-kv-instructions-")
    made = None
    try:
        a, made = kv_ab.sideA(args, scratch)
        sides = {"A": a, "B": kv_ab.HERE}
        results = {}
        for w in workloads:
            per = {name: perOperation(root, w) for name, root in sides.items()}
            results[w] = {**per, "ratio_b_over_a": round(per["B"] / per["A"], 4)}
            print(f"{w}: A {per['A']:,}, B {per['B']:,} instructions per operation;"
                  f" B/A {results[w]['ratio_b_over_a']:.3f}")
        if args.json:
            commits = {name: subprocess.run(["git", "-C", root, "rev-parse", "--short", "HEAD"],
                                            capture_output=True, text=True).stdout.strip()
                       for name, root in sides.items()}
            report = {"sides": sides, "commits": commits, "python": sys.version.split()[0],
                      "sizes": {w: SIZES[w] for w in workloads}, "results": results}
            with open(args.json, "w") as f:
                json.dump(report, f, indent=2)
            print(f"results written to {args.json}")
        return 0
    except (RuntimeError, subprocess.CalledProcessError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        if made is not None:
            kv_ab.removeWorktree(made)
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
