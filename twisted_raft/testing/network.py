"""
An in-memory network of Raft nodes, driven by a L{task.Clock}.

Each RPC and each answer takes a latency drawn from C{latency} (a number, or
a C{(min, max)} range, which reorders messages); with C{dropRate} a message
is lost, with C{duplicateRate} a request is delivered twice.  Links can be cut
one way or both.  A lost message -- dropped, on a cut link, or to a node that
is down -- never gets an answer: the caller's own RPC timeout ends the wait,
just as over TCP.  All randomness comes from C{rng}, so a seed replays a run.

The last C{traceSize} message events are kept in C{trace} for post-mortems.
"""

import random
from collections import deque

from twisted.internet import defer
from zope.interface import implementer

from twisted_raft.raft.interfaces import ITransport
from twisted_raft.raft.messages import (
    AppendEntries,
    AppendEntriesResult,
    InstallSnapshot,
    InstallSnapshotResult,
    RequestVote,
    TimeoutNow,
    TimeoutNowResult,
)


def describe(message):
    """A short, readable form of a Raft message or answer."""
    if isinstance(message, AppendEntries):
        return (
            f"AppendEntries(t{message.term} prev={message.prevLogIndex}/t{message.prevLogTerm}"
            f" n={len(message.entries)} commit={message.leaderCommit})"
        )
    if isinstance(message, AppendEntriesResult):
        if message.success:
            return f"ok(t{message.term} match={message.matchIndex})"
        return f"reject(t{message.term} conflict={message.conflictIndex}/t{message.conflictTerm})"
    if isinstance(message, RequestVote):
        kind = "PreVote" if message.preVote else "RequestVote"
        transfer = " transfer" if message.transfer else ""
        return (
            f"{kind}(t{message.term} last={message.lastLogIndex}/t{message.lastLogTerm}"
            f"{transfer})"
        )
    if isinstance(message, TimeoutNow):
        return f"TimeoutNow(t{message.term} from={message.leaderId})"
    if isinstance(message, TimeoutNowResult):
        return f"{'accepted' if message.accepted else 'refused'}(t{message.term})"
    if isinstance(message, InstallSnapshot):
        return (
            f"InstallSnapshot(t{message.term} upto={message.meta.lastIndex}/t{message.meta.lastTerm}"
            f" off={message.offset} n={len(message.data)}{' done' if message.done else ''})"
        )
    if isinstance(message, InstallSnapshotResult):
        return (
            f"{'ok' if message.success else 'reject'}(t{message.term}"
            f" next={message.nextOffset})"
        )
    return repr(message)


class Network:
    def __init__(self, clock, latency=0.002, dropRate=0.0, duplicateRate=0.0, rng=None,
                 traceSize=200, refuseDown=True, membersOnly=True):
        """
        @param refuseDown: a call to a node that is down fails at once, as a
            TCP connection to a dead process is refused (and as the AMP
            transport fails a call to an unconnected peer); a cut link still
            loses messages silently.
        @param membersOnly: a node refuses a call from a node it knows was
            removed (L{RaftNode.acceptsPeer}): the membership test of peer
            authentication in production (L{twisted_raft.rpc.peerauth}).
        """
        self.clock = clock
        self.latency = latency if isinstance(latency, tuple) else (latency, latency)
        self.dropRate = dropRate
        self.duplicateRate = duplicateRate
        self.rng = rng or random.Random(0)
        self.nodes = {}
        self.cut = set()
        self.delivered = 0
        self.trace = deque(maxlen=traceSize)
        self.refuseDown = refuseDown
        self.membersOnly = membersOnly
        self.refused = 0

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

    def _note(self, what):
        self.trace.append(f"{self.clock.seconds():.4f} {what}")

    def _delay(self):
        low, high = self.latency
        return low if low == high else self.rng.uniform(low, high)

    def _lost(self, src, dst, message):
        if not self.canDeliver(src, dst):
            self._note(f"{src}->{dst} lost (link down) {describe(message)}")
            return True
        if self.dropRate and self.rng.random() < self.dropRate:
            self._note(f"{src}->{dst} dropped {describe(message)}")
            return True
        return False

    def call(self, src, dst, method, request):
        if self.refuseDown and dst not in self.nodes and (src, dst) not in self.cut:
            self._note(f"{src}->{dst} refused (down) {describe(request)}")
            return defer.fail(ConnectionRefusedError(f"node {dst} is down"))
        d = defer.Deferred()
        if not self._lost(src, dst, request):
            self._note(f"{src}->{dst} send {describe(request)}")
            self.clock.callLater(self._delay(), self._arrive, src, dst, method, request, d)
            if self.duplicateRate and self.rng.random() < self.duplicateRate:
                self._note(f"{src}->{dst} duplicate {describe(request)}")
                # Nobody waits for the duplicate's answer, nor for its refusal.
                duplicate = defer.Deferred()
                duplicate.addErrback(lambda failure: None)
                self.clock.callLater(
                    self._delay(), self._arrive, src, dst, method, request, duplicate
                )
        return d

    def _arrive(self, src, dst, method, request, d):
        if not self.canDeliver(src, dst):
            self._note(f"{src}->{dst} lost in flight {describe(request)}")
            return
        node = self.nodes[dst]
        if self.membersOnly and not node.acceptsPeer(src):
            self._note(f"{src}->{dst} refused (not a member) {describe(request)}")
            self.refused += 1
            self.clock.callLater(self._delay(), self._refuse, src, dst, d)
            return
        self.delivered += 1
        answer = getattr(node, method)(request)
        answer.addCallbacks(lambda result: self._answer(src, dst, result, d), lambda failure: None)

    def _answer(self, src, dst, result, d):
        if not self._lost(dst, src, result):
            self.clock.callLater(self._delay(), self._reply, src, dst, result, d)

    def _refuse(self, src, dst, d):
        if self.canDeliver(dst, src) and not d.called:
            d.errback(PermissionError(f"node {dst} refuses node {src}: not a member"))

    def _reply(self, src, dst, result, d):
        if self.canDeliver(dst, src) and not d.called:
            self._note(f"{dst}->{src} answer {describe(result)}")
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

    def installSnapshot(self, peerId, request):
        return self.network.call(self.nodeId, peerId, "handleInstallSnapshot", request)

    def timeoutNow(self, peerId, request):
        return self.network.call(self.nodeId, peerId, "handleTimeoutNow", request)
