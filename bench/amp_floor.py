"""
The floor: how many AMP requests per second can one client process and one
server process exchange on this machine, with no Raft, no disk and no state?

    python bench/amp_floor.py [--concurrency 256] [--connections 4]
        [--duration 6] [--warmup 1.5] [--value-size 10] [--runs 3]

A server process answers every L{Put} at once with C{revision=1} (the same
L{NodeProtocol} base: raftkv's fast box parser, AMP dispatch); the bench's own
closed loop (L{twisted_raft.tools.load.Load}) drives it with bare AMP C{Put}s
(C{--raw}) or through L{RaftKVClient} (C{--client library}) from this process.
raftkv's own write path can only be slower than this: it does the same AMP
work plus the log, three fsyncs, two AppendEntries round trips and the apply.
"""

import argparse
import os
import statistics
import subprocess
import sys

import _checkout  # noqa: F401 (this checkout first on sys.path)

SERVER = r"""
import sys
from twisted.internet import reactor
from twisted.internet.endpoints import serverFromString
from twisted.internet.protocol import Factory
from twisted.protocols import amp
from twisted_raft.rpc import commands
from twisted_raft.rpc.fastamp import FastBoxParsing
from twisted_raft.service import tuneGarbageCollector

class Echo(FastBoxParsing, amp.AMP):
    @commands.Put.responder
    def put(self, key, value, forwarded=None, client_id=None, sequence=None, prev_kv=None):
        return {"revision": 1}

    @commands.Status.responder
    def status(self):
        return {"node_id": 1, "role": "leader", "term": 1, "leader_id": 1,
                "commit_index": 1, "last_applied": 1, "last_log_index": 1}

tuneGarbageCollector()
serverFromString(reactor, "tcp:%s:interface=127.0.0.1").listen(Factory.forProtocol(Echo))
print("ready", flush=True)
reactor.run()
"""


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument("--concurrency", type=int, default=256)
    p.add_argument("--connections", type=int, default=4)
    p.add_argument("--duration", type=float, default=6)
    p.add_argument("--warmup", type=float, default=1.5)
    p.add_argument("--value-size", type=int, default=10)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--client", choices=["raw", "library"], default="raw")
    a = p.parse_args(argv)

    from twisted.internet import defer, task

    from twisted_raft.service import tuneGarbageCollector
    from twisted_raft.tools import launcher
    from twisted_raft.tools.load import Load, cpuSeconds, makeClients

    port = launcher.freePorts(1)[0]
    server = subprocess.Popen(
        [sys.executable, "-c", SERVER % port],
        stdout=subprocess.PIPE, cwd=launcher.sourceRoot(), env=launcher.environment(),
    )
    try:
        assert server.stdout.readline().strip() == b"ready"
        tuneGarbageCollector()
        rates = []

        async def run(reactor):
            address = f"127.0.0.1:{port}"
            for i in range(a.runs):
                clients = await makeClients(
                    reactor, [address], min(a.connections, a.concurrency), 5.0,
                    a.client == "raw",
                )
                c0, s0 = os.times(), cpuSeconds(server.pid)
                load = Load(reactor, clients, "write", a.concurrency, a.value_size,
                                  1000, a.warmup, a.duration)
                summary = await load.run()
                c1, s1 = os.times(), cpuSeconds(server.pid)
                for c in clients:
                    await c.close()
                span = a.warmup + a.duration
                rates.append(summary["ops_per_sec"])
                print(f"run {i + 1}: {summary['ops_per_sec']:.0f} requests/s, "
                      f"p50 {summary['p50_ms']:.2f} ms; client CPU "
                      f"{100 * ((c1.user + c1.system) - (c0.user + c0.system)) / span:.0f}%, "
                      f"server CPU {100 * (s1 - s0) / span:.0f}%", flush=True)
                await task.deferLater(reactor, 0.5, lambda: None)

        task.react(lambda reactor: defer.ensureDeferred(run(reactor)))
    except SystemExit:
        pass
    finally:
        server.kill()
        server.wait()
    print(f"median of {len(rates)}: {statistics.median(rates):.0f} requests/s "
          f"({a.client} client, C={a.concurrency}, {a.value_size} B values)")


if __name__ == "__main__":
    main()
