"""
What the membership bench (L{twisted_raft.tools.membershipbench}) runs
and checks with: local twistd nodes that come and go, a write load whose
every operation is recorded, its write gaps, and the checks made once the
load has stopped.

  - L{Cluster}: nodes 1..C{bootstrap} start a cluster (their C{--peers}),
    the others up to C{size} are started with C{--join} when a scenario
    adds them; each node's address is fixed from the start, so one client
    address list covers every node a scenario will ever run.  Nodes are
    started and stopped (SIGTERM or SIGKILL) without blocking the reactor,
    so the load goes on meanwhile.
  - L{WriteLoad}: C{writers} closed-loop clients, each putting a fresh key
    at a time, and C{readers} reading keys whose writes have just started;
    every operation is kept as a L{Op} for the linearizability checker,
    every acknowledgement's time for L{longestGap}.
  - L{verify}: after the load, the figures every scenario ends with:
    linearizability of the whole history (the final read-back included),
    every acknowledged write read back from the final cluster, and every
    member converged (same configuration, same data, read from each node
    alone).
"""

import bisect
import os
import random
import time
from collections import deque

from twisted.internet import defer, task

from twisted_raft.testing import linearizability
from twisted_raft.testing.linearizability import Op
from twisted_raft.tools import launcher

STOP_GRACE = 10.0
"""Seconds a SIGTERM'd node has to exit before it is SIGKILLed (a leader
first hands leadership over, within one election timeout and a margin)."""
START_TIMEOUT = 30.0
"""Seconds a started node has to answer C{Status}."""
POLL = 0.02
"""Seconds between two looks at the cluster while waiting for something:
short, since what is waited for is also what is timed."""
CHECK_TIME_LIMIT = 120.0
"""Seconds the linearizability check may take before it is inconclusive."""
READ_CONCURRENCY = 32
"""Reads in flight while reading every written key back."""


def sleep(reactor, seconds):
    return task.deferLater(reactor, seconds, lambda: None)


def describeError(e):
    return f"{type(e).__name__}: {e}"[:300]


# -- write gaps -----------------------------------------------------------------


def longestGap(acks, start, end):
    """
    The longest time between two consecutive acknowledged writes that
    overlaps the window C{[start, end]}: the gap that straddles its start
    and the one that straddles its end count in full.

    @param acks: ascending times of every acknowledged write.
    @return: C{(seconds, at)}: the gap and when it began (C{start} if no
        write was acknowledged before the window); C{(end - start, start)}
        if none was acknowledged in or after it.
    """
    i = bisect.bisect_right(acks, start)
    previous = acks[i - 1] if i > 0 else start
    best, at = 0.0, previous
    while i < len(acks):
        t = acks[i]
        if t - previous > best:
            best, at = t - previous, previous
        if t >= end:
            return best, at
        previous = t
        i += 1
    # nothing acknowledged after the window (yet): the gap runs to its end
    if end - previous > best:
        best, at = end - previous, previous
    return best, at


def gapFigures(acks, start, end):
    """L{longestGap} as JSON-ready figures, C{at_s} relative to C{start}."""
    gap, at = longestGap(acks, start, end)
    return {"longest_gap_ms": round(gap * 1000.0, 1), "gap_at_s": round(at - start, 3)}


# -- the nodes ------------------------------------------------------------------------


class NodeFailed(Exception):
    """A node did not start, died, or the cluster did not get where it should."""


