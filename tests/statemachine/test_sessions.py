"""
Exactly-once writes with client sessions (Raft thesis §6.3): the encoding,
the KVStore's session table, and whole simulated clusters.
"""

import pytest
from hypothesis import given, strategies as st

from twisted_raft import kv
from twisted_raft.raft.messages import LEADER, CommitUnknown
from twisted_raft.testing.cluster import SimCluster

CID = "c0ffee"


def sput(seq, key, value, cid=CID):
    return kv.encodeSession(cid, seq, kv.encodePut(key, value))


def sdelete(seq, key, cid=CID):
    return kv.encodeSession(cid, seq, kv.encodeDelete(key))


def scas(seq, key, expected, value, cid=CID):
    return kv.encodeSession(cid, seq, kv.encodeCompareAndSet(key, expected, value))


# -- encoding ----------------------------------------------------------------


@given(
    st.text(min_size=1, max_size=40).filter(lambda c: len(c.encode("utf-8")) <= 128),
    st.integers(1, 2**64 - 1),
    st.text(min_size=1),
    st.binary(),
)
def test_session_roundtrip(cid, seq, key, value):
    inner = kv.encodePut(key, value)
    data = kv.encodeSession(cid, seq, inner)
    assert data[0] == kv.SESSION
    assert kv.decodeSession(data) == (cid, seq, inner)


def test_unwrapped_commands_are_unchanged():
    """Backward compatible: a command without a session encodes as before."""
    assert kv.encodePut("k", b"v") == b"\x01\x00\x00\x00\x01kv"
    data = sput(5, "k", b"v", cid="ab")
    assert data == b"\x10\x00\x02ab" + (5).to_bytes(8, "big") + b"\x01\x00\x00\x00\x01kv"


@pytest.mark.parametrize(
    "cid,seq", [("", 1), ("c", 0), ("c", -1), ("c", 2**64), ("x" * 129, 1), (None, 1)]
)
def test_bad_session_is_refused_at_encoding(cid, seq):
    with pytest.raises(ValueError):
        kv.encodeSession(cid, seq, kv.encodeDelete("k"))


@pytest.mark.parametrize(
    "data",
    [
        b"\x10",
        b"\x10\x00\x05ab",  # truncated client id
        b"\x10\x00\x02ab\x00\x00",  # truncated sequence
        b"\x10\x00\x02\xff\xfe" + (1).to_bytes(8, "big") + kv.encodeDelete("k"),
        b"\x10\x00\x00" + (1).to_bytes(8, "big") + kv.encodeDelete("k"),  # empty id
        b"\x10\x00\x01a" + (0).to_bytes(8, "big") + kv.encodeDelete("k"),  # seq 0
        b"\x10\x00\x01a" + (1).to_bytes(8, "big") + sdelete(1, "k"),  # nested
        b"\x10\x00\x01a" + (1).to_bytes(8, "big") + b"\x09\x00\x00\x00\x00",
    ],
)
def test_malformed_session_command_raises_and_changes_nothing(data):
    store = kv.KVStore()
    with pytest.raises(kv.CommandError):
        store.apply(1, data)
    assert store.sessions == {} and store.data == {}


# -- the KVStore's sessions --------------------------------------------------------


def test_duplicate_put_returns_first_result_and_index():
    store = kv.KVStore()
    assert store.apply(1, sput(1, "k", b"first")) == kv.Applied(None, 1)
    store.apply(2, kv.encodePut("k", b"second"))
    assert store.apply(3, sput(1, "k", b"first")) == kv.Applied(None, 1, duplicate=True)
    assert store.get("k") == b"second"


def test_duplicate_delete_returns_first_result_and_index():
    store = kv.KVStore()
    store.apply(1, kv.encodePut("k", b"v"))
    assert store.apply(2, sdelete(1, "k")) == kv.Applied(True, 2)
    store.apply(3, kv.encodePut("k", b"again"))
    # a re-applied delete would remove the key again and answer True at 4
    assert store.apply(4, sdelete(1, "k")) == kv.Applied(True, 2, duplicate=True)
    assert store.get("k") == b"again"


def test_duplicate_cas_answers_succeeded_although_the_value_changed():
    """The classic double-apply bug: the retry of a CAS that succeeded."""
    store = kv.KVStore()
    store.apply(1, kv.encodePut("k", b"old"))
    assert store.apply(2, scas(1, "k", b"old", b"new")) == kv.Applied(True, 2)
    store.apply(3, kv.encodePut("k", b"old"))  # someone else resets it
    assert store.apply(4, scas(1, "k", b"old", b"new")) == kv.Applied(True, 2, duplicate=True)
    assert store.get("k") == b"old"
    # and a failed CAS stays failed on retry, though it would now succeed
    assert store.apply(5, scas(2, "k", b"other", b"x")) == kv.Applied(False, 5)
    store.apply(6, kv.encodePut("k", b"other"))
    assert store.apply(7, scas(2, "k", b"other", b"x")) == kv.Applied(False, 5, duplicate=True)
    assert store.get("k") == b"other"


