"""
The client commands on the node's side, apart from their responders: their
arguments checked (C{INVALID_ARGUMENT}, C{VALUE_TOO_LARGE}), the L{Request}
each becomes for the L{twisted_raft.rpc.routing.Router} (served here if this
node leads, else forwarded), and L{clientRequest}, the measurement of each
answered request for the node's metrics.

The ranges', transactions' and range deletes' requests are in
L{twisted_raft.rpc.kvserve}; the responders in L{twisted_raft.rpc.server}.
"""

import functools

from twisted.internet import defer
from twisted.python.failure import Failure

from twisted_raft import kv
from twisted_raft.raft import membership
from twisted_raft.raft.membership import ConfChange
from twisted_raft.rpc import commands
from twisted_raft.rpc.commands import InvalidArgument, ValueTooLarge
from twisted_raft.rpc.routing import Request


_SHORT_KEY = kv.MAX_KEY_BYTES // 4
"""A code point is at most 4 bytes of UTF-8: a key of at most this many
code points needs no encoding to be counted (every read and write checks
its key)."""


def validateKey(key):
    if key is None:
        raise InvalidArgument("missing key")
    if not key:
        raise InvalidArgument("empty key")
    if len(key) > _SHORT_KEY:
        n = len(key.encode("utf-8", "surrogatepass"))
        if n > kv.MAX_KEY_BYTES:
            raise InvalidArgument(f"key is {n} bytes of UTF-8, over {kv.MAX_KEY_BYTES}")


def validateValue(name, value):
    if value is not None and len(value) > kv.MAX_VALUE_BYTES:
        raise ValueTooLarge(
            f"{name} is {len(value)} bytes, over {kv.MAX_VALUE_BYTES} (1 MiB)"
        )


def validateSession(client_id, sequence):
    """
    @return: C{(client_id, sequence)}, or C{None} if neither is given.
    @raise InvalidArgument: only one is given, or either is out of range.
    """
    if client_id is None and sequence is None:
        return None
    if client_id is None or sequence is None:
        raise InvalidArgument("client_id and sequence must be given together")
    try:
        kv.checkSession(client_id, sequence)
    except ValueError as e:
        raise InvalidArgument(str(e))
    return client_id, sequence


def validateNodeId(nodeId, allowZero=False):
    """
    @raise InvalidArgument: C{nodeId} is missing or not a node id (1 to
        L{membership.MAX_NODE_ID}; 0 too with C{allowZero}).
    """
    low = 0 if allowZero else 1
    if nodeId is None:
        raise InvalidArgument("missing node_id")
    if not low <= nodeId <= membership.MAX_NODE_ID:
        # not quoted: it may have thousands of digits
        raise InvalidArgument(f"node_id is out of range {low} to 2**63 - 1")


def confChange(kind, nodeId, address=""):
    """
    The L{ConfChange} a client asked for, its node id and address checked
    (L{membership.checkAddress}: C{HOST:PORT}, at most 255 characters).

    @raise InvalidArgument: naming what is wrong.
    """
    validateNodeId(nodeId)
    try:
        return ConfChange(kind, nodeId, address)
    except membership.InvalidChange as e:
        raise InvalidArgument(str(e)) from None



def applied(r):
    """
    C{(revision, result)} from what C{propose} fired with.  A session
    command's revision is the index at which it first took effect, so a
    retry answers exactly like the first attempt.
    """
    index, result = r
    if isinstance(result, kv.SequenceTooOld):
        raise InvalidArgument(str(result))
    if isinstance(result, kv.Applied):
        return result.index, result.result
    return index, result


def readKey(stateMachine, key):
    value = stateMachine.get(key)
    if value is None:
        return {"found": False, "value": b""}
    return {"found": True, "value": value}



# -- the requests ----------------------------------------------------------------


def _committedConfiguration(ignored, node):
    """
    The configuration C{node}, a leader whose leadership a read round has
    just confirmed, is using, if it is committed.  It takes effect when its
    entry is appended (thesis §4.1), so while the leader's own change is
    being committed it is not yet what the cluster agreed on.

    @raise membership.ChangeInProgress: it is not committed yet.
    """
    configuration = node.configuration
    committed = node.status().commitIndex
    if configuration.index > committed:
        raise membership.ChangeInProgress(
            f"the configuration at index {configuration.index} is not yet"
            f" committed (commit index {committed}); retry shortly"
        )
    return configuration


class MembersRequest(Request):
    """L{commands.MemberList}: the leader's committed configuration."""

    __slots__ = ()

    command = commands.MemberList
    what = "member list"

    def __init__(self, forwarded):
        self.key = None
        self.forwarded = forwarded
        self.proposed = False
        self.answered = self.rerouted = None

    def start(self, node):
        # A read round first (thesis §6.4): it confirms this node still
        # leads, and waits until it has committed an entry of its term, so
        # every configuration entry before that is committed too.
        return node.readIndex().addCallback(_committedConfiguration, node)

    def respond(self, configuration, stateMachine):
        return {
            "revision": configuration.index,
            "members": [
                {"node_id": m.id, "address": m.address, "voter": m.voter}
                for m in configuration.members
            ],
        }

    def arguments(self):
        return {"forwarded": True}


