"""
Tests for the membership side of C{raftkv chaos}: the seeded schedule of
membership changes and what each becomes at run time
(L{twisted_raft.tools.faults}), partitions over changing members, the write
gap measure, and the leader and configuration checks
(L{twisted_raft.tools.watch.Observations}, over text and JSON logs).  The whole thing against real
processes is in C{tests/process/test_chaos_membership.py}.
"""

import os
import sys

import pytest
import pytest_twisted
from twisted.internet import defer, task
from twisted.python import usage

from twisted_raft.client import Member, Membership
from twisted_raft.logs import eventAsLine
from twisted_raft.tools import chaos, faults, history, launcher, watch
from twisted_raft.tools.memberchanges import MemberChanges, notApplied, wants
from twisted_raft.tools.watch import Observations

KINDS = list(faults.CHANGE_KINDS)


# -- the schedule -------------------------------------------------------------------


def test_changes_are_deterministic_per_seed_and_leave_faults_alone():
    a = faults.makeChanges(7, 60, 3, KINDS)
    assert a == faults.makeChanges(7, 60, 3, KINDS)
    assert a != faults.makeChanges(8, 60, 3, KINDS)
    assert len(a) >= 5
    # the fault schedule draws from its own stream: unchanged by membership
    assert faults.makeSchedule(7, 60, 3, list(faults.FAULT_KINDS)) == faults.makeSchedule(
        7, 60, 3, list(faults.FAULT_KINDS))


@pytest.mark.parametrize("seed", range(30))
@pytest.mark.parametrize("nodes", [3, 4, 5])
def test_changes_keep_the_voters_in_bounds(seed, nodes):
    fewest, most = faults.voterBounds(nodes)
    assert fewest >= 3
    voters, at = nodes, 0.0
    changes = faults.makeChanges(seed, 120, nodes, KINDS)
    for c in changes:
        assert c.kind in KINDS and 0 <= c.pick < 1
        assert c.at >= at + 3.0 - 0.01 or at == 0.0  # gaps of 3-7 s
        assert 4.0 <= c.at <= 116.0
        at = c.at
        voters += {"add": 1, "remove": -1, "remove-leader": -1}.get(c.kind, 0)
        assert fewest <= voters <= most, (c, voters)
        assert c.toAny is False or c.kind == "transfer"
    assert {c.kind for c in changes} == set(KINDS)
    assert faults.plannedAdds(changes) == sum(c.kind == "add" for c in changes)


def test_strikes_are_a_share_drawn_apart():
    """A third or so of the changes are struck; the strikes come from their
    own stream, so turning them off leaves the changes as they were."""
    changes = [c for seed in range(20) for c in faults.makeChanges(seed, 120, 3, KINDS)]
    struck = [c for c in changes if c.strike]
    assert 0.2 < len(struck) / len(changes) < 0.45
    assert {c.strike for c in struck} == {"kill", "pause"}
    for c in struck:
        assert 0 <= c.strikeAfter <= 0.012 and 1.0 <= c.strikeFor <= 3.0
        assert c.strikeStep in ((0, 1) if c.kind == "add" else (0,))
    assert {c.strikeStep for c in struck if c.kind == "add"} == {0, 1}
    plain = faults.makeChanges(5, 120, 3, KINDS, strikes=False)
    assert not any(c.strike for c in plain)
    assert [(c.kind, c.at, c.pick) for c in plain] == [
        (c.kind, c.at, c.pick) for c in faults.makeChanges(5, 120, 3, KINDS)]


def test_changes_of_one_kind():
    # only removals: 5 nodes may lose one voter, then nothing more is allowed
    changes = faults.makeChanges(1, 120, 5, ["remove"])
    assert [c.kind for c in changes] == ["remove"]
    assert {c.kind for c in faults.makeChanges(1, 60, 3, ["transfer"])} == {"transfer"}
    assert faults.makeChanges(1, 60, 3, []) == []


def test_parse_changes():
    assert faults.parseChanges("transfer,add") == ["add", "transfer"]
    assert faults.parseChanges(",".join(KINDS)) == KINDS
    for bad in ("explode", "", " , "):
        with pytest.raises(usage.UsageError):
            faults.parseChanges(bad)


