"""
A screenshot of the dashboard for the README: a local three-node cluster
with C{--http}, a small paced load (a few dozen writes and a hundred-odd
reads a second, far below what the cluster can do: the chart needs shape,
not a benchmark), one follower killed near the end so a C{down} row shows,
and a PNG saved through the same headless Chromium as the browser test.

    python -m twisted_raft.tools.dashshot [--out docs/dashboard.png] [--seconds 45]
"""

import math
import os
import shutil
import sys
import tempfile
import time

from twisted.internet import defer, task, threads

from twisted_raft.tools import browser, launcher, load
from twisted_raft.tools.command import ToolOptions, parseOptions

PAGE_NODE = 1
"""The node whose dashboard is shot."""


class Options(ToolOptions):
    synopsis = "python -m twisted_raft.tools.dashshot [options]"
    optParameters = [
        ["out", "o", os.path.join("docs", "dashboard.png"), "the PNG to write"],
        ["seconds", "s", 45.0, "seconds of load before the shot", float],
        ["width", None, 1200, "browser window width", int],
        ["height", None, 840, "browser window height", int],
    ]
    optFlags = [["no-kill", None, "keep every node up (no down row in the shot)"]]


class PacedLoad:
    """
    Writes and reads at a rate that drifts slowly (a sine over about half a
    minute), issued every L{TICK} seconds with at most L{MAX_IN_FLIGHT}
    operations outstanding, so it never becomes a flood.
    """

    TICK = 0.05
    MAX_IN_FLIGHT = 32

    def __init__(self, reactor, client):
        self.reactor = reactor
        self.client = client
        self.t0 = time.monotonic()
        self.n = 0
        self.inFlight = 0
        self.errors = 0
        self.loop = task.LoopingCall(self._tick)
        self.loop.clock = reactor

    def start(self):
        self.loop.start(self.TICK)

    def stop(self):
        if self.loop.running:
            self.loop.stop()

    def _rates(self):
        t = time.monotonic() - self.t0
        writes = 40 + 25 * math.sin(t / 5.0)
        reads = 120 + 60 * math.sin(t / 7.0 + 1.0)
        return writes, reads

    def _tick(self):
        writes, reads = self._rates()
        for rate, op in ((writes, self._put), (reads, self._get)):
            count = int(rate * self.TICK + (self.n % 10) / 10)
            for _ in range(count):
                if self.inFlight >= self.MAX_IN_FLIGHT:
                    return
                self.n += 1
                self.inFlight += 1
                d = op(f"shot-{self.n % 500:04d}")
                d.addErrback(self._failed)
                d.addBoth(self._done)

    def _put(self, key):
        return self.client.put(key, b"x" * 64)

    def _get(self, key):
        return self.client.get(key)

    def _failed(self, failure):
        self.errors += 1

    def _done(self, _):
        self.inFlight -= 1


def say(text):
    print(f"dashshot: {text}", flush=True)


async def shoot(reactor, options):
    why = browser.missing()
    if why is not None:
        raise SystemExit(f"dashshot: {why}")
    root = tempfile.mkdtemp(prefix="raftkv-dashshot-")
    ports = launcher.freePorts(6)
    addresses = [f"{launcher.HOST}:{p}" for p in ports[:3]]
    nodes = launcher.Nodes(addresses, root, httpPorts=ports[3:])
    chromium = None
    pace = None
    try:
        nodes.start()
        await load.waitForLeader(reactor, addresses, nodes)
        say(f"cluster up; dashboard at {nodes.url(PAGE_NODE)}")
        chromium = await threads.deferToThread(
            browser.HeadlessChromium, options["width"], options["height"]
        )
        await threads.deferToThread(chromium.driver.get, nodes.url(PAGE_NODE))
        client = (await load.makeClients(reactor, addresses, 1, 5.0, raw=True))[0]
        pace = PacedLoad(reactor, client)
        pace.start()
        seconds = options["seconds"]
        killAt = max(0.0, seconds - 6.0)
        await task.deferLater(reactor, killAt, lambda: None)
        if not options["no-kill"]:
            victim = _follower(nodes, await _leaderId(reactor, addresses))
            if victim is not None:
                say(f"killing follower {victim}")
                nodes.kill(victim)
        await task.deferLater(reactor, seconds - killAt, lambda: None)
        pace.stop()
        out = os.path.abspath(options["out"])
        os.makedirs(os.path.dirname(out), exist_ok=True)
        saved = await threads.deferToThread(chromium.driver.save_screenshot, out)
        if not saved:
            raise SystemExit(f"dashshot: the browser could not write {out}")
        say(f"wrote {out} ({pace.n} operations, {pace.errors} failed)")
    finally:
        if pace is not None:
            pace.stop()
        if chromium is not None:
            await threads.deferToThread(chromium.quit)
        nodes.stop()
        shutil.rmtree(root, ignore_errors=True)


async def _leaderId(reactor, addresses):
    from twisted_raft.client import RaftKVClient

    client = RaftKVClient(addresses, reactor, timeout=2.0)
    try:
        return (await client.status())["leader_id"]
    finally:
        await client.close()


def _follower(nodes, leader):
    """A node to kill: neither the leader nor the page's node."""
    for i in nodes.ids:
        if i not in (PAGE_NODE, leader):
            return i
    return None


def main(argv=None):
    options = parseOptions(Options(), argv)
    if options is None:
        return 2

    def run(reactor):
        return defer.ensureDeferred(shoot(reactor, options))

    task.react(run)
    return 0


if __name__ == "__main__":
    sys.exit(main())
