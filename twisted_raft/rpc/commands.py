"""
raftkv's AMP commands: the public client contract and the peer RPCs.

The client commands (L{Put}, L{Get}, L{Delete}, L{CompareAndSet},
L{Range}, L{Txn}, L{Status}, and for membership L{MemberList}, L{AddLearner},
L{PromoteMember}, L{RemoveMember}, L{TransferLeader}) and their error codes
are a public contract that independent clients are written against: extend
them with optional arguments, never rename or reshape them.

Error codes:

  - C{UNAVAILABLE}: no leader or no quorum in time.  For a write, the
    outcome is unknown unless the description starts with C{"not proposed"}
    (L{NotProposed}; C{"not proposed: disk full on node N"} is
    L{NodeDiskFull}, C{"not proposed: overloaded"} L{Overloaded}).
  - C{INVALID_ARGUMENT}: empty key, key over 4,096 bytes of UTF-8, or a
    malformed request (a transaction that does not decode, or breaks a
    rule or limit of L{twisted_raft.kvlimits}: over 128 compares or
    operations in a branch, say).
  - C{VALUE_TOO_LARGE}: a value over 1 MiB (1,048,576 bytes), or a
    transaction over 2 MiB + 64 KiB encoded.
  - C{PERMISSION_DENIED}: the connection may not send this command: a peer
    RPC (or a forwarded request) on a connection that has not proven it is
    a member node of this cluster (L{PeerHello}), or one that speaks for
    another node than the one it proved to be.  Nothing was changed.
  - C{CHANGE_IN_PROGRESS} (L{ChangeInProgress}): a membership change was
    not made because another one is not yet committed, or because the
    leader is new and has not yet committed an entry of its own term; a
    L{MemberList} gets it while the leader's configuration is not yet
    committed.  Nothing was proposed: retry after a short pause.
  - C{NOT_CAUGHT_UP} (L{NotCaughtUp}): a learner is too far behind the
    leader's log (over 1,000 entries) to be promoted yet; nothing was
    proposed.  Retry once it has caught up.
  - C{TRANSFER_FAILED} (L{TransferFailed}): a leadership transfer elected
    no new leader within an election timeout; the leader carries on.
  - C{COMPACTED} (L{Compacted}): a L{Watch} from a revision the node's
    event history no longer holds; the description is exactly
    C{"compact_revision=N"}, N the oldest revision it can serve (see the
    watches block below).

A membership change's C{revision} is the log index of the configuration
entry it made, once that entry is committed; a change that does not apply
to the configuration (adding a member, promoting a voter, removing a
stranger or the last voter) is INVALID_ARGUMENT.  Changes are made one
server at a time (Raft thesis §4.1, C{docs/design.rst}).

Exactly-once writes (Raft thesis §6.3): L{Put}, L{Delete},
L{CompareAndSet} and L{Txn} take an optional C{client_id} (1 to 128 bytes of UTF-8)
and C{sequence} (1 to 2**64 - 1), given together or not at all.  A request
repeating a (client_id, sequence) that was already applied changes nothing
and gets the first attempt's answer, C{revision} included; so a write whose
outcome is unknown may be retried with the same pair.  A sequence whose
result is no longer kept (more than 1,024 below the client's highest) is
INVALID_ARGUMENT.

Why one module of nearly 900 lines: about 400 of them are code, the rest
the wire contract's reference (argument names, limits, error codes) that
independent clients are written against.  It is a table of declarations,
read as one: split, the contract would be in several places.
"""

from twisted.protocols import amp

from twisted_raft import kvrecords
from twisted_raft.rpc.arguments import BigBytes
from twisted_raft.rpc.fastargs import Conversions
from twisted_raft.rpc.twistedprivate import wireNameToPythonIdentifier


class Unavailable(Exception):
    """
    No leader or no quorum in time; a write's outcome is unknown (unless it
    is a L{NotProposed}).
    """


class InvalidArgument(Exception):
    """The request is malformed: bad key, missing or garbled argument."""


class ValueTooLarge(Exception):
    """A value is over 1 MiB."""


class PermissionDenied(Exception):
    """
    The connection may not send this command (see the module docstring);
    the node changed nothing.
    """