def test_membership_options():
    o = chaos.Options()
    o.parseOptions(["--membership", "--changes", "add,remove"])
    assert o["changeKinds"] == ["add", "remove"]
    o = chaos.Options()
    o.parseOptions([])
    assert o["changeKinds"] == [] and not o["no-strikes"]
    o = chaos.Options()
    o.parseOptions(["--membership", "--no-strikes"])
    assert "--no-strikes" in chaos.Chaos(None, o, out=lambda line: None).replayCommand()
    with pytest.raises(usage.UsageError):
        chaos.Options().parseOptions(["--membership", "--nodes", "2"])
    with pytest.raises(usage.UsageError):
        chaos.Options().parseOptions(["--membership", "--changes", "grow"])


# -- what a change becomes ---------------------------------------------------------------


def _change(kind, pick=0.0, toAny=False):
    return faults.Change(1, kind, 5.0, pick, toAny)


def test_resolve_follows_the_plan_within_bounds():
    resolve = faults.resolveChange
    assert resolve(_change("add"), [1, 2, 3], [], 1, True, 3) == ("add", None)
    assert resolve(_change("remove", 0.0), [1, 2, 3, 4], [], 1, True, 3) == ("remove", 2)
    assert resolve(_change("remove", 0.99), [1, 2, 3, 4], [], 1, True, 3) == ("remove", 4)
    assert resolve(_change("remove-leader"), [1, 2, 3, 4], [], 3, True, 3) == ("remove-leader", 3)
    assert resolve(_change("transfer", 0.5), [1, 2, 3], [], 1, True, 3) == ("transfer", 3)
    assert resolve(_change("transfer", 0.5, toAny=True), [1, 2, 3], [], 1, True, 3) == ("transfer", 0)


def test_resolve_adapts_to_what_the_cluster_says():
    resolve = faults.resolveChange
    # a learner left over is promoted first, whatever was planned
    assert resolve(_change("remove"), [1, 2, 3, 4], [6], 1, True, 3) == ("promote", 6)
    # at the fewest voters a removal becomes an add, or a transfer without ids
    assert resolve(_change("remove"), [1, 2, 3], [], 1, True, 3) == ("add", None)
    assert resolve(_change("remove-leader"), [1, 2, 3], [], 1, False, 3)[0] == "transfer"
    # at the most, an add becomes a removal of a follower (never the leader)
    action, target = resolve(_change("add", 0.0), [1, 2, 3, 4], [], 1, True, 3)
    assert (action, target) == ("remove", 2)
    # no fresh id left: no add
    assert resolve(_change("add"), [1, 2, 3, 4], [], 1, False, 5)[0] == "transfer"
    # no known leader to remove
    assert resolve(_change("remove-leader"), [1, 2, 3, 4], [], 0, True, 3)[0] == "skip"


# -- partitions over the members of the moment -------------------------------------------


def test_order_among_members():
    fault = faults.Fault(3, "kill", 3.0, 3.0, False, [2, 3, 1])
    assert faults.orderAmong(fault, [1, 2, 3]) == [2, 3, 1]
    order = faults.orderAmong(fault, [2, 3, 5, 6])
    assert sorted(order) == [2, 3, 5, 6]
    assert faults.orderAmong(fault, [6, 5, 3, 2]) == order  # the same for the same members


def test_partition_over_members():
    fault = faults.Fault(1, "isolate", 3.0, 3.0, True, [1, 2, 3])
    groups, bridge = faults.planPartition(fault, 3, 5, members=[2, 3, 5, 6])
    assert groups == [[5], [2, 3, 6]] and bridge is None
    fault = faults.Fault(1, "halves", 3.0, 3.0, True, [1, 2, 3])
    groups, _ = faults.planPartition(fault, 3, 6, members=[2, 3, 5, 6])
    assert 6 in groups[0] and len(groups[0]) == 2 and sorted(groups[0] + groups[1]) == [2, 3, 5, 6]
    fault = faults.Fault(1, "bridge", 3.0, 3.0, False, [1, 2, 3])
    groups, bridge = faults.planPartition(fault, 3, 0, members=[2, 3, 4, 5, 6])
    assert bridge in (2, 3, 4, 5, 6) and len(faults.cutLinks(groups, bridge)) == 8


