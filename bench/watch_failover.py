"""
A prefix watch under load through SIGKILL of its node and of the leader,
checked against the log: every committed change delivered once, in order.

    python bench/watch_failover.py [--write-rate 5000] [--duration 30]
        [--first-kill 5] [--second-kill 15] [--pause 3] [--keys 1000]
        [--json docs/results/watch-failover.json]

Starts a 3-node cluster (C{--snapshot-entries} and C{--snapshot-bytes} so
large that no node snapshots during the run: the check reads the whole log
back, and a snapshot would compact it).  A watcher of the client library
(C{RaftKVClient.watch}, which resumes on another node by itself) watches
the prefix C{watch/} from the revision after the cluster's current one,
first on a follower (its client lists that node first).  Writers put
unique values to random keys of the prefix (C{--keys} of them) at
C{--write-rate} a second, at most C{--write-in-flight} outstanding over
C{--connections} clients.  At C{--first-kill} seconds the node the watcher
is on is SIGKILLed, at C{--second-kill} the leader, each restarted from its
data dir C{--pause} seconds later (through the launcher).  After
C{--duration} seconds the writes stop and one last key of the prefix is
written at revision R; the watcher is waited for until it has delivered
every change up to R.  Then the cluster is stopped and the last leader's log
(write-ahead log, read offline with C{twisted_raft.storage.wal}) is
replayed into a fresh store up to R: its events of the prefix are the
committed changes, compared with the events the watcher delivered.

Reports the writes/s acknowledged, the events expected and delivered,
duplicates (a change delivered again), gaps (a committed change never
delivered), out-of-order deliveries (a revision below one delivered
before), mismatches (delivered but not committed so: wrong key, type or
value), the watcher's resumes, and the delivery lag (the time from a
write's acknowledgement to its event's delivery; negative when the event
came first).  Verdict: no duplicate, gap, out-of-order delivery or
mismatch, and the watcher resumed at least once.  Exit status 0 if it
holds, 1 otherwise (the nodes' data and logs are then kept and named).
Everything runs on free 127.0.0.1 ports in a temporary directory; do not
run it while other benchmarks share the machine.
"""

import argparse
import os
import random
import sys
import time

import _checkout  # noqa: F401 (this checkout first on sys.path)
import _kvbench
from twisted.internet import defer, task

from twisted_raft.client import RaftKVClient
from twisted_raft.kv import KVStore
from twisted_raft.raft.messages import CONFIGURATION
from twisted_raft.storage import snapshot as snapfile
from twisted_raft.storage.files import WAL_DIR
from twisted_raft.storage.wal import WriteAheadLog
from twisted_raft.tools import launcher

PREFIX = "watch/"


def committedEvents(dataDir, first, last, prefix=PREFIX):
    """
    The changes to keys under C{prefix} at revisions C{first} to C{last},
    from a stopped node's data dir: its log replayed into a fresh store.

    @return: C{[(revision, key, type, value), ...]} in log order.
    @raise RuntimeError: the data dir holds a snapshot (the log below it is
        gone) or its log does not reach C{last}.
    """
    if os.path.exists(os.path.join(dataDir, snapfile.FILE_NAME)):
        raise RuntimeError(f"{dataDir} holds a snapshot: the log below it is gone"
                           " (raise --snapshot-entries / --snapshot-bytes)")
    wal = WriteAheadLog(os.path.join(dataDir, WAL_DIR), 16 * 1024 * 1024, lambda fd: None)
    try:
        entries, _ = wal.recover(None, repair=False)
    finally:
        wal.close()
    if not entries or entries[-1].index < last:
        raise RuntimeError(f"the log of {dataDir} ends before revision {last}")
    store = KVStore(historyEvents=10**12, historyBytes=10**15)
    for entry in entries:
        if entry.index > last:
            break
        if entry.kind is CONFIGURATION or not entry.data:
            continue
        try:
            store.apply(entry.index, entry.data)
        except Exception:
            pass  # as a node does: an entry that fails to apply changes nothing
    batch = store.watchEvents(first, prefix, prefix=True)
    return [(e.mod_revision, e.key, e.type, e.value) for e in batch.events
            if e.mod_revision <= last]


