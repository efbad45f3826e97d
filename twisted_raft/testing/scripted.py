"""
A transport whose RPCs the test answers by hand, for driving one node
through an exact sequence of events.
"""

from twisted.internet import defer
from zope.interface import implementer

from twisted_raft.raft.interfaces import ITransport


@implementer(ITransport)
class ScriptedTransport:
    """Records every RPC as C{(peerId, request, Deferred)}; nothing is sent."""

    def __init__(self):
        self.sent = []

    def requestVote(self, peerId, request):
        d = defer.Deferred()
        self.sent.append((peerId, request, d))
        return d

    appendEntries = installSnapshot = timeoutNow = requestVote

    def take(self, kind):
        """Remove and return the recorded RPCs of message class C{kind}."""
        found = [s for s in self.sent if isinstance(s[1], kind)]
        self.sent = [s for s in self.sent if not isinstance(s[1], kind)]
        return found
