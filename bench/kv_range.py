"""
Range reads of issue 13: paging a large prefix while it is written, and
a node's resident size while all of a million keys are read page by page.

    python bench/kv_range.py [--only paging|rss|both] [--keys 100000]
        [--page-keys 1000] [--write-rate 1000] [--rss-keys 1000000]
        [--value-size 100] [--json docs/results/kv-range.json]

(a) paging under writes: a 3-node cluster is loaded with C{--keys} keys
under one prefix (C{range/00000000}, ...; C{--value-size}-byte values, a
unique one per key; C{--load-batch}-put transactions, C{--load-concurrency}
in flight).  Then writers put unique values to random keys of the prefix at
C{--write-rate} a second (at most C{--write-in-flight} outstanding), and
meanwhile one client pages through the whole prefix with linearizable
C{range(prefix, limit=--page-keys, after=last key)} calls, as
C{rangePages} does.  Once the writers stopped, every page is checked
against every acknowledged write (the load's and the writers', each with
the revision its answer gave): a key on a page read at revision P has
C{mod_revision <= P}, and its latest acknowledged write at or below P is
exactly the write the page shows (same revision, same value), or the page
shows a later write whose outcome the client never learnt (a failed put,
its value unique); anything else is a violation.  The keys seen must be
all C{--keys}, each once, in order.  Reports pages, keys seen, seconds,
pages/s, the writes made meanwhile, and the violations (target: 0).

(b) RSS: a one-node cluster (loading is fastest without replication) is
loaded with C{--rss-keys} keys under another prefix, left C{--settle}
seconds and then until its RSS is steady (within 1 MiB over 2 s: a
snapshot in progress ends), and its C{VmRSS} sampled for a second (the
baseline: the largest sample); then its C{VmHWM} is reset (C{/proc/PID/clear_refs}, where
allowed) and every key is read with linearizable pages of
C{--rss-page-keys} while a thread samples C{VmRSS} every
C{--sample-interval} seconds.  Reports RSS before, the peak during (the
largest sample, and C{VmHWM} if it could be reset), after, and the largest
page's encoded size (the key-values as the wire carries them).  Verdict:
the growth (peak - before) is at most C{--slack-factor} pages (the largest
page's encoded size times the factor: the node holds the page as objects,
its encoding and the transport's buffer at once) plus C{--slack-mib} MiB
(the allocator's granularity: an arena is 1 MiB).  A copy of the store
would be hundreds of MiB.

Everything runs on free 127.0.0.1 ports in a temporary directory (default
node flags: fsync on); the JSON goes to C{--json}.  Exit status 0 if every
verdict holds, 1 otherwise.  Do not run it while other benchmarks share the
machine.
"""

import argparse
import bisect
import random
import sys
import time

import _checkout  # noqa: F401 (this checkout first on sys.path)
import _kvbench
from twisted.internet import defer, task

from twisted_raft.client import RaftKVClient
from twisted_raft.kvtxn import encodeKeyValues

MiB = 1024 * 1024


def keyNames(prefix, n):
    return [f"{prefix}{i:08d}" for i in range(n)]


def padded(tag, size):
    """C{tag} (unique) padded to C{size} bytes."""
    return tag + b"." * (size - len(tag)) if size > len(tag) else tag


def loadValue(size):
    return lambda key: padded(b"L" + key.encode(), size)


async def pageAll(client, prefix, pageKeys, onPage=None):
    """
    Every page of C{prefix}, each a linearizable C{range} from strictly
    after the last key of the one before.  @return: the pages
    (L{RangeResult}s) and the seconds each took.
    """
    pages, times, after = [], [], None
    while True:
        t0 = time.perf_counter()
        page = await client.range(prefix, prefix=True, limit=pageKeys, after=after)
        times.append(time.perf_counter() - t0)
        if onPage is not None:
            onPage(page)
        else:
            pages.append(page)
        if not page.more:
            return pages, times
        if not page.kvs:
            raise RuntimeError("a page said more keys but held none")
        after = page.kvs[-1].key


