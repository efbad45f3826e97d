"""
Fuzz: random bytes and mutated valid boxes (bytes flipped, cut, extended or
inserted; values of the wrong type, negative or huge; keys dropped; unknown
or other commands; question tags removed or turned into answers; huge length
prefixes), each on its own connection to a node's L{NodeProtocol}, half of
them through Twisted's parser and dispatch (fast paths off).  Seeded, on
in-memory transports: deterministic.

For every case: no exception escapes C{dataReceived}; nothing is logged as
an error, critical or failure; every box sent back answers a question the
case asked; the connection is answered, dropped, or waiting for the rest of
an unfinished box; and the node did exactly what a correct node must for
those bytes, which the reference (Twisted's own parser, then the command's
argument parsing and the server's validation) decides: the complete,
well-formed requests before the first box that ends the connection, and
nothing else.  Meanwhile a well-behaved client on its own connection is
served after every batch of cases.
"""

import gc
import io
import random

from twisted.internet.testing import StringTransport
from twisted.logger import LogLevel, globalLogPublisher
from twisted.protocols import amp
from twisted.python.failure import Failure
from twisted.test import iosim

from twisted_raft import kv, kvtxn
from twisted_raft.raft import messages
from twisted_raft.raft.membership import ChangeKind, ConfChange, Configuration, encodeMembers
from twisted_raft.rpc import commands, kvwire, server, wire
from twisted_raft.rpc.server import NodeProtocol, NodeServerFactory

from tests.support import BoxCollector, Clock, StubNode, authority, captured, result

SEED = 20_100
CASES = 400

WRITES = {b"Put", b"Delete", b"CompareAndSet", b"Txn"}
PEER = {
    b"RequestVote": "votes", b"AppendEntries": "appends", b"InstallSnapshot": "snapshots",
    b"TimeoutNow": "timeouts",
}
CHANGES = {
    b"AddLearner": ChangeKind.ADD_LEARNER,
    b"PromoteMember": ChangeKind.PROMOTE,
    b"RemoveMember": ChangeKind.REMOVE,
}


class Node(StubNode):
    def __init__(self):
        super().__init__()
        self.snapshots = []
        self.holdTransfers = True  # a transfer would make it a follower

    def handleInstallSnapshot(self, request):
        self.snapshots.append(request)
        return messages.InstallSnapshotResult(request.term, True, len(request.data))


class SlowProtocol(NodeProtocol):
    """Twisted's parser and dispatch: the fast paths off."""

    _fastPaths = False


def valid():
    """Well-formed request boxes, one of each kind the node serves."""

    def box(command, **kw):
        b = command.makeArguments(kw, None)
        b[amp.COMMAND] = command.commandName
        b[amp.ASK] = b"1"
        return b

    return [
        box(commands.Put, key="k", value=b"v", client_id="c", sequence=1),
        box(commands.Put, key="big", value=bytes(range(256)) * 300),  # BigBytes chunks
        box(commands.Get, key="k"),
        box(commands.Get, key="k", stale=True),
        box(commands.Delete, key="k"),
        box(commands.CompareAndSet, key="k", expected=b"v", value=b"w"),
        box(commands.Status),
        box(commands.RequestVote, cluster="raftkv", term=3, candidate_id=2,
            last_log_index=5, last_log_term=2, pre_vote=True),
        box(commands.AppendEntries, cluster="raftkv", term=3, leader_id=2,
            prev_log_index=5, prev_log_term=2, leader_commit=4,
            entries=wire.encodeEntries([messages.Entry(6, 3, b"a")])),
        box(commands.InstallSnapshot, cluster="raftkv", term=5, leader_id=2,
            last_index=9, last_term=4, members=[1, 2, 3], offset=0, data=b"s", done=True),
        box(commands.RequestVote, cluster="raftkv", term=4, candidate_id=2,
            last_log_index=5, last_log_term=2, transfer=True),
        box(commands.AppendEntries, cluster="raftkv", term=3, leader_id=2,
            prev_log_index=5, prev_log_term=2, leader_commit=4,
            entries=wire.encodeEntries([messages.Entry(
                6, 3, encodeMembers(Configuration.ofVoters((1, 2, 3))),
                messages.CONFIGURATION)])),
        box(commands.InstallSnapshot, cluster="raftkv", term=5, leader_id=2,
            last_index=9, last_term=4, members=[1, 2], offset=0, data=b"s", done=True,
            configuration=encodeMembers(Configuration.ofVoters((1, 2), {1: "a:1"}, 8)),
            config_index=8),
        box(commands.TimeoutNow, cluster="raftkv", term=5, leader_id=2),
        box(commands.MemberList),
        box(commands.AddLearner, node_id=4, address="127.0.0.1:8004"),
        box(commands.PromoteMember, node_id=4),
        box(commands.RemoveMember, node_id=9),
        box(commands.TransferLeader, node_id=2),
        # ranges and transactions (rpc/kvwire.py)
        box(commands.Range, key="k", prefix=True, limit=5, after="a", keys_only=True),
        box(commands.Range, key="a", end="z", stale=True, count_only=True),
        box(commands.Txn, txn=kvtxn.encodeTxn(kvtxn.Txn(
            [kvtxn.Compare("k", "value", "==", b"v")],
            [kvtxn.Put("k", b"w", prevKv=True), kvtxn.Range("k", prefix=True)],
            [kvtxn.Delete("a", "b")])), client_id="c", sequence=2),
        box(commands.Put, key="k", value=b"v", prev_kv=True),
        box(commands.Delete, key="k", prefix=True, prev_kv=True),
    ]


