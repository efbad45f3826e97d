"""
What C{raftkv bench} runs against and with: a local cluster of real node
processes (L{LocalCluster}), client connections to it (L{makeClients}, with
L{RawClient} for bare AMP), and the closed-loop load (L{Load}).  The
C{bench/*.py} scripts use these too.
"""

import os
import random
import shutil
import tempfile
import time

from twisted.internet import defer, task
from twisted.python.failure import Failure

from twisted_raft.tools import launcher
from twisted_raft.tools.benchreport import summarize

SESSION_WINDOW = 1024
"""The server keeps the last 1,024 sequences of a client session: more
writes than that in flight on one client could be refused."""
STARTUP_TIMEOUT = 30.0


# -- the local cluster ------------------------------------------------------------


def cpuSeconds(pid):
    """User + system CPU seconds of a process (Linux /proc), or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


class LocalCluster(launcher.Nodes):
    """
    N real node processes on free 127.0.0.1 ports (fsync on: the default),
    in a new temporary directory (removed by L{stop}) or a new C{run-*}
    directory under C{data} (kept); C{extra} node flags for every node.
    With C{tls}, mutual TLS with a throwaway CA in C{ROOT/tls}
    (L{launcher.LocalTLS}); the clients' credentials are L{clientTLS}.
    """

    def __init__(self, nodes=3, data=None, extra=(), tls=False):
        self.keep = data is not None
        if data is None:
            self.root = tempfile.mkdtemp(prefix="raftkv-bench-")
        else:
            os.makedirs(data, exist_ok=True)
            self.root = tempfile.mkdtemp(prefix="run-", dir=data)
        self.addresses = launcher.localAddresses(nodes)
        localTLS = launcher.LocalTLS(os.path.join(self.root, launcher.TLS_DIR), nodes) if tls else None
        super().__init__(self.addresses, self.root, extra=extra, tls=localTLS)

    def clientTLS(self):
        """The clients' L{twisted_raft.tls.TLSCredentials}, or C{None} without TLS."""
        return None if self.tls is None else self.tls.credentials()

    def cpuSeconds(self):
        return [cpuSeconds(self[i].pid) for i in self.ids]

    def stop(self):
        """SIGTERM, then SIGKILL what is left after 3 s; remove a temporary root."""
        super().stop(grace=3.0)
        if not self.keep:
            shutil.rmtree(self.root, ignore_errors=True)


# -- clients ------------------------------------------------------------------------


class RawClient:
    """
    Bare AMP to one node (the leader): C{put}/C{get} as single commands, no
    retries, no session.  The same interface as the part of L{RaftKVClient}
    the bench uses.
    """

    def __init__(self, proto):
        self.proto = proto

    def put(self, key, value):
        from twisted_raft.rpc.commands import Put

        return self.proto.callRemote(Put, key=key, value=value)

    def get(self, key, stale=False):
        from twisted_raft.rpc.commands import Get

        if stale:
            return self.proto.callRemote(Get, key=key, stale=True)
        return self.proto.callRemote(Get, key=key)

    def close(self):
        if self.proto.transport is not None:
            self.proto.transport.loseConnection()
        return defer.succeed(None)


async def _leaderAddress(reactor, addresses, timeout, tls=None):
    from twisted_raft.client import RaftKVClient

    probe = RaftKVClient(addresses, reactor, timeout=timeout, tls=tls)
    try:
        status = await probe.status()
        if status["role"].lower() == "leader":
            return status["address"]
        for address, s in await probe.clusterStatus():
            if s and s["role"].lower() == "leader":
                return address
        raise RuntimeError("no leader found")
    finally:
        await probe.close()


def rawEndpoint(reactor, address, tls=None):
    """The client endpoint of a raw AMP connection to C{address} (over TLS with C{tls})."""
    from twisted.internet.endpoints import clientFromString

    from twisted_raft.client import endpointString, splitAddress

    endpoint = clientFromString(reactor, endpointString(address, 5.0))
    if tls is not None:
        from twisted_raft.tls import endpointWithTLS

        endpoint = endpointWithTLS(endpoint, tls, splitAddress(address)[0])
    return endpoint


async def makeClients(reactor, addresses, count, timeout, raw, tls=None):
    """
    C{count} clients, each with its own connection, all connected; over
    TLS with C{tls} (L{twisted_raft.tls.TLSCredentials}).
    """
    from twisted.internet.endpoints import connectProtocol

    from twisted_raft.client import ClientAMP, RaftKVClient

    clients = []
    if raw:
        leader = await _leaderAddress(reactor, addresses, timeout, tls)
        for _ in range(count):
            proto = await connectProtocol(rawEndpoint(reactor, leader, tls), ClientAMP())
            clients.append(RawClient(proto))
    else:
        for _ in range(count):
            client = RaftKVClient(addresses, reactor, timeout=timeout, tls=tls)
            clients.append(client)
        # find the leader and connect every client before the clock starts
        await defer.gatherResults([defer.ensureDeferred(c.status()) for c in clients])
        await defer.gatherResults([c.put("bench-ready", b"") for c in clients])
    return clients


async def waitForLeader(reactor, addresses, cluster=None, deadline=STARTUP_TIMEOUT, tls=None):
    """Wait until a write succeeds (so a leader exists and has a quorum)."""
    from twisted_raft.client import RaftKVClient

    end = time.monotonic() + deadline
    client = RaftKVClient(addresses, reactor, timeout=2.0, connectTimeout=1.0, tls=tls)
    try:
        while time.monotonic() < end:
            if cluster is not None and cluster.dead():
                raise RuntimeError("a node died: " + "; ".join(cluster.dead()))
            try:
                await client.put("bench-ready", b"")
                return
            except Exception:
                await task.deferLater(reactor, 0.2, lambda: None)
        raise RuntimeError(f"no leader within {deadline:.0f}s")
    finally:
        await client.close()


