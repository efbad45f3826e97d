"""
L{twisted_raft.rpc.boxguard}: the limits on one box (on the fast parser and
on Twisted's), the boxes refused before dispatch, and the largest legitimate
boxes fitting the limits with headroom.
"""

import io

import pytest
from twisted.internet.testing import StringTransport
from twisted.logger import LogLevel, globalLogPublisher
from twisted.protocols import amp
from twisted.python.failure import Failure

from twisted_raft import kv
from twisted_raft.connections import ClientAMP
from twisted_raft.raft.config import RaftConfig
from twisted_raft.raft.messages import Entry
from twisted_raft.rpc import commands, wire
from twisted_raft.rpc.boxguard import MAX_BOX_BYTES, MAX_BOX_KEYS
from twisted_raft.rpc.fastamp import FastBoxParsing
from twisted_raft.rpc.server import NodeServerFactory

from tests.support import BoxCollector, Clock, StubNode, captured, failureOf

MiB = 1024 * 1024


@pytest.fixture
def logged():
    events = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)


def serious(events):
    """Events that would mean an error escaped: failures, error or critical."""
    return [
        e for e in events
        if e.get("log_failure") is not None
        or e.get("log_level") in (LogLevel.error, LogLevel.critical)
    ]


class Parser(FastBoxParsing, amp.BinaryBoxProtocol):
    """The fast parser, boxes to a collector."""


class SlowParser(Parser):
    """Twisted's parser, with the same guard."""

    _fastPaths = False


PARSERS = [Parser, SlowParser]


def parser(cls):
    collector = BoxCollector()
    proto = cls(collector)
    transport = StringTransport()
    proto.makeConnection(transport)
    return proto, collector, transport


def pair(key, length):
    return len(key).to_bytes(2, "big") + key + length.to_bytes(2, "big")


def boxOf(sizes):
    """A box with values of C{sizes} under keys k0, k1, ..."""
    box = amp.AmpBox()
    for i, n in enumerate(sizes):
        box[b"k%d" % i] = b"v" * n
    return box


def boxBytes(box):
    return sum(len(k) + len(v) for k, v in box.items())


# -- the limits ----------------------------------------------------------------