def test_sessions_are_per_client():
    store = kv.KVStore()
    assert store.apply(1, sput(1, "a", b"1", cid="x")) == kv.Applied(None, 1)
    assert store.apply(2, sput(1, "b", b"1", cid="y")) == kv.Applied(None, 2)
    assert store.get("b") == b"1"


def test_out_of_order_sequences_within_the_window():
    """Several requests in flight: sequences may be applied out of order."""
    store = kv.KVStore(window=4)
    assert store.apply(1, sput(3, "c", b"3")) == kv.Applied(None, 1)
    assert store.apply(2, sput(1, "a", b"1")) == kv.Applied(None, 2)
    assert store.apply(3, sput(2, "b", b"2")) == kv.Applied(None, 3)
    assert store.apply(4, sput(1, "a", b"1")).duplicate
    assert store.data == {"a": b"1", "b": b"2", "c": b"3"}


def test_sequence_older_than_the_window_is_refused():
    store = kv.KVStore(window=4)
    for seq in range(1, 11):
        store.apply(seq, sput(seq, f"k{seq}", b"v"))
    # the last four are kept; 6 is the oldest
    assert sorted(store.sessions[CID].results) == [7, 8, 9, 10]
    assert store.cachedResults == 4
    assert store.apply(11, sput(7, "k7", b"v")) == kv.Applied(None, 7, duplicate=True)
    result = store.apply(12, sput(6, "k6", b"changed"))
    assert isinstance(result, kv.SequenceTooOld)
    assert "sequence 6 is older than this session's window" in str(result)
    # a never-seen sequence that old is refused too: it may have been applied
    assert isinstance(store.apply(13, sput(2, "new", b"v")), kv.SequenceTooOld)
    assert store.get("k6") == b"v" and store.get("new") is None


def test_expiry_by_log_position():
    store = kv.KVStore(expiryEntries=100)
    store.apply(1, sput(1, "a", b"1", cid="old"))
    store.apply(50, sput(1, "b", b"1", cid="young"))
    store.apply(101, kv.encodePut("x", b"1"))  # 100 entries later: still there
    assert list(store.sessions) == ["old", "young"]
    store.apply(102, kv.encodePut("x", b"2"))  # more than 100: "old" expires
    assert list(store.sessions) == ["young"]
    # the documented trade-off: a retry from an expired session applies again
    store.apply(103, kv.encodePut("a", b"changed"))
    assert store.apply(104, sput(1, "a", b"1", cid="old")) == kv.Applied(None, 104)
    assert store.get("a") == b"1"
    # using a session keeps it alive: "young" was last used at 149
    store.apply(149, sput(2, "b", b"2", cid="young"))
    store.apply(249, kv.encodePut("x", b"3"))
    assert list(store.sessions) == ["young"]  # "old", last used at 104, expired
    store.apply(250, kv.encodePut("x", b"4"))
    assert list(store.sessions) == [] and store.cachedResults == 0


def test_session_cap_evicts_the_least_recently_used():
    store = kv.KVStore(maxSessions=3)
    store.apply(1, sput(1, "k", b"v", cid="a"))
    store.apply(2, sput(1, "k", b"v", cid="b"))
    store.apply(3, sput(1, "k", b"v", cid="c"))
    store.apply(4, sput(2, "k", b"v", cid="a"))  # a is now the most recent
    store.apply(5, sput(1, "k", b"v", cid="d"))  # evicts b
    assert list(store.sessions) == ["c", "a", "d"]
    assert store.cachedResults == 4


def test_cached_results_cap_evicts_the_least_recently_used():
    store = kv.KVStore(window=4, maxResults=6)
    for seq in range(1, 4):
        store.apply(seq, sput(seq, "k", b"v", cid="a"))
    for seq in range(1, 4):
        store.apply(3 + seq, sput(seq, "k", b"v", cid="b"))
    assert store.cachedResults == 6 and list(store.sessions) == ["a", "b"]
    store.apply(7, sput(1, "k", b"v", cid="c"))
    assert list(store.sessions) == ["b", "c"] and store.cachedResults == 4


