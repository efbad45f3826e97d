"""
The node's side of the KV model on the wire (L{twisted_raft.rpc.kvwire}):
the requests of a L{commands.Range}, a L{commands.Txn}, a L{commands.Put}
with C{prev_kv} and a L{commands.Delete} of a range (or with C{prev_kv}),
and L{KVResponders}, the Range and Txn responders.  Put and Delete keep one
responder each (L{twisted_raft.rpc.server}), which hands these forms here.
"""

from twisted.protocols import amp

from twisted_raft.rpc import commands, kvwire
from twisted_raft.rpc.clientrequests import WriteRequest, applied, clientRequest, validateSession
from twisted_raft.rpc.routing import Request


class RangeRequest(Request):
    """A linearizable L{commands.Range}: ReadIndex, then one page of the store."""

    __slots__ = ("query",)

    command = commands.Range
    what = "range"

    def __init__(self, query, forwarded):
        self.key = query.key
        self.forwarded = forwarded
        self.proposed = False
        self.answered = self.rerouted = None
        self.query = query

    def start(self, node):
        return node.readIndex()

    def respond(self, outcome, stateMachine):
        return self.query.read(stateMachine)

    def arguments(self):
        return {**self.query.arguments(), "forwarded": True}


class TxnRequest(WriteRequest):
    """A L{commands.Txn}: C{txn} is the server's own encoding of it."""

    __slots__ = ("txn",)
    command, what = commands.Txn, "transaction"

    def __init__(self, txn, session, forwarded):
        super().__init__(None, txn, session, forwarded)
        self.txn = txn

    def respond(self, outcome, stateMachine):
        return kvwire.txnAnswer(*applied(outcome))

    def arguments(self):
        kwargs = {"txn": self.txn, "forwarded": True}
        if self.session is not None:
            kwargs["client_id"], kwargs["sequence"] = self.session
        return kwargs


class PutPrevKvRequest(WriteRequest):
    """A L{commands.Put} with C{prev_kv}: a one-operation transaction."""

    __slots__ = ()
    command, what = commands.Put, "put"

    def respond(self, outcome, stateMachine):
        return kvwire.putAnswer(*applied(outcome))

    def arguments(self):
        return {**super().arguments(), "prev_kv": True}


class DeleteRangeRequest(WriteRequest):
    """
    A L{commands.Delete} with C{end}, C{prefix} or C{prev_kv}: a
    one-operation transaction.
    """

    __slots__ = ("end", "prefix", "prevKv")
    command, what = commands.Delete, "delete"

    def __init__(self, key, end, prefix, prevKv, session, forwarded):
        super().__init__(key, kvwire.deleteRange(key, end, prefix, prevKv), session, forwarded)
        self.end = end
        self.prefix = bool(prefix)
        self.prevKv = bool(prevKv)

    def respond(self, outcome, stateMachine):
        return kvwire.deleteAnswer(*applied(outcome))

    def arguments(self):
        kwargs = super().arguments()
        if self.end is not None:
            kwargs["end"] = self.end
        if self.prefix:
            kwargs["prefix"] = True
        if self.prevKv:
            kwargs["prev_kv"] = True
        return kwargs




class KVResponders(amp.CommandLocator):
    """
    Mix into the node's protocol (before L{amp.AMP}): the Range and Txn
    responders.  The protocol provides C{server} (the
    L{NodeServerFactory}), C{_authorize} (L{PeerResponders}) and
    C{_serveWrite}.
    """

    @commands.Range.responder
    @clientRequest(commands.Range)
    def readRange(
        self, key, end=None, prefix=None, limit=None, after=None, keys_only=None,
        count_only=None, stale=None, forwarded=None,
    ):
        if forwarded:
            self._authorize(None, "a forwarded Range")
        query = kvwire.rangeQuery(key, end, prefix, limit, after, keys_only, count_only)
        if stale:
            answer = query.read(self.server.stateMachine)
            if not forwarded:
                self.server.readsAnswered += 1
            return answer
        answer = self.server.router.serve(RangeRequest(query, forwarded))
        if not forwarded:
            answer.addCallback(self.server.countRead)
        return answer

    @commands.Txn.responder
    @clientRequest(commands.Txn)
    def txn(self, txn, forwarded=None, client_id=None, sequence=None):
        if forwarded:
            self._authorize(None, "a forwarded Txn")
        data = kvwire.checkTxn(txn)
        session = validateSession(client_id, sequence)
        return self._serveWrite(TxnRequest(data, session, forwarded))
