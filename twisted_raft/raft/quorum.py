"""
Quorum arithmetic, in one place, over a configuration of voters.

Every majority rule of Raft is asked here: an election is won by a majority
of votes (§5.2), an entry is committed once a majority holds it (§5.3), a
ReadIndex round is confirmed by a majority (thesis §6.4) and CheckQuorum
keeps a leader only while a majority answers it (thesis §6.2).

The node never counts by hand: it asks a L{MajorityConfig}, the set of
voters.  A joint configuration (C_old,new: thesis §4.3, paper §6) needs a
majority of I{each} of its two configurations; it would be a second class
with the same three methods, each combining two L{MajorityConfig} answers
(the lower committed index, both votes won, both quorums present).
"""

from enum import Enum


class VoteResult(Enum):
    """Where an election (or a pre-vote) stands."""

    PENDING = "pending"
    WON = "won"
    LOST = "lost"


class MajorityConfig:
    """
    A set of voter ids, and the rules that need a majority of them.

    @ivar voters: the voter ids, sorted (the leader's own id included).
    @ivar quorum: how many voters make a majority.
    """

    __slots__ = ("voters", "quorum", "_position")

    def __init__(self, voters):
        self.voters = tuple(sorted(set(voters)))
        self.quorum = len(self.voters) // 2 + 1
        # In an ascending sort of one number per voter, the quorum-th
        # highest: the highest value that a majority reach or exceed.
        self._position = len(self.voters) - self.quorum

    def __repr__(self):
        return f"MajorityConfig({list(self.voters)})"

    def __contains__(self, voterId):
        return voterId in self.voters

    def committedIndex(self, matchOf):
        """
        §5.3: the highest index that a majority of voters hold, given
        C{matchOf(voterId)}, the index up to which a voter is known to hold
        the leader's log.  (Whether that index may be committed yet is the
        term rule of §5.4.2, which the caller checks.)  Any monotone
        per-voter counter works the same way, e.g. ReadIndex rounds.
        """
        matches = sorted([matchOf(v) for v in self.voters])
        return matches[self._position]

    def voteResult(self, granted, rejected=()):
        """
        §5.2: an election is won with a majority of C{granted} votes, lost
        once a majority can no longer be reached; pending otherwise.
        """
        yes = sum(1 for v in self.voters if v in granted)
        if yes >= self.quorum:
            return VoteResult.WON
        no = sum(1 for v in self.voters if v in rejected)
        if len(self.voters) - no < self.quorum:
            return VoteResult.LOST
        return VoteResult.PENDING

    def hasQuorum(self, ids):
        """Do the voters among C{ids} make a majority?"""
        return sum(1 for v in self.voters if v in ids) >= self.quorum