def test_longest_gap():
    times = [1.0, 1.2, 2.0, 2.1]
    assert history.longestGap(times, 0.5, 3.0) == pytest.approx(0.9)  # 2.1 -> 3.0
    assert history.longestGap(times, 1.1, 1.9) == pytest.approx(0.7)  # 1.2 -> 1.9
    assert history.longestGap([], 1.0, 1.5) == pytest.approx(0.5)


# -- what a failed change means ---------------------------------------------------------


def test_not_applied_and_wants():
    from twisted_raft.client import OutcomeUnknown
    from twisted_raft.rpc.commands import (
        ChangeInProgress,
        InvalidArgument,
        NotCaughtUp,
        NotProposed,
        TransferFailed,
        Unavailable,
    )

    for e in (InvalidArgument("x"), ChangeInProgress("x"), NotCaughtUp("x"),
              TransferFailed("x"), NotProposed("not proposed: x")):
        assert notApplied(e)
    for e in (OutcomeUnknown("x"), Unavailable("x"), ConnectionError("x")):
        assert not notApplied(e)
    members = {1: True, 2: True, 4: False}
    assert wants("add-learner", 4)(members) and not wants("add-learner", 5)(members)
    assert wants("promote", 2)(members) and not wants("promote", 4)(members)
    assert wants("remove", 3)(members) and not wants("remove-leader", 1)(members)
    assert wants("transfer", 2) is None


# -- the leader and configuration checks ----------------------------------------------


def _status(nodeId, term, role="follower", leader=0, revision=0, commit=10, voter=True):
    return {"node_id": nodeId, "term": term, "role": role, "leader_id": leader,
            "config_revision": revision, "commit_index": commit, "voter": voter}


def _membership(revision, *members):
    return Membership(revision, tuple(Member(i, f"127.0.0.1:{8000 + i}", v) for i, v in members))


def test_one_leader_per_term_passes():
    o = Observations(clock=lambda: 1.0)
    o.status(_status(1, 2, "leader", 1))
    o.status(_status(2, 2, leader=1))
    o.status(_status(3, 3, "leader", 3))
    o.status(_status(1, 3, leader=3))
    o.leaderLine(3, 3, "node 3 became leader for term 3")
    ok, lines = o.verdict()
    assert ok, lines
    assert "2 terms with a leader" in lines[0]


def test_two_leaders_in_a_term_from_any_source():
    o = Observations(clock=lambda: 1.0)
    o.status(_status(1, 2, "leader", 1))
    o.status(_status(3, 2, leader=2))  # n3 follows n2 in term 2
    ok, lines = o.verdict()
    assert not ok and "two leaders in term 2" in lines[0]
    o = Observations(clock=lambda: 1.0)
    o.status(_status(1, 5, "leader", 1))
    o.leaderLine(2, 5, "node 2 became leader for term 5")  # the log saw what polls missed
    assert not o.verdict()[0]


def test_leader_lines_read_from_logs(tmp_path):
    log = tmp_path / "n1.log"
    log.write_bytes(b"old run: node 1 became leader for term 4\n")
    offset = log.stat().st_size
    with open(log, "ab") as f:
        f.write(b"2024-01-01 [twisted_raft.raft.node.RaftNode#info] node 2 became leader for term 4\n"
                b"something else\n")
    o = Observations()
    o.readLog(str(log), offset)
    assert o.leaderLines == 1 and o.leaders == {4: {2: o.leaders[4][2]}}
    o.readLog(str(log))  # from the start: the older run's line too
    assert not o.verdict()[0]


def test_leader_lines_read_from_json_logs():
    def line(fmt, **fields):
        event = dict(fields, log_format=fmt, log_time=0.0, log_namespace="t")
        return eventAsLine(event, fields.get("nodeId", 0)).encode()

    data = (
        line("node {nodeId} became leader for term {term}", raftkv_event="role_change",
             nodeId=3, term=7, **{"from": "candidate", "to": "leader"})
        + line("node {nodeId} is now {to}", raftkv_event="role_change",
               nodeId=3, term=8, **{"from": "leader", "to": "follower"})
        # the text of a leader line, but not the event: no JSON line is read as text
        + line("{x}", x="node 5 became leader for term 9")
        + b"2024 [twisted_raft.raft.node.RaftNode#info] node 4 became leader for term 6\n"
    )
    o = Observations()
    o.readLogData(data)
    assert o.leaderLines == 2 and set(o.leaders) == {6, 7}
    assert o.leaders[7][3] == "its log: node 3 became leader for term 7"
    assert watch.leaderOfLine(b'{"event": "role_change", "to": "leader"}') is None


