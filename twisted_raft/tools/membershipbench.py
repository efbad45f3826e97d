"""
The acceptance measurements of membership change (issue 11), against real
twistd node processes on 127.0.0.1.  Four scenarios, each a coroutine that
returns its figures as a JSON-ready dict, shared by C{bench/membership.py}
(the measured runs) and C{tests/process/test_membership_bench.py} (short
ones):

  - L{steps}: under a write load, add a 4th node (learner, catch-up,
    promote), remove the leader, add a 5th, remove one more (a follower);
    each step's duration and longest write gap.
  - L{rolling}: under a write load, restart every node in turn (the leader
    first whenever it has not been restarted yet) with SIGTERM, each
    rejoining and catching up before the next; or with SIGKILL, the
    baseline without the leadership handover a SIGTERM'd leader makes.
    The errors the clients saw and the longest write gap.
  - L{transfer}: under a write load, C{raftkv transfer-leader}'s call (to
    the most up-to-date voter) C{count} times in a row: successes, the time
    until the new leader answered, the longest write gap.
  - L{recover}: write keys until every node has them, stop all three,
    delete two data dirs, C{raftkv recover --data DIR --yes} the third,
    start it, add two fresh nodes, write more: every acknowledged key is
    there, and how long each part took.

Every scenario with a load ends with L{membershipload.verify}: the history
is linearizable, no acknowledged write is lost, every member converged.
A write gap is the time between two consecutive acknowledged writes (any
writer's); a window's longest gap is the longest one overlapping it.
L{targets} says which of the issue's targets a result meets.
"""

import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field

from twisted.internet import utils

from twisted_raft.tools import launcher
from twisted_raft.tools.benchreport import percentile
from twisted_raft.tools.membershipload import (
    Cluster,
    NodeFailed,
    WriteLoad,
    describeError,
    gapFigures,
    longestGap,
    sleep,
    verify,
)

SCENARIOS = ("steps", "rolling", "transfer", "recover")
ROLLING_GAP_TARGET = 0.3
"""Seconds: the longest write gap of a SIGTERM rolling restart (issue 11)."""
HANDED_OVER = "handed leadership to node"
"""What a SIGTERM'd leader logs once it has handed leadership over."""


@dataclass
class Settings:
    """
    What every scenario shares.

    @ivar root: the directory each scenario makes its own under.
    @ivar electionTimeout: the nodes' C{--election-timeout} (milliseconds,
        C{"MIN-MAX"} or C{"MIN"}), or C{None} for their default.
    @ivar warmup: seconds of load before the first measured step.
    @ivar between: seconds of load between two steps (and after the last).
    """

    root: str
    writers: int = 8
    readers: int = 2
    timeout: float = 5.0
    warmup: float = 2.0
    between: float = 1.0
    electionTimeout: str = None
    nodeArgs: list = field(default_factory=list)
    say: object = None

    def out(self, line):
        if self.say is not None:
            self.say(line)

    def electionRange(self):
        """The nodes' election timeout, C{(min, max)} in seconds."""
        if self.electionTimeout is None:
            from twisted_raft.raft.config import RaftConfig

            return RaftConfig().electionTimeout
        from twisted_raft.options import parseElectionTimeout

        return parseElectionTimeout(self.electionTimeout)

    def cluster(self, reactor, name, bootstrap=3, size=3):
        root = tempfile.mkdtemp(prefix=f"{name}-", dir=self.root)
        return Cluster(reactor, root, bootstrap, size, self.electionTimeout, self.nodeArgs)

    def load(self, reactor, cluster, **kw):
        kw.setdefault("writers", self.writers)
        kw.setdefault("readers", self.readers)
        return WriteLoad(reactor, cluster.addressList(), timeout=self.timeout, **kw)


def _ms(seconds):
    return None if seconds is None else round(seconds * 1000.0, 1)


def _s(seconds):
    return round(seconds, 3)


