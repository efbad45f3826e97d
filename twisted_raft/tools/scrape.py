"""
Scraping node processes' C{--http} side during a C{raftkv chaos} run:
C{/metrics} and C{/health} of every running node about once a second, each
answer (or its absence) handed on as a L{twisted_raft.tools.observe.Sample}
with the node's id, its lifetime (its start count) and the time.

Deferred-based (C{twisted.web.client.Agent}), each node in a loop of its
own with a short timeout, so a paused or dead node delays nothing else and
nothing here waits on the fault loop or the clients.  What the answers mean
is L{twisted_raft.tools.observe}'s business.
"""

import time

from twisted.internet import defer, task
from twisted.python.failure import Failure

from twisted_raft.tools.launcher import HOST
from twisted_raft.tools.observe import HEALTH, METRICS, PATHS, Sample


def _timedOut(result, timeout):
    # Agent fails a cancelled request with ResponseNeverReceived, which
    # would not say why.
    return Failure(defer.TimeoutError(f"no answer within {timeout:g}s"))


class Scraper:
    """
    @param nodes: C{nodes()} -> C{{id: (http port, node)}} of the node
        processes to scrape now (a L{twisted_raft.tools.launcher.SpawnedNode}
        each: C{running}, C{paused}, C{starts}); one paused is skipped.
    @param record: called with each L{Sample}.
    @param interval: seconds between the starts of two scrapes of a node.
    @param timeout: seconds an answer may take (connecting included).
    """

    def __init__(self, reactor, nodes, record, interval=1.0, timeout=1.0, agent=None):
        self.reactor = reactor
        self.nodes = nodes
        self.record = record
        self.interval = interval
        self.timeout = timeout
        if agent is None:
            from twisted.web.client import Agent

            agent = Agent(reactor, connectTimeout=timeout)
        self.agent = agent
        self.running = False
        self._tick = None
        self._loops = {}

    def start(self):
        self.running = True
        self._tick = task.LoopingCall(self._spawn)
        self._tick.clock = self.reactor
        self._tick.start(self.interval)

    def _spawn(self):
        for nodeId in self.nodes():
            loop = self._loops.get(nodeId)
            if loop is None or loop.called:
                self._loops[nodeId] = self._nodeLoop(nodeId)

    def _sleep(self, seconds):
        return task.deferLater(self.reactor, seconds, lambda: None)

    @defer.inlineCallbacks
    def _nodeLoop(self, nodeId):
        while self.running:
            entry = self.nodes().get(nodeId)
            if entry is None:
                return
            started = time.monotonic()
            port, node = entry
            if not node.paused:
                for path in PATHS:
                    yield self.scrape(nodeId, port, node, path)
            yield self._sleep(max(0.05, self.interval - (time.monotonic() - started)))

    @defer.inlineCallbacks
    def scrape(self, nodeId, port, node, path):
        """
        Ask node C{nodeId} for C{path} once and record the sample, unless
        the node was restarted meanwhile (whose answer it would be is
        unknown).  @return: Deferred[the L{Sample}, or C{None}].
        """
        lifetime = node.starts
        try:
            code, body = yield self.get(port, path)
        except Exception as e:
            sample = Sample(nodeId, lifetime, time.monotonic(), path,
                            error=f"{type(e).__name__}: {e}"[:200])
        else:
            sample = Sample(nodeId, lifetime, time.monotonic(), path, code, body)
        if node.starts != lifetime:
            return None
        self.record(sample)
        return sample

    def get(self, port, path):
        """@return: Deferred[(code, body)] of C{GET path} on C{HOST:port}."""
        from twisted.web.client import readBody

        url = f"http://{HOST}:{port}{path}".encode("ascii")
        d = self.agent.request(b"GET", url)
        d.addCallback(lambda response: readBody(response).addCallback(
            lambda body: (response.code, body)))
        d.addTimeout(self.timeout, self.reactor, onTimeoutCancel=_timedOut)
        return d

    @defer.inlineCallbacks
    def round(self, ids):
        """
        One scrape of C{/health} and C{/metrics} of each node of C{ids}, all
        at once (each recorded).  @return: Deferred[C{{id: {path: Sample or
        None}}}].
        """
        nodes = self.nodes()
        asked = {}
        for i in ids:
            if i in nodes:
                port, node = nodes[i]
                for path in (HEALTH, METRICS):
                    asked[(i, path)] = self.scrape(i, port, node, path)
        results = {i: {HEALTH: None, METRICS: None} for i in ids}
        for (i, path), d in asked.items():
            results[i][path] = yield d
        return results

    @defer.inlineCallbacks
    def stop(self):
        self.running = False
        if self._tick is not None and self._tick.running:
            self._tick.stop()
        yield defer.DeferredList(list(self._loops.values()), consumeErrors=True)