def test_status_leaders_without_log_lines_is_a_problem():
    o = Observations()
    o.status(_status(1, 2, "leader", 1))
    ok, lines = o.verdict()
    assert not ok and "became leader" in lines[0]


def test_one_configuration_per_index():
    o = Observations()
    o.members(_membership(0, (1, True), (2, True), (3, True)), 0.0, 0.1)
    o.members(_membership(7, (1, True), (2, True), (3, True), (4, False)), 0.2, 0.3)
    o.members(_membership(7, (1, True), (2, True), (3, True), (4, False)), 0.4, 0.5)
    assert o.verdict()[0]
    o.members(_membership(7, (1, True), (2, True), (3, True), (4, True)), 0.6, 0.7)
    ok, lines = o.verdict()
    assert not ok and "two configurations at index 7" in lines[0]


def test_bootstrap_configuration_addresses_may_differ():
    """Each node bootstraps from its own --peers: at 0 only ids and votes count."""
    o = Observations()
    o.members(_membership(0, (1, True), (2, True), (3, True)), 0.0, 0.1)
    o.members(Membership(0, (Member(1, "a:1"), Member(2, "b:2"), Member(3, "c:3"))), 0.2, 0.3)
    assert o.verdict()[0]
    o.members(Membership(0, (Member(1, "a:1"), Member(2, "b:2"), Member(3, "c:3", False))), 0.4, 0.5)
    assert not o.verdict()[0]


def test_committed_voter_flags_agree_with_the_member_list():
    o = Observations()
    o.members(_membership(7, (1, True), (2, True), (4, False)), 0.0, 0.1)
    o.status(_status(4, 3, revision=7, commit=9, voter=False))
    o.status(_status(3, 3, revision=7, commit=9, voter=False))  # removed: not a member
    o.status(_status(1, 3, revision=9, commit=8, voter=False))  # not committed there: no claim
    assert o.verdict()[0]
    o.status(_status(4, 3, revision=7, commit=12, voter=True))
    ok, lines = o.verdict()
    assert not ok and any("n4" in line for line in lines)


def test_a_status_seen_before_its_member_list_is_checked_too():
    o = Observations()
    o.status(_status(2, 3, revision=7, commit=9, voter=False))
    assert o.verdict()[0]
    o.members(_membership(7, (1, True), (2, True), (3, True)), 0.0, 0.1)
    assert not o.verdict()[0]


def test_the_member_list_never_goes_back():
    o = Observations()
    o.members(_membership(9, (1, True), (2, True), (3, True)), 1.0, 1.1)
    o.members(_membership(7, (1, True), (2, True), (3, True), (4, False)), 0.5, 1.5)  # overlaps
    assert o.verdict()[0]
    o.members(_membership(7, (1, True), (2, True), (3, True), (4, False)), 1.2, 1.3)
    ok, lines = o.verdict()
    assert not ok and "went back" in lines[0]


def test_acknowledged_changes_hold_at_their_revision():
    o = Observations()
    o.members(_membership(7, (1, True), (2, True), (3, True), (4, False)), 0.0, 0.1)
    o.members(_membership(8, (1, True), (2, True), (3, True), (4, True)), 0.2, 0.3)
    o.changed("add-learner", 4, "127.0.0.1:8004", 7)
    o.changed("promote", 4, None, 8)
    o.changed("remove", 5, None, 8)
    o.changed("remove", 2, None, 11)  # never seen: not verified, not failed
    ok, lines = o.verdict()
    assert ok and "verified: 3/4" in lines[1]
    o.changed("remove", 3, None, 8)
    ok, lines = o.verdict()
    assert not ok and "remove n3 was acknowledged with revision 8" in lines[0]
    o = Observations()
    o.members(_membership(7, (1, True), (2, True), (3, True), (4, False)), 0.0, 0.1)
    o.changed("add-learner", 4, "127.0.0.1:9999", 7)  # another address
    assert not o.verdict()[0]


# -- setting up a run that changes its members ------------------------------------------


def _argvPeers(argv):
    return dict(entry.split("=", 1) for entry in argv[argv.index("--peers") + 1].split(","))