class _Run:
    """One scenario's cluster, admin client and load, and their clean-up."""

    def __init__(self, reactor, settings, name, bootstrap=3, size=3):
        self.reactor = reactor
        self.settings = settings
        self.say = settings.out
        self.t0 = time.monotonic()
        self.cluster = settings.cluster(reactor, name, bootstrap, size)
        self.admin = self.cluster.client(timeout=30.0)
        self.load = None
        self.note(f"{name}: nodes in {self.cluster.root}")

    def elapsed(self):
        return time.monotonic() - self.t0

    def note(self, line):
        self.say(f"  [{self.elapsed():6.1f}s] {line}")

    async def startCluster(self):
        for i in self.cluster.bootstrapIds:
            self.cluster.start(i)
        leader = await self.cluster.leaderOf(self.admin, deadline=30.0)
        self.note(f"n{leader} leads")
        return leader

    async def startLoad(self, **kw):
        self.load = self.settings.load(self.reactor, self.cluster, **kw).start()
        self.note(f"load: {self.load.writers} writers, {self.load.readers} readers")
        await sleep(self.reactor, self.settings.warmup)

    async def close(self):
        try:
            if self.load is not None:
                await self.load.stop()
            await self.admin.close()
        finally:
            await self.cluster.stopAll()

    def loadFigures(self):
        figures = self.load.figures()
        figures["longest_gap_ms"], figures["gap_at_s"] = None, None
        if self.load.acks:
            gap, at = longestGap(self.load.acks, self.load.started, self.load.stopped)
            figures["longest_gap_ms"], figures["gap_at_s"] = _ms(gap), _s(at - self.load.started)
        return figures


# -- steps ----------------------------------------------------------------------------


async def _add(run, nodeId):
    """Start node C{nodeId} with --join, add it as a learner, promote it once
    caught up (L{RaftKVClient.promoteMember} retries until then)."""
    cluster, admin = run.cluster, run.admin
    t0 = time.monotonic()
    cluster.start(nodeId)
    await cluster.waitAnswering(nodeId, admin)
    tUp = time.monotonic()
    await admin.addMember(nodeId, cluster.addresses[nodeId], learner=True)
    tLearner = time.monotonic()
    revision = await admin.promoteMember(nodeId)
    t1 = time.monotonic()
    run.note(f"n{nodeId} added: learner after {tLearner - tUp:.3f}s, voter after"
             f" {t1 - tUp:.3f}s (revision {revision})")
    return {"step": f"add n{nodeId}", "node": nodeId, "start": t0, "end": t1,
            "process_start_s": _s(tUp - t0), "learner_s": _s(tLearner - tUp),
            "promote_s": _s(t1 - tLearner), "change_s": _s(t1 - tUp), "revision": revision}


async def _remove(run, nodeId, members):
    """Remove node C{nodeId}; if it led, wait for another member to lead;
    then SIGTERM its process."""
    cluster, admin = run.cluster, run.admin
    leader = await cluster.leaderOf(admin, members)
    t0 = time.monotonic()
    revision = await admin.removeMember(nodeId)
    tCommitted = time.monotonic()
    record = {"step": f"remove n{nodeId}" + (" (the leader)" if nodeId == leader else ""),
              "node": nodeId, "was_leader": nodeId == leader, "start": t0,
              "change_s": _s(tCommitted - t0), "revision": revision}
    if nodeId == leader:
        newLeader = await cluster.leaderOf(admin, set(members) - {nodeId})
        record["new_leader"] = newLeader
        record["new_leader_s"] = _s(time.monotonic() - t0)
        # Left running, the removed leader steps down by itself; how soon
        # shows before the stop would hide it (clients that still send to
        # it wait meanwhile).
        await cluster.waitNotLeading(nodeId, admin)
        record["stepped_down_s"] = _s(time.monotonic() - t0)
    await cluster.stop(nodeId)
    record["end"] = t1 = time.monotonic()
    record["stop_s"] = _s(t1 - tCommitted)
    run.note(f"n{nodeId} removed (revision {revision}) in {tCommitted - t0:.3f}s"
             + (f", n{record['new_leader']} leads after {record['new_leader_s']:.3f}s, n{nodeId}"
                f" stepped down after {record['stepped_down_s']:.3f}s" if nodeId == leader else "")
             + ", stopped")
    return record


