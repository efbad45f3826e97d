"""
A faster AMP box parser.

Twisted's L{amp.BinaryBoxProtocol} parses a box one length-prefixed string at
a time through L{Int16StringReceiver} and a string-state machine: several
Python calls per key and per value.  Profiling a leader under write load put
about a third of its time there.  L{FastBoxParsing} parses every complete box
in the received data in one loop, with the same wire format and limits (keys
of 1-255 bytes, values of at most 65,535 bytes, a box ended by an empty key),
and hands each box to C{ampBoxReceived} exactly as before.  It is used only
while the connection speaks plain AMP (no protocol switch or TLS start, which
raftkv never does); otherwise it defers to Twisted's parser.  Either way a
box is held to the limits of L{boxguard} (its size and key count), and boxes
AMP's dispatcher cannot take are stopped there.

The mixins here use private names of Twisted's AMP; they are listed and
checked in L{twistedprivate}, and if the installed Twisted changed one
(L{twistedprivate.FAST_PATHS} false) every mixin defers to Twisted's own code.
"""

from twisted.internet import defer
from twisted.logger import Logger
from twisted.protocols import amp
from twisted.python.failure import Failure

from twisted_raft.rpc.boxguard import MAX_BOX_BYTES, MAX_BOX_KEYS, BoxGuard
from twisted_raft.rpc.twistedprivate import FAST_PATHS


_LARGE_READ = 65536


class FastBoxParsing(BoxGuard):
    """Mix into an L{amp.AMP} subclass, before C{amp.AMP}."""

    _fastBuffer = None
    _fastBox = None
    _fastKey = None

    readSize = None
    """Bytes read from the socket per reactor turn (L{setReadSize}); the
    transport's default (64 KiB) if L{None}."""

    def connectionMade(self):
        super().connectionMade()
        # Requests and answers are small and pipelined: Nagle's algorithm
        # would hold a box back until the previous segment is acknowledged.
        setNoDelay = getattr(self.transport, "setTcpNoDelay", None)
        if setNoDelay is not None:
            try:
                setNoDelay(True)
            except OSError:
                pass
        if self.readSize is not None:
            self.setReadSize(self.readSize)

    def setReadSize(self, size):
        """
        Read at most C{size} bytes from the socket per reactor turn.

        Why a client reads its answers in small pieces (measured in
        C{docs/performance.rst}): with 64 KiB reads, a client takes in every
        answer that arrived in one turn and sends all the requests that
        follow at its end, so the leader gets them as one burst, answers
        them as one burst, and the two processes take turns, each idle about
        half the time.  Reading a few KiB per turn sends requests back in
        smaller groups while later answers are still being read, and keeps
        both busy at once.
        """
        if hasattr(self.transport, "bufferSize"):
            self.transport.bufferSize = size

    _fastPaths = FAST_PATHS
    """Whether to use the fast paths; a class attribute so tests can turn
    them off on a subclass."""

    readingPaused = False
    """Whether to leave what was received unparsed for now (a mixin such as
    L{limits.ReadBackPressure} says when); it is parsed on the next
    C{dataReceived}, C{b""} included, after this turns false."""

    _parsing = False

    def dataReceived(self, data):
        if self.dropped is not None or self._keyLengthLimitExceeded:
            # The connection is on its way down.  Twisted's parser would even
            # parse again, from its start, the read that had the bad key
            # (it keeps all of it), dispatching its boxes a second time.
            return
        if self._parsing and not data:
            # Reading resumed from inside a box's dispatch: the loop running
            # now goes on by itself.  (Neither parser may be re-entered.)
            return
        if not self._fastPaths or self.innerProtocol is not None or self._justStartedTLS:
            return self._parse(super().dataReceived, data)
        buffer = self._fastBuffer
        if buffer is None:
            buffer = self._fastBuffer = bytearray()
        buffer += data
        if self._parsing or self.readingPaused:
            return
        self._parse(self._parseFast, buffer)

    def _parse(self, parser, data):
        if self._parsing:
            return parser(data)
        self._parsing = True
        try:
            return parser(data)
        finally:
            self._parsing = False

    def _parseFast(self, buffer):
        box, key = self._fastBox, self._fastKey
        if box is None:
            box = amp.AmpBox()
        # the box so far, against boxguard's limits: each length prefix is
        # checked before its string is waited for, and counted once read
        boxBytes, boxKeys = self._boxBytes, self._boxKeys
        size = len(buffer)
        pos = 0
        while size - pos >= 2:
            length = (buffer[pos] << 8) | buffer[pos + 1]
            if key is None:
                if length == 0:
                    pos += 2
                    self._fastBox = self._fastKey = None
                    self._boxBytes = self._boxKeys = boxBytes = boxKeys = 0
                    del buffer[:pos]
                    self.boxReceiver.ampBoxReceived(box)
                    if (self.transport is None or self.innerProtocol is not None
                            or self.dropped is not None or self.readingPaused):
                        # the rest waits in the buffer (see readingPaused)
                        return
                    buffer = self._fastBuffer
                    size, pos, box = len(buffer), 0, amp.AmpBox()
                    continue
                if length > self._MAX_KEY_LENGTH:
                    self._keyLengthLimitExceeded = True
                    self.transport.loseConnection()
                    return
                if boxKeys >= MAX_BOX_KEYS or boxBytes + length > MAX_BOX_BYTES:
                    self._boxTooLarge()
                    return
                if size - pos - 2 < length:
                    break
                key = bytes(buffer[pos + 2 : pos + 2 + length])
                boxKeys += 1
            else:
                if boxBytes + length > MAX_BOX_BYTES:
                    self._boxTooLarge()
                    return
                if size - pos - 2 < length:
                    break
                box[key] = bytes(buffer[pos + 2 : pos + 2 + length])
                key = None
            boxBytes += length
            pos += 2 + length
        if pos:
            del buffer[:pos]
        self._fastBox, self._fastKey = box, key
        self._boxBytes, self._boxKeys = boxBytes, boxKeys
        if self.readSize is not None:
            # small reads, except while a large box (a big value) arrives
            want = self.readSize if len(buffer) < self.readSize else _LARGE_READ
            transport = self.transport
            if transport is not None and getattr(transport, "bufferSize", want) != want:
                transport.bufferSize = want