def compare(expected, delivered):
    """
    C{delivered} (C{[(revision, key, type, value), ...]} in delivery order)
    against C{expected} (the committed ones, in log order).

    @return: a dict of counts: C{duplicates}, C{gaps}, C{out_of_order},
        C{mismatched}.
    """
    want = set(expected)
    seen = set()
    duplicates = outOfOrder = mismatched = 0
    highest = 0
    for event in delivered:
        if event in seen:
            duplicates += 1
            continue
        seen.add(event)
        if event not in want:
            mismatched += 1
        if event[0] < highest:
            outOfOrder += 1
        highest = max(highest, event[0])
    return {"duplicates": duplicates, "gaps": len(want - seen),
            "out_of_order": outOfOrder, "mismatched": mismatched}


def nodeIdOf(cluster, address):
    return cluster.peers.index(address) + 1 if address in cluster.peers else None


async def run(reactor, args):
    extra = ["--snapshot-entries", str(args.snapshot_entries),
             "--snapshot-bytes", args.snapshot_bytes]
    cluster = _kvbench.Cluster(3, "raftkv-watch-failover-", extra=extra)
    probe = RaftKVClient(cluster.peers, reactor, timeout=args.timeout)
    clients = []
    watchClient = None
    writers = None
    ok = False
    try:
        cluster.start()
        await _kvbench.waitForLeader(reactor, cluster)
        leader = (await _kvbench.statusOfLeader(probe, reactor))["node_id"]
        follower = next(i for i in cluster.ids if i != leader)
        start = (await probe.range(PREFIX, prefix=True, countOnly=True)).revision + 1
        order = [cluster.peers[follower - 1]] + [a for a in cluster.peers
                                                 if a != cluster.peers[follower - 1]]
        watchClient = RaftKVClient(order, reactor, timeout=args.timeout)
        delivered = []  # (revision, key, type, value)
        deliveredAt = []

        def onEvents(events):
            now = time.monotonic()
            for e in events:
                delivered.append((e.mod_revision, e.key, e.type, e.value))
                deliveredAt.append(now)

        watcher = watchClient.watch(PREFIX, prefix=True, startRevision=start, onEvents=onEvents)
        await watcher.whenStarted()
        firstNode = nodeIdOf(cluster, watcher.address)
        print(f"watching {PREFIX!r} from revision {start} on n{firstNode}"
              f" (leader n{leader})")

        clients = [RaftKVClient(cluster.peers, reactor, timeout=args.timeout)
                   for _ in range(args.connections)]
        rng = random.Random(args.seed)
        counter = iter(range(10**12))

        def nextWrite():
            tag = b"%d" % next(counter)
            value = tag + b"." * (args.value_size - len(tag))
            return f"{PREFIX}{rng.randrange(args.keys):06d}", value

        writers = _kvbench.RateWriters(reactor, clients, args.write_rate,
                                       args.write_in_flight, nextWrite)
        t0 = time.monotonic()
        writers.start()
        kills = []

        async def until(at):
            await _kvbench.sleep(reactor, max(0.0, t0 + at - time.monotonic()))

        async def killAndRestart(at, which):
            await until(at)
            if which == "watcher's node":
                victim = nodeIdOf(cluster, watcher.address) or firstNode
            else:
                victim = (await _kvbench.statusOfLeader(probe, reactor))["node_id"]
            killedAt = time.monotonic() - t0
            cluster.kill(victim)
            print(f"  [{killedAt:5.1f}s] SIGKILL n{victim} ({which});"
                  f" {len(writers.acked):,} writes acknowledged, {len(delivered):,} events")
            await _kvbench.sleep(reactor, args.pause)
            cluster.start(victim)
            kills.append({"node": victim, "which": which, "killed_at": round(killedAt, 2),
                          "restarted_at": round(time.monotonic() - t0, 2)})
            print(f"  [{time.monotonic() - t0:5.1f}s] restarted n{victim}")

        await killAndRestart(args.first_kill, "watcher's node")
        await killAndRestart(args.second_kill, "leader")
        await until(args.duration)
        await writers.stop()
        # The last change of the run, so that the final revision has an
        # event of the prefix: a watcher need not be told of revisions
        # without one (a new leader's no-op) to have delivered everything.
        final = await probe.put(PREFIX + "~end", b"end")
        print(f"writes stopped: {writers.summary()['acked_per_sec']} writes/s acknowledged;"
              f" final revision {final}; waiting for the watcher")
        caughtUp = time.monotonic()
        end = caughtUp + args.catch_up_timeout
        while (watcher.nextRevision or 0) <= final and time.monotonic() < end:
            await _kvbench.sleep(reactor, 0.05)
        caughtUpSeconds = time.monotonic() - caughtUp
        complete = (watcher.nextRevision or 0) > final
        resumes = watcher.resumes
        await watcher.cancel()
        last = (await _kvbench.statusOfLeader(probe, reactor))["node_id"]
        cluster.stop(grace=10.0)
        expected = committedEvents(launcher.dataPath(cluster.root, last), start, final)
        counts = compare(expected, delivered)
        ackedAt = {}
        for revision, _, _, at in writers.acked:
            ackedAt[revision] = at
        lags = [(t - ackedAt[ev[0]]) * 1000 for ev, t in zip(delivered, deliveredAt)
                if ev[0] in ackedAt]
        result = {
            "writes": writers.summary(), "kills": kills,
            "watch": {
                "prefix": PREFIX, "start_revision": start, "final_revision": final,
                "first_node": firstNode, "first_leader": leader, "log_read_from": last,
                "expected_events": len(expected), "events": len(delivered), **counts,
                "resumes": resumes, "caught_up": complete,
                "catch_up_seconds": round(caughtUpSeconds, 2),
                "lag_ms": {
                    "max": round(max(lags), 1) if lags else None,
                    "p50": round(_kvbench.percentile(lags, 50), 1) if lags else None,
                    "p99": round(_kvbench.percentile(lags, 99), 1) if lags else None,
                    "events_with_ack": len(lags),
                },
            },
        }
        w = result["watch"]
        ok = (complete and resumes >= 1 and len(expected) > 0
              and not any(counts[k] for k in ("duplicates", "gaps", "out_of_order", "mismatched")))
        result["ok"] = ok
        print(f"{len(delivered):,} events delivered, {len(expected):,} committed changes in the"
              f" log (read from n{last}): {w['duplicates']} duplicates, {w['gaps']} gaps,"
              f" {w['out_of_order']} out of order, {w['mismatched']} mismatched;"
              f" {resumes} resumes; lag max {w['lag_ms']['max']} ms,"
              f" p99 {w['lag_ms']['p99']} ms")
        report = {"config": {k: v for k, v in vars(args).items() if k != "json"},
                  **_kvbench.machine(), **result}
        _kvbench.writeJSON(args.json, report)
        print("verdict:", "ok" if ok else "FAILED")
        return 0 if ok else 1
    finally:
        if writers is not None:
            writers.stop()
        for c in clients:
            await c.close()
        if watchClient is not None:
            await watchClient.close()
        await probe.close()
        cluster.stop()
        if ok:
            cluster.remove()
        else:
            print(f"node data and logs kept in {cluster.root}")


