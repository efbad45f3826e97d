"""
A node under a flood of large writes (issue 10's acceptance run).

    python bench/flood.py [--duration 60] [--connections 200] [--depth 2]
        [--value-size 1048576] [--node-arg=--max-pending-bytes=32MiB ...]
        [--out docs/flood-results.json]

Starts a local 3-node cluster (real node processes, default flags unless
C{--node-arg}), floods the leader from C{--connections} connections, each
keeping C{--depth} Puts of C{--value-size} bytes in flight, while one
well-behaved client writes small values one at a time; samples every node's
C{VmRSS}; then checks that every acknowledged write can be read back.  The
targets: the leader's RSS under 1 GiB, the normal client's write p99 under
1 s, nothing lost.  The run itself is L{twisted_raft.tools.flood.floodRun},
the same as C{tests/process/test_flood.py}'s shorter one.
"""

import argparse
import json
import sys

import _checkout  # noqa: F401 (this checkout first on sys.path)

GiB = 1024**3


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument("--duration", type=float, default=60.0)
    p.add_argument("--connections", type=int, default=200)
    p.add_argument("--depth", type=int, default=2)
    p.add_argument("--value-size", type=int, default=1024 * 1024)
    p.add_argument("--node-arg", action="append", default=[],
                   help="an extra flag for every node (repeatable)")
    p.add_argument("--data", default=None, help="keep the nodes' data dirs under DIR")
    p.add_argument("--out", default=None, help="write the figures as JSON here")
    a = p.parse_args(argv)

    from twisted.internet import defer, task

    from twisted_raft.tools.flood import describe, floodRun

    def run(reactor):
        async def go():
            figures = await floodRun(
                reactor, a.duration, a.connections, a.value_size, a.depth,
                nodeArgs=a.node_arg, data=a.data, out=lambda line: print(line, flush=True),
            )
            print(describe(figures))
            if a.out:
                with open(a.out, "w") as f:
                    json.dump(figures, f, indent=2)
            ok = (figures["leader_rss_max"] < GiB and not figures["lost"]
                  and figures["normal"]["p99"] is not None and figures["normal"]["p99"] < 1.0)
            print("targets met" if ok else "TARGETS MISSED", flush=True)
            if not ok:
                raise SystemExit(1)

        return defer.ensureDeferred(go())

    # react() exits the process when run() is done: with status 1 if the
    # targets were missed.
    task.react(run)


if __name__ == "__main__":
    sys.exit(main())
