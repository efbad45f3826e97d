"""
The ReadIndex queue (twisted_raft.raft.readindex), alone: thesis §6.4.
"""

from twisted.internet import defer

from twisted_raft.raft.messages import NotLeader
from twisted_raft.raft.quorum import MajorityConfig
from twisted_raft.raft.readindex import ReadIndex


def leader(selfId=1, voters=(1, 2, 3)):
    reads = ReadIndex(selfId)
    config = MajorityConfig(voters)
    reads.reset(config.voters)
    return reads, config


def read(reads):
    fired = []
    d = defer.Deferred().addBoth(fired.append)
    reads.add(d)
    return fired


def test_6_4_a_read_needs_a_round_started_after_it():
    reads, config = leader()
    fired = read(reads)
    reads.ack(2, reads.round)  # an answer to an earlier round proves nothing
    reads.confirm(config, 7)
    assert reads.awaitingRound and not reads.awaitingApply
    round = reads.newRound()
    reads.confirm(config, 7)
    assert reads.awaitingRound, "the leader alone is not a quorum of three"
    reads.ack(2, round)
    reads.confirm(config, 7)
    assert reads.awaitingApply == [(7, reads.awaitingApply[0][1])] and not reads.awaitingRound
    assert fired == []


def test_6_4_a_confirmed_read_waits_for_apply():
    reads, config = leader()
    fired = read(reads)
    reads.ack(3, reads.newRound())
    reads.confirm(config, 7)
    reads.release(6)
    assert fired == []
    reads.release(7)
    assert fired == [None] and not reads.awaitingApply


def test_reads_of_one_turn_share_a_round():
    reads, config = leader()
    first, second = read(reads), read(reads)
    reads.ack(2, reads.newRound())
    reads.confirm(config, 3)
    reads.release(3)
    assert first == second == [None]


def test_a_read_after_the_round_waits_for_the_next():
    reads, config = leader()
    early = read(reads)
    round = reads.newRound()
    late = read(reads)
    reads.ack(2, round)
    reads.confirm(config, 3)
    reads.release(3)
    assert early == [None] and late == []
    reads.ack(3, reads.newRound())
    reads.confirm(config, 4)
    reads.release(4)
    assert late == [None]


def test_acks_never_go_back():
    reads, config = leader()
    reads.newRound()
    reads.ack(2, 1)
    reads.ack(2, 0)
    assert reads.acked[2] == 1


def test_five_nodes_need_two_followers():
    reads, config = leader(voters=(1, 2, 3, 4, 5))
    fired = read(reads)
    round = reads.newRound()
    reads.ack(2, round)
    reads.confirm(config, 1)
    reads.release(1)
    assert fired == []
    reads.ack(5, round)
    reads.confirm(config, 1)
    reads.release(1)
    assert fired == [None]


def test_a_new_leadership_forgets_old_acks():
    reads, config = leader()
    reads.ack(2, reads.newRound())
    reads.reset(config.voters)
    fired = read(reads)
    reads.newRound()
    reads.confirm(config, 1)
    assert fired == [] and reads.awaitingRound


def test_fail_all():
    reads, config = leader()
    confirmed = read(reads)
    reads.ack(2, reads.newRound())
    reads.confirm(config, 9)
    waiting = read(reads)
    reads.failAll(NotLeader(3))
    assert confirmed[0].check(NotLeader) and waiting[0].check(NotLeader)
    assert not reads.awaitingRound and not reads.awaitingApply
