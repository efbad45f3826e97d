"""
The fast AMP box parser gives exactly the boxes Twisted's parser gives, however
the bytes are split, and enforces the same key limit.
"""

from hypothesis import given, settings, strategies as st
from twisted.internet.testing import StringTransport
from twisted.protocols import amp

from twisted_raft.rpc.fastamp import FastBoxParsing


class Collect:
    def __init__(self):
        self.boxes = []

    def startReceivingBoxes(self, sender):
        pass

    def ampBoxReceived(self, box):
        self.boxes.append(dict(box))

    def stopReceivingBoxes(self, reason):
        pass


class Fast(FastBoxParsing, amp.BinaryBoxProtocol):
    pass


def parse(cls, chunks):
    receiver = Collect()
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
    receiver = Collect()
    proto = Fast(receiver)
    transport = StringTransport()
    proto.makeConnection(transport)
    proto.dataReceived(b"\x01\x00" + b"k" * 256)
    assert transport.disconnecting and receiver.boxes == []
