"""
What the issue-13 scripts (C{kv_range.py}, C{watch_failover.py}) share:
a local cluster on free ports in a temporary directory, loading keys fast
with transactions, writers at a target rate that record every acknowledged
write, and a node's resident size read from C{/proc}.  Nodes are started
only through L{twisted_raft.tools.launcher}.
"""

import os
import shutil
import tempfile
import threading
import time

from twisted.internet import defer, task

from twisted_raft.client import RaftKVClient
from twisted_raft.kvtxn import Put as PutOp
from twisted_raft.kvlimits import MAX_TXN_OPS
from twisted_raft.tools import launcher, load


def sleep(reactor, seconds):
    return task.deferLater(reactor, seconds, lambda: None)


class Cluster(launcher.Nodes):
    """
    C{n} node processes on free 127.0.0.1 ports in a new temporary
    directory, with C{extra} node flags; L{remove} deletes the directory
    (after L{stop}: the data dirs stay readable until then).
    """

    def __init__(self, n, prefix, extra=()):
        self.root = tempfile.mkdtemp(prefix=prefix)
        super().__init__(launcher.localAddresses(n), self.root, extra=extra)

    def remove(self):
        shutil.rmtree(self.root, ignore_errors=True)


async def waitForLeader(reactor, cluster):
    """Until a write succeeds (a leader with a quorum): L{load.waitForLeader}."""
    await load.waitForLeader(reactor, cluster.peers, cluster)


