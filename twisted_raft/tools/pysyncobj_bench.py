"""
The PySyncObj side of C{raftkv bench --compare pysyncobj}.

It measures a 3-node PySyncObj (0.3.17) cluster the way PySyncObj's authors
do in their C{benchmarks/} folder (C{testobj.py}, C{benchmarks.py}): every
node is a separate process that is also the load generator.  Each process
creates C{SyncObj(selfAddr, partners)} with the default C{SyncObjConf}
(journal in memory, no fsync, C{autoTick} thread), waits until it knows a
leader and is ready, then calls a C{@replicated} method asynchronously with a
callback, and counts the callbacks that report C{FAIL_REASON.SUCCESS}.  A
call made on a follower is forwarded to the leader by PySyncObj; the
callback fires once the entry is committed and applied locally.

Two load modes:

  - C{max} (default): as fast as possible, with at most C{window} calls
    outstanding per process (a closed loop, like C{raftkv bench}'s
    concurrency); the result is the committed calls per second.
  - C{rate}: the authors' method: each second, each process submits
    C{rate / nodes} calls in one burst, then sleeps for the rest of the
    second.  The offered rate is sustained if at least 90 % of the calls
    succeed (the authors binary-search the highest such rate).

The replicated method stores the value under a key (C{self._data[key] =
value}); values are random bytes of C{--value-size} (the authors use random
hex strings of that length; both are pickled by PySyncObj).

    python -m twisted_raft.tools.pysyncobj_bench [--value-size 10] [--duration 10]
        [--warmup 2] [--mode max|rate] [--window 1000] [--rate 20000]

(also run by C{raftkv bench --compare pysyncobj}).  Workers
are started as C{python -m twisted_raft.tools.pysyncobj_bench worker ...}.
"""

import functools
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time

from twisted_raft.tools import launcher
from twisted_raft.tools.benchreport import summarize

STARTUP_SECONDS = 6.0
"""Seconds between launching the workers and the common start time: enough
to import PySyncObj, connect and elect a leader."""
READY_GRACE = 10.0
DRAIN_SECONDS = 4.0
"""After the window, how long a worker waits for outstanding callbacks (the
authors wait 4 s too)."""

_active = set()
_activeLock = threading.Lock()


def killAll():
    """SIGKILL every worker process still running (safe from any thread)."""
    with _activeLock:
        procs = list(_active)
    for proc in procs:
        if proc.poll() is None:
            try:
                proc.kill()
            except OSError:
                pass


def workerArgv(selfAddr, partners, config, startAt, python=None):
    """The argv of one worker process."""
    return [
        python or sys.executable, "-m", "twisted_raft.tools.pysyncobj_bench", "worker",
        "--self", selfAddr,
        "--partners", ",".join(partners),
        "--value-size", str(config["value_size"]),
        "--keys", str(config["keys"]),
        "--warmup", repr(float(config["warmup"])),
        "--duration", repr(float(config["duration"])),
        "--mode", config["mode"],
        "--window", str(config["window"]),
        "--rate", str(config["rate_per_node"]),
        "--start-at", repr(float(startAt)),
    ]


def combine(reports, duration):
    """
    Merge the workers' JSON reports into one result (pure).

    @param reports: one dict per worker, with C{ok}, C{errors}, C{sent},
        C{late} and C{latencies_ms} (the latency of every call that
        succeeded in the window).
    """
    latencies = []
    for r in reports:
        latencies.extend(r["latencies_ms"])
    summary = summarize([x / 1000.0 for x in latencies], sum(r["errors"] for r in reports), duration)
    sent = sum(r["sent"] for r in reports)
    summary.update(
        sent=sent,
        success_rate=round(summary["ops"] / sent, 4) if sent else 0.0,
        per_node_ok=[r["ok"] for r in reports],
        late_start=any(r.get("late") for r in reports),
    )
    return summary


