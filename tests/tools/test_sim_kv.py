"""
The sim's KV workload (ranges, transactions, range deletes, puts with
prev_kv), its multi-key linearizability check, and the watch completeness
invariant: real seeds pass, planted bugs are caught, and runs without the
"kv" kind stay as they were.
"""

import io
import re

import pytest
from twisted.internet import defer

from twisted_raft import kv
from twisted_raft.raft.messages import NotLeader
from twisted_raft.raft.node import RaftNode
from twisted_raft.testing import linearizability, watchchecks
from twisted_raft.testing.invariants import InvariantViolation
from twisted_raft.testing.multikey import KvOp
from twisted_raft.tools import sim
from twisted_raft.watchclient import resumeAfter

OLD_KINDS = ["partition", "crash", "network", "membership"]


def options(*argv):
    o = sim.Options()
    o.parseOptions(list(argv))
    return o


@pytest.mark.parametrize("nodes,first,seeds", [(3, 500, 40), (5, 20510, 20)])
def test_kv_seeds_pass_and_exercise_the_api(nodes, first, seeds):
    out = io.StringIO()
    failed = sim.runSeeds(options("--seeds", str(seeds), "--first", str(first),
                                  "--nodes", str(nodes), "-q", "--jobs", "2"), out)
    text = out.getvalue()
    assert failed == [], text
    assert f"(faults: partition,crash,network,membership,kv): {seeds} passed" in text
    line = re.search(r"kv workload: (.*)", text).group(1)
    numbers = dict((name, int(n)) for n, name in re.findall(
        r"(\d+) (ranges|transactions|refused|puts|range deletes|events|resumes)", line))
    for name in ("ranges", "transactions", "refused", "puts", "range deletes", "events",
                 "resumes"):
        assert numbers[name] > 0, (name, line)


def test_the_kv_run_records_multi_key_ops_with_revisions():
    run = sim.makeRun(7, 3, 3.0, sim.FAULT_KINDS).run()
    kinds = {op.kind for op in run.history}
    assert {"range", "txn", "put", "get"} <= kinds
    assert all(isinstance(op, KvOp) for op in run.history)
    writes = [op for op in run.history if op.kind in ("put", "delete", "cas", "txn")]
    assert all(op.revision is not None for op in writes)
    assert len({op.revision for op in writes}) == len(writes)  # one log entry each
    assert any(type(op.result) is kv.MetadataUnavailable for op in writes)  # before the epoch


def test_without_kv_a_run_is_as_it_was():
    """No metadata epoch, no sessions, the per-key checker: old replays hold."""
    run = sim.makeRun(4, 3, 3.0, OLD_KINDS).run()
    assert run.kv is None and run.watches is None
    assert all(type(op) is linearizability.Op for op in run.history)
    datas = [e.data for e in run.invariants.committed.values()]
    assert kv.encodeMetadataEpoch() not in datas
    assert not any(d[:1] == bytes([kv.SESSION]) for d in datas)


class LocalReads(RaftNode):
    """Deliberately broken: answers linearizable reads from local state."""

    def readIndex(self):
        if self.role != "leader":
            return defer.fail(NotLeader(self.leaderId))
        return defer.succeed(None)


def test_stale_ranges_of_a_broken_node_are_caught():
    # checkReads off: only the history check is left to notice.
    caught = []
    for seed in range(6):
        run = sim.makeRun(seed, 3, 3.0, sim.FAULT_KINDS, nodeFactory=LocalReads,
                          checkReads=False)
        try:
            run.run()
        except InvariantViolation as e:
            caught.append(str(e))
    assert caught
    assert all("client history is not linearizable" in c for c in caught)
    assert any("range(" in c for c in caught)


def skipping(current, events, nextRevision):
    """A planted bug: the cursor steps one revision too far after events."""
    fresh, after = resumeAfter(current, events, nextRevision)
    return fresh, (after + 1 if fresh else after)


def repeating(current, events, nextRevision):
    """A planted bug: the cursor does not move past what it delivered."""
    fresh, after = resumeAfter(current, events, nextRevision)
    return fresh, (current if fresh else after)


@pytest.mark.parametrize("bug,message", [(skipping, "never got"), (repeating, "again")])
def test_a_watch_cursor_bug_is_caught(monkeypatch, bug, message):
    monkeypatch.setattr(watchchecks, "resumeAfter", bug)
    with pytest.raises(InvariantViolation, match=message):
        sim.makeRun(4, 3, 3.0, sim.FAULT_KINDS).run()


def test_a_node_history_that_drops_an_event_is_caught(monkeypatch):
    """
    A planted bug in the nodes' histories: an entry's last event is lost
    (the reference replay of the log keeps its own store, unpatched).
    """
    runs = []
    original = kv.KVStore.watchEvents

    def lossy(self, fromRevision, key, *args, **kwargs):
        batch = original(self, fromRevision, key, *args, **kwargs)
        if self is not runs[0].watches.reference and len(batch.events) > 1:
            batch.events = batch.events[:-1]
        return batch

    monkeypatch.setattr(kv.KVStore, "watchEvents", lossy)
    runs.append(sim.makeRun(4, 3, 3.0, sim.FAULT_KINDS))
    with pytest.raises(InvariantViolation, match="watcher on"):
        runs[0].run()


@pytest.mark.parametrize("seed,nodes", [(139, 3), (20507, 5)])
def test_snapshot_transfers_survive_lost_chunk_answers(seed, nodes):
    # The seeds that found it (docs/correctness.rst): a lost answer to a chunk
    # made the follower answer "start over", so a transfer of many chunks over
    # a lossy network kept restarting and the cluster never converged.
    out = io.StringIO()
    o = options("--seed", str(seed), "--nodes", str(nodes), "-q")
    assert sim.runSeeds(o, out) == [], out.getvalue()


def test_replay_command_names_the_kv_kind():
    o = options("--seed", "3")
    assert "--faults partition,crash,network,membership,kv " in sim.replayCommand(3, o)