NOT_PROPOSED = "not proposed"
"""How an UNAVAILABLE description says the write was not proposed (its
first words): what an independent client reads.  Inside raftkv that meaning
is the type L{NotProposed}, decided where an AMP error becomes an exception
(L{unavailableFromWire}) and never read back from the text."""

DISK_FULL = "disk full on node"
"""How a L{NodeDiskFull} description goes on after C{"not proposed: "}."""


class NotProposed(Unavailable):
    """
    UNAVAILABLE, and the write was not proposed: it may be retried anywhere
    without any risk of being applied twice.

    Its description always starts with C{"not proposed"} (the wire's way of
    saying so): C{NotProposed("no leader")} says C{"not proposed: no
    leader"}; a description that already starts so is kept as it is, so an
    error relayed from another node keeps its text byte for byte.
    """

    prefix = NOT_PROPOSED

    def __init__(self, description):
        if not description.startswith(self.prefix):
            description = f"{self.prefix}: {description}"
        super().__init__(description)


class NodeDiskFull(NotProposed):
    """
    L{NotProposed} because the leader's disk is full: writes are refused at
    once rather than queued behind one that waits for space.  A follower
    relays it instead of trying the same leader again.
    C{NodeDiskFull(1)} says C{"not proposed: disk full on node 1"}; a
    description that already starts so is kept as it is.
    """

    prefix = f"{NOT_PROPOSED}: {DISK_FULL}"

    def __init__(self, nodeOrDescription):
        description = str(nodeOrDescription)
        if not description.startswith(self.prefix):
            description = f"{self.prefix} {description}"
        super().__init__(description)


class Overloaded(NotProposed):
    """
    L{NotProposed} because the node holds as many bytes of pending writes as
    it may (C{--max-pending-bytes}): C{"not proposed: overloaded"}.  A
    follower relays it at once instead of sending the write again.
    """

    prefix = f"{NOT_PROPOSED}: overloaded"

    def __init__(self, description=prefix):
        super().__init__(description)


class ChangeInProgress(Exception):
    """
    A membership change was not made: another is not yet committed, or the
    leader has not yet committed an entry of its own term (so L{MemberList}
    has no committed configuration to answer yet).  Nothing was proposed;
    retry shortly.
    """


class NotCaughtUp(Exception):
    """
    A learner is too far behind the leader's log to be promoted yet; nothing
    was proposed.
    """


class TransferFailed(Exception):
    """
    A leadership transfer elected no new leader within an election timeout;
    the leader carries on (thesis §3.10).
    """


def unavailableFromWire(description):
    """
    The exception for an UNAVAILABLE error whose description is
    C{description}: the one place where raftkv reads meaning from the text
    (see L{NOT_PROPOSED}); the text itself is kept as it is.
    """
    if description.startswith(NodeDiskFull.prefix):
        return NodeDiskFull(description)
    if description.startswith(Overloaded.prefix):
        return Overloaded(description)
    if description.startswith(NOT_PROPOSED):
        return NotProposed(description)
    return Unavailable(description)


UNAVAILABLE = b"UNAVAILABLE"
INVALID_ARGUMENT = b"INVALID_ARGUMENT"
VALUE_TOO_LARGE = b"VALUE_TOO_LARGE"
PERMISSION_DENIED = b"PERMISSION_DENIED"
CHANGE_IN_PROGRESS = b"CHANGE_IN_PROGRESS"
NOT_CAUGHT_UP = b"NOT_CAUGHT_UP"
TRANSFER_FAILED = b"TRANSFER_FAILED"

ERRORS = {
    Unavailable: UNAVAILABLE,
    InvalidArgument: INVALID_ARGUMENT,
    ValueTooLarge: VALUE_TOO_LARGE,
    PermissionDenied: PERMISSION_DENIED,
    ChangeInProgress: CHANGE_IN_PROGRESS,
    NotCaughtUp: NOT_CAUGHT_UP,
    TransferFailed: TRANSFER_FAILED,
}


