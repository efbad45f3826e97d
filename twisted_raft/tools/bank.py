"""
The bank-transfer workload of C{raftkv chaos --workload bank}: transactions
that move amounts between a few account keys, and the audit that the total
never changes.

The accounts (C{bank/00} ...) are created in one transaction, each with
L{INITIAL_BALANCE}, if none exists yet.  Each client then loops: a
linearizable range read of every account (one revision), pick two accounts,
and a C{Txn} comparing both accounts' C{mod_revision} with what it read,
whose success branch puts both new balances.  A failed compare (another
client moved money first) is a conflict: read again and retry.  A
transaction whose outcome is unknown (a timeout) does not matter to the
invariant: a transaction is applied whole or not at all.

L{BankAudit} (pure) judges every read of all the accounts: the same
accounts, each an integer and never negative, summing to the total of the
first read.  The clients' reads and a final read after the cluster healed
are all audited; a violation makes the run fail.
"""

import random
import time

from twisted.internet import defer, task

from twisted_raft.testing.linearizability import Op

PREFIX = "bank/"
INITIAL_BALANCE = 1000
MAX_PROBLEMS = 20


def accountKeys(n):
    return [f"{PREFIX}{i:02d}" for i in range(n)]


class BankAudit:
    """
    Every read of all the accounts must show the same accounts, integer
    balances never below zero, and the same total (C{total}, or the first
    read's).
    """

    def __init__(self, keys, total=None):
        self.keys = list(keys)
        self.total = total
        self.reads = 0
        self.problems = []
        self.violations = 0

    def read(self, revision, kvs, who="a client"):
        """A read of the accounts at C{revision} (L{KeyValue}s). @return: ok."""
        self.reads += 1
        balances = {}
        problem = None
        for kv in kvs:
            try:
                balances[kv.key] = int(kv.value)
            except (TypeError, ValueError):
                problem = f"account {kv.key} holds {kv.value!r}, not a balance"
        if problem is None and sorted(balances) != self.keys:
            problem = (f"the accounts are {', '.join(sorted(balances)) or 'none'}, not "
                       f"{', '.join(self.keys)}")
        if problem is None:
            negative = [k for k, v in sorted(balances.items()) if v < 0]
            total = sum(balances.values())
            if negative:
                problem = f"{negative[0]} is negative ({balances[negative[0]]})"
            elif self.total is None:
                self.total = total
            elif total != self.total:
                problem = f"the total is {total}, not {self.total}"
        if problem is None:
            return True
        self.violations += 1
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(f"{who}'s read at revision {revision}: {problem}")
        return False


def balancesOf(kvs):
    return {kv.key: (int(kv.value), kv.mod_revision) for kv in kvs}


