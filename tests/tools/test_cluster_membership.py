"""
C{raftkv cluster add|remove|stop|restart}: L{LocalCluster.addNode}/
L{removeNode}/L{stopNode}/L{restartNode} with fake processes, a fake client
and a task.Clock; the port check; the record of local nodes across runs; the
command line; and the control socket on the real reactor.
"""

import io
import json
import os

import pytest
import pytest_twisted
from twisted.internet import defer
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from twisted_raft import cli
from twisted_raft.rpc.commands import InvalidArgument, Unavailable
from twisted_raft.tools import cluster, clustercontrol
from twisted_raft.tools.cluster import ClusterError, LocalCluster


class FakeProcess:
    """The process transport of a spawned node: signals end it."""

    def __init__(self, proto):
        self.proto = proto
        self.signals = []

    def signalProcess(self, name):
        self.signals.append(name)
        if name in ("TERM", "KILL") and self.proto.running:
            self.proto.processEnded(Failure(ProcessTerminated(signal=15)))


class Spawner:
    def __init__(self):
        self.argvs = {}
        self.procs = {}
        self.onSpawn = None

    def __call__(self, reactor, proto, argv, cwd=None):
        nodeId = int(argv[argv.index("--id") + 1])
        self.argvs[nodeId] = argv
        self.procs[nodeId] = proto
        proto.makeConnection(FakeProcess(proto))
        if self.onSpawn is not None:
            self.onSpawn(nodeId, proto)


class Cluster:
    """What the fake clients saw, and what they answer."""

    def __init__(self):
        self.calls = []
        self.silent = set()  # addresses whose node does not answer Status
        self.addError = None
        self.removeError = None

    def client(self, addresses):
        return FakeClient(self, list(addresses))


class FakeClient:
    def __init__(self, world, addresses):
        self.world = world
        self.addresses = addresses

    def status(self, address):
        if address in self.world.silent:
            return defer.fail(Unavailable(f"status of {address}: refused"))
        return defer.succeed({"address": address})

    def addMember(self, nodeId, address, learner=False):
        self.world.calls.append(("add", nodeId, address, learner, self.addresses))
        if self.world.addError:
            return defer.fail(self.world.addError)
        return defer.succeed(40 + nodeId)

    def removeMember(self, nodeId):
        self.world.calls.append(("remove", nodeId, self.addresses))
        if self.world.removeError:
            return defer.fail(self.world.removeError)
        return defer.succeed(50 + nodeId)

    def close(self):
        return defer.succeed(None)


def make(tmp_path, world=None, spawner=None, nodes=3, taken=(), httpBasePort=0):
    """A started L{LocalCluster}; C{taken}: the addresses whose port is taken."""
    world = world or Cluster()
    spawner = spawner or Spawner()
    echoed = []
    clock = Clock()
    c = LocalCluster(clock, nodes=nodes, dataDir=str(tmp_path / "data"), echo=echoed.append,
                     spawn=spawner, clientFactory=world.client, python="/py",
                     portsTaken=lambda addresses: [(a, "Address already in use")
                                                   for a in addresses if a in taken],
                     httpBasePort=httpBasePort)
    c.start()
    return c, world, spawner, echoed, clock


def run(clock, coroutine, steps=200):
    """Run C{coroutine} on the Clock until it is done."""
    d = defer.Deferred.fromCoroutine(coroutine)
    box = []
    d.addBoth(box.append)
    for _ in range(steps):
        if box:
            break
        clock.advance(0.2)
    assert box, "never finished"
    if isinstance(box[0], Failure):
        box[0].raiseException()
    return box[0]


def flag(argv, name):
    return argv[argv.index(name) + 1]


