"""
raftkv's AMP commands: the public client contract and the peer RPCs.

The client commands (L{Put}, L{Get}, L{Delete}, L{CompareAndSet},
L{Status}) and their error codes are a public contract that independent
clients are written against: extend them with optional arguments, never
rename or reshape them.

Error codes:

  - C{UNAVAILABLE}: no leader or no quorum in time.  For a write, the
    outcome is unknown unless the description starts with C{"not proposed"}.
  - C{INVALID_ARGUMENT}: empty key, key over 4,096 bytes of UTF-8, or a
    malformed request.
  - C{VALUE_TOO_LARGE}: a value over 1 MiB (1,048,576 bytes).

Exactly-once writes (Raft thesis §6.3): L{Put}, L{Delete} and
L{CompareAndSet} take an optional C{client_id} (1 to 128 bytes of UTF-8)
and C{sequence} (1 to 2**64 - 1), given together or not at all.  A request
repeating a (client_id, sequence) that was already applied changes nothing
and gets the first attempt's answer, C{revision} included; so a write whose
outcome is unknown may be retried with the same pair.  A sequence whose
result is no longer kept (more than 1,024 below the client's highest) is
INVALID_ARGUMENT.
"""

from twisted.protocols import amp

from twisted_raft.rpc.arguments import BigBytes
from twisted_raft.rpc.fastargs import Conversions


class Unavailable(Exception):
    """No leader or no quorum in time; a write's outcome is unknown."""


class InvalidArgument(Exception):
    """The request is malformed: bad key, missing or garbled argument."""


class ValueTooLarge(Exception):
    """A value is over 1 MiB."""


UNAVAILABLE = b"UNAVAILABLE"
INVALID_ARGUMENT = b"INVALID_ARGUMENT"
VALUE_TOO_LARGE = b"VALUE_TOO_LARGE"

ERRORS = {
    Unavailable: UNAVAILABLE,
    InvalidArgument: INVALID_ARGUMENT,
    ValueTooLarge: VALUE_TOO_LARGE,
}

NOT_PROPOSED = "not proposed"
"""Prefix of an UNAVAILABLE description saying the write was not proposed
(so it may be retried anywhere without risk of applying twice)."""


def _brief(error, limit=300):
    """C{repr(error)}, cut short: it may quote a huge malformed value, and an
    AMP error description must fit in one 64 KiB value."""
    text = repr(error)
    return text if len(text) <= limit else text[:limit] + "..."


class _Command(amp.Command):
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
    arguments = [
        (b"key", amp.Unicode()),
        (b"value", BigBytes()),
        (b"forwarded", amp.Boolean(optional=True)),
        (b"client_id", amp.Unicode(optional=True)),
        (b"sequence", amp.Integer(optional=True)),
    ]
    response = [(b"revision", amp.Integer())]


class Get(_Command):
    arguments = [
        (b"key", amp.Unicode()),
        (b"stale", amp.Boolean(optional=True)),
        (b"forwarded", amp.Boolean(optional=True)),
    ]
    response = [(b"found", amp.Boolean()), (b"value", BigBytes())]


class Delete(_Command):
    arguments = [
        (b"key", amp.Unicode()),
        (b"forwarded", amp.Boolean(optional=True)),
        (b"client_id", amp.Unicode(optional=True)),
        (b"sequence", amp.Integer(optional=True)),
    ]
    response = [(b"deleted", amp.Boolean()), (b"revision", amp.Integer())]


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


class Status(_Command):
    arguments = []
    response = [
        (b"node_id", amp.Integer()),
        (b"role", amp.Unicode()),
        (b"term", amp.Integer()),
        (b"leader_id", amp.Integer()),
        (b"commit_index", amp.Integer()),
        (b"last_applied", amp.Integer()),
        (b"last_log_index", amp.Integer()),
    ]


# -- peer RPCs (Raft §5, Figure 2) -------------------------------------------
#
# ``cluster`` carries the cluster token so that a node never takes votes or
# entries from another cluster's nodes that happen to reach its port.


class RequestVote(_Command):
    arguments = [
        (b"cluster", amp.Unicode()),
        (b"term", amp.Integer()),
        (b"candidate_id", amp.Integer()),
        (b"last_log_index", amp.Integer()),
        (b"last_log_term", amp.Integer()),
        (b"pre_vote", amp.Boolean(optional=True)),
    ]
    response = [(b"term", amp.Integer()), (b"vote_granted", amp.Boolean())]


class AppendEntries(_Command):
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


class InstallSnapshot(_Command):
    """
    §7 / Figure 13: one chunk of the leader's snapshot file, C{data} at byte
    C{offset} (C{done} on the last chunk) for the snapshot covering every
    entry up to C{last_index} (of C{last_term}) of the cluster C{members}.
    C{next_offset} is the byte offset the follower expects next.
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
    ]
    response = [
        (b"term", amp.Integer()),
        (b"success", amp.Boolean()),
        (b"next_offset", amp.Integer()),
    ]