async def steps(reactor, settings):
    """
    The membership steps under load (see the module docstring).

    @return: C{{"steps": [...], "load": ..., "checks": ...}}: per step its
        C{duration_s} (starting the new process or stopping the removed one
        included), C{change_s} (the membership calls alone), more timings,
        and C{longest_gap_ms}.
    """
    run = _Run(reactor, settings, "steps", bootstrap=3, size=5)
    try:
        await run.startCluster()
        await run.startLoad()
        members = {1, 2, 3}
        records = []

        records.append(await _add(run, 4))
        members.add(4)
        await sleep(reactor, settings.between)

        leader = await run.cluster.leaderOf(run.admin, members)
        records.append(await _remove(run, leader, members))
        members.discard(leader)
        await sleep(reactor, settings.between)

        records.append(await _add(run, 5))
        members.add(5)
        await sleep(reactor, settings.between)

        leader = await run.cluster.leaderOf(run.admin, members)
        follower = min(members - {leader})
        records.append(await _remove(run, follower, members))
        members.discard(follower)
        await sleep(reactor, settings.between)

        await run.load.stop()
        for r in records:
            start, end = r.pop("start"), r.pop("end")
            r["duration_s"] = _s(end - start)
            r.update(gapFigures(run.load.acks, start, end))
        checks = await verify(run.cluster, members, [run.load], run.note)
        return {"scenario": "steps", "steps": records, "load": run.loadFigures(),
                "checks": checks}
    finally:
        await run.close()


# -- rolling restart ----------------------------------------------------------------


async def rolling(reactor, settings, signal="TERM", restarts=3):
    """
    Restart C{restarts} of the 3 nodes in turn under load with SIG<signal>
    (C{"TERM"} or C{"KILL"}), waiting for each to rejoin and catch up
    before the next; the leader goes first whenever it has not been
    restarted yet.

    @return: C{{"signal", "restarts": [...], "longest_gap_ms", "load",
        "checks"}}: per restart the node, whether it led, whether it logged
        that it handed leadership over, C{stop_s} (signal to exit),
        C{rejoin_s} (restart to caught up) and its longest write gap.
    """
    run = _Run(reactor, settings, f"rolling-sig{signal.lower()}")
    cluster, admin = run.cluster, run.admin
    try:
        await run.startCluster()
        await run.startLoad()
        pending = list(cluster.ids)
        records = []
        for _ in range(restarts):
            leader = await cluster.leaderOf(admin)
            node = leader if leader in pending else pending[0]
            pending.remove(node)
            mark = cluster.logSize(node)
            t0 = time.monotonic()
            await cluster.stop(node, signal)
            tDown = time.monotonic()
            cluster.start(node)
            await cluster.waitAnswering(node, admin)
            tUp = time.monotonic()
            await cluster.waitCaughtUp(node, admin)
            t1 = time.monotonic()
            handed = HANDED_OVER in cluster.logSince(node, mark)
            records.append({"node": node, "was_leader": node == leader, "handed_over": handed,
                            "start": t0, "end": t1, "stop_s": _s(tDown - t0),
                            "answering_s": _s(tUp - tDown), "rejoin_s": _s(t1 - tDown)})
            run.note(f"n{node}{' (leader)' if node == leader else ''} SIG{signal}: exited in"
                     f" {tDown - t0:.3f}s{', handed over' if handed else ''}; back and"
                     f" caught up {t1 - tDown:.3f}s later")
            await sleep(reactor, settings.between)
        await run.load.stop()
        start, end = records[0]["start"], records[-1]["end"]
        for r in records:
            r.update(gapFigures(run.load.acks, r.pop("start"), r.pop("end")))
        overall = gapFigures(run.load.acks, start, end)
        checks = await verify(cluster, set(cluster.ids), [run.load], run.note)
        return {"scenario": "rolling", "signal": signal, "restarts": records,
                "longest_gap_ms": overall["longest_gap_ms"], "load": run.loadFigures(),
                "checks": checks}
    finally:
        await run.close()