def wireErrorCode(command, error):
    """
    The error code that answers C{command} when its responder fails with
    C{error}, as AMP (and L{twisted_raft.rpc.fastamp.FastDispatch}) picks
    it: the code of the first of the command's declared errors C{error} is
    an instance of, else AMP's C{UNKNOWN}.  (For metrics: the codes are
    those sent, from the one table that maps them.)
    """
    for cls, code in command.allErrors.items():
        if isinstance(error, cls):
            return code
    return amp.UNKNOWN_ERROR_CODE


def _brief(error, limit=300):
    """C{repr(error)}, cut short: it may quote a huge malformed value, and an
    AMP error description must fit in one 64 KiB value."""
    text = repr(error)
    return text if len(text) <= limit else text[:limit] + "..."


class _CommandType(type(amp.Command)):
    """
    Twisted's command metaclass, then: an UNAVAILABLE answer becomes the
    exception L{unavailableFromWire} decides (L{NotProposed} or not), for
    Twisted's C{callRemote} and L{FastCalls} alike (both call the command's
    C{reverseErrors} entry with the description).
    """

    def __new__(cls, name, bases, attrs):
        command = super().__new__(cls, name, bases, attrs)
        if command.reverseErrors.get(UNAVAILABLE) is Unavailable:
            command.reverseErrors[UNAVAILABLE] = unavailableFromWire
        return command


class _Command(amp.Command, metaclass=_CommandType):
    """
    A command whose malformed arguments are answered with INVALID_ARGUMENT
    instead of AMP's default (an UNKNOWN error that drops the connection), so
    one bad client request never costs anyone else their connection.
    """

    errors = ERRORS

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls._fastArguments = Conversions(cls.arguments, (amp.COMMAND, amp.ASK))
        cls._fastResponse = Conversions(cls.response, (amp.ANSWER,))

    def __init__(self, **kw):
        # amp.Command.__init__, from the table
        self.structured = kw
        self._fastArguments.checkSignature(kw, self.commandName)

    @classmethod
    def makeArguments(cls, objects, proto):
        fast = cls._fastArguments
        if objects.keys() <= fast.pythonNames:
            box = fast.toBox(objects, amp.AmpBox())
            if box is not None:
                return box
        return super().makeArguments(objects, proto)

    @classmethod
    def makeResponse(cls, objects, proto):
        box = cls._fastResponse.toBox(objects, cls.responseType())
        if box is not None:
            return box
        return super().makeResponse(objects, proto)

    @classmethod
    def parseArguments(cls, box, protocol):
        try:
            objects = cls._fastArguments.fromBox(box)
            if objects is not None:
                return objects
            objects = super().parseArguments(box, protocol)
        except Exception as e:
            raise amp.RemoteAmpError(
                INVALID_ARGUMENT, f"malformed {cls.__name__} request: {_brief(e)}"
            )
        malformed = objects.pop("_malformed", None)
        if malformed:
            raise amp.RemoteAmpError(INVALID_ARGUMENT, malformed)
        return objects

    @classmethod
    def parseResponse(cls, box, protocol):
        objects = cls._fastResponse.fromBox(box)
        if objects is not None:
            return objects
        objects = super().parseResponse(box, protocol)
        malformed = objects.pop("_malformed", None)
        if malformed:
            raise InvalidArgument(f"malformed {cls.__name__} response: {malformed}")
        return objects


# -- the client contract ---------------------------------------------------
#
# ``forwarded`` is an internal optional flag set by a follower relaying a
# request to its leader; a forwarded request is never forwarded again, so two
# nodes with stale ideas of the leader cannot bounce a request between them.


class Put(_Command):
    """
    Set C{key} to C{value}.  With C{prev_kv} the answer also carries
    C{prev_kv}, the key-value the key had: a list of none (it did not
    exist) or one, in L{twisted_raft.rpc.kvwire}'s layout; it is left out
    when the answer cannot carry it (see L{twisted_raft.rpc.kvwire}).
    """

    arguments = [
        (b"key", amp.Unicode()),
        (b"value", BigBytes()),
        (b"forwarded", amp.Boolean(optional=True)),
        (b"client_id", amp.Unicode(optional=True)),
        (b"sequence", amp.Integer(optional=True)),
        (b"prev_kv", amp.Boolean(optional=True)),
    ]
    response = [
        (b"revision", amp.Integer()),
        (b"prev_kv", BigBytes(optional=True)),
    ]


