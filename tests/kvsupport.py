"""
Clients connected to real nodes' L{NodeServerFactory}s over in-memory AMP
(L{twisted.test.iosim}) on a L{task.Clock}: the wire, the server and the
client library together, for the KV model's and the watches' tests.

  - L{Nodes}: stub nodes, a leader with forwarding followers or followers
    that each apply every entry (L{Followers}), and clients of them;
  - L{SimNodes}: the same over a simulated Raft cluster;
  - L{Node}: one node and a bare AMP connection whose watch handlers
    (L{Handler}) a test controls;
  - L{Sink}: a client watch's C{onEvents} that records (holds, fails);
  - L{runCLI}: the C{raftkv} command against L{Nodes}.
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
from twisted_raft.rpc import commands
from twisted_raft.rpc.server import NodeServerFactory
from twisted_raft.rpc.watchwire import decodeEvents
from twisted_raft.testing.cluster import SimCluster

from tests.support import StubNode, authority, captured


class Nodes:
    """
    C{n} stub nodes (L{StubNode}), each behind its own L{NodeServerFactory}
    over its own store, on one L{Clock}; clients connect to any of them
    over in-memory AMP (L{iosim}): L{client}, a L{RaftKVClient} with
    C{clientArgs}; L{newClient} for more; L{open} for a bare L{ClientAMP}.
    C{down} nodes refuse connections.

    With C{leader} node 1 leads and the others forward to it over their
    peer links, as in production; entries then go through the leader
    (L{write}, or C{leader.propose}), and with C{epoch} the first is the
    metadata epoch.  Without, every node follows node 1 (C{leaderId}) and
    has no peer link: L{apply} gives every node that is up and not
    C{behind} the next entry, as replication would, and L{catchUp} the
    ones it missed.  A test uses one way or the other.
    """

    def __init__(
        self, n=1, epoch=True, leader=True, leaderId=1, stores=None, historyEvents=None,
        watchLimits=None, clock=None, timeout=5.0, **clientArgs,
    ):
        from twisted_raft.rpc.peers import AMPTransport

        from tests.support import PumpEndpoint

        self.clock = clock or Clock()
        self.timeout = timeout
        self.addresses = [f"127.0.0.1:{8001 + i}" for i in range(n)]
        if stores is None:
            kwargs = {} if historyEvents is None else {"historyEvents": historyEvents}
            stores = [kv.KVStore(**kwargs) for _ in range(n)]
        self.stores = list(stores)
        self.nodes = []
        self.factories = []
        self.pumps = []  # groups of iosim pumps: flush() pumps them all
        for i, store in enumerate(self.stores):
            nodeId = i + 1
            role = messages.LEADER if leader and nodeId == 1 else messages.FOLLOWER
            node = StubNode(nodeId, role=role, leaderId=leaderId, store=store)
            peers = None
            if leader and nodeId != 1:
                endpoint = PumpEndpoint(self.factories[0], self.clock)
                peers = AMPTransport({1: endpoint}, authority(nodeId), self.clock)
                peers.startService()
                self.pumps.append(endpoint.pumps)
            factory = NodeServerFactory(node, store, peers, authority(nodeId), self.clock)
            if watchLimits is not None:
                factory.watches.limits = watchLimits
            self.nodes.append(node)
            self.factories.append(factory)
        self.down = set()
        self.behind = set()  # nodes that do not apply (a lagging follower)
        self.servers = {i: [] for i in range(n)}
        self.clients = []
        self.index = 0
        self.log = []  # every entry given to apply(), by index - 1
        self.client = self.newClient(**clientArgs)
        if leader and epoch:
            # index 1, as a cluster's first leader proposes it: transactions
            # (put with prev_kv and range deletes too) apply only after it
            self.write(kv.encodeMetadataEpoch())

    @property
    def leader(self):
        return self.nodes[0]

    def newClient(self, **kwargs):
        kwargs.setdefault("timeout", self.timeout)
        return RaftKVClient(self.addresses, reactor=self.clock, connect=self.connect, **kwargs)

    def open(self, i=0):
        """A new connection to node C{i}: C{(ClientAMP, its server, its pump)}."""
        server = self.factories[i].buildProtocol(None)
        client = ClientAMP()
        pump = iosim.connect(
            server, iosim.makeFakeServer(server), client, iosim.makeFakeClient(client),
            greet=False, clock=self.clock,
        )
        self.servers[i].append(server)
        self.pumps.append([pump])
        self.clients.append(client)
        return client, server, pump

    def connect(self, address):
        """The clients' way to connect (L{RaftKVClient}'s C{connect})."""
        i = self.addresses.index(address)
        if i in self.down:
            return fail(ConnectionRefusedError(address))
        return succeed(self.open(i)[0])

    def flush(self, pump=None):
        """
        Pump every connection (only C{pump} if given) and run the calls due
        now, until nothing moves.
        """
        groups = self.pumps if pump is None else [[pump]]
        for _ in range(1000):
            moved = False
            for group in groups:
                for p in list(group):
                    moved = p.pump(advanceClock=False) or moved
            if any(c.getTime() <= self.clock.seconds() for c in self.clock.getDelayedCalls()):
                self.clock.advance(0)
                moved = True
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

    def runFor(self, seconds, step=0.01):
        """Pump and advance time for C{seconds}."""
        end = self.clock.seconds() + seconds
        while self.clock.seconds() < end:
            self.flush()
            self.clock.advance(step)
        self.flush()

    def write(self, data):
        """Propose C{data} (an encoded command) at the leader, which applies it."""
        return self.run(self.leader.propose(data))

    def apply(self, data):
        """Apply C{data} at the next index on every node up and not behind."""
        self.index += 1
        self.log.append(data)
        for i, store in enumerate(self.stores):
            if i not in self.down and i not in self.behind:
                store.apply(self.index, data)
                self.nodes[i].index = self.index
        return self.index

    def put(self, key, value=b"v"):
        return self.apply(kv.encodePut(key, value))

    def delete(self, key):
        return self.apply(kv.encodeDelete(key))

    def catchUp(self, i):
        """Node C{i} applies what it missed and is no longer behind."""
        store = self.stores[i]
        for index in range(store.appliedIndex + 1, self.index + 1):
            store.apply(index, self.log[index - 1])
        self.nodes[i].index = self.index
        self.behind.discard(i)

    def kill(self, i):
        """Node C{i} goes down: its connections close, new ones are refused."""
        self.down.add(i)
        for server in self.servers[i]:
            if server.transport is not None:
                server.transport.loseConnection()
        self.flush()


class Followers(Nodes):
    """
    L{Nodes} as the watches' tests use them: C{n} followers of node 1, each
    over its own store, which L{apply} gives every entry (as replication
    would); clients with a 2 s timeout.
    """

    def __init__(self, n=3, **kwargs):
        super().__init__(n, leader=False, timeout=2.0, **kwargs)


class SimNodes(Followers):
    """L{Followers} over a L{SimCluster}: Raft replicates, each node applies
    (L{propose} at the leader, if there is one)."""

    def __init__(self, seed=3, **settings):
        # metadataEpoch: the first leader proposes it, as a service's does,
        # so that transactions apply
        self.cluster = SimCluster(3, seed=seed, metadataEpoch=True, **settings)
        Followers.__init__(self, n=3, clock=self.cluster.clock)
        self.stores = [self.cluster.machines[i] for i in self.cluster.ids]
        self.factories = [
            NodeServerFactory(self.cluster.nodes[i], self.cluster.machines[i], None,
                              authority(i), self.clock)
            for i in self.cluster.ids
        ]

    def kill(self, i):
        self.cluster.crash(i + 1)
        Followers.kill(self, i)

    def runFor(self, seconds, step=0.002):
        Followers.runFor(self, seconds, step)

    def propose(self, data):
        leader = self.cluster.leader()
        if leader is not None:
            leader.propose(data).addErrback(lambda f: None)


class Sink:
    """An onEvents that records each batch (and can hold or fail)."""

    def __init__(self):
        self.batches = []
        self.hold = False
        self.held = []
        self.error = None

    def __call__(self, events):
        self.batches.append(list(events))
        if self.error is not None:
            raise self.error
        if self.hold:
            d = Deferred()
            self.held.append(d)
            return d
        return None

    @property
    def events(self):
        return [e for batch in self.batches for e in batch]

    def revisions(self):
        return [e.mod_revision for e in self.events]

    def release(self):
        held, self.held = self.held, []
        for d in held:
            d.callback(None)


class Handler:
    """A watch's client end: records every call; holds its answers if told."""

    def __init__(self):
        self.calls = []  # (events, next_revision, revision_continues)
        self.cancelled = []  # (code, compact_revision, description)
        self.hold = False
        self.held = []
        self.error = None

    def watchEvents(self, events, nextRevision, continues):
        self.calls.append((decodeEvents(events), nextRevision, continues))
        if self.error is not None:
            raise self.error
        if self.hold:
            d = Deferred()
            self.held.append(d)
            return d
        return None

    def watchCancelled(self, code, compactRevision, description):
        self.cancelled.append((code, compactRevision, description))

    @property
    def events(self):
        return [e for events, _, _ in self.calls for e in events]

    def release(self):
        held, self.held = self.held, []
        for d in held:
            d.callback(None)


class Node(Nodes):
    """
    One node (a StubNode, leader unless C{role} says otherwise, and its
    store) serving a client connection (C{client}, C{server}, C{pump});
    L{open} makes more.
    """

    def __init__(self, limits=None, store=None, role=messages.LEADER):
        super().__init__(
            1, epoch=False, leader=role == messages.LEADER, leaderId=None,
            stores=None if store is None else [store], watchLimits=limits,
        )
        self.node = self.nodes[0]
        self.store = self.stores[0]
        self.factory = self.factories[0]
        self.hub = self.factory.watches
        self.client, self.server, self.pump = self.open()

    def watch(self, key, watchId=1, prefix=False, start=None, handler=None, client=None, pump=None):
        client = client or self.client
        handler = handler or Handler()
        client.addWatchHandler(watchId, handler)
        kwargs = {"watch_id": watchId, "key": key}
        if prefix:
            kwargs["prefix"] = True
        if start is not None:
            kwargs["start_revision"] = start
        d = captured(client.callRemote(commands.Watch, **kwargs))
        self.flush(pump)
        return d, handler

    def call(self, command, **kw):
        d = captured(self.client.callRemote(command, **kw))
        self.flush()
        return d


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