# -- leadership transfer ---------------------------------------------------------------


async def transfer(reactor, settings, count=100):
    """
    C{count} leadership transfers in a row (to the most up-to-date voter,
    as C{raftkv transfer-leader} does) under load.

    @return: C{{"count", "succeeded", "failures", "to_new_leader_ms":
        {median, p99, max}, "within_election_timeout", "election_timeout_ms",
        "longest_gap_ms", "load", "checks"}}.  A transfer succeeds if the
        call answers a leader other than the one before it; its time is
        from the call to that answer (the leader answers once the new one
        leads).
    """
    run = _Run(reactor, settings, "transfer")
    cluster, admin = run.cluster, run.admin
    lo, hi = settings.electionRange()
    try:
        await run.startCluster()
        await run.startLoad()
        leader = await cluster.leaderOf(admin)
        times, failures = [], []
        start = time.monotonic()
        for k in range(count):
            t0 = time.monotonic()
            try:
                newLeader = await admin.transferLeader()
            except Exception as e:
                failures.append(describeError(e))
                run.note(f"transfer {k + 1} failed: {describeError(e)}")
                leader = await cluster.leaderOf(admin)
                continue
            took = time.monotonic() - t0
            if newLeader == leader:
                failures.append(f"transfer {k + 1}: n{leader} still leads")
            else:
                times.append(took)
            leader = newLeader
            if (k + 1) % 10 == 0:
                run.note(f"{k + 1} transfers, {len(times)} succeeded")
        end = time.monotonic()
        await sleep(reactor, settings.between)
        await run.load.stop()
        ordered = sorted(times)
        checks = await verify(cluster, set(cluster.ids), [run.load], run.note)
        return {
            "scenario": "transfer", "count": count, "succeeded": len(times),
            "failures": failures[:10],
            "to_new_leader_ms": {"median": _ms(percentile(ordered, 50)),
                                 "p99": _ms(percentile(ordered, 99)),
                                 "max": _ms(ordered[-1] if ordered else None)},
            "within_election_timeout": sum(1 for t in times if t <= hi),
            "election_timeout_ms": [_ms(lo), _ms(hi)],
            "longest_gap_ms": gapFigures(run.load.acks, start, end)["longest_gap_ms"],
            "load": run.loadFigures(), "checks": checks,
        }
    finally:
        await run.close()


# -- recovery from a lost quorum --------------------------------------------------------


async def recoverCommand(reactor, dataDir):
    """Run C{raftkv recover --data DATADIR --yes}.  @return: (status, output)."""
    out, err, code = await utils.getProcessOutputAndValue(
        sys.executable, ["-m", "twisted_raft.cli", "recover", "--data", dataDir, "--yes"],
        env=launcher.environment(), reactor=reactor,
    )
    return code, (out + err).decode("utf-8", "replace")


