"""
Tests for C{python -m twisted_raft.chaos}: the blockable proxy (over real
loopback TCP), the seeded fault schedule, and one whole run against real
node processes (marked C{integration}).
"""

import re
import subprocess
import sys

import pytest
import pytest_twisted
from twisted.internet import defer, protocol
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, connectProtocol
from twisted.python import usage

from twisted_raft.testing.proxy import LinkProxy
from twisted_raft.tools import chaos, faults, history, launcher


# -- the proxy ------------------------------------------------------------------


class Echo(protocol.Protocol):
    def dataReceived(self, data):
        self.transport.write(data)


class EchoFactory(protocol.Factory):
    def __init__(self):
        self.connections = 0

    def buildProtocol(self, addr):
        self.connections += 1
        return Echo()


class Collect(protocol.Protocol):
    def __init__(self):
        self.data = b""
        self.waiting = []
        self.lost = defer.Deferred()

    def dataReceived(self, data):
        self.data += data
        waiting, self.waiting = self.waiting, []
        for n, d in waiting:
            self.expect(n).chainDeferred(d)

    def expect(self, n):
        """Deferred firing once at least C{n} bytes arrived."""
        if len(self.data) >= n:
            return defer.succeed(self.data)
        d = defer.Deferred()
        self.waiting.append((n, d))
        return d

    def connectionLost(self, reason):
        self.lost.callback(None)


def withTimeout(d, reactor, seconds=5):
    return d.addTimeout(seconds, reactor)


@pytest_twisted.inlineCallbacks
def test_proxy_forwards_blocks_and_unblocks():
    from twisted.internet import reactor

    echo = EchoFactory()
    server = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(echo)
    proxy = LinkProxy(reactor, server.getHost().port, name="1->2")
    yield proxy.start()
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", proxy.port, timeout=2)
    try:
        # forwards both ways
        c1 = yield connectProtocol(endpoint, Collect())
        c1.transport.write(b"hello")
        data = yield withTimeout(c1.expect(5), reactor)
        assert data == b"hello"
        assert proxy.connections == 1

        # blocking aborts the existing connection
        proxy.block()
        yield withTimeout(c1.lost, reactor)
        assert proxy.connections == 0

        # ... and new ones are closed at once, never reaching the target
        before = echo.connections
        c2 = yield connectProtocol(endpoint, Collect())
        c2.transport.write(b"x")
        yield withTimeout(c2.lost, reactor)
        assert c2.data == b""
        assert echo.connections == before
        assert proxy.refused >= 1

        # unblocking restores forwarding
        proxy.unblock()
        c3 = yield connectProtocol(endpoint, Collect())
        c3.transport.write(b"again")
        data = yield withTimeout(c3.expect(5), reactor)
        assert data == b"again"
        c3.transport.loseConnection()
        yield withTimeout(c3.lost, reactor)
    finally:
        yield proxy.stop()
        yield server.stopListening()


@pytest_twisted.inlineCallbacks
def test_proxy_closes_client_when_target_is_down():
    from twisted.internet import reactor

    server = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(EchoFactory())
    port = server.getHost().port
    yield server.stopListening()
    proxy = LinkProxy(reactor, port)
    yield proxy.start()
    try:
        c = yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", proxy.port), Collect())
        yield withTimeout(c.lost, reactor)
        assert proxy.connections == 0
    finally:
        yield proxy.stop()


# -- the schedule ---------------------------------------------------------------------


KINDS = list(faults.FAULT_KINDS)


def test_schedule_is_deterministic_per_seed():
    a = faults.makeSchedule(7, 60, 3, KINDS)
    b = faults.makeSchedule(7, 60, 3, KINDS)
    c = faults.makeSchedule(8, 60, 3, KINDS)
    assert a == b
    assert a != c
    assert len(a) >= 4


@pytest.mark.parametrize("seed", range(20))
@pytest.mark.parametrize("nodes", [3, 5])
def test_schedule_shape(seed, nodes):
    schedule = faults.makeSchedule(seed, 60, nodes, KINDS)
    end = 0
    for f in schedule:
        assert f.kind in KINDS
        assert f.at >= 3.0 and f.at >= end  # one at a time, in order
        assert 2.5 <= f.duration <= 6.0
        end = f.at + f.duration + 2.5  # healing gap
        assert f.at + f.duration <= 57.0
        assert sorted(f.order) == list(range(1, nodes + 1))
        if f.kind == "isolate":
            assert f.leader


def test_schedule_respects_kinds():
    schedule = faults.makeSchedule(3, 120, 3, ["kill"])
    assert schedule and {f.kind for f in schedule} == {"kill"}
    assert faults.makeSchedule(3, 120, 3, []) == []


def test_parse_faults():
    assert faults.parseFaults("partition,kill,pause", 3) == KINDS
    assert faults.parseFaults("kill", 3) == ["kill"]
    assert faults.parseFaults("bridge,pause", 5) == ["bridge", "pause"]
    assert faults.parseFaults("partition,kill", 1) == ["kill"]
    assert faults.parseFaults("none", 3) == []
    with pytest.raises(usage.UsageError):
        faults.parseFaults("explode", 3)