def test_add_starts_the_next_node_with_join_and_asks_the_cluster(tmp_path):
    c, world, spawner, echoed, clock = make(tmp_path)
    assert sorted(spawner.argvs) == [1, 2, 3]
    assert "--join" not in spawner.argvs[1]
    assert run(clock, c.addNode()) == (4, "127.0.0.1:8004", 44)
    argv = spawner.argvs[4]
    assert "--join" in argv and flag(argv, "--peers") == "4=127.0.0.1:8004"
    assert flag(argv, "--data") == os.path.join(c.dataDir, "n4")
    assert flag(argv, "--cluster-token-file") == os.path.join(c.dataDir, "cluster-token")
    assert world.calls == [("add", 4, "127.0.0.1:8004", False,
                            ["127.0.0.1:8001", "127.0.0.1:8002", "127.0.0.1:8003"])]
    assert c.nodes()[4] == "127.0.0.1:8004" and 4 in c.running()
    with open(os.path.join(c.dataDir, cluster.LOCAL_NODES_FILE)) as f:
        assert json.load(f) == {"added": {"4": "127.0.0.1:8004"}, "removed": []}
    assert any("n4 (127.0.0.1:8004) added as a voter, revision 44" in line for line in echoed)


def test_add_waits_until_the_new_node_answers(tmp_path):
    c, world, spawner, echoed, clock = make(tmp_path)
    world.silent.add("127.0.0.1:8004")
    d = defer.Deferred.fromCoroutine(c.addNode(learner=True))
    clock.advance(1)
    assert not d.called and world.calls == []  # n4 does not answer yet
    world.silent.clear()
    clock.advance(0.2)
    assert d.called
    assert world.calls[0][:4] == ("add", 4, "127.0.0.1:8004", True)


def test_a_node_that_dies_at_start_is_not_added(tmp_path):
    c, world, spawner, echoed, clock = make(tmp_path)
    def dies(nodeId, proto):
        proto.outReceived(b"x [service#critical] node 4 cannot listen: in use\nx [-] stopped\n")
        proto.processEnded(Failure(ProcessDone(1)))

    spawner.onSpawn = dies
    with pytest.raises(ClusterError, match="n4 exited at start: .*cannot listen: in use; see"):
        run(clock, c.addNode())
    assert world.calls == [] and 4 not in c.nodes()
    assert not os.path.exists(os.path.join(c.dataDir, cluster.LOCAL_NODES_FILE))
    assert any("n4 (127.0.0.1:8004) died" in line for line in echoed)  # said at once
    assert not c.finished.called
    spawner.onSpawn = None
    assert run(clock, c.addNode())[0] == 5  # n4's data dir is never reused


def test_a_node_that_never_answers_is_stopped(tmp_path):
    c, world, spawner, echoed, clock = make(tmp_path)
    world.silent.add("127.0.0.1:8004")
    with pytest.raises(ClusterError, match="did not answer at 127.0.0.1:8004 within 30 s"):
        run(clock, c.addNode(), steps=1000)
    assert spawner.procs[4].transport.signals == ["TERM"]
    assert 4 not in c.nodes() and world.calls == []
    assert "[n4] stopped: it did not start" in echoed


def test_a_node_the_cluster_does_not_add_keeps_running_and_is_recorded(tmp_path):
    world = Cluster()
    world.addError = InvalidArgument("address taken")
    c, world, spawner, echoed, clock = make(tmp_path, world)
    with pytest.raises(ClusterError, match="keeps running.*raftkv cluster remove 4"):
        run(clock, c.addNode())
    assert spawner.procs[4].running and spawner.procs[4].transport.signals == []
    assert c.added == {4: "127.0.0.1:8004"}  # it may be a learner now


def test_remove_asks_the_cluster_then_stops_the_node(tmp_path):
    c, world, spawner, echoed, clock = make(tmp_path)
    assert run(clock, c.removeNode(2)) == 52
    assert world.calls == [("remove", 2, ["127.0.0.1:8001", "127.0.0.1:8003"])]
    assert spawner.procs[2].transport.signals == ["TERM"]
    assert not spawner.procs[2].running
    assert 2 not in c.nodes() and c.removed == {2}
    assert "[n2] stopped: removed from the cluster" in echoed
    assert not any("died" in line for line in echoed)
    assert not c.finished.called


def test_a_node_the_cluster_does_not_remove_keeps_running(tmp_path):
    world = Cluster()
    world.removeError = Unavailable("no leader")
    c, world, spawner, echoed, clock = make(tmp_path, world)
    with pytest.raises(ClusterError, match="did not remove node 3: no leader"):
        run(clock, c.removeNode(3))
    assert spawner.procs[3].running and c.removed == set()