class Get(_Command):
    arguments = [
        (b"key", amp.Unicode()),
        (b"stale", amp.Boolean(optional=True)),
        (b"forwarded", amp.Boolean(optional=True)),
    ]
    response = [(b"found", amp.Boolean()), (b"value", BigBytes())]


class Delete(_Command):
    """
    Delete C{key}; with C{end}, every key of C{[key, end)} (C{end} C{"\\0"}:
    every key from C{key} on); with C{prefix}, every key starting with
    C{key} (C{""}: every key).  With either, or with C{prev_kv}, the answer
    also carries C{deleted_count}, and with C{prev_kv} C{prev_kvs}, the
    keys deleted as they were (in L{twisted_raft.rpc.kvwire}'s layout; left
    out when the answer cannot carry them).  C{deleted}: whether any key
    was deleted.
    """

    arguments = [
        (b"key", amp.Unicode()),
        (b"forwarded", amp.Boolean(optional=True)),
        (b"client_id", amp.Unicode(optional=True)),
        (b"sequence", amp.Integer(optional=True)),
        (b"end", amp.Unicode(optional=True)),
        (b"prefix", amp.Boolean(optional=True)),
        (b"prev_kv", amp.Boolean(optional=True)),
    ]
    response = [
        (b"deleted", amp.Boolean()),
        (b"revision", amp.Integer()),
        (b"deleted_count", amp.Integer(optional=True)),
        (b"prev_kvs", BigBytes(optional=True)),
    ]


class CompareAndSet(_Command):
    arguments = [
        (b"key", amp.Unicode()),
        (b"expected", BigBytes(optional=True)),
        (b"value", BigBytes()),
        (b"forwarded", amp.Boolean(optional=True)),
        (b"client_id", amp.Unicode(optional=True)),
        (b"sequence", amp.Integer(optional=True)),
    ]
    response = [(b"succeeded", amp.Boolean()), (b"revision", amp.Integer())]


# -- ranges and transactions (etcd's KV model; docs/design.rst, "The KV
# model on the wire"; twisted_raft/rpc/kvwire.py has the layouts and bounds)


class Range(_Command):
    """
    Read C{key} alone, every key starting with C{key} (C{prefix}; C{""}:
    every key), or C{[key, end)} in the byte order of the keys' UTF-8
    (C{end} C{"\\0"}: every key from C{key} on); from strictly after
    C{after} if given (paging: the last key of the previous page).  At most
    C{limit} keys (absent or 0: no limit) and at most one page (1,000 keys,
    about 1 MiB): C{more} says keys were left out.  C{keys_only}: no
    values; C{count_only}: no keys, only C{count}.  Linearizable unless
    C{stale} (as L{Get}).

    The answer: C{revision}, the store's revision the page was read at (all
    of it at that one revision); C{more}; C{count}, the keys in the range
    from C{after} on, whatever the limit; C{kvs}, the key-values in key
    order (L{twisted_raft.rpc.kvwire}'s layout).
    """

    arguments = [
        (b"key", amp.Unicode()),
        (b"end", amp.Unicode(optional=True)),
        (b"prefix", amp.Boolean(optional=True)),
        (b"limit", amp.Integer(optional=True)),
        (b"after", amp.Unicode(optional=True)),
        (b"keys_only", amp.Boolean(optional=True)),
        (b"count_only", amp.Boolean(optional=True)),
        (b"stale", amp.Boolean(optional=True)),
        (b"forwarded", amp.Boolean(optional=True)),
    ]
    response = [
        (b"revision", amp.Integer()),
        (b"more", amp.Boolean()),
        (b"count", amp.Integer()),
        (b"kvs", BigBytes()),
    ]


