"""
Memory per key of the KV store (its dict, records and ordered index) and
per event of its history, measured with tracemalloc in this process.

    python bench/kv_memory.py [--keys 100000] [--value-size 100]

Applies C{--keys} puts of distinct 14-byte keys (C{bench-00000000}, ...)
with C{--value-size}-byte values to a C{KVStore} with the event history
off, then again with it on, and prints JSON: the bytes traced per key
beyond the keys' and values' own objects, for the store (dict entry, the
record's header, the index's slot), and per event kept while its record is
the key's current one.  Also the same for a plain dict of key -> value, the
store's cost before per-key metadata, for comparison; the store once every
key was written twice (version 2: a longer header); and an event that only
the history keeps alive (its key was written again), beyond its key's and
value's bytes: what C{kvhistory.EVENT_OVERHEAD} stands for.
"""

import argparse
import gc
import json
import tracemalloc

import _checkout  # noqa: F401 (this checkout first on sys.path)

from twisted_raft import kv
from twisted_raft.kvhistory import EventHistory
from twisted_raft import kvstored


def traced(build):
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    kept = build()
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return after - before, kept


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--value-size", type=int, default=100)
    args = parser.parse_args()
    n = args.keys
    value = b"x" * args.value_size
    entries = [kv.encodePut(f"bench-{i:08d}", value) for i in range(n)]
    vstart = 5 + 14

    # the keys' and values' own objects, as the store keeps them (decoded
    # from the entry: a new str and a new bytes per key), less two list slots
    def raw():
        return [e[5:vstart].decode() for e in entries], [e[vstart:] for e in entries]

    def plain():
        d = {}
        for e in entries:
            d[e[5:vstart].decode()] = e[vstart:]
        return d

    def store(historyEvents, rounds=1):
        s = kv.KVStore(historyEvents=historyEvents)
        for r in range(rounds):
            for i, e in enumerate(entries):
                s.apply(1_000_000 + r * n + i, e)  # beyond the small-int cache
        return s

    def lone():
        # as the history holds an overwritten key's event: nothing else
        # keeps its key or record
        h = EventHistory(maxEvents=n + 1)
        for i, e in enumerate(entries):
            key, v = e[5:vstart].decode(), e[vstart:]
            h.append(1_000_000 + i, [(key, kvstored.pack(v, i, 1_000_000 + i, 2))])
        return h

    raw, _ = traced(raw)

    plainBytes, _ = traced(plain)
    storeBytes, _ = traced(lambda: store(0))
    historyBytes, kept = traced(lambda: store(n))
    assert kept.history.events == n
    del kept
    twiceBytes, _ = traced(lambda: store(0, rounds=2))
    loneBytes, _ = traced(lone)
    rawPerKey = (raw - 16 * n) / n
    result = {
        "keys": n,
        "value_size": args.value_size,
        "raw_key_and_value_bytes_per_key": round(rawPerKey, 1),
        "plain_dict_overhead_per_key": round(plainBytes / n - rawPerKey, 1),
        "store_overhead_per_key": round(storeBytes / n - rawPerKey, 1),
        "history_bytes_per_event": round((historyBytes - storeBytes) / n, 1),
        "store_overhead_per_key_written_twice": round(twiceBytes / n - rawPerKey, 1),
        "history_bytes_per_lone_event_beyond_key_and_value": round(
            loneBytes / n - 14 - args.value_size, 1),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
