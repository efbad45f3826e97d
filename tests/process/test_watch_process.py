"""
C{raftkv watch} end to end: three real twistd nodes, a C{raftkv watch
--prefix} process, writes made with C{raftkv put} and C{raftkv delete};
then SIGKILL of the node the watch is on: every event still arrives
exactly once, in order, and SIGINT / SIGTERM end the watch quietly.
"""

import json
import signal
import subprocess
import sys
import time

import pytest
import pytest_twisted

from twisted_raft.tools import launcher

from tests.process.support import waitForLeader

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="process groups: Linux"),
]

RAFTKV = [
    sys.executable, "-c",
    # SIGINT as at a terminal even when the tests run in the background
    # (children of a background job inherit SIGINT ignored)
    "import signal; signal.signal(signal.SIGINT, signal.default_int_handler);"
    " from twisted_raft.cli import main; main()",
]


def raftkv(addresses, *args):
    """Run one C{raftkv} command; @return: its stdout (it must succeed)."""
    out = subprocess.run(
        RAFTKV + ["--cluster", ",".join(addresses), "--timeout", "10", *args],
        capture_output=True, text=True, env=launcher.environment(), timeout=30,
    )
    assert out.returncode == 0, (args, out.stdout, out.stderr)
    return out.stdout


class WatchProcess:
    def __init__(self, base, name, addresses, *args):
        self.out = base / f"{name}.out"
        self.err = base / f"{name}.err"
        with open(self.out, "wb") as out, open(self.err, "wb") as err:
            self.proc = subprocess.Popen(
                launcher.guardedArgv(RAFTKV + ["--cluster", ",".join(addresses), *args]),
                stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=launcher.environment(),
            )

    def lines(self):
        text = self.out.read_text()
        return text[:text.rfind("\n") + 1].splitlines()

    def waitFor(self, done, what, c, deadline=20.0):
        """Wait until C{done(lines)} holds; @return: the lines."""
        end = time.monotonic() + deadline
        while not done(self.lines()):
            if self.proc.poll() is not None or time.monotonic() > end:
                pytest.fail(
                    f"watch printed {len(self.lines())} lines, not {what} (exit"
                    f" {self.proc.poll()}):\n{self.out.read_text()}\n{self.err.read_text()}\n"
                    f"{c.logs()}"
                )
            time.sleep(0.05)
        return self.lines()

    def waitForLines(self, n, c, deadline=20.0):
        return self.waitFor(lambda lines: len(lines) >= n, f"{n} lines", c, deadline)

    def stop(self, sig):
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            pytest.fail(f"watch did not exit on {sig!r}")

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest_twisted.inlineCallbacks
def test_a_watch_keeps_every_event_once_through_sigkill_of_its_node(cluster, tmp_path):
    c = cluster
    for i in c.ids:
        c.start(i)
    leader = yield waitForLeader(c)
    # the watch goes to the first address it is given: the leader's
    on = leader
    order = [c.peers[on - 1]] + [a for i, a in enumerate(c.peers, 1) if i != on]
    watch = WatchProcess(tmp_path, "watch", order, "watch", "w/", "--prefix", "--rev", "1",
                         "--json")
    text = WatchProcess(tmp_path, "text", order, "watch", "w/", "--prefix", "--rev", "1")
    try:
        expected = []
        for n in range(3):
            revision = int(raftkv(c.peers, "put", f"w/{n}", f"v{n}"))
            expected.append(("put", f"w/{n}", revision))
        raftkv(c.peers, "put", "other", "x")
        watch.waitForLines(3, c)

        c.kill(on)
        for n in range(3, 6):
            revision = int(raftkv(c.peers, "put", f"w/{n % 4}", f"v{n}"))
            expected.append(("put", f"w/{n % 4}", revision))
        revision = int(raftkv(c.peers, "delete", "w/0"))
        expected.append(("delete", "w/0", revision))
        # The last write: events come in revision order, so once the watch
        # has printed it, every event before it has come, and any repeat of
        # one would have come before it too.
        marker = int(raftkv(c.peers, "put", "w/end", "end"))

        def sawMarker(lines):
            return any(json.loads(line)["key"] == "w/end" for line in lines)

        got = [json.loads(line) for line in watch.waitFor(sawMarker, "w/end", c)]
        assert (got[-1]["key"], got[-1]["mod_revision"]) == ("w/end", marker)
        got = got[:-1]
        assert [(e["type"], e["key"], e["mod_revision"]) for e in got] == expected
        assert got[3]["version"] == 1 and got[3]["create_revision"] == got[3]["mod_revision"]
        # w/0 written a second time: its metadata says so
        assert got[4]["key"] == "w/0" and got[4]["version"] == 2
        assert got[4]["create_revision"] == expected[0][2]
        assert all(set(e) == {"type", "key", "value", "create_revision", "mod_revision",
                              "version"} for e in got if e["type"] == "put")
        assert set(got[-1]) == {"type", "key", "mod_revision"}

        # SIGINT: exit quietly
        assert watch.stop(signal.SIGINT) == 0
        assert watch.err.read_text() == ""

        # the text form, then SIGTERM
        lines = text.waitFor(
            lambda lines: any(line.startswith("put w/end = ") for line in lines), "w/end", c
        )
        assert len(lines) == len(expected) + 1
        assert lines[0].startswith("put w/0 = v0  (revision ")
        assert lines[-2].startswith("delete w/0  (revision ")
        assert lines[-1].startswith(f"put w/end = end  (revision {marker}, ")
        assert text.stop(signal.SIGTERM) == 0
        assert text.err.read_text() == ""
    finally:
        watch.kill()
        text.kill()
