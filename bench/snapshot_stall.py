"""
How long does snapshotting a big KVStore stall the reactor?

    /tmp/venv/bin/python bench/snapshot_stall.py [--keys 1000000] [--value 100]
        [--sessions 100000] [--rate 10000] [--runs 1]

Builds a KVStore with C{--keys} keys of C{--value}-byte values and
C{--sessions} client sessions, then measures on the reactor thread:
C{snapshotWriter()}, applies during the open snapshot, C{snapshotDone()}
(the fold); and, with a real reactor, the lateness of a 1 ms LoopingCall
while C{deferToThread(write, tempfile)} serialises the view and a steady
stream of C{--rate} puts/s is applied (baseline: the same without a
snapshot).  Also the serialisation time, the payload size and the parse time.
"""

import argparse
import os
import statistics
import tempfile
import time

import _checkout  # noqa: F401 (this checkout first on sys.path)

from twisted_raft import kv  # noqa: E402


def build(keys, valueSize, sessions):
    store = kv.KVStore()
    value = b"v" * valueSize
    index = 0
    for i in range(keys):
        index += 1
        store.apply(index, kv.encodePut(f"key-{i:010d}", value))
    for i in range(sessions):
        index += 1
        store.apply(index, kv.encodeSession(f"client-{i:08d}", 1, kv.encodePut(f"s{i % 1000}", b"x")))
    return store, index


def percentile(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p / 100 * len(xs)))]


def measureStall(reactor, store, index, rate, snapshot, duration=None):
    """Run the reactor; return (lateness list, serialisation seconds, size, applies)."""
    from twisted.internet import task, threads

    lateness = []
    state = {"last": None, "index": index, "applied": 0}
    perTick = max(1, rate // 1000)
    value = b"w" * 100

    def tick():
        now = time.perf_counter()
        if state["last"] is not None:
            lateness.append(max(0.0, now - state["last"] - 0.001))
        state["last"] = now
        for _ in range(perTick):  # the steady stream of applies
            state["index"] += 1
            i = state["index"]
            store.apply(i, kv.encodePut(f"key-{(i * 7919) % 1_000_000:010d}", value))
            state["applied"] += 1

    loop = task.LoopingCall(tick)
    out = {}

    def run():
        loop.start(0.001)
        if snapshot:
            f = tempfile.NamedTemporaryFile(prefix="kvsnap-", delete=False)
            t0 = time.perf_counter()
            write = store.snapshotWriter()
            out["writer"] = time.perf_counter() - t0

            def timed(fileobj):
                t = time.perf_counter()
                write(fileobj)
                fileobj.flush()
                return time.perf_counter() - t

            d = threads.deferToThread(timed, f)

            def done(seconds):
                out["serialise"] = seconds
                out["size"] = f.tell()
                f.close()
                out["path"] = f.name
                out["overlay"] = store._data.pending()
                t = time.perf_counter()
                store.snapshotDone()
                out["fold"] = time.perf_counter() - t
                reactor.callLater(0.05, stop)

            d.addCallback(done)
            d.addErrback(lambda f: (f.printTraceback(), stop()))
        else:
            reactor.callLater(duration, stop)

    def stop():
        loop.stop()
        reactor.stop()

    reactor.callWhenRunning(run)
    reactor.run()
    return lateness, out, state["applied"]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--keys", type=int, default=1_000_000)
    p.add_argument("--value", type=int, default=100)
    p.add_argument("--sessions", type=int, default=100_000)
    p.add_argument("--rate", type=int, default=10_000, help="puts/s applied on the reactor")
    p.add_argument("--baseline", type=float, default=0, help="instead measure N s with no snapshot")
    p.add_argument("--gc-freeze", action="store_true", help="gc.freeze() after building the store")
    a = p.parse_args()

    t = time.perf_counter()
    store, index = build(a.keys, a.value, a.sessions)
    print(f"built {a.keys} keys x {a.value} B + {a.sessions} sessions in {time.perf_counter() - t:.1f}s")
    if a.gc_freeze:
        import gc

        gc.collect()
        gc.freeze()  # the store's objects are long-lived: keep gen-2 passes off them

    # reactor-thread costs, no reactor running
    cost = []
    for _ in range(5):
        t = time.perf_counter()
        store.snapshotWriter()
        cost.append(time.perf_counter() - t)
        store.snapshotDone()
    print(f"snapshotWriter(): median {statistics.median(cost) * 1e6:.1f} us, max {max(cost) * 1e6:.1f} us")
    value = b"u" * a.value
    for n in (10_000, 100_000):
        cmds = [kv.encodePut(f"key-{(i * 7919) % a.keys:010d}", value) for i in range(n)]
        t = time.perf_counter()
        for i, c in enumerate(cmds):
            store.apply(index + 1 + i, c)
        plain = time.perf_counter() - t
        store.snapshotWriter()  # opens a view: later writes go to the overlay
        t = time.perf_counter()
        for i, c in enumerate(cmds):
            store.apply(index + 1 + i, c)
        during = time.perf_counter() - t
        t = time.perf_counter()
        store.snapshotDone()
        fold = time.perf_counter() - t
        print(
            f"{n} puts: {plain / n * 1e6:.2f} us/put normally, {during / n * 1e6:.2f} us/put during"
            f" a snapshot; snapshotDone() folding {n} keys at once: {fold * 1e3:.1f} ms"
        )

    from twisted.internet import reactor

    if a.baseline:
        lat, _, _ = measureStall(reactor, store, index, a.rate, False, a.baseline)
        print(f"baseline lateness (no snapshot, {len(lat)} ticks): max {max(lat) * 1e3:.2f} ms,"
              f" p99 {percentile(lat, 99) * 1e3:.2f} ms, p50 {percentile(lat, 50) * 1e3:.3f} ms")
        return
    lat, out, applied = measureStall(reactor, store, index, a.rate, True)
    print(
        f"snapshot: writer {out['writer'] * 1e6:.1f} us, serialise {out['serialise']:.2f} s,"
        f" size {out['size'] / 1e6:.1f} MB, {applied} puts applied meanwhile"
        f" ({out['overlay']} keys in the overlay), fold {out['fold'] * 1e3:.1f} ms"
    )
    print(f"lateness of a 1 ms LoopingCall during the snapshot ({len(lat)} ticks):"
          f" max {max(lat) * 1e3:.2f} ms, p99 {percentile(lat, 99) * 1e3:.2f} ms,"
          f" p50 {percentile(lat, 50) * 1e3:.3f} ms")
    t = time.perf_counter()
    with open(out["path"], "rb") as f:
        parsed = store.parseSnapshot(f)
    print(f"parse: {time.perf_counter() - t:.2f} s ({len(parsed.data)} keys, {len(parsed.sessions)} sessions)")
    os.unlink(out["path"])


if __name__ == "__main__":
    main()
