"""
Membership change (thesis chapter 4) and leadership transfer (thesis §3.10)
in the consensus core, deterministically: whole clusters on one task.Clock
over the in-memory network, and single nodes driven by hand.
"""

import pytest
from twisted.internet import task
from twisted.python.failure import Failure

from twisted_raft import kv
from twisted_raft.raft.conflog import ConfigurationLog
from twisted_raft.raft.membership import (
    EMPTY,
    ChangeInProgress,
    ChangeKind,
    ConfChange,
    Configuration,
    InvalidChange,
    Member,
    NotCaughtUp,
    decodeMembers,
    encodeMembers,
)
from twisted_raft.raft.messages import (
    CONFIGURATION,
    FOLLOWER,
    LEADER,
    AppendEntries,
    Entry,
    NotLeader,
    SnapshotMeta,
    TimeoutNow,
    TransferFailed,
)
from twisted_raft.raft.node import RaftNode
from twisted_raft.storage.memory import MemoryStorage
from twisted_raft.testing.cluster import SimCluster
from twisted_raft.testing.scripted import ScriptedTransport

ADD, PROMOTE, REMOVE = ChangeKind.ADD_LEARNER, ChangeKind.PROMOTE, ChangeKind.REMOVE


def put(node, key, value=b"v"):
    results = []
    node.propose(kv.encodePut(key, value)).addBoth(results.append)
    return results


def change(cluster, kind, nodeId, address="", timeout=5.0):
    """Propose a change at the leader; return what it answered (a value or a Failure)."""
    leader = cluster.waitForLeader()
    if kind is ADD and not address:
        address = f"127.0.0.1:{9000 + nodeId}"
    results = []
    leader.changeMembership(ConfChange(kind, nodeId, address)).addBoth(results.append)
    cluster.runUntil(lambda: results, timeout)
    return results[0]


def addVoter(cluster, nodeId):
    cluster.join(nodeId)
    assert not isinstance(change(cluster, ADD, nodeId), Failure)
    cluster.runUntil(lambda: not isinstance(change(cluster, PROMOTE, nodeId), Failure), 10)


def failure(result, kind):
    assert isinstance(result, Failure), result
    assert result.check(kind), result
    return result.value


# -- values ------------------------------------------------------------------------


def test_configuration_encoding_round_trips_and_refuses_garbage():
    configuration = Configuration(
        (Member(3, "[::1]:8003", False), Member(1, "10.0.0.1:8001", True)), 7
    )
    assert configuration.voters == (1,) and configuration.learners == (3,)
    again = decodeMembers(encodeMembers(configuration), 7)
    assert again == configuration
    for bad in (b"{", b"{}", b'[{"id": 1}]', b'[{"id": 0, "address": "", "voter": true}]',
                b'[{"id": 1, "address": "", "voter": 1}]',
                b'[{"id": 1, "address": "", "voter": true}, {"id": 1, "address": "", "voter": true}]'):
        with pytest.raises(ValueError):
            decodeMembers(bad)


def test_changes_that_make_no_sense_are_refused():
    three = Configuration.ofVoters([1, 2, 3], {1: "h:1", 2: "h:2", 3: "h:3"})
    with pytest.raises(InvalidChange, match="already a member"):
        ConfChange(ADD, 2, "h:9").applyTo(three)
    with pytest.raises(InvalidChange, match="already node 3"):
        ConfChange(ADD, 4, "h:3").applyTo(three)
    with pytest.raises(InvalidChange, match="already a voter"):
        ConfChange(PROMOTE, 2).applyTo(three)
    with pytest.raises(InvalidChange, match="not a member"):
        ConfChange(REMOVE, 9).applyTo(three)
    with pytest.raises(InvalidChange, match="last voter"):
        ConfChange(REMOVE, 1).applyTo(Configuration.ofVoters([1]))
    for address in ("", "nohost", "h:0", "h:70000", "h :1", "h:x"):
        with pytest.raises(InvalidChange):
            ConfChange(ADD, 4, address)
    with pytest.raises(InvalidChange):
        ConfChange(ADD, 0, "h:1")
    added = ConfChange(ADD, 4, "h:4").applyTo(three)
    assert added.learners == (4,) and added.member(4).address == "h:4"
    assert ConfChange(PROMOTE, 4).applyTo(added).voters == (1, 2, 3, 4)
    assert ConfChange(REMOVE, 2).applyTo(three).voters == (1, 3)