def checkPages(pages, keys, acked, unknown):
    """
    The consistency of C{pages} (as in the module docstring).

    @param acked: C{[(revision, key, value), ...]}, every acknowledged write.
    @param unknown: C{[(key, value), ...]}, writes of unknown outcome.
    @return: C{(violations, samples, seen)}: how many, the first 10
        described, and how many times each key was seen.
    """
    byKey = {}
    for revision, key, value in sorted(acked):
        byKey.setdefault(key, ([], []))
        byKey[key][0].append(revision)
        byKey[key][1].append(value)
    maybe = set(unknown)
    seen = dict.fromkeys(keys, 0)
    violations = 0
    samples = []

    def bad(what):
        nonlocal violations
        violations += 1
        if len(samples) < 10:
            samples.append(what)

    last = None
    for n, page in enumerate(pages):
        p = page.revision
        for kv in page.kvs:
            where = f"page {n} (revision {p}) key {kv.key!r}"
            if last is not None and kv.key <= last:
                bad(f"{where}: not after the key before it ({last!r})")
            last = kv.key
            if kv.key not in seen:
                bad(f"{where}: not a key of the prefix")
                continue
            seen[kv.key] += 1
            if kv.mod_revision > p:
                bad(f"{where}: mod_revision {kv.mod_revision} after the page's revision")
                continue
            revisions, values = byKey.get(kv.key, ([], []))
            i = bisect.bisect_right(revisions, p) - 1
            if i < 0:
                if (kv.key, kv.value) not in maybe:
                    bad(f"{where}: no acknowledged write at or below the page's revision")
                continue
            latest, value = revisions[i], values[i]
            if kv.mod_revision == latest:
                if kv.value != value:
                    bad(f"{where}: value {kv.value[:24]!r} is not that of the write at"
                        f" {latest} ({value[:24]!r})")
            elif kv.mod_revision < latest:
                bad(f"{where}: shows mod_revision {kv.mod_revision}, but the write at"
                    f" {latest} (<= {p}) was acknowledged")
            elif (kv.key, kv.value) not in maybe:
                bad(f"{where}: mod_revision {kv.mod_revision} is no write of this run")
    return violations, samples, seen


async def paging(reactor, args):
    cluster = _kvbench.Cluster(args.nodes, "raftkv-kv-range-")
    clients = []
    try:
        cluster.start()
        await _kvbench.waitForLeader(reactor, cluster)
        keys = keyNames("range/", args.keys)
        started = time.monotonic()
        acked = await _kvbench.loadKeys(
            reactor, cluster.peers, keys, loadValue(args.value_size),
            concurrency=args.load_concurrency,
            batch=args.load_batch or _kvbench.txnBatch(len(keys[0]), args.value_size),
            progress=print,
        )
        loadSeconds = time.monotonic() - started
        print(f"(a) loaded {args.keys:,} keys in {loadSeconds:.1f} s")
        clients = [RaftKVClient(cluster.peers, reactor, timeout=args.timeout)
                   for _ in range(args.write_connections)]
        rng = random.Random(args.seed)
        counter = iter(range(10**12))

        def nextWrite():
            return (keys[rng.randrange(len(keys))],
                    padded(b"w%d" % next(counter), args.value_size))

        writers = _kvbench.RateWriters(reactor, clients, args.write_rate,
                                       args.write_in_flight, nextWrite)
        pager = RaftKVClient(cluster.peers, reactor, timeout=args.timeout)
        clients.append(pager)
        writers.start()
        await _kvbench.sleep(reactor, args.writes_before)
        t0 = time.monotonic()
        pages, times = await pageAll(pager, "range/", args.page_keys)
        seconds = time.monotonic() - t0
        await writers.stop()
        acked += [(r, k, v) for r, k, v, _ in writers.acked]
        violations, samples, seen = checkPages(pages, keys, acked, writers.failed)
        counts = list(seen.values())
        missing = counts.count(0)
        repeated = sum(1 for c in counts if c > 1)
        result = {
            "keys": args.keys, "nodes": args.nodes, "value_size": args.value_size,
            "page_keys": args.page_keys, "load_seconds": round(loadSeconds, 1),
            "pages": len(pages), "keys_seen": sum(counts), "keys_missing": missing,
            "keys_repeated": repeated, "seconds": round(seconds, 3),
            "pages_per_sec": round(len(pages) / seconds, 1) if seconds > 0 else None,
            "page_ms_median": round(1000 * _kvbench.percentile(times, 50), 2),
            "page_ms_p99": round(1000 * _kvbench.percentile(times, 99), 2),
            "first_revision": pages[0].revision, "last_revision": pages[-1].revision,
            "writes": writers.summary(),
            "violations": violations, "violation_samples": samples,
        }
        result["ok"] = violations == 0 and missing == 0 and repeated == 0
        print(f"(a) {len(pages)} pages, {sum(counts):,} keys ({missing} missing, {repeated}"
              f" repeated) in {seconds:.2f} s ({result['pages_per_sec']} pages/s) across"
              f" revisions {pages[0].revision}-{pages[-1].revision}, under"
              f" {result['writes']['acked_per_sec']} writes/s; violations: {violations}")
        for s in samples:
            print(f"    {s}")
        return result
    finally:
        for c in clients:
            await c.close()
        cluster.stop()
        cluster.remove()