class Txn(_Command):
    """
    A transaction (etcd's Txn): C{txn} is L{twisted_raft.kvtxn}'s encoding
    of its compares and its success and failure operations (put, delete of
    a key, range or prefix, range), applied atomically as one log entry.
    Exactly-once with C{client_id} and C{sequence}, like L{Put}.

    The answer: C{succeeded} (whether the success branch ran), C{revision}
    (the log index it was applied at) and C{responses}, one per operation
    of that branch, in L{twisted_raft.kvtxn.encodeResult}'s encoding; over
    2 MiB of key-values they come without them (C{complete} false in that
    encoding, see L{twisted_raft.rpc.kvwire}).
    """

    arguments = [
        (b"txn", BigBytes()),
        (b"forwarded", amp.Boolean(optional=True)),
        (b"client_id", amp.Unicode(optional=True)),
        (b"sequence", amp.Integer(optional=True)),
    ]
    response = [
        (b"succeeded", amp.Boolean()),
        (b"revision", amp.Integer()),
        (b"responses", BigBytes()),
    ]


class Status(_Command):
    """
    One node's own view.  C{voter}: whether this node votes in the
    configuration it is using; C{config_revision}: the log index of that
    configuration's entry (0: the one it was started with).  Both are
    optional in the schema only so that a client still reads the answer of
    a node older than membership change (which leaves them out); every
    node since sends them.  Optional for the same reason (nodes older than
    them leave them out): C{pid}, the node's process id; C{uptime}, seconds
    since the node started (a float); C{reads}, client reads (C{Get} and
    C{Range}) this node has answered since it started, counted where the
    client sent them (the dashboard's reads/s).
    """

    arguments = []
    response = [
        (b"node_id", amp.Integer()),
        (b"role", amp.Unicode()),
        (b"term", amp.Integer()),
        (b"leader_id", amp.Integer()),
        (b"commit_index", amp.Integer()),
        (b"last_applied", amp.Integer()),
        (b"last_log_index", amp.Integer()),
        (b"voter", amp.Boolean(optional=True)),
        (b"config_revision", amp.Integer(optional=True)),
        (b"pid", amp.Integer(optional=True)),
        (b"uptime", amp.Float(optional=True)),
        (b"reads", amp.Integer(optional=True)),
    ]


# -- membership (thesis chapter 4) and leadership transfer (thesis §3.10) ----
#
# Sent to any node and served by the leader, like writes (a follower
# forwards them, marked ``forwarded``); a change is answered once its
# configuration entry is committed, with that entry's index as ``revision``.


class MemberList(_Command):
    """
    The leader's configuration, once committed (C{CHANGE_IN_PROGRESS} while
    its latest configuration entry is not yet: retry), with leadership
    confirmed as for a linearizable read: C{revision} is its entry's log
    index (0 for the configuration the cluster was started with), and
    C{members} every member by id, its address as the operator gave it
    (C{""} if none is known) and whether it votes.
    """

    arguments = [(b"forwarded", amp.Boolean(optional=True))]
    response = [
        (b"revision", amp.Integer()),
        (
            b"members",
            amp.AmpList([
                (b"node_id", amp.Integer()),
                (b"address", amp.Unicode()),
                (b"voter", amp.Boolean()),
            ]),
        ),
    ]


class AddLearner(_Command):
    """
    Add node C{node_id}, reached at C{address} (C{HOST:PORT}, IPv6 in
    brackets, kept exactly as given), as a learner: it gets the log but does
    not vote until promoted.
    """

    arguments = [
        (b"node_id", amp.Integer()),
        (b"address", amp.Unicode()),
        (b"forwarded", amp.Boolean(optional=True)),
    ]
    response = [(b"revision", amp.Integer())]


class PromoteMember(_Command):
    """
    Make the learner C{node_id} a voter; C{NOT_CAUGHT_UP} while its log is
    more than 1,000 entries behind the leader's.
    """

    arguments = [
        (b"node_id", amp.Integer()),
        (b"forwarded", amp.Boolean(optional=True)),
    ]
    response = [(b"revision", amp.Integer())]


class RemoveMember(_Command):
    """
    Remove member C{node_id}, voter or learner (never the last voter).  A
    leader that removes itself serves until the change commits, then steps
    down.
    """

    arguments = [
        (b"node_id", amp.Integer()),
        (b"forwarded", amp.Boolean(optional=True)),
    ]
    response = [(b"revision", amp.Integer())]