def configEntry(index, term, voters):
    return Entry(index, term, encodeMembers(Configuration.ofVoters(voters)), CONFIGURATION)


def test_configuration_log_follows_append_truncate_and_compaction():
    configs = ConfigurationLog(Configuration.ofVoters([1, 2, 3]))
    assert not configs.append([Entry(1, 1, b"x")])
    assert configs.append([Entry(2, 1, b""), configEntry(3, 1, [1, 2, 3, 4]), Entry(4, 1)])
    assert configs.latest.voters == (1, 2, 3, 4) and configs.latest.index == 3
    assert configs.append([configEntry(5, 2, [1, 2, 4])])
    assert configs.at(4).index == 3 and configs.at(2).index == 0
    # A truncation falls back to the configuration before the entry.
    assert configs.truncateFrom(5)
    assert configs.latest.index == 3
    assert not configs.truncateFrom(4)
    # Compaction keeps the configuration in force at the new start.
    configs.compact(4)
    assert [c.index for c in configs.configurations] == [3]
    assert configs.at(1).index == 3
    assert configs.reset(Configuration.ofVoters([7], index=9))
    assert configs.latest.voters == (7,)


# -- adding a learner, catching up, promoting ----------------------------------


def test_a_joining_node_waits_then_learns_and_never_campaigns():
    cluster = SimCluster(3, seed=1)
    leader = cluster.waitForLeader()
    for i in range(20):
        put(leader, f"k{i}")
    newcomer = cluster.join(4)
    cluster.advance(3.0)
    # Nobody added it: it is no member, holds nothing, and never campaigned.
    assert newcomer.configuration == EMPTY
    assert newcomer.currentTerm == 0 and newcomer.raftLog.lastIndex == 0
    index, configuration = change(cluster, ADD, 4, "127.0.0.1:9004")
    assert configuration.learners == (4,) and configuration.index == index
    cluster.runUntil(lambda: newcomer.lastApplied >= index)
    assert cluster.machines[4].get("k19") == b"v"
    assert newcomer.configuration.learners == (4,)
    status = newcomer.status()
    assert status.voter is False and status.configIndex == index
    # A learner hears nothing from the leader: it still never campaigns.
    term = newcomer.currentTerm
    cluster.network.isolate(4)
    cluster.advance(5.0)
    assert newcomer.currentTerm == term and newcomer.role == FOLLOWER


def test_a_learner_never_counts_towards_a_quorum():
    cluster = SimCluster(3, seed=2)
    cluster.join(4)
    change(cluster, ADD, 4)
    leader = cluster.waitForLeader()
    others = [i for i in (1, 2, 3) if i != leader.nodeId]
    for i in others:
        cluster.network.isolate(i)
    before = leader.commitIndex
    result = put(leader, "k")
    cluster.advance(0.2)
    # The learner holds the entry, the leader does: two of four, one voter short.
    assert cluster.nodes[4].raftLog.lastIndex > before
    assert leader.commitIndex == before and not result