async def statusOfLeader(client, reactor, deadline=30.0):
    """The leader's Status answer, once there is one."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        try:
            for _, status in await client.clusterStatus():
                if status and status["role"].lower() == "leader":
                    return status
        except Exception:
            pass
        await sleep(reactor, 0.05)
    raise RuntimeError("no leader")


async def loadKeys(reactor, addresses, keys, value, concurrency=16, batch=MAX_TXN_OPS,
                   connections=4, progress=None, record=True):
    """
    Write every key of C{keys} (a list of str) with C{value(key)} (bytes),
    C{batch} puts to a transaction (one log entry), C{concurrency}
    transactions in flight over C{connections} clients: far faster than
    one put per entry.  A transaction is refused until the cluster's
    metadata epoch is applied; the client retries that (timeout 60 s).

    @return: C{[(revision, key, value), ...]}, every write acknowledged
        (empty unless C{record}).
    """
    clients = [RaftKVClient(addresses, reactor, timeout=60.0) for _ in range(connections)]
    batches = iter(range(0, len(keys), batch))
    acked = []
    loaded = [0]
    started = time.monotonic()

    async def loader(i):
        client = clients[i % len(clients)]
        for start in batches:
            ops = [PutOp(k, value(k)) for k in keys[start:start + batch]]
            response = await client.txn(success=ops)
            if record:
                acked.extend((response.revision, op.key, op.value) for op in ops)
            loaded[0] += len(ops)
            if progress and loaded[0] // 100_000 != (loaded[0] - len(ops)) // 100_000:
                progress(f"  {loaded[0]:,} keys loaded, {time.monotonic() - started:.0f} s")

    try:
        await defer.gatherResults(
            [defer.ensureDeferred(loader(i)) for i in range(concurrency)], consumeErrors=True
        )
    finally:
        for c in clients:
            await c.close()
    return acked


class RateWriters:
    """
    Puts at C{rate} a second (open loop: issued on a 5 ms tick as far as
    they are due), at most C{inFlight} outstanding, spread over
    C{clients}; C{nextWrite()} gives each one's C{(key, value)}, values
    unique.  Every acknowledged write is in C{acked} as C{(revision, key,
    value, monotonic ack time)}; a put that failed (outcome unknown: it may
    still have been applied) is in C{failed} as C{(key, value)}.  A write
    not issued because C{inFlight} were outstanding counts in C{skipped}:
    the target rate was not met.
    """

    TICK = 0.005

    def __init__(self, reactor, clients, rate, inFlight, nextWrite):
        self.reactor = reactor
        self.clients = clients
        self.rate = rate
        self.inFlight = inFlight
        self.nextWrite = nextWrite
        self.acked = []
        self.failed = []
        self.errorSamples = []
        self.issued = 0
        self.skipped = 0
        self.outstanding = 0
        self._drained = None
        self._loop = None

    def start(self):
        self.started = time.monotonic()
        self._loop = task.LoopingCall(self._tick)
        self._loop.clock = self.reactor
        self._loop.start(self.TICK, now=True)

    def _tick(self):
        due = int(self.rate * (time.monotonic() - self.started)) - self.issued - self.skipped
        room = self.inFlight - self.outstanding
        if due > room:
            self.skipped += due - max(room, 0)
            due = max(room, 0)
        for _ in range(due):
            key, value = self.nextWrite()
            client = self.clients[self.issued % len(self.clients)]
            self.issued += 1
            self.outstanding += 1
            client.put(key, value).addCallbacks(
                self._acked, self._failed, callbackArgs=(key, value), errbackArgs=(key, value)
            )

    def _acked(self, revision, key, value):
        self.acked.append((revision, key, value, time.monotonic()))
        self._done()

    def _failed(self, failure, key, value):
        self.failed.append((key, value))
        if len(self.errorSamples) < 5:
            self.errorSamples.append(f"{type(failure.value).__name__}: {failure.value}")
        self._done()

    def _done(self):
        self.outstanding -= 1
        if self.outstanding == 0 and self._drained is not None:
            d, self._drained = self._drained, None
            d.callback(None)

    def stop(self):
        """Stop issuing; @return: a Deferred firing once every put is answered."""
        self.stopped = time.monotonic()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        if self.outstanding == 0:
            return defer.succeed(None)
        self._drained = defer.Deferred()
        return self._drained

    def summary(self):
        seconds = self.stopped - self.started
        return {
            "target_per_sec": self.rate, "issued": self.issued, "acked": len(self.acked),
            "failed": len(self.failed), "skipped_at_in_flight_cap": self.skipped,
            "seconds": round(seconds, 2),
            "acked_per_sec": round(len(self.acked) / seconds, 1) if seconds > 0 else 0.0,
            "error_samples": self.errorSamples,
        }


def txnBatch(keyBytes, valueBytes):
    """
    Puts per loading transaction: at most L{MAX_TXN_OPS}, and about 48 KiB
    of keys and values, so that an entry stays small (no chunking).
    """
    return max(1, min(MAX_TXN_OPS, 48 * 1024 // (keyBytes + valueBytes + 16)))


def rss(pid):
    """The resident set size (C{VmRSS}) of C{pid} in bytes."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def peakRSS(pid):
    """The peak resident size (C{VmHWM}) of C{pid} in bytes."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmHWM for {pid}")


def resetPeakRSS(pid):
    """
    Reset C{pid}'s C{VmHWM} to its current RSS (Linux 4.0+: C{5} to
    C{/proc/PID/clear_refs}), so that it then records the peak of what
    follows, between any two samples too.  @return: whether it worked.
    """
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


async def waitSteady(reactor, pid, atLeast, within=1024 * 1024, timeout=120.0):
    """
    Wait C{atLeast} seconds, then until C{pid}'s RSS has moved less than
    C{within} bytes over 2 s (a snapshot or collection in progress ends),
    or C{timeout} seconds have passed.  @return: the seconds waited.
    """
    started = time.monotonic()
    await sleep(reactor, atLeast)
    recent = []
    while time.monotonic() - started < timeout:
        recent = (recent + [rss(pid)])[-5:]
        if len(recent) == 5 and max(recent) - min(recent) < within:
            break
        await sleep(reactor, 0.5)
    return time.monotonic() - started


class RSSSampler:
    """C{VmRSS} of C{pid} every C{interval} seconds on a thread of its own,
    so that a busy reactor does not delay the samples."""

    def __init__(self, pid, interval):
        self.pid = pid
        self.interval = interval
        self.samples = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            try:
                self.samples.append(rss(self.pid))
            except (OSError, RuntimeError):
                return
            self._stop.wait(self.interval)

    def start(self):
        self._thread.start()
        return self

    def stop(self):
        self._stop.set()
        self._thread.join()
        return self.samples


def percentile(values, p):
    ordered = sorted(values)
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def writeJSON(path, report):
    import json

    if path:
        with open(path, "w") as f:
            json.dump(report, f, indent=2)
        print(f"results written to {path}")


def machine():
    import sys

    return {"cpus": os.cpu_count(), "python": sys.version.split()[0]}