ODD_VALUES = [
    b"", b"-1", b"0", b"x", b"True", b"False", b"\xff\xfe", b"\xed\xa0\x80",
    b"18446744073709551616", b"9" * 5000, b"1e3", b" 1", b"\x00" * 8,
]


def mutate(rnd, base):
    """One hostile variation of the box C{base}, as bytes."""
    box = amp.AmpBox(base)
    how = rnd.randrange(11)
    if how == 0:
        return rnd.randbytes(rnd.randrange(1, 300))
    if how == 1:  # wrong types, out of range, not UTF-8
        key = rnd.choice([k for k in box if not k.startswith(b"_")] or [b"x"])
        box[key] = rnd.choice(ODD_VALUES + [rnd.randbytes(rnd.randrange(20))])
    elif how == 2:
        if box:
            del box[rnd.choice(list(box))]
    elif how == 3:
        box[amp.COMMAND] = rnd.choice(
            [b"Nope", b"StartTLS", b"", b"put", b"\xff" * 300] + list(WRITES) + list(PEER))
    elif how == 4:  # the question tag removed, or made an answer or an error
        tag = box.pop(amp.ASK, b"1")
        box[rnd.choice([b"_x", amp.ANSWER, amp.ERROR])] = tag
    elif how == 5:
        box[rnd.randbytes(rnd.randrange(1, 20))] = rnd.randbytes(rnd.randrange(50))
    data = bytearray(box.serialize())
    if how == 6:  # bytes flipped
        for _ in range(rnd.randrange(1, 5)):
            data[rnd.randrange(len(data))] = rnd.randrange(256)
    elif how == 7:  # cut short
        del data[rnd.randrange(len(data)):]
    elif how == 8:  # extended
        data += rnd.randbytes(rnd.randrange(1, 100))
    elif how == 9:  # bytes inserted
        at = rnd.randrange(len(data))
        data[at:at] = rnd.randbytes(rnd.randrange(1, 10))
    elif how == 10:  # a huge length prefix somewhere
        at = rnd.randrange(0, max(1, len(data) - 1))
        data[at : at + 2] = rnd.choice([b"\xff\xff", b"\x01\x00", b"\x80\x00"])
    return bytes(data)


def reference(data):
    """
    What a correct node does with C{data} on a fresh connection: the
    requests it serves, as C{[(commandName, arguments)]}.  Twisted's own
    parser finds the boxes; a box that is not a question (no C{_ask}, an
    answer, an error) ends the connection, and every box after it is
    ignored; a request is served if its arguments parse and pass the
    server's validation.
    """
    collector = BoxCollector()
    parser = amp.BinaryBoxProtocol(collector)
    parser.makeConnection(StringTransport())
    parser.dataReceived(data)
    served = []
    for box in collector.boxes:
        if amp.ANSWER in box or amp.ERROR in box or amp.ASK not in box:
            break
        name = box.get(amp.COMMAND)
        if name is None:
            break
        command = NodeProtocol._commandDispatch.get(name, (None,))[0]
        if command is None or name == b"StartTLS":
            continue
        try:
            args = command.parseArguments(amp.AmpBox(box), None)
        except amp.RemoteAmpError:
            continue
        if not validRequest(name, args):
            continue
        served.append((name, args))
    return served


def validRequest(name, args):
    try:
        if name == b"Txn":
            kvwire.checkTxn(args["txn"])
        if name == b"Range":
            kvwire.rangeQuery(args["key"], args["end"], args["prefix"], args["limit"],
                              args["after"], args["keys_only"], args["count_only"])
        if name == b"Delete" and _rangeDelete(args):
            kvwire.deleteRange(args["key"], args["end"], args["prefix"], args["prev_kv"])
        elif name in WRITES - {b"Txn"} or name == b"Get":
            server.validateKey(args["key"])
            server.validateValue("value", args.get("value"))
            server.validateValue("expected", args.get("expected"))
        if name in WRITES:
            server.validateSession(args.get("client_id"), args.get("sequence"))
        if name in CHANGES:
            server.confChange(CHANGES[name], args["node_id"], args.get("address") or "")
        if name == b"TransferLeader":
            server.validateNodeId(args["node_id"] or 0, allowZero=True)
        if name in PEER:
            # a stranger's connection: well-formed or not, PERMISSION_DENIED
            return False
    except (commands.InvalidArgument, commands.ValueTooLarge, ValueError):
        return False
    return True