class TransferLeader(_Command):
    """
    Hand leadership to the voter C{node_id} (absent or 0: the most up-to-date
    voter), answered with the new leader's id once it leads;
    C{TRANSFER_FAILED} if none was elected within an election timeout.
    """

    arguments = [
        (b"node_id", amp.Integer(optional=True)),
        (b"forwarded", amp.Boolean(optional=True)),
    ]
    response = [(b"leader_id", amp.Integer())]


# -- peer RPCs (Raft §5, Figure 2) -------------------------------------------
#
# A node answers them only on a connection that has proven, with PeerHello
# and PeerProof, that it is a member node of this cluster, and only for the
# node it proved to be (twisted_raft/rpc/peerauth.py); else PERMISSION_DENIED.
# ``cluster`` is kept for the schema's sake and sent empty: the token never
# travels, and the connection's proof already says which cluster it is of.


class PeerHello(_Command):
    """
    The first step of a peer link's handshake: node C{node_id} (the dialler)
    means to reach node C{to_node_id} and sends a fresh C{nonce}; the node
    answers with its own id, a fresh nonce and its C{proof} that it knows the
    cluster token (L{twisted_raft.rpc.peerauth}).  Under TLS the dialler's
    certificate must name node C{node_id}.
    """

    arguments = [
        (b"node_id", amp.Integer()),
        (b"to_node_id", amp.Integer()),
        (b"nonce", amp.String()),
    ]
    response = [
        (b"node_id", amp.Integer()),
        (b"nonce", amp.String()),
        (b"proof", amp.String()),
    ]


class PeerProof(_Command):
    """
    The second step: the dialler's C{proof} over both nonces.  Once it is
    accepted, the connection speaks for node C{node_id} of its L{PeerHello}.
    """

    arguments = [(b"proof", amp.String())]
    response = []

U64_MAX = 2**64 - 1


class _PeerCommand(_Command):
    """
    A peer RPC, whose integers are checked before any responder sees them:
    terms, indexes and offsets must be in 0..2**64-1 and node ids (those
    named in C{nodeIds}, and each one of a list named there) in
    1..2**64-1, what the core expects and the disk formats (u64) can hold.
    A negative index would count from the end of a Python list, and a term
    past 2**64 could not be written to the hard state.  Out of range is
    INVALID_ARGUMENT, like any malformed argument.
    """

    nodeIds = ()

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls._integers = tuple(
            wireNameToPythonIdentifier(wire)
            for wire, arg in cls.arguments
            if type(arg) is amp.Integer
        )

    @classmethod
    def parseArguments(cls, box, protocol):
        objects = super().parseArguments(box, protocol)
        for name in cls._integers:
            value = objects[name]
            if value is not None:
                cls._checkRange(name, value, 1 if name in cls.nodeIds else 0)
        for name in cls.nodeIds:
            value = objects.get(name)
            if isinstance(value, list):
                for member in value:
                    cls._checkRange(name, member, 1)
        return objects

    @classmethod
    def _checkRange(cls, name, value, low):
        if not low <= value <= U64_MAX:
            raise amp.RemoteAmpError(
                INVALID_ARGUMENT,
                f"malformed {cls.__name__} request: {name} is out of range"
                f" {low} to 2**64 - 1",
            )


class RequestVote(_PeerCommand):
    """
    §5.2 (and the thesis' PreVote, §9.6, with C{pre_vote}).  C{transfer}:
    the candidate was told to campaign by its leader's L{TimeoutNow}
    (leadership transfer, thesis §3.10), so voters grant it even while
    they hear from a leader.
    """

    arguments = [
        (b"cluster", amp.Unicode()),
        (b"term", amp.Integer()),
        (b"candidate_id", amp.Integer()),
        (b"last_log_index", amp.Integer()),
        (b"last_log_term", amp.Integer()),
        (b"pre_vote", amp.Boolean(optional=True)),
        (b"transfer", amp.Boolean(optional=True)),
    ]
    response = [(b"term", amp.Integer()), (b"vote_granted", amp.Boolean())]
    nodeIds = ("candidate_id",)