async def residentSize(reactor, args):
    cluster = _kvbench.Cluster(1, "raftkv-kv-range-rss-")
    try:
        cluster.start()
        await _kvbench.waitForLeader(reactor, cluster)
        pid = cluster[1].pid
        keys = keyNames("rss/", args.rss_keys)
        started = time.monotonic()
        value = padded(b"", args.value_size)
        await _kvbench.loadKeys(
            reactor, cluster.peers, keys, lambda key: value,
            concurrency=args.load_concurrency,
            batch=args.load_batch or _kvbench.txnBatch(len(keys[0]), args.value_size),
            progress=print, record=False,
        )
        loadSeconds = time.monotonic() - started
        del keys
        print(f"(b) loaded {args.rss_keys:,} keys in {loadSeconds:.1f} s; settling")
        settled = await _kvbench.waitSteady(reactor, pid, args.settle)
        baseline = _kvbench.RSSSampler(pid, args.sample_interval).start()
        await _kvbench.sleep(reactor, 1.0)
        before = max(baseline.stop())
        hwmReset = _kvbench.resetPeakRSS(pid)
        client = RaftKVClient(cluster.peers, reactor, timeout=args.timeout)
        largest = {"bytes": 0, "keys": 0, "pages": 0, "read": 0}

        def onPage(page):
            size = len(encodeKeyValues(page.kvs))
            largest["pages"] += 1
            largest["read"] += len(page.kvs)
            if size > largest["bytes"]:
                largest["bytes"], largest["keys"] = size, len(page.kvs)

        sampler = _kvbench.RSSSampler(pid, args.sample_interval).start()
        t0 = time.monotonic()
        try:
            _, times = await pageAll(client, "rss/", args.rss_page_keys, onPage)
        finally:
            seconds = time.monotonic() - t0
            samples = sampler.stop()
            await client.close()
        hwm = _kvbench.peakRSS(pid) if hwmReset else None
        await _kvbench.sleep(reactor, 2.0)
        after = _kvbench.rss(pid)
        peak = max(samples + ([hwm] if hwm is not None else []))
        allowed = args.slack_factor * largest["bytes"] + args.slack_mib * MiB
        result = {
            "keys": args.rss_keys, "value_size": args.value_size,
            "page_keys": args.rss_page_keys, "load_seconds": round(loadSeconds, 1),
            "settle_seconds": round(settled, 1), "pages": largest["pages"],
            "keys_read": largest["read"],
            "seconds": round(seconds, 2),
            "page_ms_median": round(1000 * _kvbench.percentile(times, 50), 2),
            "rss_before": before, "rss_peak_sampled": max(samples), "rss_hwm": hwm,
            "hwm_reset": hwmReset, "rss_peak": peak, "rss_after": after,
            "samples": len(samples), "growth": peak - before,
            "largest_page_bytes": largest["bytes"], "largest_page_keys": largest["keys"],
            "slack_factor": args.slack_factor, "slack_mib": args.slack_mib,
            "allowed_growth": allowed,
        }
        result["ok"] = largest["read"] == args.rss_keys and peak - before <= allowed
        print(f"(b) {largest['read']:,} keys in {largest['pages']} pages, {seconds:.1f} s;"
              f" RSS before {before / MiB:.1f} MiB, peak {peak / MiB:.1f} MiB"
              f" (sampled {max(samples) / MiB:.1f}, VmHWM "
              f"{'-' if hwm is None else f'{hwm / MiB:.1f}'}), after {after / MiB:.1f} MiB;"
              f" growth {(peak - before) / MiB:.2f} MiB, allowed {allowed / MiB:.2f} MiB"
              f" (largest page {largest['bytes']:,} B)")
        return result
    finally:
        cluster.stop()
        cluster.remove()