def main():
    parser = argparse.ArgumentParser(
        description=" ".join(__doc__.split("\n\n")[0].split()),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--write-rate", type=float, default=5000.0, help="target writes/s")
    parser.add_argument("--write-in-flight", type=int, default=1024,
                        help="most writes outstanding")
    parser.add_argument("--connections", type=int, default=8, help="writer clients")
    parser.add_argument("--keys", type=int, default=1000, help="distinct keys written")
    parser.add_argument("--value-size", type=int, default=16, help="bytes per value")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of writes")
    parser.add_argument("--first-kill", type=float, default=5.0,
                        help="second at which the watcher's node is SIGKILLed")
    parser.add_argument("--second-kill", type=float, default=15.0,
                        help="second at which the leader is SIGKILLed")
    parser.add_argument("--pause", type=float, default=3.0,
                        help="seconds before a killed node is restarted")
    parser.add_argument("--catch-up-timeout", type=float, default=60.0,
                        help="seconds the watcher gets to deliver everything after the writes")
    parser.add_argument("--snapshot-entries", type=int, default=100_000_000,
                        help="the nodes' --snapshot-entries (no snapshot during the run)")
    parser.add_argument("--snapshot-bytes", default="64GiB",
                        help="the nodes' --snapshot-bytes (no snapshot during the run)")
    parser.add_argument("--timeout", type=float, default=10.0, help="client timeout, seconds")
    parser.add_argument("--seed", type=int, default=1, help="seed of the writers' key choice")
    parser.add_argument("--json", default=None, metavar="PATH", help="write the results here")
    args = parser.parse_args()
    if not 0 < args.first_kill < args.second_kill < args.duration:
        parser.error("need 0 < --first-kill < --second-kill < --duration")
    if args.first_kill + args.pause >= args.second_kill:
        parser.error("the first node must be back before the leader is killed:"
                     " --first-kill + --pause < --second-kill")
    code = []
    task.react(lambda reactor: defer.ensureDeferred(run(reactor, args)).addCallback(code.append))
    sys.exit(code[0] if code else 1)


if __name__ == "__main__":
    main()