class FastDispatch:
    """
    Mix into an L{amp.AMP} subclass (before C{amp.AMP}) whose responders are
    its own C{@Command.responder} methods: a command is parsed, handed to its
    responder and answered (or its error encoded) directly, instead of
    through Twisted's C{locateResponder} (a new closure per request),
    C{maybeDeferred} and five callbacks per request.  The boxes sent, the
    error codes and which errors close the connection are the same as
    Twisted's (L{twisted.protocols.amp.BoxDispatcher._commandReceived} and
    C{CommandLocator._wrapWithSerialization}); commands with no answer or no
    responder of ours take Twisted's path.
    """

    _fastLog = Logger()
    _fastPaths = FAST_PATHS

    def _commandReceived(self, box):
        if not self._fastPaths:
            return super()._commandReceived(box)
        entry = self._commandDispatch.get(box[amp.COMMAND])
        tag = box.get(amp.ASK)
        if entry is None or tag is None or self.locator is not self:
            return super()._commandReceived(box)
        command, responder = entry
        try:
            result = responder(self, **command.parseArguments(box, self))
        except BaseException:
            self._fastError(Failure(), command, tag)
            return
        if isinstance(result, defer.Deferred):
            if result.called:
                result.addCallbacks(
                    self._fastAnswer, self._fastError,
                    callbackArgs=(command, tag), errbackArgs=(command, tag),
                )
            else:
                self.requestPending()
                result.addCallbacks(
                    self._fastAnswerLater, self._fastErrorLater,
                    callbackArgs=(command, tag), errbackArgs=(command, tag),
                )
        else:
            self._fastAnswer(result, command, tag)

    def requestPending(self):
        """
        A request was dispatched whose answer is not ready yet;
        L{requestDone} follows once it is answered.  A hook
        (L{limits.ReadBackPressure} counts them); nothing here.
        """

    def requestDone(self):
        """A request L{requestPending} told of has been answered."""

    # A pending request's answer: counted done in the same callback, not in
    # one more (this runs for nearly every request a leader serves).

    def _fastAnswerLater(self, result, command, tag):
        self._fastAnswer(result, command, tag)
        self.requestDone()

    def _fastErrorLater(self, failure, command, tag):
        self._fastError(failure, command, tag)
        self.requestDone()

    def _fastAnswer(self, result, command, tag):
        try:
            box = command.makeResponse(result, self)
        except BaseException:
            self._fastError(Failure(), command, tag)
            return
        box[amp.ANSWER] = tag
        self._emit(box)

    def _emit(self, box):
        # As Twisted's chain ends: a box that cannot be sent (too long, say)
        # is logged and the connection dropped, never raised into the reactor.
        try:
            self._safeEmit(box)
        except BaseException:
            self.unhandledError(Failure())

    def _fastError(self, failure, command, tag):
        known = failure.check(*command.allErrors) if command.allErrors else None
        if failure.check(amp.RemoteAmpError):
            code, desc, fatal = failure.value.errorCode, failure.value.description, failure.value.fatal
        elif known is not None:
            code, desc, fatal = command.allErrors[known], str(failure.value), known in command.fatalErrors
        else:
            self._fastLog.failure("while receiving response to command", failure)
            code, desc, fatal = amp.UNKNOWN_ERROR_CODE, b"Unknown Error", True
        if isinstance(desc, str):
            desc = desc.encode("utf-8", "replace")
        box = amp.QuitBox() if fatal else amp.AmpBox()
        box[amp.ERROR] = tag
        box[amp.ERROR_DESCRIPTION] = desc
        box[amp.ERROR_CODE] = code
        self._emit(box)