async def recover(reactor, settings, keys=2000, after=200, survivor=1):
    """
    Lose two of three nodes for good and recover from the third (see the
    module docstring): C{keys} writes before, C{after} writes after.

    @return: C{{"keys", "timings_s": {...}, "after": load figures,
        "checks"}}, the timings: C{replicated} (all writes on every node),
        C{stop} (SIGTERM all three), C{recover} (the command), C{leading}
        (the survivor's start to it leading alone), C{add_n4} and C{add_n5}
        (start with --join, add, catch up, promote).
    """
    run = _Run(reactor, settings, "recover", bootstrap=3, size=5)
    cluster, admin = run.cluster, run.admin
    timings = {}
    try:
        await run.startCluster()
        t0 = time.monotonic()
        before = settings.load(reactor, cluster, total=keys, prefix="before-").start()
        await before.finished()
        await before.stop()
        timings["write"] = time.monotonic() - t0
        run.note(f"{len(before.acked)} of {keys} writes acknowledged")
        t0 = time.monotonic()
        await cluster.settle(set(cluster.bootstrapIds), admin)
        timings["replicated"] = time.monotonic() - t0

        t0 = time.monotonic()
        await cluster.stopAll()
        timings["stop"] = time.monotonic() - t0
        for i in cluster.bootstrapIds:
            if i != survivor:
                shutil.rmtree(cluster.dataPath(i))
        run.note(f"all stopped; data dirs of "
                 f"{', '.join(f'n{i}' for i in cluster.bootstrapIds if i != survivor)} deleted")

        t0 = time.monotonic()
        code, output = await recoverCommand(reactor, cluster.dataPath(survivor))
        timings["recover"] = time.monotonic() - t0
        if code != 0:
            raise NodeFailed(f"raftkv recover exited {code}:\n{output}")
        run.note(f"raftkv recover: {output.strip().splitlines()[-1]}")

        t0 = time.monotonic()
        cluster.start(survivor)
        await cluster.waitAnswering(survivor, admin)
        timings["answering"] = time.monotonic() - t0
        leader = await cluster.leaderOf(admin, {survivor}, deadline=30.0)
        timings["leading"] = time.monotonic() - t0
        run.note(f"n{leader} leads alone after {timings['leading']:.3f}s")
        members = {survivor}
        for nodeId in (4, 5):
            record = await _add(run, nodeId)
            timings[f"add_n{nodeId}"] = record["end"] - record["start"]
            members.add(nodeId)

        afterLoad = settings.load(reactor, cluster, total=after, prefix="after-").start()
        await afterLoad.finished()
        await afterLoad.stop()
        run.note(f"{len(afterLoad.acked)} of {after} writes acknowledged after the recovery")
        checks = await verify(cluster, members, [before, afterLoad], run.note)
        return {"scenario": "recover", "keys": keys, "survivor": survivor,
                "before": before.figures(), "after": afterLoad.figures(),
                "timings_s": {k: _s(v) for k, v in timings.items()}, "checks": checks}
    finally:
        await run.close()


# -- the targets ------------------------------------------------------------------------


def _checksMissed(name, checks):
    missed = []
    if checks["linearizable"] is False:
        missed.append(f"{name}: history not linearizable")
    elif checks["linearizable"] is None:
        missed.append(f"{name}: history check inconclusive")
    if checks["lost"]:
        missed.append(f"{name}: {checks['lost']} acknowledged writes lost")
    if not checks["converged"]:
        missed.append(f"{name}: not converged: {'; '.join(checks['divergence'])}")
    return missed


def targets(result):
    """What a scenario's result misses of issue 11's acceptance: a list of
    descriptions, empty if everything is met."""
    kind = result["scenario"]
    if kind == "rolling-both":
        return [m for key in ("sigterm", "sigkill") if key in result
                for m in targets(result[key])]
    missed = _checksMissed(kind, result["checks"])
    load = result.get("load")
    if kind == "rolling":
        errors = load["write_errors"] + load["read_errors"]
        if errors:
            missed.append(f"rolling SIG{result['signal']}: {errors} client-visible errors")
        if result["signal"] == "TERM" and result["longest_gap_ms"] > ROLLING_GAP_TARGET * 1000:
            missed.append(f"rolling SIGTERM: longest write gap {result['longest_gap_ms']} ms"
                          f" (target < {ROLLING_GAP_TARGET * 1000:.0f} ms)")
    elif kind == "transfer":
        if result["succeeded"] != result["count"]:
            missed.append(f"transfer: {result['succeeded']} of {result['count']} succeeded")
        if result["within_election_timeout"] != result["succeeded"]:
            missed.append(f"transfer: {result['succeeded'] - result['within_election_timeout']}"
                          f" new leaders later than one election timeout")
    elif kind == "recover":
        if not result["after"]["acknowledged"] or result["after"]["write_errors"]:
            missed.append("recover: the recovered cluster did not take every write")
    return missed


# -- the summary --------------------------------------------------------------------------


def _checksLine(checks):
    verdict = {True: "linearizable", False: "NOT LINEARIZABLE", None: "INCONCLUSIVE"}
    return (f"  checks: {checks['ops']} ops {verdict[checks['linearizable']]};"
            f" {checks['acknowledged']} acknowledged writes, {checks['lost']} lost;"
            f" members {checks['members']} at revision {checks['config_revision']},"
            f" {'converged' if checks['converged'] else 'NOT CONVERGED'}")