class Cluster:
    """
    The local twistd nodes of one scenario under C{root}: data in
    C{root/n<i>}, logs in C{root/n<i>.log}, a random cluster token in
    C{root/cluster-token} (L{launcher.localTokenFile}).

    @param electionTimeout: the nodes' C{--election-timeout} (a string of
        milliseconds), or C{None} for their default.
    @param extra: more flags for every node.
    """

    def __init__(self, reactor, root, bootstrap=3, size=3, electionTimeout=None, extra=()):
        self.reactor = reactor
        self.root = os.path.abspath(root)
        os.makedirs(self.root, exist_ok=True)
        self.ids = list(range(1, size + 1))
        self.addresses = dict(zip(self.ids, launcher.localAddresses(size)))
        self.bootstrapIds = self.ids[:bootstrap]
        self.electionTimeout = electionTimeout
        self.extra = list(extra)
        self.tokenFile = launcher.localTokenFile(self.root, size)
        self.env = launcher.environment()
        self.nodes = {}

    def addressList(self, ids=None):
        return [self.addresses[i] for i in (self.ids if ids is None else sorted(ids))]

    def dataPath(self, nodeId):
        return launcher.dataPath(self.root, nodeId)

    def logPath(self, nodeId):
        return os.path.join(self.root, f"n{nodeId}.log")

    def argv(self, nodeId):
        """A bootstrap node's command line, or a joining node's (C{--join},
        its own address only: the configuration tells it the others')."""
        if nodeId in self.bootstrapIds:
            peers = {i: self.addresses[i] for i in self.bootstrapIds}
        else:
            peers = {nodeId: self.addresses[nodeId]}
        return launcher.nodeArgv(
            nodeId, peers, self.root, self.electionTimeout, self.extra, runner=launcher.TWISTD,
            tokenFile=self.tokenFile, join=nodeId not in self.bootstrapIds,
        )

    def start(self, nodeId):
        """Start (or restart, on its data dir) node C{nodeId}."""
        node = self.nodes.get(nodeId)
        if node is None:
            node = self.nodes[nodeId] = launcher.SpawnedNode(
                self.reactor, nodeId, self.argv(nodeId), self.logPath(nodeId), self.root,
                self.env,
            )
        return node.start()

    def stop(self, nodeId, signal="TERM", grace=STOP_GRACE):
        """
        SIGTERM (then SIGKILL after C{grace} seconds) or, with C{signal}
        C{"KILL"}, SIGKILL node C{nodeId}.  @return: Deferred firing once it
        has exited.
        """
        node = self.nodes[nodeId]
        if signal == "KILL":
            return node.kill()
        return node.terminate(grace)

    def stopAll(self, signal="TERM"):
        return defer.DeferredList(
            [self.stop(i, signal) for i in self.running()], consumeErrors=True,
        )

    def running(self):
        return [i for i, n in sorted(self.nodes.items()) if n.running]

    def dead(self):
        """Descriptions of exits nobody asked for."""
        return [f"n{i} {why}" for i, n in sorted(self.nodes.items())
                for _, why in n.unexpectedExits]

    def logSize(self, nodeId):
        try:
            return os.path.getsize(self.logPath(nodeId))
        except OSError:
            return 0

    def logSince(self, nodeId, offset):
        """What node C{nodeId} logged after byte C{offset}."""
        try:
            with open(self.logPath(nodeId), "rb") as f:
                f.seek(offset)
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def logTail(self, nodeId, lines=15):
        text = self.logSince(nodeId, max(0, self.logSize(nodeId) - 20000))
        return "\n".join(text.splitlines()[-lines:])

    def client(self, timeout=30.0, ids=None):
        """A L{RaftKVClient} of nodes C{ids} (default: every node)."""
        from twisted_raft.client import RaftKVClient

        return RaftKVClient(self.addressList(ids), self.reactor, timeout=timeout,
                            connectTimeout=1.0)

    # -- waiting for the cluster --------------------------------------------

    def _checkAlive(self):
        if self.dead():
            raise NodeFailed("a node died: " + "; ".join(self.dead()))

    async def leaderOf(self, client, among=None, deadline=20.0):
        """
        The id of the node that says it leads (the highest term if several
        do), among the nodes C{among} if given; waits up to C{deadline}
        seconds for one.
        """
        end = time.monotonic() + deadline
        while True:
            self._checkAlive()
            rows = await client.clusterStatus()
            best = None
            for _, s in rows:
                if (s and s["role"] == "leader" and (among is None or s["node_id"] in among)
                        and (best is None or s["term"] > best["term"])):
                    best = s
            if best is not None:
                return best["node_id"]
            if time.monotonic() > end:
                raise NodeFailed(f"no leader among {sorted(among or self.ids)} in {deadline:g}s")
            await sleep(self.reactor, POLL)

    async def waitAnswering(self, nodeId, client):
        """Wait until node C{nodeId} (started) answers C{Status}."""
        end = time.monotonic() + START_TIMEOUT
        while True:
            if not self.nodes[nodeId].running:
                raise NodeFailed(f"n{nodeId} exited at start:\n{self.logTail(nodeId)}")
            try:
                return await client.status(self.addresses[nodeId])
            except Exception:
                if time.monotonic() > end:
                    raise NodeFailed(f"n{nodeId} did not answer in {START_TIMEOUT:g}s:\n"
                                     f"{self.logTail(nodeId)}")
            await sleep(self.reactor, POLL)

    async def waitNotLeading(self, nodeId, client, deadline=10.0):
        """Wait until node C{nodeId} no longer says it leads (or is gone)."""
        end = time.monotonic() + deadline
        while self.nodes[nodeId].running:
            try:
                if (await client.status(self.addresses[nodeId]))["role"] != "leader":
                    return
            except Exception:
                pass
            if time.monotonic() > end:
                raise NodeFailed(f"n{nodeId} still leads after {deadline:g}s")
            await sleep(self.reactor, POLL)

    async def waitCaughtUp(self, nodeId, client, deadline=60.0):
        """
        Wait until node C{nodeId} has applied what the leader had committed
        when the wait began.
        """
        target = (await client.status())["commit_index"]
        end = time.monotonic() + deadline
        while True:
            self._checkAlive()
            try:
                s = await client.status(self.addresses[nodeId])
                if s["last_applied"] >= target:
                    return s
            except Exception:
                pass
            if time.monotonic() > end:
                raise NodeFailed(f"n{nodeId} did not reach index {target} in {deadline:g}s")
            await sleep(self.reactor, POLL)

    async def settle(self, members, client, deadline=30.0):
        """
        Wait until every node of C{members} answers with the same
        configuration revision and the same applied index, equal to its
        commit index.  @return: their statuses by id.
        @raise NodeFailed: not within C{deadline} seconds.
        """
        end = time.monotonic() + deadline
        rows = {}
        while True:
            self._checkAlive()
            rows = {}
            for i in sorted(members):
                try:
                    rows[i] = await client.status(self.addresses[i])
                except Exception:
                    pass
            if len(rows) == len(members):
                applied = {s["last_applied"] for s in rows.values()}
                commits = {s["commit_index"] for s in rows.values()}
                configs = {s["config_revision"] for s in rows.values()}
                if len(applied) == 1 and applied == commits and len(configs) == 1:
                    return rows
            if time.monotonic() > end:
                raise NodeFailed(f"nodes {sorted(members)} did not settle in {deadline:g}s: "
                                 + "; ".join(f"n{i} {s}" for i, s in rows.items()))
            await sleep(self.reactor, 0.1)