# -- the load -----------------------------------------------------------------------


MIN_PROGRESS_WINDOW = 0.5
"""Seconds of the measured window a progress line needs before it shows the
window's rate so far (half the ticks' interval)."""


def keyName(n):
    return f"bench-{n:08d}"


class Load:
    """
    One measured run: C{concurrency} closed-loop workers over C{clients}.

    @ivar latencies: seconds of every operation that completed successfully
        inside the window.
    """

    def __init__(self, reactor, clients, workload, concurrency, valueSize, keys,
                 warmup, duration, readRatio=0.5, seed=1, out=None, clock=time.perf_counter):
        self.reactor = reactor
        self.clients = clients
        self.workload = workload
        self.concurrency = concurrency
        self.keys = keys
        self.warmup = warmup
        self.duration = duration
        self.readRatio = readRatio
        self.rng = random.Random(seed)
        self.out = out
        self.clock = clock
        vr = random.Random(seed + 1)
        self.values = [vr.randbytes(valueSize) for _ in range(16)]
        self.latencies = []
        self.errors = 0
        self.errorSamples = []
        self.completed = 0
        self.windowErrors = 0

    def _op(self, client, n):
        key = keyName(self.rng.randrange(self.keys))
        w = self.workload
        if w == "write" or (w == "mixed" and self.rng.random() >= self.readRatio):
            return client.put(key, self.values[n & 15])
        if w == "stale-read":
            return client.get(key, stale=True)
        return client.get(key)

    def _issue(self, i, n):
        """
        Worker C{i}'s next operations, from operation number C{n}: written
        with callbacks rather than a coroutine, so that the load generator
        spends as little CPU per operation as it can (it shares the machine
        with the nodes).
        """
        try:
            self._issueSome(i, n)
        except Exception:
            # a bug here must end the run, not leave it waiting forever
            if not self._finished.called:
                self._finished.errback()

    def _issueSome(self, i, n):
        client = self.clients[i % len(self.clients)]
        clock = self.clock
        while True:
            t0 = clock()
            if t0 >= self.end:
                self._running -= 1
                if self._running == 0:
                    self._finished.callback(None)
                return
            d = self._op(client, n)
            if not d.called or d.paused:
                d.addCallbacks(self._succeeded, self._failed,
                               callbackArgs=(i, n, t0), errbackArgs=(i, n, t0))
                return
            # answered at once (a test's fake client): no recursion
            outcome = []
            d.addBoth(outcome.append)
            if isinstance(outcome[0], Failure):
                self._failed(outcome[0], i, n, t0)
                return
            self._record(t0)
            n += self.concurrency

    def _record(self, t0):
        t1 = self.clock()
        self.completed += 1
        if self.start <= t1 < self.end:
            self.latencies.append(t1 - t0)

    def _succeeded(self, result, i, n, t0):
        self._record(t0)
        self._issue(i, n + self.concurrency)

    def _failed(self, failure, i, n, t0):
        t1 = self.clock()
        self.errors += 1
        if self.start <= t1 < self.end:
            self.windowErrors += 1
        if len(self.errorSamples) < 5:
            e = failure.value
            self.errorSamples.append(f"{type(e).__name__}: {e}")
        # do not spin on a fast-failing connection
        self.reactor.callLater(0.01, self._issue, i, n)

    def _progress(self):
        now = self.clock()
        done = self.completed
        rate = (done - self._lastDone) / max(now - self._lastTime, 1e-9)
        self._lastDone, self._lastTime = done, now
        phase = "warmup" if now < self.start else "measure"
        elapsed = min(now, self.end) - self.start
        if elapsed < MIN_PROGRESS_WINDOW:
            # The tick after the window opens (warmup is whole seconds, like
            # the ticks) comes a hair after it: a handful of operations over
            # a millisecond or so reads as a rate ten times the real one.
            avg = "-"
        else:
            avg = f"{len(self.latencies) / elapsed:.0f}"
        self.out(
            f"  [{now - self.t0:5.1f}s] {phase:7s} C={self.concurrency}: {rate:8.0f} ops/s now, "
            f"{avg:>8s} ops/s in window so far, {self.errors} errors"
        )

    async def run(self):
        self.t0 = self.clock()
        self.start = self.t0 + self.warmup
        self.end = self.start + self.duration
        self._lastDone, self._lastTime = 0, self.t0
        ticker = None
        if self.out is not None:
            ticker = task.LoopingCall(self._progress)
            ticker.clock = self.reactor
            ticker.start(1.0, now=False)
        self._running = self.concurrency
        self._finished = defer.Deferred()
        try:
            for i in range(self.concurrency):
                self._issue(i, i)
            await self._finished
        finally:
            if ticker is not None and ticker.running:
                ticker.stop()
        return summarize(self.latencies, self.windowErrors, self.duration)


async def prefill(clients, keys, valueSize, concurrency=64):
    """Write every key once (for read workloads)."""
    value = random.Random(0).randbytes(valueSize)
    pending = iter(range(keys))

    async def filler(i):
        client = clients[i % len(clients)]
        for n in pending:
            await client.put(keyName(n), value)

    await defer.gatherResults(
        [defer.ensureDeferred(filler(i)) for i in range(min(concurrency, keys))],
        consumeErrors=True,
    )
