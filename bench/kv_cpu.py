"""
CPU time of the KV store's hot paths, measured in this process (timeit,
process time, best of several repeats: other processes on the machine
slow it less than wall time).

    python bench/kv_cpu.py [--root DIR] [--keys 50000]

Applies C{--keys} puts of distinct 14-byte keys with 100-byte values
(new keys), then the same again (overwrites); reads a range page of 1,000
keys; writes and parses a snapshot of the store; applies, gets and ranges
one 1 MiB value.  Prints JSON, microseconds unless named otherwise.

C{--root} imports C{twisted_raft} from another checkout (e.g. a C{git
archive} of an older commit), to compare two versions on one machine:
run both in turn, several times.
"""

import argparse
import gc
import io
import json
import sys
import time
import timeit


def best(fn, repeat, number):
    """Process time of one call of C{fn}, best of C{repeat}, in microseconds."""
    timer = timeit.Timer(fn, timer=time.process_time)
    return min(timer.repeat(repeat, number)) / number * 1e6


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default=None)
    parser.add_argument("--keys", type=int, default=50_000)
    parser.add_argument("--repeat", type=int, default=9)
    args = parser.parse_args()
    if args.root:
        sys.path.insert(0, args.root)
    else:
        import _checkout  # noqa: F401 (this checkout first on sys.path)
    from twisted_raft import kv

    n = args.keys
    entries = [kv.encodePut(f"bench-{i:08d}", b"x" * 100) for i in range(n)]
    result = {"root": kv.__file__.rsplit("/twisted_raft/", 1)[0], "keys": n}
    gc.disable()  # the collector's pauses are not the code's cost
    new, over = [], []
    for _ in range(args.repeat):
        store = kv.KVStore()
        t = time.process_time()
        for i, e in enumerate(entries):
            store.apply(1_000_000 + i, e)  # beyond the small-int cache
        new.append((time.process_time() - t) / n * 1e6)
        t = time.process_time()
        for i, e in enumerate(entries):
            store.apply(2_000_000 + i, e)
        over.append((time.process_time() - t) / n * 1e6)
    result["apply_put_new_key"] = round(min(new), 2)
    result["apply_put_overwrite"] = round(min(over), 2)
    lo, hi = "bench-00001000", "bench-00002000"
    result["range_page_1000_keys"] = round(best(lambda: store.range(lo, hi), args.repeat, 10), 1)

    writes, parses = [], []
    for _ in range(args.repeat):
        write = store.snapshotWriter()
        out = io.BytesIO()
        t = time.process_time()
        write(out)
        writes.append(time.process_time() - t)
        store.snapshotDone()
        payload = io.BytesIO(out.getvalue())
        t = time.process_time()
        store.parseSnapshot(payload)
        parses.append(time.process_time() - t)
    result["snapshot_write_per_key"] = round(min(writes) / n * 1e6, 3)
    result["snapshot_parse_per_key"] = round(min(parses) / n * 1e6, 3)

    big = kv.encodePut("big", b"b" * (1 << 20))
    index = iter(range(3_000_000, 4_000_000))
    result["apply_put_1mib"] = round(best(lambda: store.apply(next(index), big), args.repeat, 100), 1)
    result["get_1mib"] = round(best(lambda: store.get("big"), args.repeat, 100), 1)
    result["range_1mib"] = round(best(lambda: store.range("big"), args.repeat, 100), 1)
    gc.enable()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