# -- the load -----------------------------------------------------------------


class WriteLoad:
    """
    C{writers} closed-loop clients, each writing one fresh key at a time
    (key C{<prefix><w>-<n>}, its value the key), and C{readers} reading
    (linearizably) keys among the last 64 whose writes began, all through
    the client library (sessions on: a write is retried until C{timeout}).
    With C{total}, the writers stop after that many writes.

    @ivar ops: every operation, as L{Op}s: a failed write has an unknown
        outcome (C{end=None}); a failed read is left out (it says nothing).
    @ivar acks: ascending times (C{time.monotonic()}) of every acknowledged
        write.
    @ivar written: C{{key: value}} of every write begun.
    @ivar acked: C{{key: value}} of every write acknowledged.
    @ivar errors: C{(time, description)} of every write the client gave up.
    @ivar readErrors: the same for reads.
    """

    def __init__(self, reactor, addresses, writers=8, readers=2, timeout=5.0, prefix="k",
                 total=None, seed=0):
        self.reactor = reactor
        self.addresses = list(addresses)
        self.writers = writers
        self.readers = readers
        self.timeout = timeout
        self.prefix = prefix
        self.total = total
        self.seed = seed
        self.ops = []
        self.acks = []
        self.written = {}
        self.acked = {}
        self.errors = []
        self.readErrors = []
        self.reads = 0
        self.started = self.stopped = None
        self._recent = deque(maxlen=64)
        self._stopping = False
        self._loops = []
        self._clients = []

    def start(self):
        from twisted_raft.client import RaftKVClient

        self.started = time.monotonic()
        for n in range(self.writers + self.readers):
            client = RaftKVClient(self.addresses, self.reactor, timeout=self.timeout,
                                  connectTimeout=1.0)
            self._clients.append(client)
            loop = self._writer(n, client) if n < self.writers else self._reader(n, client)
            self._loops.append(defer.ensureDeferred(loop))
        return self

    def running(self):
        return self.started is not None and self.stopped is None

    async def finished(self):
        """Wait until the writers are done (only ends with C{total})."""
        await defer.DeferredList(self._loops[:self.writers], consumeErrors=True)

    async def stop(self):
        """Stop issuing, wait for the operations in flight, close the clients."""
        if self.stopped is not None:
            return
        self._stopping = True
        await defer.DeferredList(self._loops, consumeErrors=True)
        self.stopped = time.monotonic()
        for client in self._clients:
            await client.close()

    async def _writer(self, w, client):
        n = 0
        while not self._stopping and (self.total is None or len(self.written) < self.total):
            n += 1
            key = f"{self.prefix}{w}-{n}"
            value = key.encode()
            self.written[key] = value
            self._recent.append(key)
            op = Op(client=w, kind="put", key=key, value=value, start=time.monotonic())
            try:
                await client.put(key, value)
            except Exception as e:
                # the client gave up: the write may or may not have happened
                self.ops.append(op)
                self.errors.append((time.monotonic(), describeError(e)))
                await sleep(self.reactor, 0.05)
                continue
            op.end = time.monotonic()
            self.ops.append(op)
            self.acks.append(op.end)
            self.acked[key] = value

    async def _reader(self, r, client):
        rng = random.Random(f"membership-reader-{self.seed}-{r}")
        while not self._stopping and not (self.total is not None
                                          and len(self.written) >= self.total):
            if not self._recent:
                await sleep(self.reactor, 0.01)
                continue
            key = rng.choice(self._recent)
            op = Op(client=r, kind="get", key=key, start=time.monotonic())
            try:
                op.result = await client.get(key)
            except Exception as e:
                self.readErrors.append((time.monotonic(), describeError(e)))
                await sleep(self.reactor, 0.05)
                continue
            op.end = time.monotonic()
            self.ops.append(op)
            self.reads += 1

    def figures(self):
        """The load's counts, JSON-ready."""
        seconds = (self.stopped or time.monotonic()) - self.started
        return {
            "writers": self.writers,
            "readers": self.readers,
            "seconds": round(seconds, 2),
            "writes": len(self.written),
            "acknowledged": len(self.acked),
            "writes_per_sec": round(len(self.acked) / seconds, 1) if seconds > 0 else 0.0,
            "reads": self.reads,
            "write_errors": len(self.errors),
            "read_errors": len(self.readErrors),
            "error_samples": [e for _, e in (self.errors + self.readErrors)[:5]],
        }