class ChangeRequest(Request):
    """
    A membership change (thesis §4.1), proposed at the leader as a
    configuration entry; answered with that entry's index once committed.
    """

    __slots__ = ("change", "data")

    isWrite = mayChange = True

    def __init__(self, change, forwarded):
        self.key = None
        self.forwarded = forwarded
        self.proposed = False
        self.answered = self.rerouted = None
        self.change = change
        # What the pending-writes budget charges: about the request's size
        # (the configuration entry itself is the core's business).
        self.data = f"{change.kind.value} {change.nodeId} {change.address}".encode("utf-8")

    def start(self, node):
        return node.changeMembership(self.change)

    def respond(self, outcome, stateMachine):
        index, configuration = outcome
        return {"revision": index}

    def arguments(self):
        return {"node_id": self.change.nodeId, "forwarded": True}


class AddLearnerRequest(ChangeRequest):
    __slots__ = ()
    command, what = commands.AddLearner, "add learner"

    def arguments(self):
        return {"node_id": self.change.nodeId, "address": self.change.address, "forwarded": True}


class PromoteRequest(ChangeRequest):
    __slots__ = ()
    command, what = commands.PromoteMember, "promote member"


class RemoveRequest(ChangeRequest):
    __slots__ = ()
    command, what = commands.RemoveMember, "remove member"


class TransferRequest(Request):
    """
    A leadership transfer (thesis §3.10) to C{targetId} (0: the most
    up-to-date voter).  It writes nothing, but once started it may move
    leadership whatever happens to the answer: its outcome is then unknown
    if it fails.
    """

    __slots__ = ("targetId",)

    command = commands.TransferLeader
    what = "transfer leader"
    mayChange = True

    def __init__(self, targetId, forwarded):
        self.key = None
        self.forwarded = forwarded
        self.proposed = False
        self.answered = self.rerouted = None
        self.targetId = targetId

    def start(self, node):
        return node.transferLeadership(self.targetId)

    def respond(self, leaderId, stateMachine):
        return {"leader_id": leaderId}

    def arguments(self):
        return {"node_id": self.targetId, "forwarded": True}


class ReadRequest(Request):
    """A linearizable L{commands.Get}: ReadIndex (thesis §6.4), then the store."""

    __slots__ = ()

    command = commands.Get
    what = "get"

    def __init__(self, key, forwarded):
        self.key = key
        self.forwarded = forwarded
        self.proposed = False
        self.answered = self.rerouted = None

    def start(self, node):
        return node.readIndex()

    def respond(self, outcome, stateMachine):
        return readKey(stateMachine, self.key)

    def arguments(self):
        return {"key": self.key, "forwarded": True}


class WriteRequest(Request):
    """
    A write: C{data}, the command for the log (wrapped in the client's
    session if it has one), is proposed at the leader.
    """

    __slots__ = ("data", "session", "value", "expected")

    isWrite = mayChange = True
    resultName = None
    """The response's field for what the command returned, if it has one."""

    def __init__(self, key, data, session, forwarded, value=None, expected=None):
        self.key = key
        self.forwarded = forwarded
        self.proposed = False
        self.answered = self.rerouted = None
        if session is not None:  # checked by validateSession
            data = kv.wrapSession(session[0], session[1], data)
        self.data = data
        self.session = session
        self.value = value
        self.expected = expected

    def start(self, node):
        return node.propose(self.data)

    def respond(self, outcome, stateMachine):
        revision, result = applied(outcome)
        if self.resultName is None:
            return {"revision": revision}
        return {self.resultName: bool(result), "revision": revision}

    def arguments(self):
        kwargs = {"key": self.key, "forwarded": True}
        if self.value is not None:
            kwargs["value"] = self.value
        if self.expected is not None:
            kwargs["expected"] = self.expected
        if self.session is not None:
            kwargs["client_id"], kwargs["sequence"] = self.session
        return kwargs


class PutRequest(WriteRequest):
    __slots__ = ()
    command, what = commands.Put, "put"


class DeleteRequest(WriteRequest):
    __slots__ = ()
    command, what, resultName = commands.Delete, "delete", "deleted"


class CompareAndSetRequest(WriteRequest):
    __slots__ = ()
    command, what, resultName = commands.CompareAndSet, "compare-and-set", "succeeded"



# -- measured for the metrics --------------------------------------------------


OK = "OK"
"""The C{code} a client request that succeeded is counted under."""


def _settled(result, record, name, clock, started):
    if isinstance(result, Failure):
        code = commands.wireErrorCode(_COMMANDS[name], result.value).decode("ascii")
    else:
        code = OK
    record(name, code, clock.seconds() - started)
    return result


_COMMANDS = {}


def clientRequest(command):
    """
    Decorate the responder of the client command C{command} (under its
    C{@command.responder}): if the server has an C{onClientRequest}, it is
    called with C{(name, code, seconds)} once the request is answered:
    C{name} the command's name as on the wire (C{"Put"}), C{code} C{"OK"} or
    the error code sent (L{commands.wireErrorCode}), C{seconds} from the
    responder's call to the answer.  Without one (no C{--http}) the cost is
    an attribute check.
    """
    name = command.commandName.decode("ascii")
    _COMMANDS[name] = command

    def decorate(responder):
        @functools.wraps(responder)
        def measured(self, *args, **kwargs):
            server = self.server
            record = server.onClientRequest
            if record is None:
                return responder(self, *args, **kwargs)
            clock = server.clock
            started = clock.seconds()
            try:
                result = responder(self, *args, **kwargs)
            except BaseException:
                _settled(Failure(), record, name, clock, started)
                raise
            if isinstance(result, defer.Deferred):
                return result.addBoth(_settled, record, name, clock, started)
            return _settled(result, record, name, clock, started)

        return measured

    return decorate