def test_only_running_local_nodes_can_be_removed(tmp_path):
    c, world, spawner, echoed, clock = make(tmp_path)
    with pytest.raises(ClusterError, match="node 7 is not a running local node"):
        run(clock, c.removeNode(7))
    assert world.calls == []


def test_the_next_run_runs_the_same_nodes(tmp_path):
    c, world, spawner, echoed, clock = make(tmp_path)
    run(clock, c.addNode())
    run(clock, c.removeNode(2))
    run(clock, c.removeNode(4))
    assert run(clock, c.addNode())[0] == 5  # ids are never reused
    # a new `raftkv cluster` on the same data dir
    c2, _, spawner2, _, _ = make(tmp_path)
    assert sorted(spawner2.argvs) == [1, 3, 5]
    assert "--join" in spawner2.argvs[5] and "--join" not in spawner2.argvs[1]
    assert flag(spawner2.argvs[1], "--peers") == "127.0.0.1:8001,127.0.0.1:8002,127.0.0.1:8003"
    assert c2.nodes() == {1: "127.0.0.1:8001", 3: "127.0.0.1:8003", 5: "127.0.0.1:8005"}
    assert "n5  127.0.0.1:8005" in cluster.banner(c2.nodes())


def test_an_unreadable_record_is_refused(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / cluster.LOCAL_NODES_FILE).write_text("{nope")
    with pytest.raises(ClusterError, match="unreadable"):
        make(tmp_path)


def test_an_added_node_gets_its_own_certificate(tmp_path):
    from twisted_raft.tools import launcher

    tls = launcher.LocalTLS(str(tmp_path / "data" / "tls"), 3)
    world, spawner = Cluster(), Spawner()
    c = LocalCluster(Clock(), nodes=3, dataDir=str(tmp_path / "data"), echo=lambda line: None,
                     spawn=spawner, clientFactory=world.client, tls=tls,
                     portsTaken=lambda addresses: [])
    c.start()
    run(c.reactor, c.addNode())
    cert = flag(spawner.argvs[4], "--tls-cert")
    assert cert == os.path.join(tls.directory, "node4.pem") and os.path.exists(cert)
    assert flag(spawner.argvs[4], "--tls-ca") == tls.ca


# -- the command line --------------------------------------------------------------


def test_add_and_remove_parse():
    o = cli.parseArgs(["cluster", "add", "--learner", "--data", "d"]).subOptions
    assert o.subCommand == "add" and o.subOptions["learner"] and o.subOptions["data"] == "d"
    o = cli.parseArgs(["cluster", "remove", "2"]).subOptions
    assert o.subCommand == "remove" and o.subOptions["id"] == 2
    assert o.subOptions["data"] == "data"
    o = cli.parseArgs(["cluster", "remove", "3", "--data", "d"]).subOptions
    assert o.subOptions["id"] == 3 and o.subOptions["data"] == "d"
    # running a cluster still takes extra node arguments after --
    o = cli.parseArgs(["cluster", "--nodes", "2", "--", "--snapshot-entries", "5"]).subOptions
    assert o.subCommand is None and o["extra"] == ["--snapshot-entries", "5"]


@pytest.mark.parametrize("argv", [
    ["cluster", "remove"], ["cluster", "remove", "x"], ["cluster", "remove", "0"],
    ["cluster", "add", "extra"], ["cluster", "remove", "1", "2"],
])
def test_bad_add_and_remove_are_usage_errors(argv, capsys):
    with pytest.raises(SystemExit) as exited:
        cli.main(argv)
    assert exited.value.code == 2
    assert "error:" in capsys.readouterr().err


# -- the control socket --------------------------------------------------------------


