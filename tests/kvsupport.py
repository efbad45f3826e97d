"""
A client connected to real nodes' L{NodeServerFactory}s over in-memory AMP
(L{twisted.test.iosim}) on a L{task.Clock}: the wire, the server and the
client library together, for the KV model's tests (ranges, transactions).
"""

import io

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.test import iosim

from twisted_raft import cli, kv
from twisted_raft.client import RaftKVClient
from twisted_raft.connections import ClientAMP
from twisted_raft.raft import messages
from twisted_raft.rpc.server import NodeServerFactory

from tests.support import StubNode, authority


class Nodes:
    """
    C{n} stub nodes, node 1 leading, each behind its own server; a client
    may connect to any (followers forward to the leader over their peer
    link, as in production).  C{down} nodes refuse connections.  With
    C{epoch} the leader's first entry is the metadata epoch.
    """

    def __init__(self, n=1, epoch=True, **clientArgs):
        from twisted_raft.rpc.peers import AMPTransport

        from tests.support import PumpEndpoint

        self.clock = Clock()
        self.nodes = [
            StubNode(nodeId=i, role=messages.LEADER if i == 1 else messages.FOLLOWER, leaderId=1)
            for i in range(1, n + 1)
        ]
        self.pumps = []
        self.factories = []
        for node in self.nodes:
            peers = None
            if node.nodeId != 1:
                leaderFactory = self.factories[0]
                endpoint = PumpEndpoint(leaderFactory, self.clock)
                peers = AMPTransport(
                    {1: endpoint}, authority(node.nodeId), self.clock
                )
                peers.startService()
                self.pumps.append(endpoint.pumps)
            self.factories.append(
                NodeServerFactory(node, node.store, peers, authority(node.nodeId), self.clock)
            )
        self.addresses = [f"127.0.0.1:{8001 + i}" for i in range(n)]
        self.down = set()
        self.clients = []
        self.client = self.newClient(**clientArgs)
        if epoch:
            # index 1, as a cluster's first leader proposes it: transactions
            # (put with prev_kv and range deletes too) apply only after it
            self.write(kv.encodeMetadataEpoch())

    @property
    def leader(self):
        return self.nodes[0]

    def newClient(self, **kwargs):
        kwargs.setdefault("timeout", 5.0)
        return RaftKVClient(self.addresses, reactor=self.clock, connect=self.connect, **kwargs)

    def connect(self, address):
        i = self.addresses.index(address)
        if i in self.down:
            return fail(ConnectionRefusedError(address))
        server = self.factories[i].buildProtocol(None)
        client = ClientAMP()
        pump = iosim.connect(
            server, iosim.makeFakeServer(server), client, iosim.makeFakeClient(client),
            greet=False, clock=self.clock,
        )
        self.pumps.append([pump])
        self.clients.append(client)
        return succeed(client)

    def flush(self):
        for _ in range(1000):
            moved = False
            for group in self.pumps:
                for pump in list(group):
                    moved = pump.pump(advanceClock=False) or moved
            if not moved:
                return
        raise AssertionError("pumps never settled")

    def run(self, d, limit=30.0, step=0.01):
        """Pump and advance time until C{d} fires; return its result or raise."""
        results = []
        d.addBoth(results.append)
        start = self.clock.seconds()
        while True:
            self.flush()
            if results:
                break
            assert self.clock.seconds() - start < limit, "operation never finished"
            self.clock.advance(step)
        result = results[0]
        if isinstance(result, Failure):
            result.raiseException()
        return result

    def write(self, data):
        """Apply C{data} (an encoded command) at the leader, as a commit would."""
        return self.run(self.leader.propose(data))


class Out(io.TextIOWrapper):
    """A text stdout over bytes, as a terminal (C{tty}) or not."""

    def __init__(self, tty=False):
        super().__init__(io.BytesIO(), encoding="utf-8", write_through=True)
        self.tty = tty

    def isatty(self):
        return self.tty

    def value(self):
        self.flush()
        return self.buffer.getvalue()


def runCLI(nodes, argv, stdin=b""):
    """
    Run C{raftkv ARGV} with C{nodes}' client: C{(exit code, stdout bytes,
    stderr text)}.  A usage error found while parsing is exit 2, as
    L{cli.main} makes it.
    """
    from twisted.python import usage

    out, err = Out(), io.StringIO()
    try:
        config = cli.parseArgs(argv)
    except usage.UsageError as e:
        return cli.EXIT_USAGE, b"", f"error: {e}\n"
    stdinStream = io.TextIOWrapper(io.BytesIO(stdin))
    d = Deferred.fromCoroutine(
        cli.runCommand(config, nodes.client, out, err, stdinStream, clock=nodes.clock)
    )
    code = nodes.run(d)
    return code, out.value(), err.getvalue()
