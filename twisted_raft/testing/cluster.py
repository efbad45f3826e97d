"""
A whole Raft cluster in one process: nodes, memory storage, KV state machines
and the in-memory network, all on one L{task.Clock} and one seed.
"""

import random

from twisted.internet import task

from twisted_raft.kv import KVStore
from twisted_raft.kvepoch import MetadataEpochProposer
from twisted_raft.raft.config import RaftConfig
from twisted_raft.raft.membership import EMPTY
from twisted_raft.raft.messages import LEADER
from twisted_raft.raft.node import RaftNode
from twisted_raft.storage.memory import MemoryStorage
from twisted_raft.testing.network import Network


class SimCluster:
    def __init__(self, size=3, seed=0, latency=0.002, diskDelay=0.0, network=None,
                 nodeFactory=RaftNode, config=None, metadataEpoch=False, **settings):
        """
        @param config: the nodes' L{RaftConfig}; or give its fields as
            keyword arguments (C{preVote=False}, C{snapshotEntries=50}).
        @param metadataEpoch: run a L{MetadataEpochProposer} beside each
            node, as the service does, so that transactions apply (off:
            the entries of the runs recorded so far stay as they were).
        @param network: extra keyword arguments for L{Network} (C{dropRate},
            C{duplicateRate}, a C{(min, max)} C{latency}).
        @param nodeFactory: builds each node (tests pass deliberately broken
            subclasses of L{RaftNode} to check that the checks catch them).
        """
        self.clock = task.Clock()
        self.rng = random.Random(seed)
        options = dict(latency=latency)
        options.update(network or {})
        self.network = Network(self.clock, rng=random.Random(self.rng.random()), **options)
        self.nodeFactory = nodeFactory
        self.ids = list(range(1, size + 1))
        self.founders = list(self.ids)
        self.diskDelay = diskDelay
        self.config = (config or RaftConfig()).replace(**settings)
        self.storages = {i: MemoryStorage(self.clock, diskDelay) for i in self.ids}
        self.nodes = {}
        self.machines = {}
        self.metadataEpoch = metadataEpoch
        self.proposers = {}
        for i in self.ids:
            self.boot(i)

    def boot(self, nodeId):
        machine = KVStore()
        # A node added after launch starts with an empty configuration and
        # waits to be added (what --join does).
        joining = {} if nodeId in self.founders else {"configuration": EMPTY}
        node = self.nodeFactory(
            nodeId,
            self.founders if nodeId in self.founders else [],
            self.storages[nodeId],
            self.network.transportFor(nodeId),
            machine,
            self.clock,
            config=self.config,
            rng=random.Random(self.rng.random()),
            **joining,
        )
        self.nodes[nodeId] = node
        self.machines[nodeId] = machine
        self.network.register(node)
        node.start()
        old = self.proposers.pop(nodeId, None)
        if old is not None:
            old.stop()
        if self.metadataEpoch:
            self.startProposer(nodeId)
        return node

    def startProposer(self, nodeId):
        """Run a L{MetadataEpochProposer} for node C{nodeId} (until it reboots)."""
        proposer = MetadataEpochProposer(self.nodes[nodeId], self.machines[nodeId], self.clock)
        proposer.start()
        self.proposers[nodeId] = proposer

    def join(self, nodeId):
        """Start a new, empty node C{nodeId} that waits to be added."""
        self.ids.append(nodeId)
        self.storages[nodeId] = MemoryStorage(self.clock, self.diskDelay)
        return self.boot(nodeId)

    def crash(self, nodeId):
        """Stop a node abruptly; its storage forgets whatever was not durable."""
        self.nodes[nodeId].stop()
        self.network.unregister(nodeId)
        self.storages[nodeId].crash()

    def restart(self, nodeId):
        return self.boot(nodeId)

    def advance(self, seconds, step=0.001):
        """Run the clock forward in small steps (so callLater(0) chains run)."""
        end = self.clock.seconds() + seconds
        while self.clock.seconds() < end:
            self.clock.advance(min(step, end - self.clock.seconds()))

    def runUntil(self, predicate, timeout=10.0, step=0.001):
        """Advance until C{predicate()} holds; fail after C{timeout} simulated seconds."""
        end = self.clock.seconds() + timeout
        while not predicate():
            if self.clock.seconds() >= end:
                raise AssertionError(f"condition not met within {timeout} simulated seconds")
            self.clock.advance(step)

    def leaders(self):
        return [n for n in self.nodes.values() if n.running and n.role == LEADER]

    def leader(self):
        """The single live leader with the highest term, or None."""
        live = self.leaders()
        if not live:
            return None
        return max(live, key=lambda n: n.currentTerm)

    def waitForLeader(self, timeout=10.0, exclude=()):
        def found():
            leader = self.leader()
            return leader is not None and leader.nodeId not in exclude and leader.commitIndex > 0 \
                and leader.raftLog.term(leader.commitIndex) == leader.currentTerm
        self.runUntil(found, timeout)
        return self.leader()