class Owner:
    """Stands for the running LocalCluster behind the control socket."""

    def __init__(self, dataDir):
        self.dataDir = dataDir
        self.echoed = []
        self.echo = self.echoed.append
        self.calls = []

    async def addNode(self, learner=False):
        self.calls.append(("add", learner))
        return 4, "127.0.0.1:8004", 44

    async def removeNode(self, nodeId):
        self.calls.append(("remove", nodeId))
        if nodeId == 9:
            raise ClusterError("node 9 is not a running local node")
        return 61

    async def stopNode(self, nodeId):
        self.calls.append(("stop", nodeId))
        if nodeId == 9:
            raise ClusterError("node 9 is not a running local node")
        return f"127.0.0.1:800{nodeId}"

    async def restartNode(self, nodeId):
        self.calls.append(("restart", nodeId))
        return f"127.0.0.1:800{nodeId}", 4321


@pytest_twisted.ensureDeferred
async def test_add_and_remove_go_to_the_running_cluster(tmp_path):
    from twisted.internet import reactor

    owner = Owner(str(tmp_path))
    port = await clustercontrol.serve(reactor, owner)
    try:
        assert oct(os.stat(tmp_path / clustercontrol.CONTROL_SOCKET).st_mode & 0o777) == "0o600"
        out = io.StringIO()
        await clustercontrol._act(reactor, "add", {"data": str(tmp_path), "learner": 1}, out)
        await clustercontrol._act(reactor, "remove", {"data": str(tmp_path), "id": 3}, out)
        assert out.getvalue() == (
            "added node 4 at 127.0.0.1:8004 as a learner, revision 44\n"
            "removed node 3, revision 61\n"
        )
        assert owner.calls == [("add", True), ("remove", 3)]
        with pytest.raises(clustercontrol.ClusterFailed, match="node 9 is not a running"):
            await clustercontrol.send(reactor, str(tmp_path), clustercontrol.RemoveNode,
                                      node_id=9)
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_no_running_cluster_is_a_clear_error(tmp_path):
    from twisted.internet import reactor

    with pytest.raises(clustercontrol.ClusterFailed, match="no raftkv cluster is running"):
        await clustercontrol.send(reactor, str(tmp_path), clustercontrol.AddNode, learner=False)


@pytest_twisted.ensureDeferred
async def test_stop_and_restart_go_to_the_running_cluster(tmp_path):
    from twisted.internet import reactor

    owner = Owner(str(tmp_path))
    port = await clustercontrol.serve(reactor, owner)
    try:
        out = io.StringIO()
        await clustercontrol._act(reactor, "stop", {"data": str(tmp_path), "id": 2}, out)
        await clustercontrol._act(reactor, "restart", {"data": str(tmp_path), "id": 2}, out)
        assert out.getvalue() == (
            "stopped node 2 (127.0.0.1:8002)\n"
            "restarted node 2 at 127.0.0.1:8002, pid 4321\n"
        )
        assert owner.calls == [("stop", 2), ("restart", 2)]
        with pytest.raises(clustercontrol.ClusterFailed, match="node 9 is not a running"):
            await clustercontrol.send(reactor, str(tmp_path), clustercontrol.StopNode, node_id=9)
    finally:
        await port.stopListening()


# -- one node: stop and restart; ports ------------------------------------------------


def test_stop_and_restart_parse():
    o = cli.parseArgs(["cluster", "stop", "2", "--data", "d"]).subOptions
    assert o.subCommand == "stop" and o.subOptions["id"] == 2 and o.subOptions["data"] == "d"
    o = cli.parseArgs(["cluster", "restart", "3"]).subOptions
    assert o.subCommand == "restart" and o.subOptions["id"] == 3


@pytest.mark.parametrize("argv", [
    ["cluster", "stop"], ["cluster", "stop", "x"], ["cluster", "restart", "0"],
    ["cluster", "restart", "1", "2"],
])
def test_bad_stop_and_restart_are_usage_errors(argv, capsys):
    with pytest.raises(SystemExit) as exited:
        cli.main(argv)
    assert exited.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_stop_ends_the_process_and_keeps_the_member(tmp_path):
    c, world, spawner, echoed, clock = make(tmp_path)
    assert run(clock, c.stopNode(2)) == "127.0.0.1:8002"
    assert spawner.procs[2].transport.signals == ["TERM"] and not spawner.procs[2].running
    assert 2 in c.nodes() and 2 not in c.running() and c.removed == set()
    assert world.calls == []  # no membership change
    assert "[n2] stopped: by raftkv cluster stop" in echoed
    assert not any("died" in line for line in echoed) and not c.finished.called
    with pytest.raises(ClusterError, match="node 2 is not a running local node"):
        run(clock, c.stopNode(2))


