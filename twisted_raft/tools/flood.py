"""
A flood of large writes against a raftkv node, and the run that measures
how the cluster holds up under it (issue 10: the leader's memory stays
bounded, a well-behaved client is still served, nothing is lost).

Two parts, shared by C{tests/process/test_flood.py} (a short run) and
C{bench/flood.py} (the full 60 s run whose figures are quoted):

  - L{Flood}, the load generator: C{connections} AMP connections to one
    node, each keeping C{depth} C{Put}s of C{valueSize} bytes in flight
    and sending the next as soon as one is answered, whatever the answer
    (an C{"overloaded"} refusal included), reconnecting at once when the
    node closes a connection.  Connection C{i} writes the key
    C{flood-<i>}, each value starting with its 8-byte sequence number.  It
    runs in a process of its own (C{python -m twisted_raft.tools.flood}),
    so that its work does not delay the measured client, and writes what
    was acknowledged as JSON.
  - L{floodRun}: start a local 3-node cluster, run the generator against
    the leader, meanwhile write small values one at a time with
    L{RaftKVClient} (the well-behaved client) and sample every node's
    resident memory (C{VmRSS}); then check that every acknowledged write
    is there: each small value as written, each flood key at least at its
    highest acknowledged sequence number (a connection's writes are
    proposed in order).
"""

import argparse
import json
import os
import subprocess
import sys
import time

from twisted.internet import defer, task

from twisted_raft.tools import launcher

MiB = 1024 * 1024
SEQUENCE_BYTES = 8


# -- the generator ----------------------------------------------------------------


def floodKey(i):
    return f"flood-{i:04d}"


def sequenceOf(value):
    """The sequence number a flood value starts with."""
    return int.from_bytes(value[:SEQUENCE_BYTES], "big")


class _FloodConnection:
    """One greedy connection: C{depth} writes in flight, always."""

    def __init__(self, flood, index):
        self.flood = flood
        self.key = floodKey(index)
        self.proto = None
        self.sequence = 0
        self.acked = 0  # highest acknowledged sequence number
        self.inflight = 0

    def connect(self):
        flood = self.flood
        if flood.stopping:
            return
        d = flood.connect()
        d.addCallbacks(self._connected, self._notConnected)

    def _connected(self, proto):
        self.proto = proto
        self.flood.connected += 1
        proto.whenLost().addCallback(self._lost, proto)
        for _ in range(self.flood.depth):
            self._send()

    def _notConnected(self, failure):
        self.flood.connectFailures += 1
        self.flood.reactor.callLater(0.05, self.connect)

    def _lost(self, _, proto):
        if self.proto is proto and not self.flood.closing:
            self.proto = None
            self.flood.disconnects += 1
            self.flood.reactor.callLater(0.05, self.connect)

    def _send(self):
        from twisted_raft.rpc.commands import Put

        flood, proto = self.flood, self.proto
        if flood.stopping or proto is None or proto.lost:
            return
        self.sequence += 1
        seq = self.sequence
        value = seq.to_bytes(SEQUENCE_BYTES, "big") + flood.body
        self.inflight += 1
        flood.sent += 1
        d = proto.callRemote(Put, key=self.key, value=value)
        d.addCallbacks(self._acked, self._failed, callbackArgs=(seq, proto),
                       errbackArgs=(proto,))

    def _acked(self, result, seq, proto):
        self.inflight -= 1
        self.flood.acked += 1
        self.acked = max(self.acked, seq)
        if proto is self.proto:
            self._send()

    def _failed(self, failure, proto):
        from twisted_raft.rpc.commands import Overloaded, Unavailable

        self.inflight -= 1
        flood = self.flood
        if flood.closing:
            return  # closed by L{Flood.stop}: counted as unanswered
        if failure.check(Overloaded):
            flood.overloaded += 1
        elif failure.check(Unavailable):
            flood.unavailable += 1
        else:
            flood.errors += 1
            if len(flood.errorSamples) < 5:
                flood.errorSamples.append(f"{type(failure.value).__name__}: {failure.value}")
        if proto is self.proto:
            self._send()


