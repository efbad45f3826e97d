"""
Helpers shared by the tests (imported as C{tests.support}).  No module-level
reactor import here: pytest-twisted installs its reactor in pytest_configure,
after this may be imported.
"""

import os

from twisted.internet import defer, error, protocol
from twisted.internet.interfaces import IHandshakeListener, IStreamClientEndpoint
from twisted.internet.task import Clock
from twisted.test import iosim
from zope.interface import implementer

from twisted_raft.kv import KVStore
from twisted_raft.raft import membership, messages
from twisted_raft.raft.membership import Configuration
from twisted_raft.rpc import commands

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
"""The checkout: where setup.py, dev.py and bench/ are."""


class StubNode:
    """
    A RaftNode stand-in whose role and answers the test controls.

    C{propose} applies to C{self.store} at once (unless C{self.hold}), so the
    answers look like a real leader's.

    Membership (the core's contract, issue 11): C{self.configuration} is
    this node alone until a test sets it.  C{changeMembership} and
    C{transferLeadership} record each call in C{self.changes} /
    C{self.transfers} as C{(argument, Deferred)}.  A change takes effect at
    once like a real leader's (applied to C{self.configuration} at the next
    index) unless C{holdChanges}; a transfer is held (the test fires or
    fails it) unless C{holdTransfers} is false, when this node at once
    follows the target (0: the lowest other voter).  L{commitChange} does
    what the core would for a held change.  C{changeError} /
    C{transferError} fail the next calls at once.
    """

    def __init__(self, nodeId=1, role=messages.LEADER, leaderId=None, store=None):
        self.nodeId = nodeId
        self.role = role
        self.leaderId = nodeId if leaderId is None and role == messages.LEADER else (leaderId or 0)
        self.store = store if store is not None else KVStore()
        self.index = 0
        self.proposed = []
        self.reads = 0
        self.proposeError = None
        self.readError = None
        self.hold = False
        self.held = []
        self.holdReads = False
        self.heldReads = []
        self.leaderWaiters = []
        self.votes = []
        self.appends = []
        self.running = True
        self.commitIndex = 0
        self.configuration = Configuration.ofVoters([nodeId])
        self.configurationWatchers = []
        self.timeouts = []
        self.timeoutAnswer = None
        self.changes = []
        self.changeError = None
        self.holdChanges = False
        self.transfers = []
        self.transferError = None
        self.holdTransfers = True

    def becomeLeader(self):
        self.role = messages.LEADER
        self.setLeader(self.nodeId)

    def setLeader(self, leaderId):
        self.leaderId = leaderId
        waiters, self.leaderWaiters = self.leaderWaiters, []
        for d in waiters:
            d.callback(leaderId)

    def propose(self, data):
        if self.role != messages.LEADER:
            return defer.fail(messages.NotLeader(self.leaderId))
        self.proposed.append(data)
        if self.proposeError is not None:
            return defer.fail(self.proposeError)
        if self.hold:
            d = defer.Deferred()
            self.held.append(d)
            return d
        self.index += 1
        return defer.succeed((self.index, self.store.apply(self.index, data)))

    def readIndex(self):
        if self.role != messages.LEADER:
            return defer.fail(messages.NotLeader(self.leaderId))
        self.reads += 1
        if self.readError is not None:
            return defer.fail(self.readError)
        if self.holdReads:
            d = defer.Deferred()
            self.heldReads.append(d)
            return d
        return defer.succeed(None)

    def whenLeaderKnown(self):
        if self.leaderId:
            return defer.succeed(self.leaderId)
        d = defer.Deferred()
        self.leaderWaiters.append(d)
        return d

    def status(self):
        return messages.Status(
            self.nodeId, self.role, 7, self.leaderId, self.index, self.index, self.index,
            voter=self.configuration.isVoter(self.nodeId),
            configIndex=self.configuration.index,
        )

    def changeMembership(self, change):
        if self.role != messages.LEADER:
            return defer.fail(messages.NotLeader(self.leaderId))
        d = defer.Deferred()
        self.changes.append((change, d))
        if self.changeError is not None:
            return defer.fail(self.changeError)
        if not self.holdChanges:
            try:
                self.commitChange(change, d)
            except membership.MembershipError:
                return defer.fail()
        return d

    def commitChange(self, change, d):
        """Append and commit C{change} as the core would, firing C{d}."""
        configuration = change.applyTo(self.configuration)
        self.index += 1
        self.configuration = configuration.at(self.index)
        d.callback((self.index, self.configuration))

    def transferLeadership(self, targetId=0):
        if self.role != messages.LEADER:
            return defer.fail(messages.NotLeader(self.leaderId))
        d = defer.Deferred()
        self.transfers.append((targetId, d))
        if self.transferError is not None:
            return defer.fail(self.transferError)
        if not self.holdTransfers:
            if not targetId:
                targetId = min(v for v in self.configuration.voters if v != self.nodeId)
            self.role = messages.FOLLOWER
            self.setLeader(targetId)
            d.callback(targetId)
        return d

    def handleRequestVote(self, request):
        self.votes.append(request)
        return defer.succeed(messages.RequestVoteResult(request.term, True))

    def handleAppendEntries(self, request):
        self.appends.append(request)
        last = request.prevLogIndex + len(request.entries)
        return defer.succeed(messages.AppendEntriesResult(request.term, True, last, 0, 0))

    # -- membership (issue 11): the configuration and leadership transfer --

    def watchConfiguration(self, f):
        """Call C{f(configuration)} now and after each L{setConfiguration}."""
        self.configurationWatchers.append(f)
        f(self.configuration)

    def setConfiguration(self, configuration):
        self.configuration = configuration
        for f in list(self.configurationWatchers):
            f(configuration)

    def stop(self):
        self.running = False

    def acceptsPeer(self, peerId):
        """Whom it hears: everyone but the ids in C{refusedPeers}."""
        return peerId not in getattr(self, "refusedPeers", ())

    def handleTimeoutNow(self, request):
        """Accepts (or answers C{timeoutAnswer}: a result, or an exception to fail with)."""
        self.timeouts.append(request)
        answer = self.timeoutAnswer
        if isinstance(answer, Exception):
            return defer.fail(answer)
        return defer.succeed(answer or messages.TimeoutNowResult(request.term + 1, True))