def test_promotion_waits_until_the_learner_has_caught_up():
    cluster = SimCluster(3, seed=3, maxPromotionLag=50)
    cluster.join(4)
    change(cluster, ADD, 4)
    cluster.network.isolate(4)
    leader = cluster.waitForLeader()
    for i in range(80):
        put(leader, f"k{i}")
    cluster.advance(0.3)
    error = failure(change(cluster, PROMOTE, 4), NotCaughtUp)
    assert "behind the leader" in str(error)
    assert cluster.waitForLeader().configuration.voters == (1, 2, 3)
    cluster.network.heal()
    cluster.runUntil(lambda: cluster.nodes[4].lastApplied >= leader.commitIndex)
    cluster.advance(0.1)  # until the leader has heard that it caught up
    index, configuration = change(cluster, PROMOTE, 4)
    assert configuration.voters == (1, 2, 3, 4)
    cluster.runUntil(lambda: all(n.configuration.index == index for n in cluster.nodes.values()))
    assert cluster.nodes[4].status().voter is True
    # Four voters: a quorum is three, so the leader and one other cannot commit.
    leader = cluster.waitForLeader()
    followers = [i for i in (1, 2, 3, 4) if i != leader.nodeId]
    cluster.network.isolate(followers[0])
    cluster.network.isolate(followers[1])
    before = leader.commitIndex
    stuck = put(leader, "x")
    cluster.advance(0.25)
    assert leader.commitIndex == before and not stuck


# -- one change at a time ------------------------------------------------------------


def test_one_change_in_flight_at_a_time():
    cluster = SimCluster(3, seed=4)
    leader = cluster.waitForLeader()
    cluster.join(4)
    cluster.join(5)
    first, second = [], []
    leader.changeMembership(ConfChange(ADD, 4, "h:4")).addBoth(first.append)
    leader.changeMembership(ConfChange(ADD, 5, "h:5")).addBoth(second.append)
    error = failure(second[0], ChangeInProgress)
    assert "not committed yet" in str(error)
    cluster.runUntil(lambda: first)
    assert first[0][1].learners == (4,)
    # Once it is committed, the next one is accepted.
    assert change(cluster, ADD, 5, "h:5")[1].learners == (4, 5)


def test_a_new_leader_changes_nothing_before_committing_in_its_term():
    # The 2015 single-server-change bug: until its no-op commits, a new
    # leader may not know the latest committed configuration.
    cluster = SimCluster(3, seed=5, diskDelay=0.01)
    leader = cluster.waitForLeader()
    cluster.network.isolate(leader.nodeId)
    cluster.runUntil(
        lambda: any(n.role == LEADER and n is not leader for n in cluster.nodes.values())
    )
    fresh = next(n for n in cluster.nodes.values() if n.role == LEADER and n is not leader)
    assert fresh.raftLog.term(fresh.commitIndex) != fresh.currentTerm
    result = []
    fresh.changeMembership(ConfChange(REMOVE, leader.nodeId)).addBoth(result.append)
    error = failure(result[0], ChangeInProgress)
    assert "not yet committed an entry of its term" in str(error)


def test_a_follower_refuses_changes():
    cluster = SimCluster(3, seed=6)
    leader = cluster.waitForLeader()
    follower = next(n for n in cluster.nodes.values() if n is not leader)
    result = []
    follower.changeMembership(ConfChange(REMOVE, 3)).addBoth(result.append)
    assert failure(result[0], NotLeader).leaderId == leader.nodeId


# -- when a configuration takes effect, and where it is kept ---------------------------


def test_a_configuration_takes_effect_on_append_and_reverts_on_truncation():
    clock = task.Clock()
    node = RaftNode(1, [1, 2, 3], MemoryStorage(), ScriptedTransport(), kv.KVStore(), clock)
    node.start()
    seen = []
    node.watchConfiguration(seen.append)
    assert [c.voters for c in seen] == [(1, 2, 3)]
    node.handleAppendEntries(AppendEntries(1, 2, 0, 0, [configEntry(1, 1, [1, 2])], 0))
    # Uncommitted (leaderCommit 0), yet in force.
    assert node.configuration.voters == (1, 2) and node.commitIndex == 0
    assert node.status().configIndex == 1
    # A leader of term 2 replaces the entry: the configuration reverts.
    node.handleAppendEntries(AppendEntries(2, 3, 0, 0, [Entry(1, 2, b"")], 0))
    assert node.configuration.voters == (1, 2, 3) and node.configuration.index == 0
    assert [c.voters for c in seen] == [(1, 2, 3), (1, 2), (1, 2, 3)]