@pytest_twisted.inlineCallbacks
def test_membership_setup_gives_every_link_a_proxy(tmp_path, monkeypatch):
    """
    The initial nodes bootstrap from themselves alone, then restart with a
    proxy for every node that may join; a joining node gets a proxy to
    every other one.
    """
    from twisted.internet import reactor
    from twisted_raft.storage.files import BOOTSTRAP_FILE

    started = []

    def start(node):
        # what a started node does first: store the bootstrap configuration
        started.append(list(node.argv))
        path = launcher.dataPath(str(tmp_path), node.nodeId)
        os.makedirs(path, exist_ok=True)
        open(os.path.join(path, BOOTSTRAP_FILE), "wb").close()

    monkeypatch.setattr(launcher.SpawnedNode, "start", start)
    options = chaos.Options()
    options.parseOptions(["--membership", "--seconds", "60", "--data", str(tmp_path)])
    run = chaos.Chaos(reactor, options, out=lambda line: None)
    run.changes = faults.makeChanges(1, 60, 3, KINDS)
    adds = faults.plannedAdds(run.changes)
    fresh = list(range(4, 4 + adds + chaos.SPARE_IDS))
    run.allIds = [1, 2, 3] + fresh
    run.membership = MemberChanges(run, run.changes, fresh)
    try:
        yield run.setUp()
        assert len(run.proxies) == len(run.allIds) * (len(run.allIds) - 1)
        first, again = started[:3], started[3:]
        assert [set(_argvPeers(a)) for a in first] == [{"1", "2", "3"}] * 3
        assert [set(_argvPeers(a)) for a in again] == [set(map(str, run.allIds))] * 3
        peers = _argvPeers(again[0])
        assert peers["1"] == run.address(1)
        for j in run.allIds[1:]:
            assert peers[str(j)] == f"127.0.0.1:{run.proxies[(1, j)].port}"
        assert all("--join" not in a for a in started)
        # JSON logs and --http on a port of each node's own, kept at its restart
        assert all(launcher.logFormat(a) == "json" for a in started)
        http = [a[a.index("--http") + 1] for a in started]
        assert http[:3] == http[3:] == [launcher.httpEndpoint(run.httpPorts[i])
                                        for i in (1, 2, 3)]
        assert len(set(run.httpPorts.values()) | set(run.realPorts.values())) == 6
        # a node yet to join: its links are not forwarded anywhere yet
        assert run.proxies[(1, fresh[0])].targetPort == 0
        run.realPorts[fresh[0]], run.httpPorts[fresh[0]] = 1, 2
        argv = run.nodeArgv(fresh[0], run.allIds, join=True)
        assert "--join" in argv and set(_argvPeers(argv)) == set(map(str, run.allIds))
        assert argv[argv.index("--http") + 1] == launcher.httpEndpoint(2)
        assert run.addresses == [run.address(i) for i in (1, 2, 3)]
        assert "--membership" in run.replayCommand().split()
    finally:
        yield defer.gatherResults([p.stop() for p in run.proxies.values()])


@pytest_twisted.inlineCallbacks
def test_terminate_stops_a_process_and_kills_one_that_ignores_it(tmp_path):
    from twisted.internet import reactor

    def node(code):
        argv = [sys.executable, "-c", code]
        return launcher.SpawnedNode(reactor, 1, argv, str(tmp_path / "log"), str(tmp_path)).start()

    polite = node("import time; print('up', flush=True); time.sleep(60)")
    stubborn = node("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN);"
                    " print('up', flush=True); time.sleep(60)")
    yield task.deferLater(reactor, 0.5, lambda: None)  # both have started
    stubborn.pause()
    started = reactor.seconds()
    yield defer.gatherResults([polite.terminate(grace=5.0), stubborn.terminate(grace=0.5)])
    assert not polite.running and not stubborn.running
    assert polite.proto.reason.value.signal == 15
    assert stubborn.proto.reason.value.signal == 9
    assert reactor.seconds() - started < 4.0
    assert polite.unexpectedExits == stubborn.unexpectedExits == []
    assert (yield polite.terminate()) is None  # not running: nothing to do


# -- crashes in the middle of a change ------------------------------------------------------


class _Node:
    def __init__(self):
        self.running, self.paused, self.events = True, False, []

    def kill(self):
        self.running = False
        self.events.append("kill")

    def pause(self):
        self.paused = True
        self.events.append("pause")

    def resume(self):
        if self.paused:
            self.paused = False
            self.events.append("resume")

    def start(self):
        self.running = True
        self.events.append("start")