def test_session_state_is_a_function_of_the_log():
    """Two stores fed the same log agree on everything (every node does)."""
    log = []
    for i in range(1, 400):
        cid = f"c{i % 7}"
        if i % 5 == 0:
            log.append(kv.encodePut(f"k{i}", b"v"))
        else:
            log.append(sput(3 + i // 7 - (i % 3), f"k{i % 11}", b"%d" % i, cid=cid))
    a = kv.KVStore(window=8, expiryEntries=50, maxSessions=5, maxResults=30)
    b = kv.KVStore(window=8, expiryEntries=50, maxSessions=5, maxResults=30)
    ra = [repr(a.apply(i, d)) for i, d in enumerate(log, 1)]
    rb = [repr(b.apply(i, d)) for i, d in enumerate(log, 1)]
    assert ra == rb and a.data == b.data
    assert {c: list(s.results.items()) for c, s in a.sessions.items()} == {
        c: list(s.results.items()) for c, s in b.sessions.items()
    }
    assert a.cachedResults == sum(len(s.results) for s in a.sessions.values())
    assert a.cachedResults <= 30 and len(a.sessions) <= 5


# -- whole clusters -----------------------------------------------------------------


def settle(cluster, seconds=0.5):
    cluster.advance(seconds)


def propose(node, data):
    results = []
    node.propose(data).addBoth(results.append)
    return results


def sessionsOf(machine):
    return {c: dict(s.results) for c, s in machine.sessions.items()}


def test_retry_after_leader_change_applies_once_everywhere():
    """
    A session write reaches the followers, then its leader is cut off before
    it can answer (outcome unknown).  The client retries the same (client,
    sequence) at the new leader after another write changed the key: the
    retry applies nothing and answers with the original index, on every node.
    """
    cluster = SimCluster(3, seed=11)
    old = cluster.waitForLeader()
    first = propose(old, sput(1, "k", b"first"))
    # let AppendEntries reach the followers, but not their answers back
    cluster.advance(0.003)
    cluster.network.isolate(old.nodeId)
    new = cluster.waitForLeader(exclude={old.nodeId})
    settle(cluster)
    assert old.role != LEADER
    assert first and first[0].check(CommitUnknown)
    firstIndex = next(
        i for i in range(1, new.raftLog.lastIndex + 1)
        if new.raftLog.entry(i).data == sput(1, "k", b"first")
    )
    other = propose(new, kv.encodePut("k", b"second"))
    settle(cluster)
    retry = propose(new, sput(1, "k", b"first"))
    settle(cluster)
    index, applied = retry[0]
    assert index > firstIndex
    assert applied == kv.Applied(None, firstIndex, duplicate=True)
    assert other[0][0] < index
    cluster.network.heal()
    cluster.runUntil(
        lambda: all(n.lastApplied == new.lastApplied for n in cluster.nodes.values())
    )
    for machine in cluster.machines.values():
        assert machine.get("k") == b"second"
        assert sessionsOf(machine) == {CID: {1: (None, firstIndex)}}

    # Sessions survive a restart: the state machine is rebuilt from the log.
    victim = next(i for i in cluster.ids if i != new.nodeId)
    cluster.crash(victim)
    restarted = cluster.restart(victim)
    cluster.runUntil(lambda: restarted.lastApplied == new.lastApplied)
    assert sessionsOf(cluster.machines[victim]) == {CID: {1: (None, firstIndex)}}
    assert cluster.machines[victim].get("k") == b"second"
    # ... so one more retry is still a no-op on every node
    again = propose(new, sput(1, "k", b"first"))
    settle(cluster)
    assert again[0][1] == kv.Applied(None, firstIndex, duplicate=True)
    for machine in cluster.machines.values():
        assert machine.get("k") == b"second"


def test_retry_of_an_entry_that_was_lost_applies_once():
    """
    The first attempt never left its leader (so it is discarded); the retry
    at the new leader is applied fresh, exactly once.
    """
    cluster = SimCluster(3, seed=12)
    old = cluster.waitForLeader()
    cluster.network.isolate(old.nodeId)
    first = propose(old, scas(1, "k", None, b"v"))
    new = cluster.waitForLeader(exclude={old.nodeId})
    retry = propose(new, scas(1, "k", None, b"v"))
    settle(cluster)
    index, applied = retry[0]
    assert applied == kv.Applied(True, index)
    cluster.network.heal()
    cluster.runUntil(
        lambda: all(n.lastApplied == new.lastApplied for n in cluster.nodes.values())
    )
    settle(cluster)
    assert first and first[0].check(CommitUnknown)
    for machine in cluster.machines.values():
        assert machine.get("k") == b"v"
        assert sessionsOf(machine) == {CID: {1: (True, index)}}