class Bank:
    """
    The workload in a run of L{twisted_raft.tools.chaos.Chaos} (C{chaos}):
    its clients, its figures and its verdict.
    """

    def __init__(self, chaos, accounts):
        self.chaos = chaos
        self.keys = accountKeys(accounts)
        self.audit = BankAudit(self.keys)
        self.counts = {"transfers": 0, "conflicts": 0, "unknown": 0, "failed": 0,
                       "reads": 0, "failed_reads": 0, "skipped": 0}
        self.created = None  # True: this run created the accounts; False: they existed
        self.final = None  # (revision, ok) of the read after the heal

    @defer.inlineCallbacks
    def setUp(self, patience=30.0):
        """Create the accounts in one transaction unless one exists; read them."""
        client = self.chaos.newClient(timeout=patience, connectTimeout=1.0)
        try:
            yield self._create(client, patience)
        finally:
            yield self.chaos.closeClient(client)

    @defer.inlineCallbacks
    def _create(self, client, patience):
        from twisted_raft.client import Compare, PutOp

        # One call, which the client retries (exactly once) for up to
        # C{patience}: a second call would find the accounts the first made.
        try:
            r = yield client.txn(
                compare=[Compare(k, "version", "==", 0) for k in self.keys],
                success=[PutOp(k, str(INITIAL_BALANCE).encode()) for k in self.keys],
            )
            self.created = r.succeeded
            page = yield client.range(PREFIX, prefix=True)
        except Exception as e:
            raise RuntimeError(f"the accounts could not be created and read: {e}") from e
        if not self.audit.read(page.revision, page.kvs, "the first read"):
            raise RuntimeError(f"the accounts are not usable: {self.audit.problems[-1]}")

    @defer.inlineCallbacks
    def clientLoop(self, cid):
        from twisted_raft.client import Compare, PutOp

        chaos = self.chaos
        kwargs = {}
        if chaos.o["no-sessions"]:
            kwargs["sessions"] = False
        client = chaos.newClient(timeout=chaos.o["op-timeout"], connectTimeout=1.0, **kwargs)
        rng = random.Random(f"chaos-bank-{chaos.seed}-{cid}")
        c = self.counts
        try:
            while not chaos.stopClients:
                op = Op(client=cid, kind="get", key=PREFIX, start=time.monotonic())
                try:
                    page = yield client.range(PREFIX, prefix=True)
                except Exception as e:
                    c["failed_reads"] += 1
                    chaos.counts["failed-read"] += 1
                    chaos.lastError = f"{type(e).__name__}: {e}"[:200]
                    yield task.deferLater(chaos.reactor, 0.05 + 0.1 * rng.random(), lambda: None)
                    continue
                op.end = time.monotonic()
                chaos.ops.append(op)
                chaos.counts["ok"] += 1
                c["reads"] += 1
                if not self.audit.read(page.revision, page.kvs, f"client {cid}"):
                    continue
                balances = balancesOf(page.kvs)
                src, dst = rng.sample(self.keys, 2)
                if balances[src][0] <= 0:
                    c["skipped"] += 1
                    continue
                amount = rng.randint(1, max(1, balances[src][0] // 2))
                op = Op(client=cid, kind="txn", key=f"{src}>{dst}", start=time.monotonic())
                try:
                    r = yield client.txn(
                        compare=[Compare(src, "mod_revision", "==", balances[src][1]),
                                 Compare(dst, "mod_revision", "==", balances[dst][1])],
                        success=[PutOp(src, str(balances[src][0] - amount).encode()),
                                 PutOp(dst, str(balances[dst][0] + amount).encode())],
                    )
                except Exception as e:
                    from twisted_raft.tools.chaos import _isDefinitelyNotApplied

                    if _isDefinitelyNotApplied(e):
                        c["failed"] += 1
                        chaos.counts["failed"] += 1
                    else:
                        c["unknown"] += 1
                        chaos.counts["unknown"] += 1
                        op.end = None
                        chaos.ops.append(op)
                    chaos.lastError = f"{type(e).__name__}: {e}"[:200]
                    yield task.deferLater(chaos.reactor, 0.05 + 0.1 * rng.random(), lambda: None)
                    continue
                op.end = time.monotonic()
                chaos.ops.append(op)
                chaos.counts["ok"] += 1
                if r.succeeded:
                    c["transfers"] += 1
                    chaos.acknowledged("put", src, str(balances[src][0] - amount).encode(),
                                       r.revision)
                    chaos.acknowledged("put", dst, str(balances[dst][0] + amount).encode(),
                                       r.revision)
                else:
                    c["conflicts"] += 1
                    chaos.acknowledged("none", src, None, r.revision)
                    chaos.acknowledged("none", dst, None, r.revision)
        finally:
            yield chaos.closeClient(client)

    @defer.inlineCallbacks
    def finalRead(self, patience=30.0):
        """A linearizable read of the accounts after the heal, audited."""
        client = self.chaos.newClient(timeout=5.0, connectTimeout=1.0)
        end = time.monotonic() + patience
        try:
            while True:
                try:
                    page = yield client.range(PREFIX, prefix=True)
                    break
                except Exception as e:
                    if time.monotonic() > end:
                        self.chaos.log(f"[chaos] the final read of the accounts failed: {e}")
                        return
                    yield task.deferLater(self.chaos.reactor, 0.5, lambda: None)
            self.final = (page.revision, self.audit.read(page.revision, page.kvs, "the final"))
        finally:
            yield self.chaos.closeClient(client)

    def verdict(self):
        """@return: C{(ok, lines)}."""
        c, a = self.counts, self.audit
        figures = (f"{c['transfers']} transfers committed, {c['conflicts']} conflicts (retried), "
                   f"{c['unknown']} outcome unknown, {c['failed']} failed (not applied); "
                   f"{a.reads} reads of all {len(self.keys)} accounts audited")
        if a.problems:
            return False, [f"{a.violations} reads broke the invariant"] + a.problems + [figures]
        if self.final is None:
            return False, ["the final read of the accounts failed", figures]
        return True, [f"total {a.total} at every read, the final one (revision "
                      f"{self.final[0]}) too; no balance below zero", figures]

    def toJSON(self):
        ok, lines = self.verdict()
        return dict(
            enabled=True, ok=ok, accounts=len(self.keys), total=self.audit.total,
            created=self.created, audited_reads=self.audit.reads,
            violations=self.audit.violations, problems=[] if ok else lines,
            final_revision=None if self.final is None else self.final[0],
            **self.counts,
        )