def test_a_bootstrap_configuration_is_stored_once_and_wins_over_a_new_one():
    storage = MemoryStorage()
    clock = task.Clock()
    first = Configuration.ofVoters([1, 2, 3], {1: "a:1", 2: "a:2", 3: "a:3"})
    RaftNode(1, [], storage, ScriptedTransport(), kv.KVStore(), clock, configuration=first).start()
    assert storage.bootstrapConfiguration == first
    other = Configuration.ofVoters([1, 5], {1: "b:1", 5: "b:5"})
    node = RaftNode(1, [], storage, ScriptedTransport(), kv.KVStore(), clock, configuration=other)
    node.start()
    assert node.configuration == first


def test_a_configuration_survives_restart_and_a_snapshot_alone():
    cluster = SimCluster(3, seed=7, snapshotEntries=20, snapshotKeep=0)
    cluster.join(4)
    index, _ = change(cluster, ADD, 4, "127.0.0.1:9004")
    leader = cluster.waitForLeader()
    for i in range(60):
        put(leader, f"k{i}")
    cluster.runUntil(lambda: all(n.snapshot and n.snapshot.lastIndex > index
                                 for n in cluster.nodes.values()))
    for nodeId in list(cluster.nodes):
        node = cluster.nodes[nodeId]
        # The entry itself was compacted away: only the snapshot knows it.
        assert node.raftLog.startIndex > index
        assert node.snapshot.configuration.learners == (4,)
        assert node.snapshot.configuration.index == index
        cluster.crash(nodeId)
        restarted = cluster.restart(nodeId)
        assert restarted.configuration.learners == (4,)
        assert restarted.configuration.member(4).address == "127.0.0.1:9004"
        assert restarted.configuration.index == index


def test_a_node_added_after_compaction_gets_the_configuration_by_snapshot():
    cluster = SimCluster(3, seed=8, snapshotEntries=20, snapshotKeep=0)
    leader = cluster.waitForLeader()
    for i in range(60):
        put(leader, f"k{i}")
    cluster.runUntil(lambda: leader.snapshot is not None and leader.raftLog.startIndex > 20)
    newcomer = cluster.join(4)
    index, _ = change(cluster, ADD, 4)
    cluster.runUntil(lambda: newcomer.lastApplied >= index)
    assert newcomer.snapshot is not None and newcomer.raftLog.startIndex > 1
    assert newcomer.configuration.learners == (4,)
    assert cluster.machines[4].get("k59") == b"v"


# -- removal ---------------------------------------------------------------------------


def test_a_removed_node_learns_it_and_stops_campaigning():
    cluster = SimCluster(3, seed=9)
    leader = cluster.waitForLeader()
    victim = next(i for i in (1, 2, 3) if i != leader.nodeId)
    index, configuration = change(cluster, REMOVE, victim)
    assert victim not in configuration
    removed = cluster.nodes[victim]
    cluster.runUntil(lambda: removed.configuration.index == index)
    assert removed.status().voter is False
    terms = {i: n.currentTerm for i, n in cluster.nodes.items()}
    cluster.advance(5.0)
    assert removed.currentTerm == terms[victim] and removed._electionTimer is None
    # The other two carry on as a cluster of two.
    writes = put(cluster.waitForLeader(), "after")
    cluster.runUntil(lambda: writes)
    assert not isinstance(writes[0], Failure)


def test_a_removed_node_that_never_heard_of_it_disrupts_nobody():
    cluster = SimCluster(3, seed=10)
    leader = cluster.waitForLeader()
    victim = next(i for i in (1, 2, 3) if i != leader.nodeId)
    cluster.network.isolate(victim)
    index, _ = change(cluster, REMOVE, victim)
    stranger = cluster.nodes[victim]
    assert stranger.configuration.index < index
    cluster.advance(3.0)
    # Cut off, it campaigns in vain (its term may rise: nobody hears it).
    cluster.network.heal()
    terms = {i: cluster.nodes[i].currentTerm for i in cluster.ids if i != victim}
    cluster.advance(5.0)
    # Its vote requests are refused: no member's term moved, one leader.
    assert {i: cluster.nodes[i].currentTerm for i in terms} == terms
    assert cluster.network.refused > 0
    assert len(cluster.leaders()) == 1 and cluster.leader().nodeId != victim


