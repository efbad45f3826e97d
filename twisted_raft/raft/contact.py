"""
Whether a node is in touch with a leader: the part of C{GET /health}'s rule
(L{twisted_raft.web.health}) that watches also obey (a node cut off from
its leader applies nothing new, so its watchers would wait in silence; see
L{twisted_raft.rpc.watches}).

A pure function of a few facts (L{contactReason}) and the gathering of
them from a running L{RaftNode} (L{nodeContactReason}), each O(1).
"""

from twisted_raft.raft.messages import LEADER


def contactReason(isLeader, leaderId, heardFromQuorum, lastLeaderContact, now, electionTimeout):
    """
    Why a node is out of touch with a leader, or C{None} if it is not: it
    is the leader and a quorum answered it within an election timeout (the
    question CheckQuorum asks, thesis §6.2), or it knows a leader of its
    current term and heard from it within an election timeout.

    @param leaderId: the leader known in the current term, 0 if none (the
        core forgets its leader when its term changes).
    @param heardFromQuorum: for a leader, whether a quorum answered it
        within C{electionTimeout}.
    @param lastLeaderContact: when (same clock as C{now}) the node last
        heard from a leader, or C{None}.
    @param electionTimeout: seconds: the longest election timeout, after
        which a follower would stand for election itself.
    @return: C{None} or a one-line reason.
    """
    if isLeader:
        if not heardFromQuorum:
            return (
                f"leader without a quorum: no majority answered within"
                f" {electionTimeout * 1000:g} ms"
            )
        return None
    if not leaderId:
        return "no leader known in the current term"
    if lastLeaderContact is None or now - lastLeaderContact > electionTimeout:
        return f"no contact with leader {leaderId} within {electionTimeout * 1000:g} ms"
    return None


def nodeContactReason(node):
    """L{contactReason} for L{RaftNode} C{node} now."""
    isLeader = node.role == LEADER
    return contactReason(
        isLeader=isLeader,
        leaderId=node.leaderId,
        heardFromQuorum=isLeader and node.heardFromQuorum(),
        lastLeaderContact=node.lastLeaderContact,
        now=node.clock.seconds(),
        electionTimeout=node.config.electionTimeout[1],
    )
