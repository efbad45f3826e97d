"""
C{raftkv cluster} as an operator runs it, in real processes: Ctrl-C at the
terminal (SIGINT to the supervisor's process group) stops every node once
without a traceback; a taken port is named before any node starts; nodes die
with a SIGKILLed supervisor; C{raftkv cluster stop ID} and C{restart ID}
manage one node.  And C{raftkv status --watch} ends quietly on Ctrl-C.
"""

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from twisted_raft.tools import launcher

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="process groups and PR_SET_PDEATHSIG: Linux")

RAFTKV = [
    sys.executable, "-c",
    # SIGINT handled as at a terminal, even when these tests run in the
    # background (a shell starts background jobs with SIGINT ignored, and
    # children inherit that, so the reactor would not take it)
    "import signal; signal.signal(signal.SIGINT, signal.default_int_handler);"
    " from twisted_raft.cli import main; main()",
]


def basePort(n=3):
    """A base port whose C{n} ports are free now."""
    for _ in range(50):
        base = random.randrange(20000, 60000)
        if not launcher.portsTaken(launcher.peerAddresses(n, base)):
            return base
    pytest.skip("no run of free ports found")


def alive(pid):
    """Whether C{pid} runs (a zombie does not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def waitFor(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


class Supervisor:
    """A C{raftkv cluster} in a process group of its own, as a shell runs a job."""

    def __init__(self, tmp_path, nodes=3):
        self.base = basePort(2 * nodes)  # the nodes' ports, then their HTTP ports
        self.httpBase = self.base + nodes
        self.data = tmp_path / "data"
        self.outPath = tmp_path / "cluster.out"
        self.addresses = launcher.peerAddresses(nodes, self.base)
        with open(self.outPath, "wb") as out:
            self.proc = subprocess.Popen(
                RAFTKV + ["cluster", "--nodes", str(nodes), "--base-port", str(self.base),
                          "--http-base-port", str(self.httpBase), "--data", str(self.data)],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=launcher.environment(), process_group=0,
            )

    def output(self):
        return self.outPath.read_text(errors="replace")

    def raftkv(self, *args, timeout=60):
        return subprocess.run(
            RAFTKV + ["--cluster", ",".join(self.addresses), "--timeout", "2", *args],
            capture_output=True, text=True, env=launcher.environment(), timeout=timeout,
        )

    def action(self, *args):
        r = self.raftkv("cluster", *args, "--data", str(self.data))
        assert r.returncode == 0, (r.stdout, r.stderr, self.output())
        return r.stdout

    def pids(self):
        """C{{node id: pid}} of the nodes that answer status."""
        r = self.raftkv("status", "--json")
        nodes = json.loads(r.stdout)["nodes"] if r.stdout else []
        return {n["node_id"]: n["pid"] for n in nodes if n["up"]}

    def waitReady(self):
        waitFor(lambda: "ready: leader is" in self.output(), 60,
                "a leader:\n" + self.output())
        return waitFor(lambda: (p := self.pids()) and len(p) == len(self.addresses) and p,
                       30, "every node's status")

    def logs(self):
        return "".join(p.read_text(errors="replace") for p in sorted(self.data.glob("n*.log")))

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def supervisor(tmp_path):
    s = Supervisor(tmp_path)
    try:
        yield s
    finally:
        s.kill()


def httpStatus(url):
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def test_ctrl_c_stops_every_node_once_without_tracebacks(supervisor):
    pids = supervisor.waitReady()
    assert all(alive(p) for p in pids.values())
    # every node serves its HTTP side, as the banner says
    for i in (1, 2, 3):
        url = f"http://127.0.0.1:{supervisor.httpBase + i - 1}/"
        assert url in supervisor.output()
        assert httpStatus(url + "health") in (200, 503)
    # the terminal's Ctrl-C: SIGINT to the foreground process group
    os.killpg(supervisor.proc.pid, signal.SIGINT)
    assert supervisor.proc.wait(timeout=30) == 0, supervisor.output()
    waitFor(lambda: not any(alive(p) for p in pids.values()), 10, "every node to exit")
    out, logs = supervisor.output(), supervisor.logs()
    assert out.count("stopping 3 node(s)") == 1, out
    for text in (out, logs):
        assert "Traceback" not in text and "ReactorNotRunning" not in text, text[-3000:]
    # each node got one signal, and stopped as asked (not killed)
    for i in (1, 2, 3):
        assert f"[n{i}] stopped" in out, out
    assert "killed" not in out


def test_nodes_die_with_a_killed_supervisor(supervisor):
    pids = supervisor.waitReady()
    os.kill(supervisor.proc.pid, signal.SIGKILL)
    supervisor.proc.wait()
    waitFor(lambda: not any(alive(p) for p in pids.values()), 10,
            f"the nodes {pids} to die with the supervisor")


def test_stop_and_restart_one_node(supervisor):
    pids = supervisor.waitReady()
    out = supervisor.action("stop", "2")
    assert out == f"stopped node 2 ({supervisor.addresses[1]})\n"
    waitFor(lambda: not alive(pids[2]), 10, "node 2 to exit")
    assert alive(pids[1]) and alive(pids[3])
    assert sorted(supervisor.pids()) == [1, 3]
    out = supervisor.action("restart", "2")
    newPid = int(out.rsplit("pid ", 1)[1])
    assert out.startswith(f"restarted node 2 at {supervisor.addresses[1]}, pid ")
    assert alive(newPid) and newPid != pids[2]
    assert supervisor.pids()[2] == newPid
    # a restart of a running node replaces its process
    out = supervisor.action("restart", "3")
    waitFor(lambda: not alive(pids[3]), 10, "node 3's old process to exit")
    assert supervisor.pids()[3] == int(out.rsplit("pid ", 1)[1]) != pids[3]
    assert supervisor.proc.poll() is None
    assert "died" not in supervisor.output()


def test_a_taken_port_is_named_and_nothing_starts(tmp_path):
    base = basePort(6)
    s = socket.socket()
    s.bind(("127.0.0.1", base + 1))
    s.listen()
    try:
        r = subprocess.run(
            RAFTKV + ["cluster", "--base-port", str(base), "--http-base-port", str(base + 3),
                      "--data", str(tmp_path / "data")],
            capture_output=True, text=True, env=launcher.environment(), timeout=60,
        )
    finally:
        s.close()
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert f"port {base + 1} of n2 (127.0.0.1:{base + 1}) is taken" in r.stderr
    assert "Traceback" not in r.stderr
    assert not list((tmp_path / "data").glob("n*.log"))  # no node was started


def test_status_watch_ends_quietly_on_ctrl_c(tmp_path):
    """C{raftkv status --watch} against nodes that are down: a block per
    round, and Ctrl-C ends it with status 0 and no traceback."""
    out = tmp_path / "watch.out"
    with open(out, "wb") as f:
        proc = subprocess.Popen(
            RAFTKV + ["--cluster", launcher.localAddresses(1)[0], "--timeout", "0.2",
                      "status", "--watch"],
            stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=launcher.environment(), process_group=0,
        )
    try:
        waitFor(lambda: out.read_text().count("down") >= 2, 30, "two rounds")
        os.killpg(proc.pid, signal.SIGINT)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = out.read_text()
    assert "Traceback" not in text and "ID  ADDRESS" in text, text