def test_a_leader_that_removes_itself_serves_until_committed_then_steps_down():
    cluster = SimCluster(3, seed=11)
    leader = cluster.waitForLeader()
    me = leader.nodeId
    results = []
    leader.changeMembership(ConfChange(REMOVE, me)).addBoth(results.append)
    # In force at once: it leads a configuration it is not part of.
    assert me not in leader.configuration and leader.role == LEADER
    writes = put(leader, "during")
    cluster.runUntil(lambda: results)
    committedAt = cluster.clock.seconds()
    index, configuration = results[0]
    assert me not in configuration
    # It hands over to the most up-to-date voter rather than leaving the
    # others to wait out an election timeout.
    fresh = cluster.waitForLeader(exclude=(me,))
    assert cluster.clock.seconds() - committedAt < cluster.config.electionTimeout[0]
    assert leader.role == FOLLOWER and leader.leaderId == fresh.nodeId
    # What it accepted while it still led was committed.
    cluster.runUntil(lambda: writes)
    assert not isinstance(writes[0], Failure)
    assert cluster.machines[fresh.nodeId].get("during") == b"v"
    cluster.advance(3.0)
    assert leader._electionTimer is None and leader.role == FOLLOWER
    assert fresh.role == LEADER


# -- leadership transfer (thesis §3.10) -------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_transfer_elects_the_target_within_an_election_timeout(seed):
    cluster = SimCluster(3, seed=seed)
    leader = cluster.waitForLeader()
    target = next(i for i in (1, 2, 3) if i != leader.nodeId)
    for i in range(30):
        put(leader, f"k{i}")
    results = []
    start = cluster.clock.seconds()
    leader.transferLeadership(target).addBoth(results.append)
    cluster.runUntil(lambda: results, cluster.config.electionTimeout[1])
    assert results == [target]
    assert cluster.clock.seconds() - start < cluster.config.electionTimeout[0]
    assert cluster.leader().nodeId == target
    # Nothing acknowledged was lost on the way.
    cluster.runUntil(lambda: cluster.machines[target].get("k29") == b"v")
    assert all(cluster.machines[target].get(f"k{i}") == b"v" for i in range(30))


def test_transfer_to_the_most_up_to_date_voter_by_default():
    cluster = SimCluster(5, seed=12)
    leader = cluster.waitForLeader()
    laggard = next(i for i in cluster.ids if i != leader.nodeId)
    cluster.network.isolate(laggard)
    for i in range(10):
        put(leader, f"k{i}")
    cluster.advance(0.2)
    results = []
    leader.transferLeadership().addBoth(results.append)
    cluster.runUntil(lambda: results, 1.0)
    assert results[0] not in (leader.nodeId, laggard)
    assert isinstance(results[0], int)


def test_proposals_during_a_transfer_wait_and_are_not_proposed_if_it_succeeds():
    cluster = SimCluster(3, seed=13)
    leader = cluster.waitForLeader()
    target = next(i for i in (1, 2, 3) if i != leader.nodeId)
    done = []
    leader.transferLeadership(target).addBoth(done.append)
    last = leader.raftLog.lastIndex
    held = put(leader, "held")
    assert leader.raftLog.lastIndex == last and not held
    cluster.runUntil(lambda: done)
    assert failure(held[0], NotLeader)
    cluster.advance(0.5)
    assert all(cluster.machines[i].get("held") is None for i in cluster.ids)