def exactly(total, keys=80):
    """Value sizes for C{keys} keys k0.. whose box is C{total} bytes."""
    keyBytes = sum(len(b"k%d" % i) for i in range(keys))
    rest = total - keyBytes
    sizes = [rest // keys] * keys
    sizes[0] += rest - sum(sizes)
    assert max(sizes) <= amp.MAX_VALUE_LENGTH
    return sizes


@pytest.mark.parametrize("cls", PARSERS)
def test_a_box_of_exactly_the_limit_passes_one_byte_more_drops(cls, logged):
    box = boxOf(exactly(MAX_BOX_BYTES))
    assert boxBytes(box) == MAX_BOX_BYTES
    proto, collector, transport = parser(cls)
    proto.dataReceived(box.serialize())
    assert len(collector.boxes) == 1 and not transport.disconnecting

    over = boxOf(exactly(MAX_BOX_BYTES + 1))
    proto, collector, transport = parser(cls)
    proto.dataReceived(over.serialize())
    assert collector.boxes == [] and transport.disconnecting
    assert proto.dropped.startswith("a box over")
    assert not serious(logged)


@pytest.mark.parametrize("cls", PARSERS)
def test_a_box_that_never_ends_is_dropped_and_memory_stays_bounded(cls, logged):
    proto, collector, transport = parser(cls)
    chunk = b"".join(pair(b"key%d" % i, 60000) + b"v" * 60000 for i in range(4))
    sent = 0
    while not transport.disconnecting:
        proto.dataReceived(chunk)
        sent += len(chunk)
        assert sent < 2 * MAX_BOX_BYTES, "never dropped"
    assert sent > MAX_BOX_BYTES - len(chunk)
    # after the drop, nothing more is kept
    for _ in range(20):
        proto.dataReceived(chunk)
    held = len(proto._fastBuffer or b"") + len(getattr(proto, "_unprocessed", b""))
    assert held < 2 * len(chunk)
    assert collector.boxes == []
    drops = [e for e in logged if "dropped the AMP connection" in e.get("log_format", "")]
    assert len(drops) == 1 and drops[0]["log_level"] is LogLevel.info
    assert b"vvvv" not in repr(drops[0]).encode()  # the bytes are not echoed
    assert not serious(logged)


@pytest.mark.parametrize("cls", PARSERS)
def test_too_many_keys_drop_even_when_tiny(cls):
    box = amp.AmpBox({b"k%d" % i: b"" for i in range(MAX_BOX_KEYS)})
    proto, collector, transport = parser(cls)
    proto.dataReceived(box.serialize())
    assert len(collector.boxes) == 1 and not transport.disconnecting

    box[b"one-more"] = b""
    proto, collector, transport = parser(cls)
    proto.dataReceived(box.serialize())
    assert collector.boxes == [] and transport.disconnecting


@pytest.mark.parametrize("cls", PARSERS)
def test_the_count_starts_again_with_each_box(cls):
    proto, collector, transport = parser(cls)
    box = boxOf(exactly(MAX_BOX_BYTES * 3 // 4))
    data = box.serialize() * 3
    for i in range(0, len(data), 7777):  # in pieces that split strings
        proto.dataReceived(data[i : i + 7777])
    assert len(collector.boxes) == 3 and not transport.disconnecting


@pytest.mark.parametrize("cls", PARSERS)
def test_nothing_is_parsed_after_a_key_too_long(cls):
    """Twisted's parser keeps the whole read that had the bad key and, fed
    more, would parse it again from its start, dispatching its boxes twice."""
    proto, collector, transport = parser(cls)
    proto.dataReceived(boxOf([3]).serialize() + b"\x01\x00" + b"k" * 256)
    assert len(collector.boxes) == 1 and transport.disconnecting
    proto.dataReceived(boxOf([4]).serialize())
    assert len(collector.boxes) == 1


# -- the largest legitimate boxes fit -----------------------------------------


def largestBoxes():
    key = "\u00e9" * (kv.MAX_KEY_BYTES // 2)  # 4,096 bytes of UTF-8
    value = b"v" * kv.MAX_VALUE_BYTES
    clientId, sequence = "c" * 128, 2**64 - 1
    cas = commands.CompareAndSet.makeArguments(
        dict(key=key, expected=value, value=value, forwarded=True,
             client_id=clientId, sequence=sequence), None)
    entry = kv.encodeSession(clientId, sequence, kv.encodeCompareAndSet(key, value, value))
    config = RaftConfig()

    def append(entries):
        return commands.AppendEntries.makeArguments(
            dict(cluster="raftkv", term=2**63, leader_id=3, prev_log_index=2**63,
                 prev_log_term=2**63, entries=wire.encodeEntries(entries),
                 leader_commit=2**63), None)

    small = [Entry(i, 1, b"x" * 1000) for i in range(1, config.maxBatchBytes // 1016 + 1)]
    return {
        "CompareAndSet": cas,
        "AppendEntries of one 2 MiB entry": append([Entry(1, 1, entry)]),
        "AppendEntries of a full batch": append(small),
        "InstallSnapshot chunk": commands.InstallSnapshot.makeArguments(
            dict(cluster="raftkv", term=1, leader_id=1, last_index=1, last_term=1,
                 members=[1, 2, 3, 4, 5], offset=0, data=b"s" * config.snapshotChunk,
                 done=False), None),
        "Get answer": commands.Get.makeResponse(dict(found=True, value=value), None),
    }


@pytest.mark.parametrize("name", sorted(largestBoxes()))
def test_the_largest_legitimate_boxes_fit_with_headroom(name):
    box = largestBoxes()[name]
    box[amp.COMMAND] = b"CompareAndSet"
    box[amp.ASK] = b"ffffffff"
    assert 1.5 * boxBytes(box) <= MAX_BOX_BYTES, boxBytes(box)
    assert 5 * len(box) <= MAX_BOX_KEYS, len(box)
    for cls in PARSERS:
        proto, collector, transport = parser(cls)
        proto.dataReceived(box.serialize())
        assert len(collector.boxes) == 1 and not transport.disconnecting


# -- boxes refused before dispatch ---------------------------------------------


def server(fast=True):
    node = StubNode()
    factory = NodeServerFactory(node, node.store, None, "raftkv", Clock())
    proto = factory.buildProtocol(None)
    if not fast:
        proto._fastPaths = False
    transport = StringTransport()
    proto.makeConnection(transport)
    return node, proto, transport


def sent(transport):
    return [dict(b) for b in amp.parse(io.BytesIO(transport.value()))]


PUT = {amp.COMMAND: b"Put", b"key": b"k", b"value": b"v"}

DROPPED = [
    ({}, "neither a command nor an answer"),
    ({b"key": b"k"}, "neither a command nor an answer"),
    ({amp.ANSWER: b"1", b"revision": b"1"}, "an answer to no request"),
    ({amp.ERROR: b"1", amp.ERROR_CODE: b"X", amp.ERROR_DESCRIPTION: b"d"},
     "an answer to no request"),
    (PUT, "without a question tag"),  # a write nobody could be answered for
    ({amp.COMMAND: b"Status"}, "without a question tag"),
    ({amp.COMMAND: b"StartTLS"}, "without a question tag"),
    ({amp.COMMAND: b"Nope"}, "without a question tag"),
]


@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("box,reason", DROPPED)
def test_boxes_amp_cannot_take_drop_the_connection_quietly(box, reason, fast, logged):
    node, proto, transport = server(fast)
    then = amp.AmpBox({**PUT, amp.ASK: b"2"}).serialize()
    proto.dataReceived(amp.AmpBox(box).serialize() + then)
    assert reason in proto.dropped
    assert transport.disconnecting and sent(transport) == []
    # nothing after it was dispatched either
    assert node.proposed == [] and node.reads == 0
    drops = [e for e in logged if "dropped" in e.get("log_format", "")]
    assert [e["log_level"] for e in drops] == [LogLevel.info]
    assert not serious(logged)


@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("name", [b"StartTLS", b"Nope", b"\xff" * 60000])
def test_a_command_not_served_here_is_unhandled_and_the_link_survives(name, fast, logged):
    node, proto, transport = server(fast)
    proto.dataReceived(amp.AmpBox({amp.COMMAND: name, amp.ASK: b"1"}).serialize())
    proto.dataReceived(amp.AmpBox({amp.COMMAND: b"Status", amp.ASK: b"2"}).serialize())
    first, second = sent(transport)
    assert first[amp.ERROR] == b"1" and first[amp.ERROR_CODE] == amp.UNHANDLED_ERROR_CODE
    assert first[amp.ERROR_DESCRIPTION].startswith(b"Unhandled Command: b'")
    assert len(first[amp.ERROR_DESCRIPTION]) < 400
    assert second[amp.ANSWER] == b"2"
    assert not transport.disconnecting and proto.dropped is None
    assert not proto._justStartedTLS and proto.hostCertificate is None
    assert not serious(logged)


def test_the_client_drops_an_answer_to_no_request_and_keeps_its_calls(logged):
    proto = ClientAMP()
    transport = StringTransport()
    proto.makeConnection(transport)
    d = captured(proto.callRemote(commands.Put, key="k", value=b"v"))
    proto.dataReceived(amp.AmpBox({amp.ANSWER: b"999", b"revision": b"1"}).serialize())
    assert transport.disconnecting and "no request" in proto.dropped
    proto.connectionLost(Failure(ConnectionError("dropped")))
    failureOf(d)  # the pending call fails with the lost connection
    assert not serious(logged)


@pytest.mark.parametrize("answer", [
    {b"revision": b"x"},
    {b"revision": b"-"},
    {},
    {b"revision": b"9" * 5000},
])
def test_a_response_that_does_not_parse_fails_only_its_call(answer, logged):
    proto = ClientAMP()
    transport = StringTransport()
    proto.makeConnection(transport)
    d = captured(proto.callRemote(commands.Put, key="k", value=b"v"))
    tag = sent(transport)[0][amp.ASK]
    proto.dataReceived(amp.AmpBox({amp.ANSWER: tag, **answer}).serialize())
    failureOf(d)
    assert not transport.disconnecting and proto.dropped is None
    assert not serious(logged)


def test_an_error_answer_without_its_code_is_dropped_at_the_client(logged):
    proto = ClientAMP()
    transport = StringTransport()
    proto.makeConnection(transport)
    d = captured(proto.callRemote(commands.Status))
    tag = sent(transport)[0][amp.ASK]
    proto.dataReceived(amp.AmpBox({amp.ERROR: tag}).serialize())
    assert transport.disconnecting and "without its code" in proto.dropped
    proto.connectionLost(Failure(ConnectionError("dropped")))
    failureOf(d)
    assert not serious(logged)