class FastCalls:
    """
    Mix into an L{amp.AMP} subclass (before C{amp.AMP}): C{callRemote} of a
    raftkv command (one with conversion tables, see L{fastargs}) sends the
    same box as Twisted's but without a L{amp.Command} instance, and its
    answer is parsed and delivered directly instead of through the three
    callbacks Twisted adds per call.  The results and errors are Twisted's:
    the parsed response; the command's declared error for a declared code,
    L{amp.UnknownRemoteError} for another, L{amp.UnhandledCommand}; the
    connection's failure for calls outstanding when it is lost.  Unlike
    Twisted's, the returned Deferred is the caller's alone: a failure the
    caller leaves unhandled does not drop the connection.
    """

    _fastCalls = None
    _fastPaths = FAST_PATHS

    def callRemote(self, commandType, *a, **kw):
        fast = getattr(commandType, "_fastArguments", None)
        if not self._fastPaths or fast is None or a or not commandType.requiresAnswer:
            return super().callRemote(commandType, *a, **kw)
        # As Twisted: a missing argument fails the Deferred, one that cannot
        # be encoded raises.
        try:
            fast.checkSignature(kw, commandType.commandName)
        except amp.InvalidSignature:
            return defer.fail()
        box = commandType.makeArguments(kw, self)
        if self._failAllReason is not None:
            return defer.fail(self._failAllReason)
        tag = self._nextTag()
        box[amp.COMMAND] = commandType.commandName
        box[amp.ASK] = tag
        box._sendTo(self.boxSender)
        d = self._outstandingRequests[tag] = defer.Deferred()
        if self._fastCalls is None:
            self._fastCalls = {}
        self._fastCalls[tag] = commandType
        return d

    def _takeFastCall(self, tag):
        """
        Forget the call C{tag} if it was sent by our C{callRemote}.

        @return: its command and Deferred, or L{None} if Twisted's
            C{callRemote} sent it (and Twisted's code must answer it).
        """
        calls = self._fastCalls
        command = calls.pop(tag, None) if calls else None
        if command is None:
            return None
        return command, self._outstandingRequests.pop(tag)

    def _answerReceived(self, box):
        call = self._takeFastCall(box[amp.ANSWER])
        if call is None:
            return super()._answerReceived(box)
        command, d = call
        try:
            result = command.parseResponse(box, self)
        except BaseException:
            d.errback()
        else:
            d.callback(result)

    def _errorReceived(self, box):
        call = self._takeFastCall(box[amp.ERROR])
        if call is None:
            return super()._errorReceived(box)
        command, d = call
        code = box[amp.ERROR_CODE]
        description = box[amp.ERROR_DESCRIPTION]
        if isinstance(description, bytes):
            description = description.decode("utf-8", "replace")
        if code in amp.PROTOCOL_ERRORS:
            error = amp.PROTOCOL_ERRORS[code](code, description)
        else:
            error = command.reverseErrors.get(code, amp.UnknownRemoteError)(description)
        d.errback(error)

    def connectionLost(self, reason):
        super().connectionLost(reason)
        self._fastCalls = None