# -- the checks -----------------------------------------------------------------


async def _each(items, concurrency, work):
    """Run C{work(item)} for every item, C{concurrency} at a time."""
    items = iter(items)

    async def worker():
        for item in items:
            await work(item)

    await defer.gatherResults(
        [defer.ensureDeferred(worker()) for _ in range(concurrency)], consumeErrors=True,
    )


async def readBack(client, keys):
    """
    A linearizable read of every key, each recorded as an L{Op} of client
    -1.  @return: C{(ops, values)}; a key that could not be read is left
    out of C{values}.
    """
    ops, values = [], {}

    async def read(key):
        for _ in range(3):
            op = Op(client=-1, kind="get", key=key, start=time.monotonic())
            try:
                op.result = await client.get(key)
            except Exception:
                continue
            op.end = time.monotonic()
            ops.append(op)
            values[key] = op.result
            return

    await _each(sorted(keys), READ_CONCURRENCY, read)
    return ops, values


async def staleRead(client, keys):
    """C{{key: value}} as one node has them (C{client} talks to it alone); a
    key it did not answer for is left out."""
    values = {}

    async def read(key):
        for _ in range(3):
            try:
                values[key] = await client.get(key, stale=True)
                return
            except Exception:
                pass

    await _each(sorted(keys), READ_CONCURRENCY, read)
    return values


