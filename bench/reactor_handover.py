"""
What the blocking client pays to hand one call to its reactor thread and
wait for the answer, without a cluster: calls/s and process CPU per call.

    python bench/reactor_handover.py [--calls 3000] [--threads 1,64]
        [--root DIR] [--rounds 3]

Each of C{--threads} threads makes C{--calls} calls of
L{twisted_raft.reactorthread.ReactorThread.call} in a loop, two kinds:

  - C{sync}: the function returns at once (the hand-over alone);
  - C{deferred}: it returns a Deferred fired by the reactor's next turn
    (as a request's answer comes in a later turn).

C{--root} imports C{twisted_raft} from another checkout (a build before a
change: the A of an A/B).  Each figure is the median of C{--rounds} runs,
each in a process of its own.  The blocking client's own throughput
against a cluster is C{bench/client_throughput.py}'s.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time


def child(root, kind, threads, calls):
    sys.path.insert(0, root)
    from twisted.internet.defer import Deferred

    from twisted_raft.reactorthread import ReactorThread

    rt = ReactorThread().start()

    def answer():
        if kind == "sync":
            return 1
        d = Deferred()
        rt.reactor.callLater(0, d.callback, 1)
        return d

    def worker():
        for _ in range(calls):
            rt.call(answer)

    workers = [threading.Thread(target=worker) for _ in range(threads)]
    cpu, wall = time.process_time(), time.monotonic()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    cpu, wall = time.process_time() - cpu, time.monotonic() - wall
    rt.stop()
    total = calls * threads
    print(json.dumps({"calls_per_sec": total / wall, "cpu_us_per_call": cpu / total * 1e6}))


def main(argv=None):
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--calls", type=int, default=3000, help="calls per thread")
    parser.add_argument("--threads", default="1,64", help="thread counts, comma-separated")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--root", default=os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))), help="the checkout whose twisted_raft runs")
    parser.add_argument("--child", nargs=3, metavar=("KIND", "THREADS", "CALLS"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        kind, threads, calls = args.child
        return child(os.path.abspath(args.root), kind, int(threads), int(calls))
    for threads in [int(t) for t in args.threads.split(",")]:
        for kind in ("sync", "deferred"):
            runs = [json.loads(subprocess.run(
                [sys.executable, os.path.abspath(__file__), "--root", args.root,
                 "--child", kind, str(threads), str(args.calls)],
                check=True, capture_output=True, text=True).stdout)
                for _ in range(args.rounds)]
            print(f"{kind:8} x{threads:<3}"
                  f" {statistics.median(r['calls_per_sec'] for r in runs):8,.0f} calls/s"
                  f" {statistics.median(r['cpu_us_per_call'] for r in runs):6.1f} us CPU/call",
                  flush=True)


if __name__ == "__main__":
    sys.exit(main())