def test_a_failed_transfer_resumes_and_proposes_what_waited():
    cluster = SimCluster(3, seed=14)
    leader = cluster.waitForLeader()
    target = next(i for i in (1, 2, 3) if i != leader.nodeId)
    cluster.network.isolate(target)
    done = []
    leader.transferLeadership(target).addBoth(done.append)
    held = put(leader, "held")
    cluster.advance(cluster.config.electionTimeout[1] + 0.01)
    failure(done[0], TransferFailed)
    assert leader.role == LEADER
    cluster.runUntil(lambda: held)
    assert not isinstance(held[0], Failure)
    assert cluster.machines[leader.nodeId].get("held") == b"v"


def test_transfer_refuses_a_non_voter_and_answers_itself_at_once():
    cluster = SimCluster(3, seed=15)
    cluster.join(4)
    change(cluster, ADD, 4)
    leader = cluster.waitForLeader()
    results = []
    leader.transferLeadership(4).addBoth(results.append)
    failure(results[0], InvalidChange)
    leader.transferLeadership(leader.nodeId).addBoth(results.append)
    assert results[1] == leader.nodeId


def test_timeout_now_from_an_old_term_changes_nothing():
    cluster = SimCluster(3, seed=16)
    leader = cluster.waitForLeader()
    follower = next(n for n in cluster.nodes.values() if n is not leader)
    term = follower.currentTerm
    answers = []
    follower.handleTimeoutNow(TimeoutNow(term - 1, leader.nodeId)).addBoth(answers.append)
    assert answers[0].accepted is False and follower.currentTerm == term
    other = next(i for i in (1, 2, 3) if i not in (leader.nodeId, follower.nodeId))
    follower.handleTimeoutNow(TimeoutNow(term, other)).addBoth(answers.append)
    assert answers[1].accepted is False and follower.currentTerm == term


def test_a_restored_snapshot_meta_without_members_keeps_the_configuration():
    # A snapshot from before membership change recorded node ids only.
    meta = SnapshotMeta(5, 1, (1, 2, 3))
    assert meta.configuration.voters == (1, 2, 3) and meta.members == (1, 2, 3)


# -- found by review: liveness around changes ------------------------------------------


def test_a_change_that_leaves_no_live_quorum_is_refused():
    cluster = SimCluster(3, seed=21)
    leader = cluster.waitForLeader()
    down = next(i for i in (1, 2, 3) if i != leader.nodeId)
    cluster.crash(down)
    cluster.advance(1.0)
    # Without the leader, the voters would be the down node and one other.
    error = failure(change(cluster, REMOVE, leader.nodeId), ChangeInProgress)
    assert "no quorum that answers" in str(error)
    assert leader.configuration.index == 0
    # Removing the down node is fine: the other two answer.
    index, configuration = change(cluster, REMOVE, down)
    assert down not in configuration


def test_a_removed_leader_steps_down_once_its_successor_campaigns():
    cluster = SimCluster(3, seed=22)
    leader = cluster.waitForLeader()
    results = []
    leader.changeMembership(ConfChange(REMOVE, leader.nodeId)).addBoth(results.append)
    cluster.runUntil(lambda: results)
    cluster.runUntil(lambda: leader.role == FOLLOWER, cluster.config.electionTimeout[0])
    held = put(leader, "late")
    assert failure(held[0], NotLeader)


def test_a_transfer_ends_with_the_term_it_was_started_in():
    cluster = SimCluster(3, seed=23)
    leader = cluster.waitForLeader()
    target = next(i for i in (1, 2, 3) if i != leader.nodeId)
    done = []
    leader.transferLeadership(target).addBoth(done.append)
    # The target never gets to campaign: the old leader wins again.
    cluster.network.isolate(target)
    leader._becomeFollower(leader.currentTerm + 1, 0)
    cluster.runUntil(lambda: leader.role == LEADER, 5.0)
    failure(done[0], TransferFailed)
    writes = put(leader, "next")
    cluster.runUntil(lambda: writes, 1.0)
    assert not isinstance(writes[0], Failure)


# -- found by the simulation's membership faults ---------------------------------------