def expectedChange(name, args):
    return ConfChange(CHANGES[name], args["node_id"], args.get("address") or "")


def _rangeDelete(args):
    return args.get("end") is not None or args.get("prefix") or args.get("prev_kv")


def expectedProposal(name, args):
    key = args.get("key")
    if name == b"Txn":
        data = kvwire.checkTxn(args["txn"])
    elif name == b"Put" and args.get("prev_kv"):
        data = kvwire.putPrevKv(key, args["value"])
    elif name == b"Delete" and _rangeDelete(args):
        data = kvwire.deleteRange(key, args["end"], args["prefix"], args["prev_kv"])
    elif name == b"Put":
        data = kv.encodePut(key, args["value"])
    elif name == b"Delete":
        data = kv.encodeDelete(key)
    else:
        data = kv.encodeCompareAndSet(key, args.get("expected"), args["value"])
    if args.get("client_id") is not None:
        data = kv.encodeSession(args["client_id"], args["sequence"], data)
    return data


class Serious:
    """Log events that would mean an error escaped."""

    def __init__(self):
        self.events = []

    def __call__(self, event):
        if event.get("log_failure") is not None or event.get("log_level") in (
            LogLevel.error, LogLevel.critical,
        ):
            self.events.append(event)


def test_hostile_bytes_are_answered_or_dropped_and_change_only_what_they_may():
    rnd = random.Random(SEED)
    node = Node()
    clock = Clock()
    factory = NodeServerFactory(node, node.store, None, authority(node.nodeId), clock)
    slowFactory = NodeServerFactory(node, node.store, None, authority(node.nodeId), clock)
    slowFactory.protocol = SlowProtocol
    serious = Serious()
    globalLogPublisher.addObserver(serious)
    try:
        client, _, pump = iosim.connectedServerAndClient(
            lambda: factory.buildProtocol(None), amp.AMP, clock=clock)
        bases = valid()
        outcomes = {"answered": 0, "dropped": 0, "waiting": 0}
        for case in range(CASES):
            data = b"".join(mutate(rnd, rnd.choice(bases))
                            for _ in range(rnd.choice([1, 1, 1, 2, 3])))
            expected = reference(data)
            proposedBefore, readsBefore = len(node.proposed), node.reads
            changesBefore, transfersBefore = len(node.changes), len(node.transfers)
            peerBefore = {attr: len(getattr(node, attr)) for attr in PEER.values()}
            f = slowFactory if case % 2 else factory
            proto = f.buildProtocol(None)
            transport = StringTransport()
            proto.makeConnection(transport)
            cuts = sorted(rnd.sample(range(len(data) + 1), min(3, len(data) + 1)))
            for a, b in zip([0] + cuts, cuts + [len(data)]):
                proto.dataReceived(data[a:b])  # nothing may raise
            clock.advance(factory.requestTimeout + 1)

            # exactly the well-formed requests before the connection's end
            proposed = node.proposed[proposedBefore:]
            assert proposed == [expectedProposal(n, a) for n, a in expected if n in WRITES], case
            for name, attr in PEER.items():
                got = len(getattr(node, attr)) - peerBefore[attr]
                assert got == sum(1 for n, _ in expected if n == name), (case, name)
            assert node.reads - readsBefore == sum(
                1 for n, a in expected
                if n == b"MemberList" or n in (b"Get", b"Range") and not a.get("stale")), case
            changes = [c for c, _ in node.changes[changesBefore:]]
            assert changes == [expectedChange(n, a) for n, a in expected if n in CHANGES], case
            transfers = [t for t, _ in node.transfers[transfersBefore:]]
            assert transfers == [
                a["node_id"] or 0 for n, a in expected if n == b"TransferLeader"], case

            # every box sent back answers a question this case asked
            answers = [dict(b) for b in amp.parse(io.BytesIO(transport.value()))]
            for box in answers:
                assert (amp.ANSWER in box) != (amp.ERROR in box), (case, box)
            assert len(answers) >= len(expected), case
            if transport.disconnecting:
                outcomes["dropped"] += 1
            elif answers:
                outcomes["answered"] += 1
            else:
                outcomes["waiting"] += 1  # an unfinished box: bounded by boxguard
            proto.connectionLost(Failure(ConnectionError("case over")))
            assert not serious.events, (case, serious.events[:1])

            if case % 50 == 49:  # a well-behaved client is still served
                key = f"good{case}"
                d = captured(client.callRemote(commands.Put, key=key, value=b"ok"))
                pump.flush()
                assert result(d)["revision"] > 0
                d = captured(client.callRemote(commands.Get, key=key))
                pump.flush()
                assert result(d) == {"found": True, "value": b"ok"}
        gc.collect()  # a failed Deferred nobody handled is reported when collected
        assert not serious.events, serious.events[:1]
        # the mix really exercised each outcome
        assert min(outcomes.values()) >= CASES // 20, outcomes
    finally:
        globalLogPublisher.removeObserver(serious)
