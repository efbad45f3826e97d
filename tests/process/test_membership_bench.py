"""
The membership bench's scenarios, short (issue 11): real twistd nodes on
127.0.0.1 under a small write load, through
L{twisted_raft.tools.membershipbench}, the code C{bench/membership.py}
runs at full length.  These assert what must hold whatever the machine's
speed -- transfers succeed, a SIGTERM'd leader hands over with no error a
client sees, a recovered node serves every acknowledged key, the history is
linearizable, nothing is lost, the members converge -- not the speed
targets, whose figures are the bench's (docs/performance.rst).
"""

import os
import sys

import pytest
import pytest_twisted

from twisted_raft.tools import launcher
from twisted_raft.tools import membershipbench as mb

pytestmark = pytest.mark.integration


def _reactor():
    from twisted.internet import reactor

    return reactor


def _settings(tmp_path):
    return mb.Settings(root=str(tmp_path), writers=2, readers=1, warmup=0.5, between=0.2)


def _assertChecks(result, members):
    checks = result["checks"]
    assert checks["linearizable"] is True, checks["linearizability"]
    assert checks["lost"] == 0, checks["lost_samples"]
    assert checks["converged"], checks["divergence"]
    assert checks["members"] == members
    assert checks["acknowledged"] > 0


def _assertNoClientErrors(load):
    assert load["write_errors"] == 0 and load["read_errors"] == 0, load["error_samples"]
    assert load["acknowledged"] > 0 and load["reads"] > 0


@pytest_twisted.ensureDeferred
async def test_transfers_in_a_row_under_load(tmp_path):
    result = await mb.transfer(_reactor(), _settings(tmp_path), count=4)
    assert result["succeeded"] == 4, result["failures"]
    assert result["to_new_leader_ms"]["max"] is not None
    _assertNoClientErrors(result["load"])
    _assertChecks(result, [1, 2, 3])


@pytest_twisted.ensureDeferred
async def test_a_sigterm_leader_hands_over_and_no_client_sees_an_error(tmp_path):
    result = await mb.rolling(_reactor(), _settings(tmp_path), "TERM", restarts=1)
    [restart] = result["restarts"]
    assert restart["was_leader"] and restart["handed_over"], restart
    _assertNoClientErrors(result["load"])
    _assertChecks(result, [1, 2, 3])


@pytest_twisted.ensureDeferred
async def test_recover_from_a_lost_quorum_and_add_two_fresh_nodes(tmp_path):
    result = await mb.recover(_reactor(), _settings(tmp_path), keys=30, after=10, survivor=2)
    assert result["before"]["acknowledged"] == 30
    assert result["after"]["acknowledged"] == 10 and result["after"]["write_errors"] == 0
    _assertChecks(result, [2, 4, 5])
    assert result["checks"]["acknowledged"] == 40
    # the survivor kept its data dir; the two lost ones are gone
    [root] = [os.path.join(tmp_path, d) for d in os.listdir(tmp_path)]
    assert os.path.isdir(os.path.join(root, "n2"))
    assert not os.path.exists(os.path.join(root, "n1"))
    assert not os.path.exists(os.path.join(root, "n3"))


@pytest_twisted.ensureDeferred
async def test_terminate_kills_a_process_that_ignores_sigterm_after_the_grace(tmp_path):
    import time

    reactor = _reactor()
    ready = tmp_path / "ready"
    argv = [sys.executable, "-c",
            "import signal, time, pathlib; signal.signal(signal.SIGTERM, signal.SIG_IGN);"
            f" pathlib.Path({str(ready)!r}).touch(); time.sleep(60)"]
    node = launcher.SpawnedNode(reactor, 1, argv, str(tmp_path / "n1.log"), str(tmp_path))
    node.start()
    while not ready.exists():
        await mb.sleep(reactor, 0.02)
    t0 = time.monotonic()
    await node.terminate(grace=0.3)
    assert not node.running
    assert time.monotonic() - t0 >= 0.3
    assert launcher.describeExit(node.proto.reason) == "killed by signal 9"
    assert node.unexpectedExits == []  # asked for
