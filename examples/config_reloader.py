"""
A configuration reloader on asyncio: it keeps a dict equal to the keys
under a prefix, reloading as they change.

    python examples/config_reloader.py [--cluster 127.0.0.1:8001,...] [--prefix config/]

It reads every key under the prefix (C{rangeAll}), then watches the prefix
from the revision after that read: no change is missed or seen twice, and
the watch moves to another node by itself when its node fails.  Each time
the configuration changes it prints it as one JSON line (values as text).
Try it: C{raftkv put config/color blue} in another terminal.
"""

import argparse
import asyncio
import json

from twisted_raft.client import AsyncioClient

LOCAL_CLUSTER = "127.0.0.1:8001,127.0.0.1:8002,127.0.0.1:8003"


async def follow(client, prefix, reload):
    """
    Call C{reload(config)} with the prefix's keys and values (a dict of
    str to bytes) now, and again after each change; runs until cancelled.
    """
    snapshot = await client.rangeAll(prefix, prefix=True)
    config = {kv.key: kv.value for kv in snapshot.kvs}
    reload(dict(config))
    async with client.watch(prefix, prefix=True, startRevision=snapshot.revision + 1) as events:
        async for event in events:
            # a transaction's changes arrive one after another, in one go
            if event.type == "put":
                config[event.key] = event.value
            else:
                config.pop(event.key, None)
            reload(dict(config))


def printConfig(config):
    text = {key: value.decode("utf-8", "replace") for key, value in sorted(config.items())}
    print(json.dumps(text), flush=True)


async def run(args):
    async with AsyncioClient(args.cluster.split(","), timeout=10.0) as client:
        await follow(client, args.prefix, printConfig)


def main(argv=None):
    parser = argparse.ArgumentParser(description="Follow the keys under a prefix.")
    parser.add_argument("--cluster", default=LOCAL_CLUSTER, help="host:port of each node")
    parser.add_argument("--prefix", default="config/")
    args = parser.parse_args(argv)
    try:
        asyncio.run(run(args))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