def test_a_leader_cut_off_after_removing_itself_still_gets_its_removal_committed():
    # (raftkv sim --seed 9 --nodes 3, minimised.)  Voters {1, 2}; the leader
    # removes itself, is cut off before the other voter gets the entry, and
    # steps down (CheckQuorum).  The other voter, still in {1, 2}, cannot win
    # without the removed leader's vote, which goes only to a log as up to
    # date as its own; so the removed leader, whose removal is not known to
    # be committed, must still campaign (thesis §4.2.2), not counting itself.
    cluster = SimCluster(2, seed=17)
    leader = cluster.waitForLeader()
    me = leader.nodeId
    other = 3 - me
    cluster.network.isolate(other)
    results = []
    leader.changeMembership(ConfChange(REMOVE, me)).addBoth(results.append)
    index = leader.configuration.index
    assert leader.configuration.voters == (other,)
    cluster.runUntil(lambda: leader.role != LEADER)
    failure(results[0], Exception)  # its outcome unknown
    assert cluster.nodes[other].configuration.voters == (1, 2)
    cluster.network.heal()
    fresh = cluster.waitForLeader(exclude=(me,))
    assert fresh.nodeId == other
    cluster.runUntil(lambda: fresh.commitIndex >= index and leader.commitIndex >= index)
    assert fresh.configuration.voters == (other,) and fresh.configuration.index == index
    # Knowing its removal committed, it stops campaigning for good.
    term = fresh.currentTerm
    cluster.advance(3.0)
    assert leader._electionTimer is None and leader.currentTerm == term
    assert fresh.role == LEADER and fresh.currentTerm == term


def test_a_removed_follower_hears_its_removal_commit_and_stops_campaigning():
    # Without that last heartbeat it would know its removal only as an
    # uncommitted entry, and keep campaigning (harmlessly, refused).
    cluster = SimCluster(3, seed=18)
    leader = cluster.waitForLeader()
    victim = next(i for i in (1, 2, 3) if i != leader.nodeId)
    index, _ = change(cluster, REMOVE, victim)
    removed = cluster.nodes[victim]
    cluster.runUntil(lambda: removed.commitIndex >= index, 1.0)
    assert removed._electionTimer is None


def test_a_follower_holding_an_uncommitted_removal_of_the_new_leader_still_hears_it():
    # (raftkv sim --seed 37 --nodes 3, minimised.)  Node X holds a removal
    # of node R that never commits; R is then elected under the old
    # configuration.  Refusing R's calls because X's latest configuration
    # drops it would leave X behind for ever: R is the very leader that will
    # truncate that entry.
    cluster = SimCluster(5, seed=19)
    old = cluster.waitForLeader()
    x, r, a, b = [i for i in cluster.ids if i != old.nodeId]
    net = cluster.network
    for i in (r, a, b):
        net.cut.add((old.nodeId, i))
    net.cut.add((x, old.nodeId))  # X's answer never arrives: no commit
    results = []
    old.changeMembership(ConfChange(REMOVE, r)).addBoth(results.append)
    follower = cluster.nodes[x]
    cluster.runUntil(lambda: r not in follower.configuration)
    cluster.crash(old.nodeId)
    net.heal()
    net.isolate(x)
    net.cut.update({(a, b), (b, a)})  # only R can gather three votes
    cluster.runUntil(lambda: cluster.nodes[r].role == LEADER)
    leader = cluster.nodes[r]
    net.heal()
    cluster.runUntil(
        lambda: follower.raftLog.lastIndex == leader.raftLog.lastIndex
        and follower.commitIndex == leader.commitIndex
    )
    assert r in follower.configuration and follower.leaderId == r