@implementer(IStreamClientEndpoint)
class PumpEndpoint:
    """
    A client endpoint whose connections go, through L{iosim}, to protocols
    built by C{serverFactory}.  C{refuse} makes connects fail.
    """

    def __init__(self, serverFactory, clock):
        self.serverFactory = serverFactory
        self.clock = clock
        self.pumps = []
        self.refuse = False
        self.attempts = 0

    def connect(self, factory):
        self.attempts += 1
        if self.refuse:
            return defer.fail(error.ConnectionRefusedError("refused"))
        client = factory.buildProtocol(None)
        server = self.serverFactory.buildProtocol(None)
        pump = iosim.connect(
            server,
            iosim.makeFakeServer(server),
            client,
            iosim.makeFakeClient(client),
            greet=False,
            clock=self.clock,
        )
        self.pumps.append(pump)
        return defer.succeed(client)


class Pumps:
    """Flush several IOPumps until none moves data any more."""

    def __init__(self, *pumps):
        self.pumps = list(pumps)

    def add(self, *pumps):
        self.pumps.extend(pumps)

    def flush(self):
        for _ in range(1000):
            moved = False
            for p in self.pumps:
                if p.pump(advanceClock=False):
                    moved = True
            if not moved:
                return
        raise AssertionError("pumps never settled")


def captured(d):
    """
    Attach a result-capturing callback to C{d} now: AMP drops the connection
    when an answer fails with no errback attached yet, so tests must capture
    before pumping.  Returns C{d} (check it with L{result}/L{failureOf}).
    """
    box = []
    d.addBoth(box.append)
    d._testOutcome = box
    return d


def _outcome(d):
    box = getattr(d, "_testOutcome", None)
    if box is None:
        box = []
        d.addBoth(box.append)
    assert box, "Deferred has not fired"
    return box[0]


