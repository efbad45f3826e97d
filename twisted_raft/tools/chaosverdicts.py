"""
What C{raftkv chaos} concludes from a run (L{ChaosVerdicts}, mixed into
L{twisted_raft.tools.chaos.Chaos}): the history file, the report and its
C{--json}, and each verdict (linearizability, convergence, the watch, the
bank's totals, membership changes and members), with the exit statuses
they lead to.
"""

import json
import shutil
import time

from twisted_raft.testing import linearizability
from twisted_raft.tools.faults import CHANGE_KINDS
from twisted_raft.tools.history import (
    WINDOW,
    availability,
    firstSuccessAfter,
    longestGap,
    opToJSON,
)
from twisted_raft.tools.watch import describeMembers

EXIT_OK = 0
EXIT_VIOLATION = 1
EXIT_USAGE = 2
EXIT_INCONCLUSIVE = 3

CHECK_TIME_LIMIT = 120.0


def _fmt(seconds):
    return "-" if seconds is None else f"{seconds:.2f}s"


class ChaosVerdicts:
    """
    The verdicts of a L{twisted_raft.tools.chaos.Chaos} run, read from its
    state once the run is over.
    """

    def writeHistory(self, path):
        t0 = self.loadStart
        with open(path, "w") as f:
            f.write(json.dumps({"type": "run", "seed": self.seed, "nodes": self.n,
                                "argv": self.replayCommand(),
                                "workload": self.o["workload"]}) + "\n")
            for fault in self.faults:
                if fault.injected is None:
                    continue
                f.write(json.dumps({
                    "type": "fault", "index": fault.index, "kind": fault.kind,
                    "description": fault.description,
                    "injected": round(fault.injected - t0, 6),
                    "healed": None if fault.healed is None else round(fault.healed - t0, 6),
                }) + "\n")
            for change in self.changes:
                for step in change.steps:
                    f.write(json.dumps(dict(type="change", **self.stepJSON(change, step))) + "\n")
            for op in sorted(self.ops, key=lambda op: op.start):
                f.write(json.dumps(opToJSON(op, t0)) + "\n")

    def stepJSON(self, change, step):
        """One step of a membership change, as C{--json} and C{--history} give it."""
        t0 = self.loadStart
        writes = self.writeTimes()
        return {
            "index": change.index, "kind": change.kind, "action": step.action,
            "target": step.target, "started": round(step.started - t0, 6),
            "ended": round(step.ended - t0, 6), "outcome": step.outcome,
            "revision": step.revision, "leader": step.leader, "error": step.error,
            "settled": step.settled, "strike": step.strike,
            # the longest time without a successful write while it ran
            "write_gap": round(longestGap(writes, step.started, step.ended), 6),
        }

    def writeTimes(self):
        if getattr(self, "_writeTimes", None) is None:
            self._writeTimes = sorted(
                op.end for op in self.ops
                if op.end is not None and op.client >= 0 and op.kind != "get"
            )
        return self._writeTimes

    def replayCommand(self):
        o = self.o
        parts = [
            "python -m twisted_raft.chaos", f"--nodes {self.n}", f"--seconds {o['seconds']:g}",
            f"--seed {self.seed}", f"--clients {o['clients']}", f"--keys {len(self.keys)}",
            f"--faults {','.join(o['faultKinds']) or 'none'}",
        ]
        if o["workload"] != "kv":
            parts.append(f"--workload {o['workload']}")
        if o["membership"]:
            parts.append("--membership")
            if o["changeKinds"] != list(CHANGE_KINDS):
                parts.append(f"--changes {','.join(o['changeKinds'])}")
            if o["no-strikes"]:
                parts.append("--no-strikes")
        if o["election-timeout"]:
            parts.append(f"--election-timeout {o['election-timeout']}")
        if o["no-sessions"]:
            parts.append("--no-sessions")
        if o["tls"]:
            parts.append("--tls")
        if o["op-timeout"] != 3.0:
            parts.append(f"--op-timeout {o['op-timeout']:g}")
        if o["snapshot-entries"] != 1000:
            parts.append(f"--snapshot-entries {o['snapshot-entries']}")
        return " ".join(parts)

    def report(self):
        out = self.log
        t0 = self.loadStart
        ops = self.ops
        injected = [f for f in self.faults if f.injected is not None]
        if self.o["history"]:
            self.writeHistory(self.o["history"])
        summary = {
            "seed": self.seed, "nodes": self.n, "clients": self.o["clients"],
            "keys": len(self.keys), "seconds": round(self.loadEnd - t0, 3),
            "tls": bool(self.o["tls"]), "replay": self.replayCommand(),
            "workload": self.o["workload"],
        }
        out("")
        out("=" * 72)
        out(f"chaos summary (seed {self.seed}, {self.n} nodes, {self.o['clients']} clients, "
            f"{len(self.keys)} keys, {self.loadEnd - t0:.1f}s of load)")
        byKind = {}
        for op in ops:
            if op.client < 0:
                continue
            k = byKind.setdefault(op.kind, [0, 0])
            k[0 if op.end is not None else 1] += 1
        c = self.counts
        out(f"ops: {c['ok']} ok, {c['unknown']} outcome unknown, {c['failed']} writes failed "
            f"(not applied), {c['failed-read']} reads failed")
        out("  " + ", ".join(f"{k}: {v[0]} ok/{v[1]} unknown" for k, v in sorted(byKind.items())))
        summary["ops"] = {
            "ok": c["ok"], "unknown": c["unknown"], "failed": c["failed"],
            "failed_reads": c["failed-read"],
            "by_kind": {k: {"ok": v[0], "unknown": v[1]} for k, v in sorted(byKind.items())},
        }
        out(f"faults injected: {len(injected)}")
        summary["faults"] = []
        for f in injected:
            first = firstSuccessAfter(ops, f.injected)
            firstW = firstSuccessAfter(ops, f.injected, writesOnly=True)
            healed = "-" if f.healed is None else f"{f.healed - t0:5.1f}s"
            out(f"  #{f.index:<2} {f.injected - t0:5.1f}s-{healed}  {f.description:<40} "
                f"first ok op {_fmt(first)}, first ok write {_fmt(firstW)}")
            summary["faults"].append({
                "index": f.index, "kind": f.kind, "description": f.description,
                "injected": round(f.injected - t0, 3),
                "healed": None if f.healed is None else round(f.healed - t0, 3),
                "first_ok_op": first, "first_ok_write": firstW,
            })
        for i, node in sorted(self.nodes.items()):
            for when, how in node.unexpectedExits:
                out(f"  !! n{i} {how} unexpectedly at {when - t0:.1f}s (see {node.logPath})")
        self.reportChanges(summary)
        # availability
        successes = sorted(op.end for op in ops if op.end is not None and op.client >= 0)
        av = availability(successes, t0, self.loadEnd, injected)
        def pct(entry):
            ok, n, frac = entry
            return f"{ok}/{n} ({frac:.0%})" if n else "-"
        out(f"availability ({WINDOW:g}s windows with >=1 successful op): overall {pct(av['all'])}, "
            f"during faults {pct(av['faulty'])}, healthy {pct(av['healthy'])}")
        summary["availability"] = {
            k: {"ok_windows": ok, "windows": n} for k, (ok, n, _) in av.items()
        }
        recov = [firstSuccessAfter(ops, f.injected, writesOnly=True) for f in injected]
        recov = [r for r in recov if r is not None]
        if recov:
            recov.sort()
            out(f"time to first successful write after injection: median {recov[len(recov) // 2]:.2f}s, "
                f"max {recov[-1]:.2f}s")
        # convergence
        exit = EXIT_OK
        crashed = [i for i, node in self.nodes.items() if node.unexpectedExits]
        if crashed:
            # A node that dies on its own (a fatal error, e.g. its storage
            # failing) is a bug to find, even if the others carried on.
            out(f"node exits: FAILED: {', '.join(f'n{i}' for i in sorted(crashed))} exited"
                " without being killed")
            exit = EXIT_VIOLATION
        summary["unexpected_exits"] = {
            f"n{i}": [how for _, how in node.unexpectedExits] for i, node in sorted(self.nodes.items())
            if node.unexpectedExits
        }
        divergent = []
        for key in self.keys:
            final = self.final.get(key, "<no final read>")
            values = {i: self.stale[i].get(key) for i in self.stale}
            if any(v != final for v in values.values()):
                divergent.append((key, final, values))
        applied = [s["last_applied"] if s else None for _, s in self.statusRows]
        converged = False
        if not self.settled:
            out(f"convergence: FAILED: nodes did not settle (last_applied per node: {applied})")
            exit = EXIT_VIOLATION
        elif divergent:
            out(f"convergence: DIVERGED (last_applied {applied[0]} on every node)")
            for key, final, values in divergent:
                out(f"  {key}: final read {final!r}; stale reads " +
                    ", ".join(f"n{i}={v!r}" for i, v in sorted(values.items())))
            exit = EXIT_VIOLATION
        else:
            converged = True
            out(f"convergence: ok (every node applied {applied[0]}; stale reads of "
                f"{len(self.keys)} keys equal on every node and to a final linearizable read)")
        summary["convergence"] = {"ok": converged, "last_applied": applied}
        if not self.reportMembers(summary):
            exit = EXIT_VIOLATION
        # leaders and configurations
        ok, lines = self.watch.observations.verdict() if self.watch else (True, [])
        if ok:
            for line in lines:
                out(f"leaders and configurations: ok: {line}")
        else:
            out("leaders and configurations: FAILED")
            for line in lines:
                out(f"  {line}")
            exit = EXIT_VIOLATION
        summary["leaders_and_configurations"] = dict(
            ok=ok, problems=[] if ok else lines,
            **(self.watch.observations.toJSON() if self.watch else {}),
        )
        # metrics, health and JSON logs
        ok, lines = self.observability.verdict()
        if ok:
            for line in lines:
                out(f"observability: ok: {line}")
        else:
            out(f"observability: FAILED ({self.observability.violationCount} violations)")
            for line in lines:
                out(f"observability: {line}")
            exit = EXIT_VIOLATION
        summary["observability"] = self.observability.toJSON()
        exit = self.reportWatch(summary, exit)
        exit = self.reportBank(summary, exit)
        # linearizability
        started = time.monotonic()
        if self.bank is not None:
            verdict, text = "not checked", ""
            out("linearizability: not checked (the bank workload's transactions span keys: "
                "the audit of the total and the watch check judge it)")
        else:
            out(f"checking linearizability of {len(ops)} ops...")
            verdict, text = self.check(ops)
        took = time.monotonic() - started
        if verdict == "not checked":
            pass
        elif verdict is True:
            out(f"linearizability: linearizable ({len(ops)} ops, checked in {took:.1f}s)")
        elif verdict is None:
            out(f"linearizability: UNKNOWN: the check timed out after {took:.1f}s")
            if exit == EXIT_OK:
                exit = EXIT_INCONCLUSIVE
        else:
            out("linearizability: NOT LINEARIZABLE")
            out(text)
            exit = EXIT_VIOLATION
        summary["linearizability"] = {
            "verdict": {True: "linearizable", None: "unknown", False: "not linearizable",
                        "not checked": "not checked"}[verdict],
            "ops": len(ops), "seconds": round(took, 3),
        }
        if exit != EXIT_OK:
            out(f"seed: {self.seed}")
            out(f"replay: {self.replayCommand()}")
            out(f"node logs kept in {self.root}")
            if self.o["history"]:
                out(f"history: {self.o['history']}")
        if self.toolErrors:
            out(f"tool: {'; '.join(self.toolErrors)} (see above): the run is inconclusive")
            if exit == EXIT_OK:
                exit = EXIT_INCONCLUSIVE
        summary["tool_errors"] = list(self.toolErrors)
        result = "OK" if exit == EXIT_OK else "FAILED" if exit == EXIT_VIOLATION else "INCONCLUSIVE"
        out(f"result: {result}")
        out("=" * 72)
        summary["result"], summary["exit"] = result, exit
        if self.o["json"]:
            with open(self.o["json"], "w") as f:
                json.dump(summary, f, indent=1, sort_keys=True)
                f.write("\n")
        if exit == EXIT_OK and self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
        return exit

    def reportWatch(self, summary, exit):
        """The watch check's verdict, in the summary and C{--json}. @return: the exit status."""
        check = self.watchRun.check if self.watchRun is not None else None
        if check is None:
            self.log("watch: FAILED: the watcher never started")
            summary["watch"] = {"enabled": True, "ok": False, "status": "not started"}
            return EXIT_VIOLATION
        status, lines = check.verdict()
        if status == "ok":
            for line in lines:
                self.log(f"watch: ok: {line}")
        else:
            self.log(f"watch: {'FAILED' if status == 'violation' else 'INCONCLUSIVE'}")
            for line in lines:
                self.log(f"  {line}")
        summary["watch"] = check.toJSON()
        if status == "violation":
            return EXIT_VIOLATION
        if status == "inconclusive" and exit == EXIT_OK:
            return EXIT_INCONCLUSIVE
        return exit

    def reportBank(self, summary, exit):
        """The bank audit's verdict, in the summary and C{--json}. @return: the exit status."""
        if self.bank is None:
            summary["bank"] = {"enabled": False}
            return exit
        ok, lines = self.bank.verdict()
        if ok:
            for line in lines:
                self.log(f"bank: ok: {line}")
        else:
            self.log("bank: FAILED")
            for line in lines:
                self.log(f"  {line}")
        summary["bank"] = self.bank.toJSON()
        return exit if ok else EXIT_VIOLATION

    def reportChanges(self, summary):
        """The membership changes made, in the summary and C{--json}."""
        if self.membership is None:
            summary["membership"] = {"enabled": False}
            return
        out = self.log
        figures = self.membership.figures()
        out(f"membership changes: {figures['tried']} tried, {figures['done']} done, "
            f"{figures['failed']} failed (not applied), {figures['unknown']} outcome unknown "
            f"(later found applied: {figures['unknown_applied']}, not applied: "
            f"{figures['unknown_not_applied']}); {figures['struck']} struck by a crash;"
            f" {figures['skipped']} of {len(self.changes)} scheduled skipped")
        steps = []
        for change in self.changes:
            if change.skipped and not change.steps:
                out(f"  #{change.index:<2} {change.at:5.1f}s  {change.kind:<13} skipped: "
                    f"{change.skipped}")
            for step in change.steps:
                d = self.stepJSON(change, step)
                steps.append(d)
                target = f"n{step.target}" if step.target else "any voter"
                result = step.outcome
                if step.outcome == "done":
                    result += (f", new leader n{step.leader}" if step.action == "transfer"
                               else f", revision {step.revision}")
                    if step.action == "transfer" and step.target and step.leader != step.target:
                        result += " (not the one asked)"
                elif step.settled:
                    result += f" (later found {step.settled})"
                out(f"  #{change.index:<2} {d['started']:5.1f}s  {step.action:<13} "
                    f"{target:<9} {result:<28} in {step.ended - step.started:5.2f}s, "
                    f"longest write gap {d['write_gap']:.2f}s")
                if step.strike:
                    out(f"        struck: {step.strike}")
                if step.error:
                    out(f"        {step.error[:160]}")
        summary["membership"] = dict(enabled=True, scheduled=len(self.changes), steps=steps,
                                     **figures)

    def reportMembers(self, summary):
        """
        Every member ends with the configuration the member list gives,
        voter flags as it says, and our view agrees.  @return: ok.
        """
        out = self.log
        final = self.finalMembers
        rows = [s for _, s in self.statusRows if s]
        info = summary["members"] = {
            "ok": False, "revision": None, "voters": [], "learners": [],
        }
        if final is None:
            out("members: FAILED: the member list could not be read at the end")
            return False
        voters = [m.id for m in final.members if m.voter]
        learners = [m.id for m in final.members if not m.voter]
        info.update(revision=final.revision, voters=voters, learners=learners)
        members = describeMembers(tuple((m.id, m.address, m.voter) for m in final.members))
        problems = []
        ids = {m.id for m in final.members}
        if sorted(ids) != self.memberIds():
            problems.append(f"the run's view is {', '.join(f'n{i}' for i in self.memberIds())}")
        byId = {s["node_id"]: s for s in rows}
        for m in final.members:
            s = byId.get(m.id)
            if s is None:
                problems.append(f"n{m.id} did not answer")
            elif s["config_revision"] != final.revision or s["voter"] != m.voter:
                problems.append(f"n{m.id} uses revision {s['config_revision']}"
                                f" ({'voter' if s['voter'] else 'no voter'})")
        if problems:
            out(f"members: FAILED: the member list says {members} (revision {final.revision}), "
                f"but {'; '.join(problems)}")
            return False
        info["ok"] = True
        out(f"members: ok ({members} at revision {final.revision}, every one using it)")
        return True

    def check(self, ops):
        """@return: (True | False | None for timed out, description)."""
        result = linearizability.check(list(ops), timeLimit=CHECK_TIME_LIMIT)
        if result.ok:
            return True, ""
        if result.timedOut:
            return None, linearizability.describe(result)
        return False, linearizability.describe(result)