def _loadLine(load):
    return (f"  load: {load['writers']} writers, {load['readers']} readers,"
            f" {load['acknowledged']} writes acknowledged ({load['writes_per_sec']:,.0f}/s),"
            f" {load['reads']} reads; client-visible errors: {load['write_errors']} writes,"
            f" {load['read_errors']} reads")


def _ms0(v):
    return "-" if v is None else f"{v:.0f} ms"


def _describeSteps(result):
    lines = ["membership steps under load:"]
    for r in result["steps"]:
        extra = ""
        if "promote_s" in r:
            extra = (f" (learner {r['learner_s']:.3f}s,"
                     f" catch-up + promote {r['promote_s']:.3f}s)")
        elif "new_leader_s" in r:
            extra = (f" (new leader n{r['new_leader']} after {r['new_leader_s']:.3f}s,"
                     f" n{r['node']} stepped down after {r['stepped_down_s']:.3f}s)")
        lines.append(f"  {r['step']:<24} {r['duration_s']:7.3f}s, change {r['change_s']:.3f}s"
                     f"{extra}; longest write gap {_ms0(r['longest_gap_ms'])}")
    return lines


def _describeRolling(result):
    lines = [f"rolling restart with SIG{result['signal']} under load:"
             f" longest write gap {_ms0(result['longest_gap_ms'])}"]
    for r in result["restarts"]:
        lines.append(f"  n{r['node']}{' (leader)' if r['was_leader'] else '         '}"
                     f" exited in {r['stop_s']:.3f}s"
                     f"{', handed over' if r['handed_over'] else ''}, rejoined and caught"
                     f" up in {r['rejoin_s']:.3f}s; longest write gap {_ms0(r['longest_gap_ms'])}")
    return lines


def _describeTransfer(result):
    t = result["to_new_leader_ms"]
    lo, hi = result["election_timeout_ms"]
    lines = [f"leadership transfer x {result['count']} under load: {result['succeeded']}"
             f" succeeded; new leader after median {_ms0(t['median'])}, p99 {_ms0(t['p99'])},"
             f" max {_ms0(t['max'])}; {result['within_election_timeout']} within one election"
             f" timeout ({lo:.0f}-{hi:.0f} ms); longest write gap"
             f" {_ms0(result['longest_gap_ms'])}"]
    lines += [f"  failed: {f}" for f in result["failures"]]
    return lines


def _describeRecover(result):
    t = result["timings_s"]
    return [f"recovery from a lost quorum: {result['before']['acknowledged']} keys written and"
            f" replicated, 2 of 3 data dirs deleted; stop {t['stop']:.2f}s, raftkv recover"
            f" {t['recover']:.2f}s, survivor leading {t['leading']:.2f}s after its start,"
            f" add n4 {t['add_n4']:.2f}s, add n5 {t['add_n5']:.2f}s; then"
            f" {result['after']['acknowledged']} of {result['after']['writes']} writes"
            f" acknowledged"]


_DESCRIBE = {"steps": _describeSteps, "rolling": _describeRolling,
             "transfer": _describeTransfer, "recover": _describeRecover}


def describe(result):
    """A scenario's result as a few lines of text."""
    if result["scenario"] == "rolling-both":
        return "\n".join(describe(result[key]) for key in ("sigterm", "sigkill") if key in result)
    lines = _DESCRIBE[result["scenario"]](result)
    if "load" in result:
        lines.append(_loadLine(result["load"]))
    lines.append(_checksLine(result["checks"]))
    return "\n".join(lines)


async def rollingBoth(reactor, settings, baseline=True, restarts=3):
    """L{rolling} with SIGTERM, then (C{baseline}) with SIGKILL."""
    result = {"scenario": "rolling-both",
              "sigterm": await rolling(reactor, settings, "TERM", restarts)}
    if baseline:
        result["sigkill"] = await rolling(reactor, settings, "KILL", restarts)
    return result
