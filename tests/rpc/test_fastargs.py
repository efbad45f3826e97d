"""
The table-driven argument conversion (L{twisted_raft.rpc.fastargs}) gives
exactly what Twisted's per-argument conversion gives, for every raftkv
command, and falls back to Twisted's wherever the table does not apply.
"""

import pytest
from hypothesis import given, settings, strategies as st
from twisted.protocols import amp

from twisted_raft.rpc import commands
from twisted_raft.rpc.arguments import CHUNK, BigBytes
from twisted_raft.rpc.fastargs import Conversions

COMMANDS = [
    commands.Put, commands.Get, commands.Delete, commands.CompareAndSet,
    commands.Status, commands.RequestVote, commands.AppendEntries,
    commands.InstallSnapshot, commands.MemberList, commands.AddLearner,
    commands.PromoteMember, commands.RemoveMember, commands.TransferLeader,
    commands.Range, commands.Txn,
]


def valueFor(arg):
    if isinstance(arg, BigBytes):
        return st.binary(max_size=200)
    if isinstance(arg, amp.Integer):
        return st.integers(min_value=-(2**70), max_value=2**70)
    if isinstance(arg, amp.Unicode):
        return st.text(max_size=20)
    if isinstance(arg, amp.Boolean):
        return st.booleans()
    if isinstance(arg, amp.Float):  # Status's uptime
        return st.floats(allow_nan=False)
    if isinstance(arg, amp.ListOf):
        return st.lists(st.integers(min_value=0, max_value=1000), max_size=5)
    if isinstance(arg, amp.AmpList):
        return st.lists(objectsFor(arg.subargs), max_size=3)
    raise AssertionError(arg)


def objectsFor(arglist):
    fields = {}
    for wire, arg in arglist:
        py = amp._wireNameToPythonIdentifier(wire)
        value = valueFor(arg)
        fields[py] = st.one_of(st.none(), value) if arg.optional else value
    return st.fixed_dictionaries(fields)


@st.composite
def commandAndObjects(draw):
    command = draw(st.sampled_from(COMMANDS))
    which = draw(st.sampled_from(["arguments", "response"]))
    arglist = getattr(command, which)
    return command, which, arglist, draw(objectsFor(arglist))


def twistedToBox(arglist, objects):
    return amp._objectsToStrings(objects, arglist, amp.AmpBox(), None)


def twistedFromBox(arglist, box):
    return amp._stringsToObjects(box, arglist, None)


@settings(max_examples=400, deadline=None)
@given(commandAndObjects())
def test_same_boxes_and_objects_as_twisted(case):
    command, which, arglist, objects = case
    conv = command._fastArguments if which == "arguments" else command._fastResponse
    expected = twistedToBox(arglist, dict(objects))
    box = conv.toBox(dict(objects), amp.AmpBox())
    if conv.fast:
        assert box == expected
    else:
        assert box is None  # e.g. InstallSnapshot's ListOf, MemberList's AmpList: Twisted's path
    box = amp.AmpBox(expected)
    reserved = {"arguments": {amp.COMMAND: b"X", amp.ASK: b"1"}, "response": {amp.ANSWER: b"1"}}
    box.update(reserved[which])
    parsed = conv.fromBox(box)
    if conv.fast:
        assert parsed == twistedFromBox(arglist, expected)
    else:
        assert parsed is None


def test_the_hot_commands_use_the_tables():
    for command in (commands.Put, commands.Get, commands.AppendEntries):
        assert command._fastArguments.fast and command._fastResponse.fast


def test_a_value_in_several_chunks_goes_through_twisted():
    big = bytes(range(256)) * ((CHUNK * 2) // 256 + 1)
    box = commands.Put.makeArguments({"key": "k", "value": big}, None)
    assert box[b"value"] == big[:CHUNK] and b"value.2" in box and b"value.3" in box
    assert commands.Put._fastArguments.fromBox(box) is None
    box[amp.COMMAND], box[amp.ASK] = b"Put", b"1"
    assert commands.Put.parseArguments(box, None)["value"] == big


def test_a_gap_in_the_chunks_is_still_invalid_argument():
    box = amp.AmpBox({amp.COMMAND: b"Put", amp.ASK: b"1", b"key": b"k",
                      b"value": b"a", b"value.3": b"c"})
    with pytest.raises(amp.RemoteAmpError) as e:
        commands.Put.parseArguments(box, None)
    assert e.value.errorCode == commands.INVALID_ARGUMENT


@pytest.mark.parametrize("box", [
    {b"key": b"k"},  # value missing
    {b"key": b"k", b"value": b"v", b"sequence": b"x"},  # not an integer
    {b"key": b"k", b"value": b"v", b"forwarded": b"yes"},  # not a boolean
    {b"key": b"\xff", b"value": b"v"},  # not UTF-8
])
def test_malformed_requests_are_invalid_argument(box):
    box = amp.AmpBox(box)
    box[amp.COMMAND], box[amp.ASK] = b"Put", b"1"
    with pytest.raises(amp.RemoteAmpError) as e:
        commands.Put.parseArguments(box, None)
    assert e.value.errorCode == commands.INVALID_ARGUMENT


def test_unknown_keyword_is_refused_as_twisted_refuses_it():
    with pytest.raises(amp.InvalidSignature):
        commands.Put.makeArguments({"key": "k", "value": b"v", "bogus": 1}, None)


def test_missing_required_argument_raises():
    with pytest.raises(KeyError):
        commands.Put.makeArguments({"key": "k"}, None)
    with pytest.raises(KeyError):
        commands.Put.makeResponse({}, None)


def test_extra_keys_in_a_box_fall_back():
    conv = Conversions(commands.Get.arguments, (amp.COMMAND, amp.ASK))
    box = amp.AmpBox({b"key": b"k", b"unexpected": b"1", amp.COMMAND: b"Get", amp.ASK: b"1"})
    assert conv.fromBox(box) is None
    assert commands.Get.parseArguments(box, None) == {"key": "k", "stale": None, "forwarded": None}


def test_a_call_missing_a_required_argument_is_refused_before_sending():
    with pytest.raises(amp.InvalidSignature) as e:
        commands.AppendEntries(cluster="c", term=1, leader_id=1)
    assert "prev_log_index, prev_log_term, entries, leader_commit" in str(e.value)
    commands.Put(key="k", value=b"v")  # optional ones may be left out


def test_a_huge_malformed_value_gets_a_short_description():
    box = amp.AmpBox({amp.COMMAND: b"Put", amp.ASK: b"1", b"key": b"\xff" * 20000,
                      b"value": b"v"})
    with pytest.raises(amp.RemoteAmpError) as e:
        commands.Put.parseArguments(box, None)
    assert e.value.errorCode == commands.INVALID_ARGUMENT
    assert len(e.value.description) < 500
