"""
The fast AMP box parser gives exactly the boxes Twisted's parser gives, however
the bytes are split, and enforces the same key limit.
"""

from hypothesis import given, settings, strategies as st
from twisted.internet.testing import StringTransport
from twisted.protocols import amp

from twisted_raft.rpc.fastamp import FastBoxParsing

from tests.support import BoxCollector


class Fast(FastBoxParsing, amp.BinaryBoxProtocol):
    pass


def parse(cls, chunks):
    receiver = BoxCollector()
    proto = cls(receiver)
    proto.makeConnection(StringTransport())
    for chunk in chunks:
        proto.dataReceived(chunk)
    return receiver.boxes, proto


keys = st.binary(min_size=1, max_size=255)
boxes = st.lists(st.dictionaries(keys, st.binary(max_size=70000), max_size=5), max_size=4)


@settings(max_examples=150, deadline=None)
@given(boxes, st.lists(st.integers(1, 50000), max_size=8))
def test_same_boxes_as_twisted_however_split(data, cuts):
    wire = b"".join(amp.AmpBox({k: v[:65535] for k, v in box.items()}).serialize()
                    for box in data)
    points = sorted({c % (len(wire) + 1) for c in cuts})
    chunks = [wire[a:b] for a, b in zip([0] + points, points + [len(wire)])]
    expected, _ = parse(amp.BinaryBoxProtocol, [wire])
    got, _ = parse(Fast, chunks)
    assert got == expected


def test_byte_at_a_time_then_partial_box_kept():
    wire = amp.AmpBox({b"key": b"value", b"k2": b""}).serialize()
    partial = b"\x00\x03key\x00\x05val"  # a second box, cut inside a value
    got, proto = parse(Fast, [wire[i : i + 1] for i in range(len(wire))] + [partial])
    assert got == [{b"key": b"value", b"k2": b""}]
    assert proto._fastKey == b"key"  # the second box is under way
    proto.dataReceived(b"ue\x00\x00")
    assert proto.boxReceiver.boxes[-1] == {b"key": b"value"}


def test_key_over_255_bytes_drops_the_connection():
    receiver = BoxCollector()
    proto = Fast(receiver)
    transport = StringTransport()
    proto.makeConnection(transport)
    proto.dataReceived(b"\x01\x00" + b"k" * 256)
    assert transport.disconnecting and receiver.boxes == []


# -- FastDispatch answers exactly as Twisted's dispatch does ------------------------

import io  # noqa: E402

import pytest  # noqa: E402
from twisted.internet import defer  # noqa: E402

from twisted_raft.rpc import commands  # noqa: E402
from twisted_raft.rpc.fastamp import FastDispatch  # noqa: E402


class Fatal(Exception):
    pass


class Echo(commands._Command):
    arguments = [(b"mode", amp.Unicode()), (b"n", amp.Integer(optional=True))]
    response = [(b"n", amp.Integer())]
    fatalErrors = {Fatal: b"FATAL"}


class Responders(amp.AMP):
    @Echo.responder
    def echo(self, mode, n=None):
        results = {
            "sync": lambda: {"n": n or 0},
            "deferred": lambda: defer.succeed({"n": 7}),
            "pending": lambda: self.pending,
            "declared": lambda: (_ for _ in ()).throw(commands.ValueTooLarge("too big")),
            "declared-deferred": lambda: defer.fail(commands.Unavailable("no leader \N{SNOWMAN}")),
            "fatal": lambda: defer.fail(Fatal("bye")),
            "remote": lambda: defer.fail(amp.RemoteAmpError(b"CUSTOM", "custom")),
            "undeclared": lambda: 1 / 0,
            "unserializable": lambda: {"n": "not an int"},
            "missing": lambda: {},
            "huge-error": lambda: defer.fail(commands.InvalidArgument("x" * 70000)),
        }
        return results[mode]()


class FastResponders(FastDispatch, Responders):
    pass


def answer(cls, box, settle=None):
    proto = cls()
    proto.pending = defer.Deferred()
    transport = StringTransport()
    proto.makeConnection(transport)
    proto.ampBoxReceived(amp.AmpBox(box))
    if settle is not None:
        settle(proto.pending)
    sent = [dict(b) for b in amp.parse(io.BytesIO(transport.value()))]
    return sent, transport.disconnecting


