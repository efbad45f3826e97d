"""
C{GET /health}: whether this node is fit to serve, for a load balancer, a
supervisor or an alert.

The rule is L{unhealthyReason}, a pure function of a few facts about the
node; L{nodeHealth} gathers them from a running node, and
L{HealthResource} answers C{200} with C{{"healthy": true, ...}} or C{503}
with C{{"healthy": false, "reason": ...}}.  Every fact is O(1) to read.
"""

import json

from twisted_raft.raft.contact import contactReason
from twisted_raft.raft.messages import LEADER
from twisted_raft.web.readonly import ReadOnlyResource

MAX_APPLY_LAG = 1000
"""Entries the applied index may trail the commit index by on a healthy
node: more means its reads and its answers to writes lag behind."""


def unhealthyReason(
    running, isLeader, leaderId, heardFromQuorum, lastLeaderContact, now,
    electionTimeout, commitIndex, appliedIndex, maxApplyLag=MAX_APPLY_LAG,
):
    """
    Why a node is unhealthy, or C{None} if it is healthy: it runs; it is the
    leader and a quorum answered it within an election timeout (the
    question CheckQuorum asks, thesis §6.2), or it knows a leader of its
    current term and heard from it within an election timeout; and it has
    applied to within C{maxApplyLag} entries of its commit index.  The
    first two are L{contactReason}'s (its parameters are described there),
    which watches obey too.

    @return: C{None} or a one-line reason.
    """
    if not running:
        return "the node is not running"
    reason = contactReason(
        isLeader, leaderId, heardFromQuorum, lastLeaderContact, now, electionTimeout
    )
    if reason is not None:
        return reason
    lag = commitIndex - appliedIndex
    if lag > maxApplyLag:
        return (
            f"applied index {appliedIndex} is {lag} entries behind the commit index"
            f" {commitIndex} (at most {maxApplyLag})"
        )
    return None


def nodeHealth(node):
    """
    The health of L{RaftNode} C{node} now, by L{unhealthyReason}.

    @return: C{(healthy, fields)}: C{fields} the JSON object to answer
        (C{healthy}, C{reason} if not, and what the rule looked at).
    """
    status = node.status()
    now = node.clock.seconds()
    isLeader = status.role == LEADER
    contact = node.lastLeaderContact
    reason = unhealthyReason(
        running=node.running and node.failed is None,
        isLeader=isLeader,
        leaderId=status.leaderId,
        heardFromQuorum=isLeader and node.heardFromQuorum(),
        lastLeaderContact=contact,
        now=now,
        electionTimeout=node.config.electionTimeout[1],
        commitIndex=status.commitIndex,
        appliedIndex=status.lastApplied,
    )
    fields = {"healthy": reason is None}
    if reason is not None:
        fields["reason"] = reason
    fields.update(
        node_id=status.nodeId,
        role=status.role,
        term=status.term,
        leader_id=status.leaderId,
        commit_index=status.commitIndex,
        applied_index=status.lastApplied,
        # Seconds since the leader was last heard from; None on a leader or
        # before any contact.
        leader_contact_age=None if isLeader or contact is None else round(now - contact, 3),
    )
    return reason is None, fields


class HealthResource(ReadOnlyResource):
    """
    C{GET /health} (and C{HEAD}): C{200} or C{503} and a JSON object (see
    L{nodeHealth}).  Any other method: C{405}.
    """

    def __init__(self, node):
        super().__init__()
        self.node = node

    def render_GET(self, request):
        healthy, fields = nodeHealth(self.node)
        request.setResponseCode(200 if healthy else 503)
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        return json.dumps(fields, sort_keys=True).encode("utf-8") + b"\n"
