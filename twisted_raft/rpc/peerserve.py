"""
The peer side of the node's AMP protocol: the handshake by which a
connection proves it is a member node (L{twisted_raft.rpc.peerauth}), the
authorization of what only a proven peer may send (the Raft RPCs, and
client commands marked C{forwarded}), and the Raft RPCs' responders, which
hand each message to the core.
"""

from twisted.internet import defer
from twisted.protocols import amp

from twisted_raft.raft import messages
from twisted_raft.raft.membership import decodeMembers
from twisted_raft.rpc import commands, wire
from twisted_raft.rpc.commands import InvalidArgument, PermissionDenied


def connectionAddress(transport):
    """Where a connection comes from, for a log line."""
    peer = transport.getPeer() if transport is not None else None
    host, port = getattr(peer, "host", None), getattr(peer, "port", None)
    return f"{host}:{port}" if host is not None else "?"


class PeerResponders(amp.CommandLocator):
    """
    Mix into the node's protocol (before L{amp.AMP}): the peer handshake
    and the Raft RPCs.  The protocol provides C{server} (the
    L{NodeServerFactory}), C{node}, C{transport}, C{_guard}, and the state
    these methods keep: C{peerId} (C{None} until the handshake is done),
    C{_handshake} and C{_deniedLogged}.

    A Raft RPC is served only on a connection that has proven, by the
    handshake, that it is a member node, and only for the node it proved
    to be; anything else is PERMISSION_DENIED before the node sees it, so
    it changes nothing: no term, no vote, no entry.
    """

    def _deny(self, message):
        """
        Refuse with PERMISSION_DENIED, noting it once per connection, and
        logging at most one such note per few seconds node-wide (so churning
        connections cannot flood the log).
        """
        if not self._deniedLogged:
            self._deniedLogged = True
            self.server.deniedNotice(peer=connectionAddress(self.transport), reason=message)
        return PermissionDenied(message)

    def _authorize(self, claimedId, what):
        """Raise PERMISSION_DENIED unless this connection may send C{what}
        for node C{claimedId} (C{None}: for whichever node it proved to be)."""
        peerId = self.peerId
        if peerId is None:
            raise self._deny(f"{what} needs an authenticated peer connection")
        if claimedId is not None and claimedId != peerId:
            raise self._deny(
                f"{what} for node {claimedId} on a connection of node {peerId}"
            )
        if not self.server.peers.isMember(peerId):
            raise self._deny(f"node {peerId} is not a member")

    @commands.PeerHello.responder
    def peerHello(self, node_id, to_node_id, nonce):
        if self.peerId is not None or self._handshake is not None:
            raise self._deny("peer handshake: already under way or done")
        authority = self.server.peers
        certificateId = None
        if authority.certificateRequired:
            from twisted_raft.tls import peerNodeId

            certificateId = peerNodeId(self.transport)
        try:
            self._handshake, answer = authority.answerHello(
                node_id, to_node_id, nonce, certificateId
            )
        except PermissionDenied as e:
            raise self._deny(str(e))
        return answer

    @commands.PeerProof.responder
    def peerProof(self, proof):
        handshake, self._handshake = self._handshake, None
        if handshake is None:
            raise self._deny("peer handshake: PeerProof without PeerHello")
        try:
            self.peerId = self.server.peers.checkProof(handshake, proof)
        except PermissionDenied as e:
            raise self._deny(str(e))
        self.server.peerAuthenticated(self)
        return {}

    @commands.RequestVote.responder
    def requestVote(
        self, cluster, term, candidate_id, last_log_index, last_log_term, pre_vote=None,
        transfer=None,
    ):
        self._authorize(candidate_id, "RequestVote")
        msg = messages.RequestVote(
            term, candidate_id, last_log_index, last_log_term, bool(pre_vote), bool(transfer)
        )
        d = defer.maybeDeferred(self.node.handleRequestVote, msg)
        d.addCallback(lambda r: {"term": r.term, "vote_granted": r.voteGranted})
        return self._guard(d, "RequestVote")

    @commands.AppendEntries.responder
    def appendEntries(
        self, cluster, term, leader_id, prev_log_index, prev_log_term, entries,
        leader_commit,
    ):
        self._authorize(leader_id, "AppendEntries")
        try:
            decoded = wire.decodeEntries(entries, prev_log_index + 1)
        except ValueError as e:
            raise InvalidArgument(f"bad entry batch: {e}")
        msg = messages.AppendEntries(
            term, leader_id, prev_log_index, prev_log_term, decoded, leader_commit
        )
        d = defer.maybeDeferred(self.node.handleAppendEntries, msg)
        d.addCallback(
            lambda r: {
                "term": r.term,
                "success": r.success,
                "match_index": r.matchIndex,
                "conflict_index": r.conflictIndex,
                "conflict_term": r.conflictTerm,
            }
        )
        return self._guard(d, "AppendEntries")

    @commands.InstallSnapshot.responder
    def installSnapshot(
        self, cluster, term, leader_id, last_index, last_term, members, offset,
        data, done, configuration=None, config_index=None,
    ):
        self._authorize(leader_id, "InstallSnapshot")
        msg = messages.InstallSnapshot(
            term,
            leader_id,
            snapshotMeta(last_index, last_term, members, configuration, config_index),
            offset,
            data,
            done,
        )
        d = defer.maybeDeferred(self.node.handleInstallSnapshot, msg)
        d.addCallback(
            lambda r: {
                "term": r.term,
                "success": r.success,
                "next_offset": r.nextOffset,
            }
        )
        return self._guard(d, "InstallSnapshot")

    @commands.TimeoutNow.responder
    def timeoutNow(self, cluster, term, leader_id):
        self._authorize(leader_id, "TimeoutNow")
        msg = messages.TimeoutNow(term, leader_id)
        d = defer.maybeDeferred(self.node.handleTimeoutNow, msg)
        d.addCallback(lambda r: {"term": r.term, "accepted": r.accepted})
        return self._guard(d, "TimeoutNow")



def snapshotMeta(lastIndex, lastTerm, members, configuration, configIndex):
    """
    The L{messages.SnapshotMeta} an InstallSnapshot describes (see
    L{commands.InstallSnapshot}).

    @raise InvalidArgument: the configuration does not decode, comes
        without its index (or the index without it), postdates the
        snapshot, or disagrees with C{members}.
    """
    if configuration is None and configIndex is None:
        return messages.SnapshotMeta(lastIndex, lastTerm, tuple(members))
    if configuration is None or configIndex is None:
        raise InvalidArgument("configuration and config_index must be given together")
    try:
        decoded = decodeMembers(configuration, configIndex)
    except ValueError as e:
        raise InvalidArgument(f"bad configuration: {str(e)[:200]}") from None
    if configIndex > lastIndex:
        raise InvalidArgument(
            f"config_index {configIndex} is after the snapshot's last index {lastIndex}"
        )
    if sorted(members) != list(decoded.ids):
        raise InvalidArgument("members are not the configuration's node ids")
    return messages.SnapshotMeta(lastIndex, lastTerm, decoded)