async def run(reactor, args):
    report = {"config": {k: v for k, v in vars(args).items() if k != "json"},
              **_kvbench.machine()}
    if args.only in ("both", "paging"):
        report["paging"] = await paging(reactor, args)
    if args.only in ("both", "rss"):
        report["rss"] = await residentSize(reactor, args)
    report["ok"] = all(report[p]["ok"] for p in ("paging", "rss") if p in report)
    _kvbench.writeJSON(args.json, report)
    print("verdict:", "ok" if report["ok"] else "FAILED")
    return 0 if report["ok"] else 1


def main():
    parser = argparse.ArgumentParser(
        description=" ".join(__doc__.split("\n\n")[0].split()),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--only", choices=("paging", "rss", "both"), default="both",
                        help="run only this part")
    parser.add_argument("--keys", type=int, default=100_000, help="(a) keys under the prefix")
    parser.add_argument("--nodes", type=int, default=3, help="(a) nodes")
    parser.add_argument("--page-keys", type=int, default=1000, help="(a) limit of each page")
    parser.add_argument("--write-rate", type=float, default=1000.0,
                        help="(a) target writes/s while paging")
    parser.add_argument("--write-in-flight", type=int, default=256,
                        help="(a) most writes outstanding")
    parser.add_argument("--write-connections", type=int, default=4, help="(a) writer clients")
    parser.add_argument("--writes-before", type=float, default=1.0,
                        help="(a) seconds of writes before paging starts")
    parser.add_argument("--rss-keys", type=int, default=1_000_000, help="(b) keys on the node")
    parser.add_argument("--rss-page-keys", type=int, default=1000, help="(b) limit of each page")
    parser.add_argument("--value-size", type=int, default=100, help="bytes per value")
    parser.add_argument("--load-batch", type=int, default=0,
                        help="puts per loading transaction (0: up to 128, about 48 KiB)")
    parser.add_argument("--load-concurrency", type=int, default=16,
                        help="loading transactions in flight")
    parser.add_argument("--settle", type=float, default=5.0,
                        help="(b) least seconds between loading and the baseline")
    parser.add_argument("--sample-interval", type=float, default=0.002,
                        help="(b) seconds between RSS samples")
    parser.add_argument("--slack-factor", type=float, default=4.0,
                        help="(b) allowed growth: this many largest pages ...")
    parser.add_argument("--slack-mib", type=float, default=2.0, help="(b) ... plus this many MiB")
    parser.add_argument("--timeout", type=float, default=30.0, help="client timeout, seconds")
    parser.add_argument("--seed", type=int, default=1, help="seed of the writers' key choice")
    parser.add_argument("--json", default=None, metavar="PATH", help="write the results here")
    args = parser.parse_args()
    code = []
    task.react(lambda reactor: defer.ensureDeferred(run(reactor, args)).addCallback(code.append))
    sys.exit(code[0] if code else 1)


if __name__ == "__main__":
    main()
