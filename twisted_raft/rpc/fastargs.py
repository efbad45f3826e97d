"""
Argument conversion for AMP commands without Twisted's per-argument overhead.

Twisted converts a command's arguments one L{amp.Argument} at a time: for
every argument of every request it copies the box, derives the Python name
from the wire name (C{_wireNameToPythonIdentifier}, C{nativeString}) and goes
through C{fromStringProto}/C{toStringProto}.  At thousands of requests a
second that showed as about 8 % of the client's profile and several percent of
the leader's.  L{Conversions} does the same work from tables built once per
command class, for the argument types raftkv's commands use on their hot
paths (C{Integer}, C{Unicode}, C{Boolean}, C{String}/C{Bytes}, and a
L{BigBytes} that fits in one value); anything else, and any box with keys the
table does not know (a L{BigBytes} split into chunks, say), goes through
Twisted's own code, so the wire format and the results are the same.
"""

from twisted.protocols import amp

from twisted_raft.rpc.arguments import CHUNK, BigBytes
from twisted_raft.rpc.twistedprivate import wireNameToPythonIdentifier


def _boolean(st):
    if st == b"True":
        return True
    if st == b"False":
        return False
    raise TypeError(f"Bad boolean value: {st!r}")


_utf8 = bytes.decode  # UTF-8 by default; a C call rather than a function's frame


def _encodeInteger(v):
    return b"%d" % (v,)


def _encodeUnicode(v):
    return v.encode("utf-8")


def _encodeBoolean(v):
    return b"True" if v else b"False"


def _encodeBigBytes(v):
    if type(v) is not bytes or len(v) > CHUNK:
        raise _Slow()
    return v


def _identity(v):
    return v


# exact types only: a subclass may convert differently
_DECODERS = {
    amp.Integer: int,
    amp.Unicode: _utf8,
    amp.Boolean: _boolean,
    amp.String: _identity,
    BigBytes: _identity,  # only when the box holds no further chunks
}
_ENCODERS = {
    amp.Integer: _encodeInteger,
    amp.Unicode: _encodeUnicode,
    amp.Boolean: _encodeBoolean,
    amp.String: _identity,
    BigBytes: _encodeBigBytes,
}


class _Slow(Exception):
    """This value needs Twisted's general conversion."""


def _loopRows(table, optional):
    """C{table}'s rows of arguments that are (or are not) C{optional}, as
    C{(wire, py, convert)}: C{convert} C{None} for the identity."""
    return [
        (wire, py, None if convert is _identity else convert)
        for wire, py, convert, isOptional in table if isOptional == optional
    ]


class Conversions:
    """
    Precomputed conversions for one argument list (a command's C{arguments}
    or C{response}).

    @ivar fast: whether every argument has a table conversion; if not, every
        method returns L{None} and the caller uses Twisted's.
    """

    def __init__(self, arglist, reserved):
        self.fast = all(type(arg) in _DECODERS for _, arg in arglist)
        self.decode = [
            (wire, wireNameToPythonIdentifier(wire), _DECODERS.get(type(arg)), arg.optional)
            for wire, arg in arglist
        ]
        self.encode = [
            (wire, wireNameToPythonIdentifier(wire), _ENCODERS.get(type(arg)), arg.optional)
            for wire, arg in arglist
        ]
        # what fromBox and toBox loop over (every request and answer
        # passes both), split by optional so the loops test nothing per
        # argument that the table knows; None: the value as it is (no call)
        self._decodeRequired = _loopRows(self.decode, optional=False)
        self._decodeOptional = _loopRows(self.decode, optional=True)
        self._encodeRequired = _loopRows(self.encode, optional=False)
        self._encodeOptional = _loopRows(self.encode, optional=True)
        self.wireNames = frozenset(wire for wire, _ in arglist) | frozenset(reserved)
        self.pythonNames = frozenset(py for _, py, _, _ in self.decode)
        self.required = [py for _, py, _, optional in self.decode if not optional]
        self._requiredSet = frozenset(self.required)

    def checkSignature(self, objects, commandName):
        """
        @raise amp.InvalidSignature: C{objects} lacks a required argument
            (with Twisted's message, in argument order).
        """
        if not self._requiredSet <= objects.keys():
            forgotten = [py for py in self.required if py not in objects]
            raise amp.InvalidSignature(f"forgot {', '.join(forgotten)} for {commandName}")

    def fromBox(self, box):
        """
        The Python values of C{box}, or L{None} if it needs Twisted's
        conversion.  Raises as Twisted would on a missing or bad value.
        """
        if not self.fast or not box.keys() <= self.wireNames:
            return None
        objects = {}
        for wire, py, decode in self._decodeRequired:
            st = box[wire]  # KeyError(wire) if left out, as Twisted's
            objects[py] = st if decode is None else decode(st)
        for wire, py, decode in self._decodeOptional:
            st = box.get(wire)  # left out: None, as Twisted's
            objects[py] = st if st is None or decode is None else decode(st)
        return objects

    def toBox(self, objects, box):
        """
        Fill C{box} from C{objects} and return it, or return L{None} (with
        C{box} untouched) if a value needs Twisted's conversion.
        """
        if not self.fast:
            return None
        out = {}
        try:
            for wire, py, encode in self._encodeRequired:
                v = objects[py]  # KeyError(py) if left out, as Twisted's
                out[wire] = v if encode is None else encode(v)
            for wire, py, encode in self._encodeOptional:
                v = objects.get(py)
                if v is not None:
                    out[wire] = v if encode is None else encode(v)
        except _Slow:
            return None
        box.update(out)
        return box
