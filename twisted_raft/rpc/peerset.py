"""
Who this node's peers are, following its configuration.

The replicated configuration decides who is a member (C{--peers} only
bootstraps a new cluster); L{PeerSet} is the one place that turns it into
the two things the node's networking needs:

  - whom to dial: every member but this node, and a member being removed
    until its removal commits (so that it hears of it and stops), at the
    address this node's own C{--peers} gives for that id if any (an
    override, for proxies and NAT), else at the member's address in the
    configuration (L{AMPTransport.setPeers});
  - who may speak Raft to this node: the handshake's membership test
    (L{PeerAuthority}'s C{isMember}), which the server also asks before
    every peer RPC.  The rule is the core's
    (L{twisted_raft.raft.node.RaftNode.acceptsPeer}, which says why): a
    node this node knows was removed is refused from its next RPC on, the
    leader it follows and any node it never saw removed are heard.

A configuration takes effect when its entry is appended (thesis §4.1), so a
node being added is a member as soon as the leader appends the change, and
the leader can reach it.  A node whose configuration is L{EMPTY} (a C{--join}
node not yet added) accepts any node that proves it is of the cluster (the
token, and under TLS a node certificate), since it cannot know yet which
node will lead; it dials nobody.
"""

from twisted.logger import Logger

from twisted_raft.config import parseAddress
from twisted_raft.raft.config import ConfigError
from twisted_raft.raft.membership import EMPTY


class PeerSet:
    """
    The peers of node C{nodeId} under its current configuration.

    @param overrides: C{{id: (host, port)}}: this node's C{--peers}
        (L{NodeConfig.peers}); its entry for a member wins over the
        member's configured address.
    @param transport: the L{AMPTransport} to keep dialling the members (set
        later if need be); C{None}: only the membership test.
    @ivar configuration: the configuration in use (L{EMPTY} until the node
        has told us one).
    @ivar accepts: the node's C{acceptsPeer}.
    @ivar committed: a callable answering the node's commit index.
    """

    log = Logger()

    def __init__(self, nodeId, overrides=None, transport=None):
        self.nodeId = nodeId
        self.overrides = dict(overrides or {})
        self.transport = transport
        self.configuration = EMPTY
        self.accepts = lambda peerId: True
        self.committed = lambda: 0
        self._leaving = {}
        self._warned = set()

    def isMember(self, peerId):
        """
        Whether node C{peerId} may speak Raft to this node now: not itself,
        and not a node it knows was removed (see the module's docstring).
        """
        return peerId != self.nodeId and self.accepts(peerId)

    def targets(self):
        """
        C{{id: (host, port)}} of every member to dial.  A member with no
        usable address (none in the configuration, none overridden) is left
        out, and logged once as a warning.
        """
        targets = {}
        for member in self.configuration.members + tuple(self._leaving.values()):
            if member.id == self.nodeId:
                continue
            override = self.overrides.get(member.id)
            if override is not None:
                targets[member.id] = override
                continue
            try:
                targets[member.id] = parseAddress(member.address)
            except ConfigError as e:
                self._warnOnce(member, e)
        return targets

    def _warnOnce(self, member, error):
        if (member.id, member.address) in self._warned:
            return
        self._warned.add((member.id, member.address))
        why = "has no address" if not member.address else f"has no usable address: {error}"
        self.log.warn(
            "member {peerId} {why}, and --peers names no address for it: not dialling it",
            peerId=member.id, why=why,
        )

    def configurationChanged(self, configuration):
        """
        The node uses C{configuration} from now on, or it was committed (the
        node's C{watchConfiguration} callback): dial its members and those
        it is removing until it is committed.
        """
        previous = self.configuration
        if configuration.index > previous.index:
            self._leaving = {
                m.id: m for m in previous.members if m.id not in configuration
            }
        elif configuration.index < previous.index:
            self._leaving = {}  # a truncation brought an older configuration back
        if configuration.index <= self.committed():
            self._leaving = {}
        self.configuration = configuration
        if self.transport is not None:
            self.transport.setPeers(self.targets())