def test_a_member_that_missed_an_addition_hears_the_new_member_as_leader():
    # (raftkv sim --seed 85 --nodes 5, minimised.)  A member cut off while
    # node 4 was added and took over has never heard of node 4: it must
    # still hear it, or the leader can never catch it up.
    cluster = SimCluster(3, seed=20)
    leader = cluster.waitForLeader()
    lagging = next(i for i in cluster.ids if i != leader.nodeId)
    cluster.network.isolate(lagging)
    addVoter(cluster, 4)
    done = []
    cluster.waitForLeader().transferLeadership(4).addBoth(done.append)
    cluster.runUntil(lambda: done)
    assert done == [4]
    cluster.network.heal()
    behind, fresh = cluster.nodes[lagging], cluster.nodes[4]
    cluster.runUntil(
        lambda: behind.raftLog.lastIndex == fresh.raftLog.lastIndex
        and behind.configuration == fresh.configuration
    )
    assert behind.leaderId == 4


def test_a_node_knows_whom_it_refuses():
    node = RaftNode(1, [], MemoryStorage(), ScriptedTransport(), kv.KVStore(), task.Clock(),
                    configuration=EMPTY)
    node.start()
    assert node.acceptsPeer(7)  # waiting to be added: anyone
    node.handleAppendEntries(AppendEntries(1, 2, 0, 0, [configEntry(1, 1, [1, 2, 3])], 0))
    node.handleAppendEntries(AppendEntries(1, 2, 1, 1, [configEntry(2, 1, [1, 2])], 1))
    # Node 3's removal is not known to be committed: it may yet be undone.
    assert node.acceptsPeer(3) and node.acceptsPeer(2) and node.acceptsPeer(9)
    node.handleAppendEntries(AppendEntries(1, 2, 2, 1, [], 2))
    # Now it is: node 3 is refused, a node never heard of is not.
    assert not node.acceptsPeer(3) and node.acceptsPeer(2) and node.acceptsPeer(9)


def test_a_node_that_joined_snapshots_only_with_the_configuration_in_force():
    # (raftkv sim --seed 22 --nodes 5.)  The leader has not compacted its
    # log, so the newcomer gets entries from index 1, and no configuration
    # for those before its own addition: a snapshot of them, taken while its
    # addition was not yet committed, recorded an empty configuration.
    cluster = SimCluster(3, seed=21, snapshotEntries=20)
    leader = cluster.waitForLeader()
    for i in range(30):
        put(leader, f"k{i}")
    cluster.runUntil(lambda: leader.lastApplied >= 31)
    newcomer = cluster.join(4)
    for i in cluster.ids:
        if i not in (leader.nodeId, 4):
            cluster.network.cut.add((i, leader.nodeId))  # the addition cannot commit yet
    results = []
    leader.changeMembership(ConfChange(ADD, 4, "127.0.0.1:9004")).addBoth(results.append)
    cluster.runUntil(lambda: newcomer.lastApplied >= 31)
    cluster.advance(0.1)
    assert newcomer.snapshot is None
    cluster.network.heal()
    cluster.runUntil(lambda: results)
    index, _ = results[0]
    cluster.runUntil(lambda: newcomer.snapshot is not None)
    assert newcomer.snapshot.configuration.learners == (4,)
    assert newcomer.snapshot.configuration.index == index


def test_a_transfer_to_a_named_node_fails_if_another_node_wins():
    # (raftkv chaos, minimised.)  The leader cannot reach its target, and
    # another voter wins an election meanwhile: leadership moved, but not
    # where it was asked to go.
    cluster = SimCluster(3, seed=24)
    leader = cluster.waitForLeader()
    target, other = [i for i in (1, 2, 3) if i != leader.nodeId]
    cluster.network.cut.update({(leader.nodeId, target), (target, leader.nodeId)})
    done = []
    leader.transferLeadership(target).addBoth(done.append)
    cluster.network.isolate(leader.nodeId)
    cluster.nodes[other].handleTimeoutNow(TimeoutNow(leader.currentTerm, leader.nodeId))
    cluster.runUntil(lambda: cluster.nodes[other].role == LEADER, 1.0)
    cluster.network.heal()
    cluster.runUntil(lambda: done, 5.0)
    assert "was elected, not node" in str(failure(done[0], TransferFailed))