def _fault(kind, order, leader=True):
    return faults.Fault(1, kind, 3.0, 3.0, leader, list(order))


def test_partition_plans():
    # isolate the leader: both directions of every link to it
    groups, bridge = faults.planPartition(_fault("isolate", [1, 2, 3]), 3, leader=2)
    assert groups == [[2], [1, 3]] and bridge is None
    assert faults.cutLinks(groups, bridge) == [(1, 2), (2, 1), (2, 3), (3, 2)]
    # halves with the leader put into the minority
    groups, _ = faults.planPartition(_fault("halves", [1, 2, 3, 4, 5]), 5, leader=4)
    assert 4 in groups[0] and len(groups[0]) == 2 and len(groups[1]) == 3
    # a bridge: the bridge node keeps every link
    groups, bridge = faults.planPartition(_fault("bridge", [3, 1, 2], leader=False), 3, leader=1)
    assert bridge == 3 and groups == [[1], [2]]
    assert faults.cutLinks(groups, bridge) == [(1, 2), (2, 1)]
    groups, bridge = faults.planPartition(_fault("bridge", [5, 1, 2, 3, 4], leader=False), 5, leader=0)
    links = faults.cutLinks(groups, bridge)
    assert all(5 not in link for link in links) and len(links) == 8


def test_availability_and_first_success():
    Op = chaos.Op
    ops = [
        Op(client=0, kind="put", key="k", value=b"a", start=0.1, end=0.2),
        Op(client=1, kind="get", key="k", start=2.5, end=2.6, result=b"a"),
        Op(client=1, kind="put", key="k", value=b"b", start=2.7, end=None),
        Op(client=0, kind="put", key="k", value=b"c", start=2.8, end=3.4),
    ]
    fault = _fault("kill", [1, 2, 3])
    fault.injected, fault.healed = 1.0, 2.0
    av = history.availability(sorted(o.end for o in ops if o.end), 0.0, 4.0, [fault])
    assert av["all"][:2] == (3, 4)
    assert av["faulty"][:2] == (0, 1)  # only [1, 2) overlaps the fault
    assert av["healthy"][:2] == (3, 3)
    assert history.firstSuccessAfter(ops, 1.0) == pytest.approx(1.6)
    assert history.firstSuccessAfter(ops, 1.0, writesOnly=True) == pytest.approx(2.4)


def test_history_round_trip():
    op = chaos.Op(client=2, kind="cas", key="k1", value=b"c2-3", expected=None,
                  start=10.5, end=None)
    d = history.opToJSON(op, 10.0)
    back = history.opFromJSON(d)
    assert back.kind == "cas" and back.value == b"c2-3" and back.expected is None
    assert back.start == pytest.approx(0.5) and back.end is None
    get = chaos.Op(client=0, kind="get", key="k", start=1.0, end=2.0, result=b"v")
    assert history.opFromJSON(history.opToJSON(get, 0.0)).result == b"v"


def test_usage_errors_exit_2(capsys):
    assert chaos.main(["--nodes", "0"]) == chaos.EXIT_USAGE
    assert chaos.main(["--faults", "meteor"]) == chaos.EXIT_USAGE
    assert chaos.main(["--bogus"]) == chaos.EXIT_USAGE
    assert "error:" in capsys.readouterr().err


def test_definitely_not_applied():
    from twisted_raft.client import OutcomeUnknown
    from twisted_raft.rpc.commands import InvalidArgument, NotProposed, Unavailable

    assert chaos._isDefinitelyNotApplied(NotProposed("not proposed: no leader"))
    assert chaos._isDefinitelyNotApplied(InvalidArgument("bad key"))
    assert not chaos._isDefinitelyNotApplied(Unavailable("no quorum in time"))
    assert not chaos._isDefinitelyNotApplied(OutcomeUnknown("not proposed?"))
    assert not chaos._isDefinitelyNotApplied(ConnectionError("lost"))


# -- a whole run -------------------------------------------------------------------


@pytest.mark.integration
def test_whole_run_seed_1(tmp_path):
    env = launcher.environment()
    historyFile = tmp_path / "history.jsonl"
    proc = subprocess.run(
        [sys.executable, "-m", "twisted_raft.chaos", "--seconds", "60", "--seed", "1",
         "--history", str(historyFile)],
        cwd=str(tmp_path), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        timeout=400,
    )
    out = proc.stdout.decode("utf-8", "replace")
    assert proc.returncode == 0, out[-6000:]
    m = re.search(r"^faults injected: (\d+)", out, re.MULTILINE)
    assert m and int(m.group(1)) >= 3, out[-3000:]
    assert re.search(r"^linearizability: linearizable", out, re.MULTILINE), out[-3000:]
    assert "convergence: ok" in out
    assert re.search(r"^observability: ok: \d+ answers", out, re.MULTILINE), out[-3000:]
    assert "observability: FAILED" not in out
    assert re.search(r"^watch: ok: \d+ events", out, re.MULTILINE), out[-3000:]
    assert historyFile.exists() and historyFile.stat().st_size > 0
