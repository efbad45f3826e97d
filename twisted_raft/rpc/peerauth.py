"""
Who may speak Raft to a node: the peer handshake.

A node's port serves clients and peers alike, so a connection is a stranger
until it proves otherwise.  A node answers peer RPCs (RequestVote,
AppendEntries, InstallSnapshot, forwarded client requests) only on a
connection that has proven it is a member node of this cluster, and only for
the node it proved to be; anything else is C{PERMISSION_DENIED} and changes
nothing.  The proof is made once per connection, when a peer link connects:

  1. the dialler sends L{commands.PeerHello}: its id, the id it means to
     reach and a fresh nonce;
  2. the node answers with its id, its own fresh nonce and a proof:
     HMAC-SHA256 keyed by the cluster token over a label for this direction,
     both nonces and both ids;
  3. the dialler checks that proof (so it knows it reached a member of its
     cluster, and the node it meant), and sends L{commands.PeerProof}, its
     own proof under the other direction's label.

The token itself never travels, and a proof is bound to one connection's
nonces and to the two ids, so a proof seen on the wire is worth nothing on
another connection or for another node; the labels keep one side's proof
from ever being valid as the other's.

Under TLS the certificate is the identity: a certificate whose Common Name is
C{raftkv-node-<id>} is node C{<id>} (L{twisted_raft.tls}), and a PeerHello
must claim the id its connection's certificate names; the token proof still
keeps apart two clusters whose nodes share a CA.

What this does not do, written down in the README's Security section: without
TLS nothing is encrypted, so an attacker on the path can read traffic, inject
into a connection after its handshake, and guess a weak token offline from
one handshake it saw.  Use TLS on a network you do not trust, and a long
random token where you do.
"""

import hmac
import os
import struct
from dataclasses import dataclass
from hashlib import sha256

from twisted_raft.rpc.commands import PermissionDenied

NONCE_BYTES = 32
_IDS = struct.Struct(">QQ")
_ACCEPTOR = b"raftkv peer handshake: node answers\0"
_DIALLER = b"raftkv peer handshake: dialler proves\0"


def _proof(token, label, dialNonce, acceptNonce, fromId, toId):
    message = label + dialNonce + acceptNonce + _IDS.pack(fromId, toId)
    return hmac.new(token, message, sha256).digest()


def _nonce(nonce):
    if not isinstance(nonce, bytes) or len(nonce) != NONCE_BYTES:
        raise PermissionDenied("peer handshake: malformed nonce")
    return nonce


@dataclass(frozen=True)
class Dialling:
    """A dialler's handshake under way: what it sent in its PeerHello."""

    toNodeId: int
    nonce: bytes

    def helloArguments(self, nodeId):
        return {"node_id": nodeId, "to_node_id": self.toNodeId, "nonce": self.nonce}


@dataclass(frozen=True)
class Accepting:
    """A node's handshake under way: a PeerHello it answered."""

    peerId: int
    dialNonce: bytes
    acceptNonce: bytes


class PeerAuthority:
    """
    Both sides of the peer handshake for node C{nodeId}.

    @param nodeId: this node's id.
    @param token: the cluster token (str or bytes): the key of the proofs,
        never sent and never shown.
    @param isMember: C{isMember(nodeId) -> bool}: whether that node may speak
        Raft to this one now (a member other than this node).
    @param certificateRequired: TLS is on: a PeerHello must claim the id its
        connection's certificate names.
    @param randomBytes: C{randomBytes(n)}, for nonces (tests pass their own).
    """

    def __init__(self, nodeId, token, isMember, certificateRequired=False,
                 randomBytes=os.urandom):
        self.nodeId = nodeId
        self._token = token.encode("utf-8") if isinstance(token, str) else bytes(token)
        self.isMember = isMember
        self.certificateRequired = certificateRequired
        self._random = randomBytes

    def __repr__(self):
        # Never the token, whatever prints this object.
        return f"<PeerAuthority node {self.nodeId}>"

    # -- the dialler ---------------------------------------------------------

    def dial(self, toNodeId):
        """Start a handshake with node C{toNodeId}: a L{Dialling}."""
        return Dialling(toNodeId, self._random(NONCE_BYTES))

    def checkAnswer(self, dialling, answer, certificateId=None):
        """
        Check the node's answer to our PeerHello.

        @param certificateId: the node id the connection's TLS certificate
            names, or C{None} (see L{answerHello}).
        @return: the C{proof} argument of our L{commands.PeerProof}.
        @raise PermissionDenied: it is not the node we meant (by its answer,
            or under TLS by its certificate), or it cannot prove it knows
            the token.
        """
        if self.certificateRequired and certificateId != dialling.toNodeId:
            raise PermissionDenied(
                f"peer handshake: the certificate at node {dialling.toNodeId}'s address"
                f" does not name node {dialling.toNodeId}"
            )
        if answer["node_id"] != dialling.toNodeId:
            raise PermissionDenied(
                f"peer handshake: node {dialling.toNodeId} was dialled but node"
                f" {answer['node_id']} answered"
            )
        acceptNonce = _nonce(answer["nonce"])
        expected = _proof(
            self._token, _ACCEPTOR, dialling.nonce, acceptNonce, dialling.toNodeId,
            self.nodeId,
        )
        if not hmac.compare_digest(expected, answer["proof"]):
            raise PermissionDenied(
                f"peer handshake: node {dialling.toNodeId} did not prove it is of"
                " this cluster (another cluster token?)"
            )
        return _proof(
            self._token, _DIALLER, dialling.nonce, acceptNonce, self.nodeId,
            dialling.toNodeId,
        )

    # -- the node dialled ------------------------------------------------------

    def answerHello(self, peerId, toNodeId, dialNonce, certificateId=None):
        """
        Answer a PeerHello claiming to be node C{peerId}.

        @param certificateId: the node id the connection's TLS certificate
            names, or C{None} (no TLS, or a client's certificate).
        @return: C{(accepting, response)}: the handshake's state and the
            PeerHello response.
        @raise PermissionDenied: the claim cannot be accepted.
        """
        dialNonce = _nonce(dialNonce)
        if toNodeId != self.nodeId:
            raise PermissionDenied(
                f"peer handshake: this is node {self.nodeId}, not node {toNodeId}"
            )
        if self.certificateRequired and certificateId != peerId:
            raise PermissionDenied(
                f"peer handshake: the connection's certificate does not name node {peerId}"
            )
        if not self.isMember(peerId):
            raise PermissionDenied(f"peer handshake: node {peerId} is not a member")
        accepting = Accepting(peerId, dialNonce, self._random(NONCE_BYTES))
        proof = _proof(
            self._token, _ACCEPTOR, dialNonce, accepting.acceptNonce, self.nodeId, peerId
        )
        return accepting, {
            "node_id": self.nodeId, "nonce": accepting.acceptNonce, "proof": proof,
        }

    def checkProof(self, accepting, proof):
        """
        Check the dialler's PeerProof.

        @return: the node id the connection now speaks for.
        @raise PermissionDenied: the proof is wrong.
        """
        expected = _proof(
            self._token, _DIALLER, accepting.dialNonce, accepting.acceptNonce,
            accepting.peerId, self.nodeId,
        )
        if not hmac.compare_digest(expected, proof):
            raise PermissionDenied(
                f"peer handshake: node {accepting.peerId} did not prove it is of this"
                " cluster (another cluster token?)"
            )
        return accepting.peerId