class AppendEntries(_PeerCommand):
    arguments = [
        (b"cluster", amp.Unicode()),
        (b"term", amp.Integer()),
        (b"leader_id", amp.Integer()),
        (b"prev_log_index", amp.Integer()),
        (b"prev_log_term", amp.Integer()),
        (b"entries", BigBytes()),  # L{twisted_raft.rpc.wire.encodeEntries}
        (b"leader_commit", amp.Integer()),
    ]
    response = [
        (b"term", amp.Integer()),
        (b"success", amp.Boolean()),
        (b"match_index", amp.Integer()),
        (b"conflict_index", amp.Integer()),
        (b"conflict_term", amp.Integer()),
    ]
    nodeIds = ("leader_id",)


class InstallSnapshot(_PeerCommand):
    """
    §7 / Figure 13: one chunk of the leader's snapshot file, C{data} at byte
    C{offset} (C{done} on the last chunk) for the snapshot covering every
    entry up to C{last_index} (of C{last_term}) of the cluster C{members}.
    C{next_offset} is the byte offset the follower expects next.

    The snapshot's whole configuration (thesis §5.1: every member's id,
    address and voter flag) travels as C{configuration}, the bytes of
    L{twisted_raft.raft.membership.encodeMembers}, with the log index of
    its entry as C{config_index}: both or neither, and then C{members}
    must be the configuration's ids.  Without them (a sender from before
    membership change), C{members} are voters without addresses, as of
    index 0.
    """

    arguments = [
        (b"cluster", amp.Unicode()),
        (b"term", amp.Integer()),
        (b"leader_id", amp.Integer()),
        (b"last_index", amp.Integer()),
        (b"last_term", amp.Integer()),
        (b"members", amp.ListOf(amp.Integer())),
        (b"offset", amp.Integer()),
        (b"data", BigBytes()),
        (b"done", amp.Boolean()),
        (b"configuration", BigBytes(optional=True)),
        (b"config_index", amp.Integer(optional=True)),
    ]
    response = [
        (b"term", amp.Integer()),
        (b"success", amp.Boolean()),
        (b"next_offset", amp.Integer()),
    ]
    nodeIds = ("leader_id", "members")


class TimeoutNow(_PeerCommand):
    """
    Leadership transfer (thesis §3.10): the leader C{leader_id} of C{term},
    having brought this node's log up to date, tells it to start an
    election at once.  C{accepted}: it did, in a later term.
    """

    arguments = [
        (b"cluster", amp.Unicode()),
        (b"term", amp.Integer()),
        (b"leader_id", amp.Integer()),
    ]
    response = [(b"term", amp.Integer()), (b"accepted", amp.Boolean())]
    nodeIds = ("leader_id",)


# -- watches (issue 13) --------------------------------------------------------
#
# A client watches a key or a prefix on its AMP connection to any node
# (followers too), which serves it from its own applied state:
#
#   client -> node  Watch(watch_id, key, prefix, start_revision): answered
#                   once the watch exists, with the revision it starts from,
#                   or refused with COMPACTED (L{Compacted}), INVALID_ARGUMENT
#                   (bad key, watch_id in use on this connection or out of
#                   range, over the connection's watch limit) or UNAVAILABLE
#                   (over the node's watch limit: try another node).
#   node -> client  WatchEvents(watch_id, events, next_revision): the events
#                   (L{twisted_raft.rpc.watchwire}), in revision order, whole
#                   revisions (but see revision_continues); the node sends
#                   the next call for that watch only once this one is
#                   answered (flow control).  Any error answer ends the watch
#                   at the node, silently.
#   node -> client  WatchCancelled(watch_id, code, ...): the node dropped the
#                   watch (COMPACTED: it fell behind the history, or the node
#                   installed a snapshot past it); no WatchEvents follow.
#   client -> node  CancelWatch(watch_id): no WatchEvents follow its answer.
#
# A watch ends with its connection.  Limits: L{twisted_raft.rpc.watches}.

COMPACTED = b"COMPACTED"