class Flood:
    """
    C{connections} connections to C{address}, flooding it with C{Put}s of
    C{valueSize} bytes (see the module docstring).
    """

    def __init__(self, reactor, address, connections=200, valueSize=MiB, depth=2):
        from twisted_raft.connections import ClientAMP, endpointString

        from twisted.internet.endpoints import clientFromString, connectProtocol

        self.reactor = reactor
        self.depth = depth
        self.body = os.urandom(max(valueSize - SEQUENCE_BYTES, 0))
        self.stopping = False
        self.closing = False
        self.unanswered = 0
        self.errorSamples = []
        self.sent = self.acked = self.overloaded = self.unavailable = self.errors = 0
        self.connected = self.connectFailures = self.disconnects = 0
        endpoint = clientFromString(reactor, endpointString(address, 5.0))
        self.connect = lambda: connectProtocol(endpoint, ClientAMP())
        self.connections = [_FloodConnection(self, i) for i in range(connections)]

    def start(self):
        for c in self.connections:
            c.connect()

    async def stop(self, drain=5.0):
        """Send no more; wait up to C{drain} seconds for the answers in flight."""
        self.stopping = True
        end = self.reactor.seconds() + drain
        while self.reactor.seconds() < end and any(c.inflight for c in self.connections):
            await task.deferLater(self.reactor, 0.1, lambda: None)
        self.closing = True
        self.unanswered = sum(c.inflight for c in self.connections)
        for c in self.connections:
            if c.proto is not None and c.proto.transport is not None:
                c.proto.transport.loseConnection()

    def report(self):
        return {
            "connections": len(self.connections),
            "value_size": len(self.body) + SEQUENCE_BYTES,
            "depth": self.depth,
            "sent": self.sent,
            "acked": self.acked,
            "overloaded": self.overloaded,
            "unavailable": self.unavailable,
            "errors": self.errors,
            "unanswered": self.unanswered,
            "error_samples": self.errorSamples,
            "connects": self.connected,
            "connect_failures": self.connectFailures,
            "disconnects": self.disconnects,
            "acked_by_key": {c.key: c.acked for c in self.connections if c.acked},
        }


def generate(argv=None):
    """C{python -m twisted_raft.tools.flood}: run a L{Flood}, write its report."""
    p = argparse.ArgumentParser(description="Flood one raftkv node with large Puts.")
    p.add_argument("--address", required=True, help="host:port of the node")
    p.add_argument("--connections", type=int, default=200)
    p.add_argument("--value-size", type=int, default=MiB)
    p.add_argument("--depth", type=int, default=2, help="Puts in flight per connection")
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--out", required=True, help="write the JSON report here")
    a = p.parse_args(argv)

    from twisted_raft.service import tuneGarbageCollector

    tuneGarbageCollector()

    async def run(reactor):
        flood = Flood(reactor, a.address, a.connections, a.value_size, a.depth)
        flood.start()
        await task.deferLater(reactor, a.duration, lambda: None)
        await flood.stop()
        with open(a.out + ".tmp", "w") as f:
            json.dump(flood.report(), f)
        os.replace(a.out + ".tmp", a.out)

    task.react(lambda reactor: defer.ensureDeferred(run(reactor)))


# -- the measured run ----------------------------------------------------------------