SCENARIOS = [
    ({b"mode": b"sync", b"n": b"5"}, None),
    ({b"mode": b"sync"}, None),
    ({b"mode": b"deferred"}, None),
    ({b"mode": b"pending"}, lambda d: d.callback({"n": 3})),
    ({b"mode": b"pending"}, lambda d: d.errback(commands.InvalidArgument("late"))),
    ({b"mode": b"pending"}, None),  # never answered
    ({b"mode": b"declared"}, None),
    ({b"mode": b"declared-deferred"}, None),
    ({b"mode": b"fatal"}, None),
    ({b"mode": b"remote"}, None),
    ({b"mode": b"undeclared"}, None),
    ({b"mode": b"unserializable"}, None),
    ({b"mode": b"missing"}, None),
    ({b"mode": b"huge-error"}, None),  # cannot be sent: logged, connection dropped
    ({b"n": b"1"}, None),  # malformed: mode missing
    ({b"mode": b"sync", b"n": b"x"}, None),  # malformed: not an integer
]


@pytest.mark.parametrize("box,settle", SCENARIOS)
def test_fast_dispatch_answers_like_twisted(box, settle):
    box = {**box, amp.COMMAND: b"Echo", amp.ASK: b"17"}
    expected = answer(Responders, box, settle)
    got = answer(FastResponders, box, settle)
    assert got == expected


def test_a_command_without_answer_or_responder_takes_twisteds_path():
    for box in ({amp.COMMAND: b"Echo", b"mode": b"sync"},
                {amp.COMMAND: b"Nope", amp.ASK: b"1"}):
        assert answer(FastResponders, box) == answer(Responders, box)


# -- FastCalls: the same results and errors as Twisted's callRemote ----------------

from twisted.test import iosim  # noqa: E402

from twisted_raft.rpc.fastamp import FastCalls  # noqa: E402


class Missing(commands._Command):
    arguments = [(b"x", amp.Integer())]
    response = []


class Garbled(commands._Command):
    """The server below answers it with a non-integer."""

    commandName = b"Garbled"
    arguments = []
    response = [(b"n", amp.Integer())]


class GarbledResponder(Responders):
    def locateResponder(self, name):
        if name == b"Garbled":
            return lambda box: defer.succeed(amp.AmpBox({b"n": b"not a number"}))
        return super().locateResponder(name)


class FastCaller(FastCalls, amp.AMP):
    pass


def call(clientClass, command, kwargs, hold=False, lose=False):
    server = GarbledResponder()
    server.pending = defer.Deferred()
    client = clientClass()
    pump = iosim.connect(server, iosim.makeFakeServer(server), client,
                         iosim.makeFakeClient(client), greet=False)
    outcome = []
    try:
        d = client.callRemote(command, **kwargs)
    except Exception as e:
        return ("raised", type(e).__name__)
    d.addBoth(outcome.append)
    pump.flush()
    if lose:
        client.transport.loseConnection()
        pump.flush()
    result = outcome[0] if outcome else None
    if result is None:
        return ("pending",)
    if hasattr(result, "value"):
        e = result.value
        return ("failed", type(e).__name__, str(e)[:80], dropped(client))
    return ("ok", result, dropped(client))


def dropped(proto):
    return proto.transport is None or bool(proto.transport.disconnecting)


CALLS = [
    (Echo, {"mode": "sync", "n": 5}, {}),
    (Echo, {"mode": "declared"}, {}),
    (Echo, {"mode": "declared-deferred"}, {}),
    (Echo, {"mode": "fatal"}, {}),
    (Echo, {"mode": "remote"}, {}),
    (Echo, {"mode": "undeclared"}, {}),
    (Echo, {}, {}),  # forgot an argument
    (Echo, {"mode": "sync", "bogus": 1}, {}),  # no such argument
    (Missing, {"x": 1}, {}),  # the server has no responder
    (Garbled, {}, {}),
    (Echo, {"mode": "pending"}, {"lose": True}),  # the connection is lost
]


@pytest.mark.parametrize("command,kwargs,how", CALLS)
def test_fast_calls_give_what_twisted_gives(command, kwargs, how):
    assert call(FastCaller, command, kwargs, **how) == call(amp.AMP, command, kwargs, **how)