COMPACT_REVISION = "compact_revision="
"""A COMPACTED error's description is exactly this and the revision in
decimal (C{"compact_revision=42"}): the one machine-readable field an AMP
error has room for besides its code."""

MAX_WATCH_ID = 2**63 - 1
"""A watch_id is 0 to 2**63 - 1, chosen by the client, unique among the
watches open on its connection."""


class Compacted(kvrecords.Compacted):
    """
    COMPACTED: the node's event history no longer holds the revision a
    watch asked for.  C{compact_revision} (also C{compactRevision}) is the
    oldest revision it can serve: a watch from there works.  On the wire
    its description is C{"compact_revision=N"} (L{COMPACT_REVISION}); the
    client library turns it back into this type at once
    (L{compactedFromWire}).
    """

    def __init__(self, compact_revision):
        super().__init__(compact_revision)
        self.args = (f"{COMPACT_REVISION}{compact_revision}",)

    def __str__(self):
        return self.args[0]

    @property
    def compactRevision(self):
        return self.compact_revision


def compactedFromWire(description):
    """
    The exception for a COMPACTED error whose description is
    C{description}: L{Compacted}, or L{InvalidArgument} if the description
    is not C{"compact_revision=N"}.
    """
    if description.startswith(COMPACT_REVISION):
        digits = description[len(COMPACT_REVISION):]
        if digits.isdigit() and len(digits) <= 20:
            return Compacted(int(digits))
    return InvalidArgument(f"malformed COMPACTED description: {description[:100]!r}")


class Watch(_Command):
    """
    Watch C{key} (with C{prefix}: every key starting with it; C{""} with
    C{prefix}: every key) from C{start_revision} (absent: the node's
    applied revision + 1, "now"), as watch C{watch_id} of this connection.
    Answered with C{created} (always true) and the C{start_revision} the
    watch starts from; COMPACTED if the node's history no longer holds
    C{start_revision}.  A start beyond the node's applied revision waits
    for it.
    """

    arguments = [
        (b"watch_id", amp.Integer()),
        (b"key", amp.Unicode()),
        (b"prefix", amp.Boolean(optional=True)),
        (b"start_revision", amp.Integer(optional=True)),
    ]
    response = [(b"created", amp.Boolean()), (b"start_revision", amp.Integer())]
    errors = {**ERRORS, Compacted: COMPACTED}


Watch.reverseErrors[COMPACTED] = compactedFromWire


class CancelWatch(_Command):
    """
    End watch C{watch_id} of this connection; C{cancelled}: whether it was
    open.  No WatchEvents for it follow the answer.
    """

    arguments = [(b"watch_id", amp.Integer())]
    response = [(b"cancelled", amp.Boolean())]


class WatchEvents(_Command):
    """
    Node to client: the next C{events} of watch C{watch_id}
    (L{twisted_raft.rpc.watchwire.encodeEvents}; empty for a progress
    note), and C{next_revision}: every event of the revisions below it has
    now been sent, so a watch resumed elsewhere starts there.

    Each call holds whole revisions, so the events of one transaction come
    together; only a revision whose events encode to more than 2 MiB (a
    delete of a large prefix) is split over consecutive calls, each but
    the last with C{revision_continues} true, and the client library hands
    it over whole.  Answered with nothing once the client has taken the
    events: the node sends no more for that watch until then.
    """

    arguments = [
        (b"watch_id", amp.Integer()),
        (b"events", BigBytes()),
        (b"next_revision", amp.Integer()),
        (b"revision_continues", amp.Boolean(optional=True)),
    ]
    response = []


class WatchCancelled(_Command):
    """
    Node to client: the node dropped watch C{watch_id}; no WatchEvents for
    it follow.  C{code} is an error code: C{"COMPACTED"} (the watch fell
    behind the node's history, or the node installed a snapshot past it),
    with C{compact_revision}, the oldest revision the node can serve; or
    C{"UNAVAILABLE"}.  C{description} says why, for people.
    """

    arguments = [
        (b"watch_id", amp.Integer()),
        (b"code", amp.Unicode()),
        (b"compact_revision", amp.Integer(optional=True)),
        (b"description", amp.Unicode(optional=True)),
    ]
    response = []
