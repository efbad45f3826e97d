"""
Twisted's private names that raftkv uses (L{twistedprivate}): each is still
there in the expected shape on the installed Twisted, no use of another one
has crept in outside the list, and the fast mixins fall back to Twisted's own
paths when the list says they must.
"""

import pathlib
import tokenize

import pytest
from twisted.application.internet import ClientService
from twisted.internet.testing import StringTransport
from twisted.protocols import amp

import twisted_raft
from twisted_raft.rpc import commands, fastamp, twistedprivate
from twisted_raft.rpc.twistedprivate import PRIVATE_NAMES, PrivateName

from tests.support import BoxCollector


@pytest.mark.parametrize("name", PRIVATE_NAMES, ids=PrivateName.describe)
def test_each_private_name_is_as_raftkv_expects(name):
    problem = name.problem()
    assert problem is None, (
        f"Twisted changed a private name raftkv uses: {problem}. "
        "Adapt the user, update twistedprivate.PRIVATE_NAMES, and re-check "
        "the Twisted pin in setup.py."
    )


def test_the_fast_paths_are_on_with_the_tested_twisted():
    assert twistedprivate.PROBLEMS == []
    assert twistedprivate.FAST_PATHS
    assert fastamp.FastDispatch._fastPaths and fastamp.FastCalls._fastPaths
    assert fastamp.FastBoxParsing._fastPaths


def _twistedPrivateNames():
    """Every private name that AMP's module and classes, or ClientService,
    define (the Twisted code raftkv extends)."""
    found = {n for n in vars(amp) if n.startswith("_") and not n.startswith("__")}
    # Not the TLS classes AMP imports for StartTLS when pyOpenSSL is there
    # (twisted[tls], for mutual TLS): raftkv does not extend them, and their
    # privates (e.g. Certificate._load) would flag raftkv's own names.
    classes = [
        v for v in vars(amp).values()
        if isinstance(v, type) and v.__module__ != "twisted.internet._sslverify"
    ] + [ClientService]
    for cls in classes:
        for klass in cls.__mro__:
            found.update(n for n in vars(klass) if n.startswith("_") and not n.startswith("__"))
    found.update(n for n in vars(amp.AMP()) if n.startswith("_"))
    return found


def _namesInCode(path):
    # NAME tokens only: a docstring citing Twisted's code is not a use
    with open(path, "rb") as f:
        return {
            tok.string for tok in tokenize.tokenize(f.readline) if tok.type == tokenize.NAME
        }


def test_no_private_twisted_name_is_used_outside_the_list():
    listed = {name.name for name in PRIVATE_NAMES}
    private = _twistedPrivateNames()
    root = pathlib.Path(twisted_raft.__file__).parent
    unlisted = {}
    for path in root.rglob("*.py"):
        if path.name == "twistedprivate.py":
            continue
        for name in (_namesInCode(path) & private) - listed:
            unlisted.setdefault(name, []).append(str(path.relative_to(root)))
    assert unlisted == {}, (
        "private Twisted names used but not listed in twistedprivate.PRIVATE_NAMES "
        f"(add them there, with the shape the code relies on): {unlisted}"
    )


def test_a_renamed_or_reshaped_name_is_reported_by_name():
    class Owner:
        def method(self, box):
            pass

        flag = False

    gone = PrivateName(Owner, "_gone", "method", ("self", "box"), "somewhere")
    assert "Owner._gone is gone (used by somewhere)" in gone.problem()
    moved = PrivateName(Owner, "method", "method", ("self", "aBox"), "x")
    assert "Owner.method takes ('self', 'box')" in moved.problem()
    retyped = PrivateName(Owner, "flag", int, (), "x")
    assert retyped.problem() is None  # bool is an int
    retyped = PrivateName(Owner, "flag", dict, (), "x")
    assert "Owner.flag is False, raftkv expects a dict" in retyped.problem()
    assert twistedprivate.problems([gone, retyped]) == [gone.problem(), retyped.problem()]


@pytest.mark.parametrize(
    "wire",
    [b"key", b"lease-id", b"a-b-c", b"from", b"in", b"lambda"]
    + sorted({
        wire
        for command in vars(commands).values()
        if isinstance(command, type) and issubclass(command, amp.Command)
        for wire, _ in list(command.arguments) + list(command.response)
    }),
)
def test_our_python_names_for_wire_names_are_twisteds(wire):
    assert twistedprivate._pythonIdentifier(wire) == amp._wireNameToPythonIdentifier(wire)


# -- with the fast paths off, the mixins are Twisted's AMP -----------------------


class _SlowParsing(fastamp.FastBoxParsing, amp.BinaryBoxProtocol):
    _fastPaths = False


def test_parsing_without_the_fast_path_is_twisteds():
    data = amp.AmpBox({b"a": b"1", b"bb": b"x" * 300}).serialize() * 2
    proto = _SlowParsing(BoxCollector())
    proto.makeConnection(StringTransport())
    proto.dataReceived(data[:5])
    proto.dataReceived(data[5:])
    assert proto.boxReceiver.boxes == [{b"a": b"1", b"bb": b"x" * 300}] * 2
    assert proto._fastBuffer is None  # Twisted's parser did the work


def test_dispatch_and_calls_without_the_fast_paths_are_twisteds():
    from tests.rpc.test_fastamp import CALLS, SCENARIOS, FastCaller, FastResponders, Responders, answer, call

    class SlowResponders(FastResponders):
        _fastPaths = False

    class SlowCaller(FastCaller):
        _fastPaths = False
        made = []

        def __init__(self):
            super().__init__()
            self.made.append(self)

    for box, settle in SCENARIOS:
        box = {**box, amp.COMMAND: b"Echo", amp.ASK: b"17"}
        assert answer(SlowResponders, box, settle) == answer(Responders, box, settle)
    for command, kwargs, how in CALLS:
        assert call(SlowCaller, command, kwargs, **how) == call(amp.AMP, command, kwargs, **how)
    assert SlowCaller.made and all(c._fastCalls is None for c in SlowCaller.made)