class _Run:
    def __init__(self, clock):
        self.reactor = clock
        self.initialIds = [1, 2, 3]
        self.nodes = {i: _Node() for i in self.initialIds}
        self.currentFault = None
        self.stopClients = False
        self.lines = []

    def log(self, line):
        self.lines.append(line)

    def elapsed(self):
        return self.reactor.seconds()


def _struck(kind, after=0.005, lasting=2.0):
    change = faults.Change(1, "remove", 5.0, 0.0)
    change.strike, change.strikeAfter, change.strikeFor = kind, after, lasting
    return change


def _strike(run, changes, change, leader):
    step = faults.Step("remove", 2, started=0.0)
    change.steps.append(step)
    changes.leader = leader
    changes._later(change.strikeAfter, changes.strike, change, step, leader)
    return step


def test_a_strike_kills_the_leader_and_restarts_it():
    clock = task.Clock()
    run = _Run(clock)
    changes = MemberChanges(run, [], [])
    change = _struck("kill")
    step = _strike(run, changes, change, 1)
    clock.advance(0.005)
    assert run.nodes[1].events == ["kill"] and "SIGKILL n1" in step.strike
    clock.advance(2.0)
    assert run.nodes[1].events == ["kill", "start"]
    # a pause is undone by SIGCONT
    step = _strike(run, changes, _struck("pause"), 2)
    clock.advance(0.005)
    assert run.nodes[2].events == ["pause"]
    clock.advance(2.0)
    assert run.nodes[2].events == ["pause", "resume"] and "SIGSTOP n2" in step.strike


def test_a_strike_is_not_undone_when_someone_else_owns_the_node():
    clock = task.Clock()
    run = _Run(clock)
    changes = MemberChanges(run, [], [])
    # stopped for good meanwhile: never restarted
    _strike(run, changes, _struck("kill"), 1)
    clock.advance(0.01)
    changes.retired.add(1)
    clock.advance(3.0)
    assert run.nodes[1].events == ["kill"]
    # a fault of the fault loop took it meanwhile: its heal restarts it
    _strike(run, changes, _struck("kill"), 2)
    clock.advance(0.01)
    run.currentFault = faults.Fault(1, "kill", 0.0, 3.0, False, [2, 1, 3])
    run.currentFault.node = 2
    clock.advance(3.0)
    assert run.nodes[2].events == ["kill"]
    # the run ends: nothing is started after it
    run.currentFault = None
    _strike(run, changes, _struck("kill"), 3)
    clock.advance(0.01)
    changes.stop()
    clock.advance(3.0)
    assert run.nodes[3].events == ["kill"] and not clock.getDelayedCalls()
    # a node already down or paused is not struck
    run.nodes[1].running = False
    step = _strike(run, MemberChanges(run, [], []), _struck("pause"), 1)
    clock.advance(0.01)
    assert step.strike == "" and run.nodes[1].events == ["kill"]


def test_figures_count_steps_by_outcome():
    run = _Run(task.Clock())
    c1, c2 = faults.Change(1, "add", 5.0, 0.0), faults.Change(2, "transfer", 9.0, 0.0)
    c1.steps = [faults.Step("add-learner", 4, outcome="unknown", settled="applied"),
                faults.Step("promote", 4, outcome="done", strike="SIGKILL n1")]
    c2.steps = [faults.Step("transfer", 2, outcome="done", leader=3),
                faults.Step("transfer", 0, outcome="done", leader=2),
                faults.Step("transfer", 2, outcome="failed")]
    c3 = faults.Change(3, "remove-leader", 12.0, 0.0, skipped="no known leader to remove")
    figures = MemberChanges(run, [c1, c2, c3], []).figures()
    assert (figures["tried"], figures["done"], figures["failed"], figures["unknown"]) == (5, 3, 1, 1)
    assert figures["unknown_applied"] == 1 and figures["unknown_not_applied"] == 0
    assert figures["struck"] == 1 and figures["skipped"] == 1
    assert figures["transfers_elsewhere"] == 1  # to n2, answered n3; to 0 is anyone
    assert figures["by_action"]["transfer"]["tried"] == 3
    assert figures["by_action"]["add-learner"]["unknown"] == 1