def test_restart_starts_a_stopped_node_with_the_same_command_line(tmp_path):
    c, world, spawner, echoed, clock = make(tmp_path)
    first = spawner.argvs[2]
    run(clock, c.stopNode(2))
    address, pid = run(clock, c.restartNode(2))
    assert address == "127.0.0.1:8002"
    assert spawner.argvs[2] == first and spawner.procs[2].running
    assert c.running() == c.nodes()


def test_restart_stops_a_running_node_first(tmp_path):
    c, world, spawner, echoed, clock = make(tmp_path)
    old = spawner.procs[3]
    run(clock, c.restartNode(3))
    assert old.transport.signals == ["TERM"] and not old.running
    assert spawner.procs[3] is not old and spawner.procs[3].running
    assert "[n3] stopped: to restart it" in echoed
    assert any(line.startswith("[cluster] n3 (127.0.0.1:8003) restarted") for line in echoed)


def test_restart_of_a_node_that_does_not_answer_stops_it(tmp_path):
    world = Cluster()
    c, world, spawner, echoed, clock = make(tmp_path, world)
    world.silent.add("127.0.0.1:8002")
    with pytest.raises(ClusterError, match="did not answer"):
        run(clock, c.restartNode(2), steps=400)
    assert not spawner.procs[2].running


def test_restart_of_an_added_node_joins_again(tmp_path):
    c, world, spawner, echoed, clock = make(tmp_path)
    run(clock, c.addNode())
    run(clock, c.restartNode(4))
    assert "--join" in spawner.argvs[4]


def test_only_local_nodes_restart(tmp_path):
    c, world, spawner, echoed, clock = make(tmp_path)
    with pytest.raises(ClusterError, match="node 7 is not a local node"):
        run(clock, c.restartNode(7))


def test_a_taken_port_starts_no_node(tmp_path):
    with pytest.raises(ClusterError) as e:
        make(tmp_path, taken={"127.0.0.1:8002"})
    assert str(e.value).startswith(
        "port 8002 of n2 (127.0.0.1:8002) is taken: Address already in use"
    )


def test_every_node_serves_http_on_its_own_port(tmp_path):
    c, world, spawner, echoed, clock = make(tmp_path, httpBasePort=9101)
    for i in (1, 2, 3):
        argv = spawner.argvs[i]
        assert argv[argv.index("--http") + 1] == f"tcp:{9100 + i}:interface=127.0.0.1"
    run(clock, c.addNode())
    assert spawner.argvs[4][spawner.argvs[4].index("--http") + 1] == (
        "tcp:9104:interface=127.0.0.1"
    )
    text = cluster.banner(c.nodes(), http={i: c.httpAddress(i) for i in c.nodes()})
    assert "http://127.0.0.1:9101/" in text and "http://127.0.0.1:9104/" in text
    c2, _, spawner2, _, _ = make(tmp_path / "b")
    assert "--http" not in spawner2.argvs[1]


def test_a_taken_http_port_starts_no_node(tmp_path):
    with pytest.raises(ClusterError) as e:
        make(tmp_path, taken={"127.0.0.1:9103"}, httpBasePort=9101)
    assert str(e.value).startswith(
        "port 9103 of n3's HTTP side (127.0.0.1:9103) is taken: Address already in use"
    )


def test_add_checks_the_new_port(tmp_path):
    c, world, spawner, echoed, clock = make(tmp_path)
    c.portsTaken = lambda addresses: [(a, "Address already in use") for a in addresses]
    with pytest.raises(ClusterError, match="port 8004 of n4"):
        run(clock, c.addNode())
    assert 4 not in spawner.procs and world.calls == []


def test_portsTaken():
    import socket

    from twisted_raft.tools import launcher

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    try:
        busy = f"127.0.0.1:{s.getsockname()[1]}"
        free = launcher.localAddresses(1)[0]
        taken = launcher.portsTaken([busy, free])
        assert [a for a, _ in taken] == [busy] and taken[0][1]
    finally:
        s.close()