def result(d):
    """The result of a fired Deferred (raising its failure)."""
    r = _outcome(d)
    if hasattr(r, "raiseException"):
        r.raiseException()
    return r


def failureOf(d, *types):
    f = _outcome(d)
    assert hasattr(f, "check"), f"expected a failure, got {f!r}"
    if types:
        assert f.check(*types), f"expected {types}, got {f!r}"
    return f


__all__ = [
    "Clock",
    "StubNode",
    "PumpEndpoint",
    "Pumps",
    "captured",
    "result",
    "failureOf",
    "commands",
]


class BoxCollector:
    """An AMP box receiver that keeps every box it is given."""

    def __init__(self):
        self.boxes = []

    def startReceivingBoxes(self, sender):
        pass

    def ampBoxReceived(self, box):
        self.boxes.append(dict(box))

    def stopReceivingBoxes(self, reason):
        pass


def authority(nodeId, token="raftkv", members=(1, 2, 3), certificateRequired=False):
    """A L{PeerAuthority} for node C{nodeId} of a cluster of C{members}."""
    from twisted_raft.rpc.peerauth import PeerAuthority

    others = frozenset(m for m in members if m != nodeId)
    return PeerAuthority(
        nodeId, token, others.__contains__, certificateRequired=certificateRequired
    )


def proveMember(proto, nodeId, toNodeId, token="raftkv"):
    """
    Do a peer link's handshake on the AMP connection C{proto} as node
    C{nodeId} reaching node C{toNodeId}: a Deferred firing once the node
    accepted it (or failing as it refused).  Pump the connection to run it.
    """
    me = authority(nodeId, token, members=(nodeId, toNodeId))
    dialling = me.dial(toNodeId)
    d = proto.callRemote(commands.PeerHello, **dialling.helloArguments(nodeId))
    d.addCallback(lambda answer: proto.callRemote(
        commands.PeerProof, proof=me.checkAnswer(dialling, answer)))
    return captured(d)


# -- TLS ------------------------------------------------------------------------------


def tlsFiles(directory, name):
    """
    The L{TLSFiles} of C{name} (C{"node1"}, a client's name) in a directory
    written by L{twisted_raft.tools.certs.makeCertificates}.
    """
    from twisted_raft.tls import TLSFiles

    return TLSFiles(
        ca=os.path.join(directory, "ca.pem"),
        cert=os.path.join(directory, f"{name}.pem"),
        key=os.path.join(directory, f"{name}-key.pem"),
    )


@implementer(IHandshakeListener)
class TLSEnd(protocol.Protocol):
    """
    The application protocol on one end of L{tlsLoopback}: records what it
    receives, whether the TLS handshake completed, and how it was lost.
    """

    def __init__(self):
        self.received = b""
        self.handshakeDone = False
        self.lostReason = None

    def handshakeCompleted(self):
        self.handshakeDone = True

    def dataReceived(self, data):
        self.received += data

    def connectionLost(self, reason):
        self.lostReason = reason


def tlsLoopback(serverCreator, clientCreator, clock=None):
    """
    A TLS connection in memory (L{iosim}), the server end using
    C{serverCreator} and the client end C{clientCreator}, pumped until
    quiet.

    @return: C{(server TLSEnd, client TLSEnd, pump)}; each end's
        C{transport} is its TLS transport.
    """
    from twisted.protocols.tls import TLSMemoryBIOFactory

    clock = clock or Clock()
    ends = TLSEnd(), TLSEnd()
    serverFactory = TLSMemoryBIOFactory(
        serverCreator, False, protocol.Factory.forProtocol(lambda: ends[0]), clock=clock
    )
    clientFactory = TLSMemoryBIOFactory(
        clientCreator, True, protocol.Factory.forProtocol(lambda: ends[1]), clock=clock
    )
    _, _, pump = iosim.connectedServerAndClient(
        lambda: serverFactory.buildProtocol(None),
        lambda: clientFactory.buildProtocol(None),
        clock=clock,
    )
    pump.flush()
    return ends[0], ends[1], pump
