"""
The blocking client against a real three-node cluster: 50 threads sharing
one client through a SIGKILL of the leader, watches as iterators, and a
program that never imports the global reactor.
"""

import json
import subprocess
import sys
import threading
import time
import uuid

import pytest

from tests.clients.support import leaderOf, restart
from twisted_raft.client import BlockingClient, PutOp
from twisted_raft.tools import launcher

pytestmark = pytest.mark.integration

THREADS = 50
WRITES = 12  # per thread: as many puts of its own keys, and increments


def ourThreads():
    return [t for t in threading.enumerate() if t.name.startswith("raftkv-reactor")]


def test_50_threads_share_one_client_through_a_leader_sigkill(cluster):
    run = uuid.uuid4().hex[:8]
    client = BlockingClient(cluster.peers, timeout=30)
    killed = threading.Event()
    halfway = threading.Semaphore(0)
    errors = []

    def worker(i):
        try:
            counter = f"{run}/n/{i}"
            for j in range(WRITES):
                client.put(f"{run}/t{i}/{j}", b"%d" % j)
                # increment by compare-and-set: an increment applied twice
                # would leave the counter above WRITES
                while True:
                    old = client.get(counter)
                    new = b"%d" % (int(old or b"0") + 1)
                    if client.compareAndSet(counter, old, new)[0]:
                        break
                if j == WRITES // 2:
                    halfway.release()
                    killed.wait(30)
        except Exception as e:
            errors.append((i, e))

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(THREADS)]
    for t in threads:
        t.start()
    leader = None
    try:
        # the leader dies with writes in flight: half the threads are
        # halfway, the others between two writes
        for _ in range(THREADS // 2):
            assert halfway.acquire(timeout=60), errors
        leader = leaderOf(cluster, client)
        cluster.kill(leader)
        killed.set()
        deadline = time.monotonic() + 120
        for t in threads:
            t.join(max(0.1, deadline - time.monotonic()))
        assert not [t for t in threads if t.is_alive()], "deadlock: threads still waiting"
        assert errors == []
        # every write exactly once
        counters = client.rangeAll(f"{run}/n/", prefix=True)
        assert len(counters.kvs) == THREADS
        assert {kv.value for kv in counters.kvs} == {b"%d" % WRITES}
        for i in range(THREADS):
            kvs = client.rangeAll(f"{run}/t{i}/", prefix=True).kvs
            assert sorted(kv.key for kv in kvs) == sorted(f"{run}/t{i}/{j}" for j in range(WRITES))
            assert {kv.version for kv in kvs} == {1}
        assert leaderOf(cluster, client) != leader
        assert len(ourThreads()) == 1
    finally:
        killed.set()
        client.close()
        if leader is not None:
            restart(cluster, leader)
    assert ourThreads() == []


def test_a_watch_is_an_iterator_and_closing_it_cancels_it(cluster):
    prefix = f"{uuid.uuid4().hex[:8]}/"
    with BlockingClient(cluster.peers, timeout=20) as client:
        with client.watch(prefix, prefix=True) as watch:
            start = watch.started()
            for i in range(5):
                client.put(f"{prefix}{i}", b"%d" % i)
            client.delete(f"{prefix}0")
            got = [next(watch) for _ in range(6)]
            assert [(e.type, e.key) for e in got] == \
                [("put", f"{prefix}{i}") for i in range(5)] + [("delete", f"{prefix}0")]
            assert got[0].mod_revision >= start
            watcher = watch._watcher
        assert client._thread.call(lambda: watcher.done.called)  # cancelled
        assert list(watch) == []

        # from a revision: the same events again, then close() from another
        # thread ends an iteration that waits for more
        again = client.watch(prefix, prefix=True, startRevision=start)
        seen = []
        reader = threading.Thread(target=lambda: seen.extend(again))
        reader.start()
        deadline = time.monotonic() + 30
        while len(seen) < 6:
            assert time.monotonic() < deadline, f"the reader took only {len(seen)} events"
            time.sleep(0.01)  # polling: the reader takes the six events
        again.close()
        reader.join(10)
        assert not reader.is_alive()
        assert [e.mod_revision for e in seen] == [e.mod_revision for e in got]

        # the client's close ends the iteration of a watch still open
        last = client.watch(prefix, prefix=True)
        last.started()
        waiting = threading.Thread(target=lambda: list(last))
        waiting.start()
    waiting.join(10)
    assert not waiting.is_alive()
    assert ourThreads() == []


def test_range_pages_left_early_are_closed(cluster):
    prefix = f"{uuid.uuid4().hex[:8]}/"
    with BlockingClient(cluster.peers, timeout=20) as client:
        client.txn(success=[PutOp(f"{prefix}{i:04d}", b"v") for i in range(3)])
        pages = client.rangePages(prefix, prefix=True, keysOnly=True)
        assert [kv.key for kv in next(pages).kvs] == [f"{prefix}{i:04d}" for i in range(3)]
        underlying = pages.gi_frame.f_locals["pages"]  # the Deferred client's generator
        pages.close()
        assert client._thread.call(lambda: underlying.ag_frame) is None  # ended there
        assert client.get(f"{prefix}0000") == b"v"


PROGRAM = """
import json, sys
from twisted_raft.client import BlockingClient, PutOp
from twisted_raft.tls import TLSCredentials  # noqa: F401 (a TLS program imports it too)

addresses = sys.argv[1].split(",")
with BlockingClient(addresses, timeout=20) as client:
    client.put("plain/program", b"hello")
    value = client.get("plain/program")
    with client.watch("plain/", prefix=True, startRevision=1) as watch:
        event = next(watch)
print(json.dumps({"value": value.decode(), "event": event.key,
                  "reactor": "twisted.internet.reactor" in sys.modules}))
"""


def test_a_program_using_it_never_imports_the_global_reactor(cluster):
    out = subprocess.run(
        [sys.executable, "-c", PROGRAM, ",".join(cluster.peers)],
        env=launcher.environment(), capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {
        "value": "hello", "event": "plain/program", "reactor": False,
    }
