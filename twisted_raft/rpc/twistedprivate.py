"""
The private names of Twisted's AMP that raftkv relies on, in one place.

L{fastamp} and L{fastargs} replace parts of AMP's per-box and per-call
machinery (measured in C{docs/performance.rst}) and so reach into names that
Twisted does not promise to keep.  Each one is listed in L{PRIVATE_NAMES} with
the kind and parameters raftkv expects (and one more, C{ClientService._log},
that L{peers} silences); L{problems} checks them against the installed
Twisted.  C{tests/rpc/test_twistedprivate.py} fails, naming the changed
name, on a Twisted release that renames or reshapes one; the side-by-side
tests in C{tests/rpc/test_fastamp.py} and C{tests/rpc/test_fastargs.py} check that
their behaviour still matches Twisted's own dispatch.

At run time a mismatch is not fatal: L{FAST_PATHS} is then false, a warning
naming the changes is logged once, and the fast mixins defer to Twisted's own
(slower but equivalent) code instead of failing mid-request.  setup.py pins
the range of Twisted releases this was tested against.
"""

import inspect
import keyword
from dataclasses import dataclass

from twisted.application.internet import ClientService
from twisted.logger import Logger
from twisted.protocols import amp, basic


@dataclass(frozen=True)
class PrivateName:
    """
    One private name of Twisted's that raftkv uses.

    @ivar owner: the module or class that defines it.
    @ivar name: the attribute name.
    @ivar kind: C{"method"} (a function on a class), C{"function"} (a
        module-level function), or the type the class attribute's default
        must be an instance of.
    @ivar parameters: for a method or function, its parameter names in order.
    @ivar usedBy: where raftkv uses it, for the warning and the test message.
    @ivar fastPath: whether a change turns off L{fastamp}'s fast paths.
    """

    owner: object
    name: str
    kind: object
    parameters: tuple = ()
    usedBy: str = ""
    fastPath: bool = True

    def describe(self):
        owner = getattr(self.owner, "__qualname__", None) or self.owner.__name__
        return f"{owner}.{self.name}"

    def problem(self):
        """
        What is wrong with this name on the installed Twisted, or L{None}.
        """
        missing = object()
        value = inspect.getattr_static(self.owner, self.name, missing)
        if value is missing:
            return f"{self.describe()} is gone (used by {self.usedBy})"
        if self.kind in ("method", "function"):
            if not inspect.isfunction(value):
                return f"{self.describe()} is no longer a {self.kind} (used by {self.usedBy})"
            found = tuple(inspect.signature(value).parameters)
            if found != self.parameters:
                return (
                    f"{self.describe()} takes {found}, raftkv expects "
                    f"{self.parameters} (used by {self.usedBy})"
                )
        elif not isinstance(value, self.kind):
            return (
                f"{self.describe()} is {value!r}, raftkv expects a "
                f"{self.kind.__name__} (used by {self.usedBy})"
            )
        return None


# has a fallback of ours (below), so no reason to leave the fast paths
_WIRE_NAME = PrivateName(amp, "_wireNameToPythonIdentifier", "function", ("key",),
                         "fastargs.Conversions, arguments.BigBytes", fastPath=False)

_dispatch = "fastamp.FastDispatch"
_calls = "fastamp.FastCalls"
_parsing = "fastamp.FastBoxParsing"

PRIVATE_NAMES = (
    # BoxDispatcher: AMP's command/answer bookkeeping
    PrivateName(amp.BoxDispatcher, "_commandReceived", "method", ("self", "box"), _dispatch),
    PrivateName(amp.BoxDispatcher, "_safeEmit", "method", ("self", "aBox"), _dispatch),
    PrivateName(amp.BoxDispatcher, "_answerReceived", "method", ("self", "box"), _calls),
    PrivateName(amp.BoxDispatcher, "_errorReceived", "method", ("self", "box"), _calls),
    PrivateName(amp.BoxDispatcher, "_nextTag", "method", ("self",), _calls),
    # None until the connection is lost, then the reason every call fails with
    PrivateName(amp.BoxDispatcher, "_failAllReason", type(None), (), _calls),
    # None on the class; the instance's {tag: Deferred} is set in __init__
    PrivateName(amp.BoxDispatcher, "_outstandingRequests", type(None), (), _calls),
    # CommandLocator's metaclass fills {commandName: (command, responder)}
    PrivateName(amp.CommandLocator, "_commandDispatch", dict, (), _dispatch),
    PrivateName(amp.AmpBox, "_sendTo", "method", ("self", "proto"), _calls),
    # BinaryBoxProtocol: the parser FastBoxParsing replaces
    PrivateName(amp.BinaryBoxProtocol, "_MAX_KEY_LENGTH", int, (), _parsing),
    PrivateName(amp.BinaryBoxProtocol, "_keyLengthLimitExceeded", bool, (), _parsing),
    PrivateName(amp.BinaryBoxProtocol, "_justStartedTLS", bool, (), _parsing),
    _WIRE_NAME,
    # Twisted's parser (when the fast one is off) parses no further while it
    # is true: how ReadBackPressure stops a burst already read
    PrivateName(basic.IntNStringReceiver, "paused", bool, (), "limits.ReadBackPressure",
                fastPath=False),
    # overridden with a silent logger: a changed name only makes the log noisy
    PrivateName(ClientService, "_log", Logger, (), "peers._QuietClientService",
                fastPath=False),
)


def problems(names=PRIVATE_NAMES):
    """
    @return: one message per private name that the installed Twisted no
        longer has in the expected shape; empty if all are as expected.
    """
    return [p for p in (name.problem() for name in names) if p is not None]


PROBLEMS = problems()

FAST_PATHS = not problems([name for name in PRIVATE_NAMES if name.fastPath])
"""Whether the fast mixins of L{fastamp} may use Twisted's private names."""

if PROBLEMS:
    Logger().warn(
        "raftkv: this Twisted changed private names raftkv uses "
        "(fast AMP paths {state}): {problems}",
        state="kept" if FAST_PATHS else "off, using Twisted's slower ones",
        problems="; ".join(PROBLEMS),
    )


def _pythonIdentifier(key):
    # Twisted's rule (twisted.protocols.amp._wireNameToPythonIdentifier), for
    # a Twisted that no longer has it: dashes become underscores and a Python
    # keyword is title-cased.
    name = key.replace(b"-", b"_").decode("ascii")
    return name.title() if keyword.iskeyword(name) else name


if problems([_WIRE_NAME]):
    wireNameToPythonIdentifier = _pythonIdentifier
else:
    wireNameToPythonIdentifier = amp._wireNameToPythonIdentifier
"""The Python name Twisted gives an argument's wire name (C{bytes})."""
