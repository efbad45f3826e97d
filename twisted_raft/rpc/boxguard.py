"""
What one AMP connection may send a raftkv protocol, in one place: the limits
on one box, and the boxes AMP's dispatcher cannot take.

Every raftkv protocol (the node's server side, its peer links, the client's
connections) parses with L{fastamp.FastBoxParsing}, which is a L{BoxGuard},
so these rules hold on both ends of every connection, on the fast parser and
on Twisted's alike.

Limits.  AMP bounds a key (255 bytes) and a value (65,535 bytes) but not a
box: keys and values sent without the empty key that ends a box grow the
box, and the receiver's memory, without bound.  A box whose keys and values
add up to more than L{MAX_BOX_BYTES}, or that has more than L{MAX_BOX_KEYS}
keys, drops the connection as soon as its next length prefix says so.

Boxes AMP cannot take.  Twisted's dispatcher raises into the reactor (which
logs an unhandled error) on a box that is neither a command nor an answer,
on an answer to a question never asked and on an error box without its code;
a command sent without C{_ask} is run and its failure logged as a critical
"unhandled" error; and the built-in C{StartTLS} command, which raftkv never
uses (TLS, where configured, is on the endpoint), would try to switch the
connection.  Here the first three drop the connection, and a command this
protocol does not serve (C{StartTLS} included) is answered C{UNHANDLED}, as
Twisted answers an unknown command, with its name cut short.

A dropped connection is logged once, at info, naming the peer and the rule,
never echoing the bytes; nothing in the box reaches a responder.
"""

from twisted.logger import Logger
from twisted.protocols import amp
from twisted.python.failure import Failure

KiB = 1024
MiB = 1024 * KiB

MAX_BOX_BYTES = 4 * MiB
"""
The most bytes of keys and values one box may carry.

The largest legitimate box is a L{commands.CompareAndSet} (or the same
request forwarded by a follower) with a 4 KiB key, a 1 MiB C{expected}, a
1 MiB C{value} and a 128-byte client id: about 2 MiB + 4 KiB.  The
AppendEntries carrying that write's log entry is the same size plus 16
bytes: a batch stops at C{RaftConfig.maxBatchBytes} (1 MiB), but an entry
larger than that goes alone.  An InstallSnapshot chunk is
C{RaftConfig.snapshotChunk} (256 KiB) and a Get answer at most 1 MiB.  4 MiB
is nearly twice the largest (C{tests/rpc/test_boxguard.py} checks that each
fits with at least half as much again to spare), and bounds what a box in
progress costs one connection.
"""

MAX_BOX_KEYS = 256
"""
The most keys one box may have.

The largest legitimate count is that same CompareAndSet: its two 1 MiB
values travel as 17 chunks of 65,535 bytes each (L{BigBytes}), plus
C{key}, C{forwarded}, C{client_id}, C{sequence}, C{_command} and C{_ask}:
40 keys.  Each key costs a bytes object and a dict slot whatever its size,
so without this limit a box of one-byte keys and empty values within
L{MAX_BOX_BYTES} would hold about a million of them.
"""

_STARTTLS = amp.StartTLS.commandName
_NAME_SHOWN = 64  # bytes of an unknown command's name quoted in the answer


class BoxGuard:
    """
    Mix into an L{amp.BinaryBoxProtocol} subclass, before it (through
    L{fastamp.FastBoxParsing}).  The fast parser counts a box against the
    limits itself; Twisted's is counted in C{proto_key}/C{proto_value}.

    @ivar dropped: L{None}, or why this connection was dropped (after
        which every byte received is ignored).
    """

    _guardLog = Logger()
    dropped = None
    _boxBytes = 0
    _boxKeys = 0

    def dropConnection(self, reason):
        """
        Drop this connection for C{reason} (a few words, never the peer's
        bytes), logging it once.
        """
        if self.dropped is not None:
            return
        self.dropped = reason
        transport = self.transport
        if transport is None:
            return
        self._guardLog.info(
            "dropped the AMP connection from {peer}: {reason}",
            peer=transport.getPeer(),
            reason=reason,
        )
        abort = getattr(transport, "abortConnection", None)
        (abort or transport.loseConnection)()

    def _boxTooLarge(self):
        self.dropConnection(
            f"a box over {MAX_BOX_BYTES} bytes or {MAX_BOX_KEYS} keys"
        )

    # -- Twisted's parser (when the fast one is off) -------------------------

    def _countString(self, length, isKey):
        keys = self._boxKeys + isKey
        size = self._boxBytes + length
        if keys > MAX_BOX_KEYS or size > MAX_BOX_BYTES:
            self._boxTooLarge()
            return False
        self._boxKeys, self._boxBytes = keys, size
        return True

    def proto_key(self, string):
        if not string:
            self._boxBytes = self._boxKeys = 0
        elif not self._countString(len(string), True):
            return "dropped"
        return super().proto_key(string)

    def proto_value(self, string):
        if not self._countString(len(string), False):
            return "dropped"
        return super().proto_value(string)

    def proto_dropped(self, string):
        # the rest of a read that arrived with the box too many
        return "dropped"

    # -- dispatch --------------------------------------------------------------

    def ampBoxReceived(self, box):
        if self.dropped is not None:
            return
        problem = self._vet(box)
        if problem is _ANSWERED:
            return
        if problem is not None:
            self.dropConnection(problem)
            return
        try:
            super().ampBoxReceived(box)
        except Exception:
            # Every box known to make Twisted's dispatcher raise is caught
            # by _vet: this one is a bug of ours, so it is logged in full.
            self._guardLog.failure("dispatching an AMP box failed", Failure())
            self.dropConnection("a box that could not be dispatched")

    def _vet(self, box):
        """
        @return: L{None} if C{box} may be dispatched, L{_ANSWERED} if it
            was answered here, or why the connection must be dropped.
        """
        # The common cases first, in as few lookups as can tell them: this
        # runs for every box.
        tag = box.get(amp.ANSWER)
        if tag is not None:
            outstanding = getattr(self, "_outstandingRequests", None)
            if outstanding is not None and tag not in outstanding:
                return "an answer to no request"
            return None
        tag = box.get(amp.ERROR)
        if tag is not None:
            outstanding = getattr(self, "_outstandingRequests", None)
            if outstanding is not None and tag not in outstanding:
                return "an answer to no request"
            if amp.ERROR_CODE not in box or amp.ERROR_DESCRIPTION not in box:
                return "an error answer without its code or description"
            return None
        name = box.get(amp.COMMAND)
        if name is None:
            return "a box that is neither a command nor an answer"
        locator = getattr(self, "locator", None)
        dispatch = getattr(locator, "_commandDispatch", None)
        if dispatch is None:
            return None  # a Twisted without it: its own rules apply
        entry = None if name == _STARTTLS else dispatch.get(name)
        if amp.ASK not in box:
            if entry is None or entry[0].requiresAnswer:
                return "a command without a question tag, or one not served here"
            return None
        if entry is None:
            self._refuse(box, name)
            return _ANSWERED
        return None

    def _refuse(self, box, name):
        shown = repr(name[:_NAME_SHOWN]) + ("..." if len(name) > _NAME_SHOWN else "")
        error = amp.AmpBox()
        error[amp.ERROR] = box[amp.ASK]
        error[amp.ERROR_CODE] = amp.UNHANDLED_ERROR_CODE
        error[amp.ERROR_DESCRIPTION] = f"Unhandled Command: {shown}".encode("ascii")
        try:
            self.sendBox(error)
        except Exception:
            self.dropConnection("an unknown command that could not be answered")


_ANSWERED = object()
