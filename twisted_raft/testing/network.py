"""
An in-memory network of Raft nodes, driven by a L{task.Clock}.

Each RPC and each answer takes C{latency} seconds; links can be cut one way or
both.  A message on a cut link, or to a node that is down, is lost: its
Deferred never fires, and the caller's own RPC timeout ends the wait, just as
over TCP.
"""

from twisted.internet import defer
from zope.interface import implementer

from twisted_raft.raft.interfaces import ITransport


class Network:
    def __init__(self, clock, latency=0.002):
        self.clock = clock
        self.latency = latency
        self.nodes = {}
        self.cut = set()
        self.delivered = 0

    def transportFor(self, nodeId):
        return NetworkTransport(self, nodeId)

    def register(self, node):
        self.nodes[node.nodeId] = node

    def unregister(self, nodeId):
        self.nodes.pop(nodeId, None)

    def canDeliver(self, src, dst):
        return (src, dst) not in self.cut and dst in self.nodes and src in self.nodes

    def isolate(self, nodeId):
        """Cut every link to and from C{nodeId}."""
        for other in self.allIds():
            if other != nodeId:
                self.cut.add((nodeId, other))
                self.cut.add((other, nodeId))

    def partition(self, *groups):
        """Cut every link between nodes of different C{groups}."""
        for a in groups:
            for b in groups:
                if a is not b:
                    for x in a:
                        for y in b:
                            self.cut.add((x, y))

    def heal(self):
        self.cut.clear()

    def allIds(self):
        ids = set(self.nodes)
        for a, b in self.cut:
            ids.update((a, b))
        return ids

    def call(self, src, dst, method, request):
        d = defer.Deferred()
        if self.canDeliver(src, dst):
            self.clock.callLater(self.latency, self._arrive, src, dst, method, request, d)
        return d

    def _arrive(self, src, dst, method, request, d):
        if not self.canDeliver(src, dst):
            return
        node = self.nodes[dst]
        self.delivered += 1
        answer = getattr(node, method)(request)
        answer.addCallbacks(
            lambda result: self.clock.callLater(self.latency, self._reply, src, dst, result, d),
            lambda failure: None,
        )

    def _reply(self, src, dst, result, d):
        if self.canDeliver(dst, src) and not d.called:
            d.callback(result)


@implementer(ITransport)
class NetworkTransport:
    def __init__(self, network, nodeId):
        self.network = network
        self.nodeId = nodeId

    def requestVote(self, peerId, request):
        return self.network.call(self.nodeId, peerId, "handleRequestVote", request)

    def appendEntries(self, peerId, request):
        return self.network.call(self.nodeId, peerId, "handleAppendEntries", request)
