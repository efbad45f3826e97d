"""
Quorum arithmetic (twisted_raft.raft.quorum), alone: §5.2 (votes), §5.3
(commit index), thesis §6.2 (CheckQuorum) and §6.4 (ReadIndex rounds).
"""

import pytest

from twisted_raft.raft.quorum import MajorityConfig, VoteResult


@pytest.mark.parametrize("size, quorum", [(1, 1), (2, 2), (3, 2), (4, 3), (5, 3), (7, 4)])
def test_quorum_is_a_strict_majority(size, quorum):
    assert MajorityConfig(range(1, size + 1)).quorum == quorum


def test_voters_are_a_sorted_set():
    config = MajorityConfig([3, 1, 2, 3])
    assert config.voters == (1, 2, 3)
    assert 2 in config and 4 not in config


def test_5_3_committed_index_is_the_highest_a_majority_holds():
    config = MajorityConfig([1, 2, 3, 4, 5])
    match = {1: 9, 2: 7, 3: 3, 4: 8, 5: 1}
    # 9, 8, 7 are held by three voters (1, 4, 2): 7 is committed, 8 is not.
    assert config.committedIndex(match.__getitem__) == 7


def test_5_3_committed_index_three_nodes():
    config = MajorityConfig([1, 2, 3])
    assert config.committedIndex({1: 5, 2: 0, 3: 0}.__getitem__) == 0
    assert config.committedIndex({1: 5, 2: 4, 3: 0}.__getitem__) == 4
    assert config.committedIndex({1: 5, 2: 6, 3: 6}.__getitem__) == 6


def test_committed_index_asks_only_voters():
    asked = []

    def matchOf(voterId):
        asked.append(voterId)
        return voterId

    assert MajorityConfig([1, 2, 3]).committedIndex(matchOf) == 2
    assert sorted(asked) == [1, 2, 3]


def test_single_node_commits_its_own_log():
    assert MajorityConfig([1]).committedIndex({1: 4}.__getitem__) == 4


def test_5_2_vote_won_with_a_majority():
    config = MajorityConfig([1, 2, 3, 4, 5])
    assert config.voteResult({1, 2}) is VoteResult.PENDING
    assert config.voteResult({1, 2, 5}) is VoteResult.WON


def test_5_2_vote_lost_once_a_majority_refused():
    config = MajorityConfig([1, 2, 3])
    assert config.voteResult({1}, {2}) is VoteResult.PENDING
    assert config.voteResult({1}, {2, 3}) is VoteResult.LOST


def test_votes_of_non_voters_do_not_count():
    assert MajorityConfig([1, 2, 3]).voteResult({1, 7, 8}) is VoteResult.PENDING


def test_6_2_has_quorum():
    config = MajorityConfig([1, 2, 3, 4, 5])
    assert not config.hasQuorum({1, 2})
    assert not config.hasQuorum({1, 2, 9})
    assert config.hasQuorum({1, 2, 4})
