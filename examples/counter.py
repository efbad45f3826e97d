"""
A distributed counter with compare-and-set, from plain blocking code.

    python examples/counter.py [--cluster 127.0.0.1:8001,127.0.0.1:8002,127.0.0.1:8003]
        [--key counter] [--threads 8] [--increments 100]

Each increment reads the counter and writes the next value only if the
counter still holds what was read (C{compareAndSet}); if another thread or
process got there first, it reads again.  Every thread shares one
L{BlockingClient}.  The client's exactly-once session makes a
compare-and-set that is retried after a lost connection or a leader change
count once, so the final value is exactly C{threads * increments} more
than the start, whatever fails meanwhile.
"""

import argparse
import threading

from twisted_raft.client import BlockingClient

LOCAL_CLUSTER = "127.0.0.1:8001,127.0.0.1:8002,127.0.0.1:8003"


def increment(client, key):
    """Add one to the counter at C{key} (missing: 0); return the new value."""
    while True:
        current = client.get(key)  # bytes, or None if the key does not exist
        value = int(current or b"0") + 1
        succeeded, _revision = client.compareAndSet(key, current, b"%d" % value)
        if succeeded:
            return value


def main(argv=None):
    parser = argparse.ArgumentParser(description="Count from many threads with compare-and-set.")
    parser.add_argument("--cluster", default=LOCAL_CLUSTER, help="host:port of each node")
    parser.add_argument("--key", default="counter")
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--increments", type=int, default=100, help="per thread")
    args = parser.parse_args(argv)
    with BlockingClient(args.cluster.split(","), timeout=10.0) as client:
        start = int(client.get(args.key) or b"0")
        errors = []

        def work():
            try:
                for _ in range(args.increments):
                    increment(client, args.key)
            except Exception as e:  # shown below; the other threads go on
                errors.append(e)

        threads = [threading.Thread(target=work) for _ in range(args.threads)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        final = int(client.get(args.key))
    print(f"{args.key}: {start} -> {final} ({final - start} increments)")
    for e in errors:
        print(f"error: {e!r}")
    return 1 if errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