def checkHistory(ops):
    """
    @return: C{(verdict, message, seconds)}: C{True} linearizable,
        C{False} not, C{None} inconclusive (the check timed out).
    """
    t0 = time.monotonic()
    result = linearizability.check(list(ops), timeLimit=CHECK_TIME_LIMIT)
    took = time.monotonic() - t0
    if result.ok:
        return True, "linearizable", took
    return (None if result.timedOut else False), linearizability.describe(result), took


async def verify(cluster, members, loads, say=lambda line: None):
    """
    The checks every scenario ends with, once its loads have stopped.

    @param members: the ids the cluster should have as members now, every
        one running.
    @param loads: the L{WriteLoad}s whose histories to check.
    @return: a dict: C{members} (as the cluster lists them, and its
        C{config_revision}), C{ops}, C{linearizable} (True, False, or None
        if inconclusive) and C{linearizability} (the checker's message),
        C{acknowledged}, C{lost} (how many acknowledged writes read back
        otherwise) and C{lost_samples}, C{converged} and C{divergence}
        (what differs between the members, if anything).
    """
    written, acked, ops = {}, {}, []
    for load in loads:
        written.update(load.written)
        acked.update(load.acked)
        ops.extend(load.ops)
    admin = cluster.client(timeout=10.0, ids=members)
    divergence = []
    try:
        say(f"waiting for n{', n'.join(map(str, sorted(members)))} to settle")
        rows = await cluster.settle(members, admin)
        listed = await admin.members()
        listedIds = sorted(m.id for m in listed.members)
        if listedIds != sorted(members):
            divergence.append(f"the cluster lists members {listedIds}, expected {sorted(members)}")
        for i, s in rows.items():
            m = listed.member(i)
            if s["config_revision"] != listed.revision:
                divergence.append(f"n{i} uses configuration {s['config_revision']}, "
                                  f"the leader's is {listed.revision}")
            if m is not None and s["voter"] != m.voter:
                divergence.append(f"n{i} says voter={s['voter']}, the configuration {m.voter}")
        say(f"reading back {len(written)} keys")
        finalOps, final = await readBack(admin, written)
        ops.extend(finalOps)
        lost = [f"{k}: acknowledged, read {final[k]!r}" if k in final else f"{k}: unreadable"
                for k, v in sorted(acked.items()) if final.get(k) != v]
        for i in sorted(members):
            one = cluster.client(timeout=10.0, ids=[i])
            try:
                values = await staleRead(one, written)
            finally:
                await one.close()
            unread = [k for k in sorted(written) if k not in values]
            differ = [k for k in sorted(written)
                      if k in final and k in values and values[k] != final[k]]
            if unread:
                divergence.append(f"n{i} did not answer for {len(unread)} keys")
            if differ:
                divergence.append(f"n{i} differs on {len(differ)} keys, e.g. {differ[0]!r}: "
                                  f"{values[differ[0]]!r} vs {final[differ[0]]!r}")
    finally:
        await admin.close()
    say(f"checking linearizability of {len(ops)} operations")
    verdict, message, took = checkHistory(ops)
    return {
        "members": listedIds,
        "config_revision": listed.revision,
        "ops": len(ops),
        "linearizable": verdict,
        "linearizability": message,
        "check_s": round(took, 2),
        "acknowledged": len(acked),
        "lost": len(lost),
        "lost_samples": lost[:5],
        "converged": not divergence,
        "divergence": divergence,
    }