def runCluster(valueSize=10, duration=10.0, warmup=2.0, keys=1000, mode="max",
               window=1000, rate=20000, nodes=3, python=None, log=None):
    """
    Run one PySyncObj measurement (blocking): start C{nodes} worker
    processes on free 127.0.0.1 ports, wait for their reports, kill them.

    @return: the L{combine}d result plus the configuration.
    """
    if log is None:
        log = lambda line: print(line, flush=True)  # noqa: E731
    config = {
        "value_size": valueSize, "keys": keys, "warmup": warmup, "duration": duration,
        "mode": mode, "window": window, "rate_per_node": max(1, int(rate / nodes)),
    }
    addresses = launcher.localAddresses(nodes)
    startAt = time.time() + STARTUP_SECONDS
    env = launcher.environment()
    procs = []
    try:
        for i, addr in enumerate(addresses):
            partners = [a for a in addresses if a != addr]
            proc = subprocess.Popen(
                workerArgv(addr, partners, config, startAt, python),
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                env=env, start_new_session=True,
            )
            with _activeLock:
                _active.add(proc)
            procs.append(proc)
        limit = STARTUP_SECONDS + READY_GRACE + warmup + duration + DRAIN_SECONDS + 30
        end = time.time() + limit
        reports = []
        for proc in procs:
            try:
                out, err = proc.communicate(timeout=max(1.0, end - time.time()))
            except subprocess.TimeoutExpired:
                raise RuntimeError(f"PySyncObj worker did not finish within {limit:.0f}s") from None
            lines = [l for l in out.decode("utf-8", "replace").splitlines() if l.startswith("{")]
            if proc.returncode != 0 or not lines:
                tail = err.decode("utf-8", "replace").strip().splitlines()[-5:]
                raise RuntimeError(
                    f"PySyncObj worker exited with status {proc.returncode}: " + " | ".join(tail)
                )
            reports.append(json.loads(lines[-1]))
        for r in reports:
            if r.get("error"):
                raise RuntimeError(f"PySyncObj worker {r.get('self')}: {r['error']}")
        result = combine(reports, duration)
        result.update(config=config, nodes=nodes)
        return result
    finally:
        for proc in procs:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except OSError:
                    pass
                proc.wait()
            with _activeLock:
                _active.discard(proc)


def searchMaxRate(valueSize=10, duration=5.0, warmup=1.0, keys=1000, low=1000, high=40000,
                  tolerance=1000, threshold=0.9, log=None):
    """
    The authors' C{detectMaxRps}: binary-search the highest offered rate
    (C{rate} mode) at which at least C{threshold} of the calls succeed.

    @return: C{(rate, [(offered, result), ...])}.
    """
    if log is None:
        log = lambda line: print(line, flush=True)  # noqa: E731
    steps = []
    while high - low > tolerance:
        mid = (low + high) // 2
        r = runCluster(valueSize, duration, warmup, keys, "rate", rate=mid)
        ok = r["success_rate"] >= threshold and not r["late_start"]
        log(f"  offered {mid}/s: {r['ops_per_sec']:.0f} ops/s, success rate "
            f"{r['success_rate']:.3f} -> {'sustained' if ok else 'not sustained'}")
        steps.append((mid, r))
        if ok:
            low = mid
        else:
            high = mid
    return low, steps


# -- the worker (runs in each node process) ------------------------------------------


def _kvClass():
    from pysyncobj import SyncObj, replicated

    class KVObj(SyncObj):
        """A replicated dict: the method the benchmark calls stores value by key."""

        def __init__(self, selfAddr, partners):
            super().__init__(selfAddr, partners)  # default SyncObjConf
            self._data = {}

        @replicated
        def set(self, key, value):
            self._data[key] = value

    return KVObj


def _parseWorker(argv):
    import argparse

    p = argparse.ArgumentParser(prog="pysyncobj_bench worker")
    p.add_argument("--self", dest="selfAddr", required=True)
    p.add_argument("--partners", required=True)
    p.add_argument("--value-size", type=int, required=True)
    p.add_argument("--keys", type=int, default=1000)
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--mode", choices=("max", "rate"), default="max")
    p.add_argument("--window", type=int, default=1000)
    p.add_argument("--rate", type=int, default=1000, help="calls per second from this process")
    p.add_argument("--start-at", type=float, required=True, help="time.time() of the load start")
    return p.parse_args(argv)