def residentBytes(pid):
    """A process's resident set size (C{VmRSS}) in bytes, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _percentile(values, p):
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100.0 * len(ordered)))]


async def _normalClient(reactor, addresses, until):
    """Small writes, one at a time, until C{until} (a reactor time)."""
    from twisted_raft.client import RaftKVClient

    client = RaftKVClient(addresses, reactor, timeout=10.0)
    latencies, written, errors = [], {}, []
    n = 0
    try:
        while reactor.seconds() < until:
            key, value = f"normal-{n:06d}", b"v%d" % n
            t0 = time.perf_counter()
            try:
                await client.put(key, value)
            except Exception as e:
                errors.append(f"{type(e).__name__}: {e}")
            else:
                latencies.append(time.perf_counter() - t0)
                written[key] = value
            n += 1
    finally:
        await client.close()
    return latencies, written, errors


async def _check(reactor, addresses, written, ackedByKey):
    """What is missing: acknowledged writes that cannot be read back."""
    from twisted_raft.client import RaftKVClient

    client = RaftKVClient(addresses, reactor, timeout=10.0)
    lost = []
    try:
        for key, value in written.items():
            got = await client.get(key)
            if got != value:
                lost.append(f"{key}: wrote {value!r}, read {got!r}")
        for key, seq in ackedByKey.items():
            got = await client.get(key)
            if got is None or sequenceOf(got) < seq:
                lost.append(
                    f"{key}: write {seq} acknowledged, read"
                    f" {'nothing' if got is None else sequenceOf(got)}"
                )
    finally:
        await client.close()
    return lost


async def floodRun(reactor, duration=60.0, connections=200, valueSize=MiB, depth=2,
                   nodeArgs=(), data=None, sampleEvery=0.2, out=None):
    """
    The whole measured run (see the module docstring).

    @param nodeArgs: extra node flags (e.g. C{["--max-pending-bytes", "32MiB"]}).
    @param data: keep the cluster's data under this directory (default: a
        temporary one, removed).
    @param out: C{out(line)} for progress lines, or None.
    @return: a dict of the figures: C{rss_max} (bytes, per node id, and
        C{leader_rss_max}), the normal client's C{normal} latencies
        (C{count}, C{p50}, C{p99}, C{max} in seconds, C{errors}), the
        generator's C{flood} report, and C{lost} (descriptions of any
        acknowledged write that could not be read back).
    """
    from twisted_raft.client import RaftKVClient
    from twisted_raft.tools.load import LocalCluster, waitForLeader

    say = out or (lambda line: None)
    cluster = LocalCluster(3, data, extra=nodeArgs)
    sampler = None
    proc = None
    try:
        cluster.start()
        addresses = cluster.addresses
        await waitForLeader(reactor, addresses, cluster)
        probe = RaftKVClient(addresses, reactor, timeout=5.0)
        try:
            status = await probe.status()
        finally:
            await probe.close()
        leaderId, leaderAddress = status["node_id"], status["address"]
        say(f"leader is node {leaderId} at {leaderAddress}")

        rssMax = {i: 0 for i in cluster.ids}

        def sample():
            for i in cluster.ids:
                rss = residentBytes(cluster[i].pid)
                if rss is not None:
                    rssMax[i] = max(rssMax[i], rss)

        sampler = task.LoopingCall(sample)
        sampler.clock = reactor
        sampler.start(sampleEvery)

        report = os.path.join(cluster.root, "flood.json")
        argv = [sys.executable, "-m", "twisted_raft.tools.flood", "--address", leaderAddress,
                "--connections", str(connections), "--value-size", str(valueSize),
                "--depth", str(depth), "--duration", str(duration), "--out", report]
        with open(os.path.join(cluster.root, "flood.log"), "ab") as log:
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, env=launcher.environment())
        say(f"flood: {connections} connections x {depth} Puts of {valueSize} bytes"
            f" for {duration:g}s")
        # give the flood a second to build up before the measured client starts
        await task.deferLater(reactor, 1.0, lambda: None)
        latencies, written, errors = await _normalClient(
            reactor, addresses, reactor.seconds() + duration - 1.0
        )
        while proc.poll() is None:
            await task.deferLater(reactor, 0.2, lambda: None)
        sampler.stop()
        sampler = None
        if proc.returncode != 0 or not os.path.exists(report):
            raise RuntimeError(f"the flood generator exited with status {proc.returncode}")
        with open(report) as f:
            flood = json.load(f)
        if cluster.dead():
            raise RuntimeError("a node died: " + "; ".join(cluster.dead()))
        say("checking every acknowledged write")
        lost = await _check(reactor, addresses, written, flood["acked_by_key"])
        return {
            "duration": duration,
            "leader": leaderId,
            "rss_max": {str(i): rssMax[i] for i in cluster.ids},
            "leader_rss_max": rssMax[leaderId],
            "normal": {
                "count": len(latencies),
                "p50": _percentile(latencies, 50),
                "p99": _percentile(latencies, 99),
                "max": max(latencies) if latencies else None,
                "errors": len(errors),
                "error_samples": errors[:5],
            },
            "flood": {k: v for k, v in flood.items() if k != "acked_by_key"},
            "lost": lost,
        }
    finally:
        if sampler is not None and sampler.running:
            sampler.stop()
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        cluster.stop()


def describe(figures):
    """The run's figures as a few lines of text."""
    MiBf = float(MiB)
    n, f = figures["normal"], figures["flood"]
    rss = ", ".join(f"n{i} {v / MiBf:.0f} MiB" for i, v in figures["rss_max"].items())

    def ms(s):
        return "-" if s is None else f"{s * 1000:.0f} ms"

    return "\n".join([
        f"flood of {figures['duration']:g}s: {f['connections']} connections x {f['depth']}"
        f" Puts of {f['value_size'] / MiBf:g} MiB",
        f"  leader (n{figures['leader']}) peak RSS {figures['leader_rss_max'] / MiBf:.0f} MiB;"
        f" all nodes: {rss}",
        f"  flood writes: {f['sent']} sent, {f['acked']} acknowledged"
        f" ({f['acked'] * f['value_size'] / MiBf / figures['duration']:.0f} MiB/s),"
        f" {f['overloaded']} refused as overloaded, {f['unavailable']} other UNAVAILABLE,"
        f" {f['errors']} other errors, {f['unanswered']} unanswered at the end;"
        f" {f['disconnects']} connections closed by the node",
        f"  normal client: {n['count']} writes, p50 {ms(n['p50'])}, p99 {ms(n['p99'])},"
        f" max {ms(n['max'])}, {n['errors']} errors",
        f"  acknowledged writes missing afterwards: {len(figures['lost'])}",
    ])


if __name__ == "__main__":
    generate()