def worker(argv):
    args = _parseWorker(argv)
    from pysyncobj import FAIL_REASON

    obj = _kvClass()(args.selfAddr, args.partners.split(","))
    report = {"self": args.selfAddr, "ok": 0, "errors": 0, "sent": 0, "late": False,
              "latencies_ms": []}
    try:
        giveUp = args.start_at + READY_GRACE
        while not (obj._getLeader() is not None and obj.isReady()):
            if time.time() > giveUp:
                report["error"] = "no leader / not ready in time"
                return report
            time.sleep(0.05)
        if time.time() > args.start_at:
            report["late"] = True
        else:
            time.sleep(args.start_at - time.time())
        rng = random.Random(args.selfAddr)
        values = [rng.randbytes(args.value_size) for _ in range(16)]
        keys = [f"k{i}" for i in range(args.keys)]
        clock = time.monotonic
        t0 = clock()
        winStart = t0 + args.warmup
        winEnd = winStart + args.duration
        ok = [0]
        errors = [0]
        completed = [0]
        latencies = report["latencies_ms"]

        def done(started, res, err):
            # runs on PySyncObj's autoTick thread
            now = clock()
            completed[0] += 1
            if winStart <= now < winEnd:
                if err == FAIL_REASON.SUCCESS:
                    ok[0] += 1
                    latencies.append(round((now - started) * 1000.0, 3))
                else:
                    errors[0] += 1

        sent = 0
        sentInWindow = 0
        if args.mode == "max":
            window = args.window
            while True:
                now = clock()
                if now >= winEnd:
                    break
                if sent - completed[0] < window:
                    obj.set(keys[sent % len(keys)], values[sent & 15],
                            callback=functools.partial(done, now))
                    sent += 1
                    if now >= winStart:
                        sentInWindow += 1
                else:
                    time.sleep(0.0005)
        else:
            # the authors' testobj.py: a burst of `rate` calls each second
            while clock() < winEnd:
                st = clock()
                for _ in range(args.rate):
                    now = clock()
                    obj.set(keys[sent % len(keys)], values[sent & 15],
                            callback=functools.partial(done, now))
                    sent += 1
                    if now >= winStart:
                        sentInWindow += 1
                delta = clock() - st
                if delta < 1.0:
                    time.sleep(min(1.0 - delta, max(0.0, winEnd - clock())))
        drainUntil = clock() + DRAIN_SECONDS
        while completed[0] < sent and clock() < drainUntil:
            time.sleep(0.05)
        report.update(ok=ok[0], errors=errors[0], sent=sentInWindow)
        return report
    finally:
        try:
            obj.destroy()
        except Exception:
            pass


def _workerMain(argv):
    report = worker(argv)
    sys.stdout.write(json.dumps(report) + "\n")
    sys.stdout.flush()
    os._exit(0)  # do not wait for PySyncObj's threads


def main(argv=None):
    """C{python -m twisted_raft.tools.pysyncobj_bench}: one PySyncObj measurement."""
    import argparse

    if argv is None:
        argv = sys.argv[1:]
    if argv and argv[0] == "worker":
        _workerMain(argv[1:])
        return 0
    p = argparse.ArgumentParser(description="Measure a 3-node PySyncObj cluster (see the module docstring).")
    p.add_argument("--value-size", type=int, default=10)
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--keys", type=int, default=1000)
    p.add_argument("--mode", choices=("max", "rate", "search"), default="max",
                   help="search: binary-search the highest sustained rate, like the authors")
    p.add_argument("--window", type=int, default=1000, help="max mode: calls outstanding per process")
    p.add_argument("--rate", type=int, default=20000, help="rate mode: offered calls/s in all")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    try:
        import pysyncobj  # noqa: F401
    except ImportError:
        print("error: PySyncObj is not installed: pip install 'raftkv[bench]' "
              "(or pip install pysyncobj==0.3.17)", file=sys.stderr)
        return 2
    try:
        if args.mode == "search":
            rate, steps = searchMaxRate(args.value_size, args.duration, args.warmup, args.keys)
            result = {"mode": "search", "max_sustained_rate": rate,
                      "steps": [{"offered": o, **r} for o, r in steps]}
            print(f"highest sustained rate: {rate}/s")
        else:
            result = runCluster(args.value_size, args.duration, args.warmup, args.keys,
                                args.mode, args.window, args.rate)
    finally:
        killAll()
    print(json.dumps({k: v for k, v in result.items()}, indent=None))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
