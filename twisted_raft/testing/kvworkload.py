"""
The KV API's workload for the randomized runs (L{RandomRun} with C{kv}):
range reads (one key, a prefix, C{[start, end)}, with C{limit}, C{after},
keys-only and count-only), transactions (compares on value, version,
create_revision and mod_revision with C{==}, C{!=}, C{<}, C{>}; branches of
puts, deletes, range deletes and ranges), puts with C{prev_kv} and range
deletes, over a small key set with nested prefixes, beside the run's own
puts, deletes, compare-and-sets and reads.

Every write goes in a client session (one client, a sequence per write), so
each proposal's log entry is unique and a write whose outcome the client
never learnt is found in the committed log at the end (its revision), or
known never to have taken effect.  The ops join the run's history as
L{KvOp}s, checked by L{multikey.check}.

All choices come from C{rng}, a stream of the seed's own.
"""

from collections import Counter

from twisted_raft import kv
from twisted_raft.kvrecords import ALL_KEYS_END, MetadataUnavailable
from twisted_raft.kvtxn import Compare, Delete, Put, Range, Txn
from twisted_raft.testing.multikey import KvOp

KEYS = ("a", "a/1", "a/2", "b", "b/1", "c")
"""Small, so ranges and transactions join most keys (and the check stays small)."""

PREFIXES = ("", "a", "a/", "b")

CLIENT = "sim"

TARGETS = ("value", "version", "create_revision", "mod_revision")
OPERATORS = ("==", "!=", "<", ">")


class KvWorkload:
    """
    @ivar stats: C{range}, C{txn}, C{txn-refused} (before the metadata
        epoch), C{put-prev-kv}, C{delete-range} issued or answered.
    """

    RATES = dict(rangeRead=12.0, transaction=10.0, putPrevKv=4.0, deleteRange=2.0)

    def __init__(self, run, rng, rates=None):
        self.run = run
        self.rng = rng
        self.rates = dict(self.RATES)
        self.rates.update(rates or {})
        self.sequence = 0
        self.stats = Counter()

    def tick(self, dt):
        for name, rate in self.rates.items():
            if self.rng.random() < rate * dt:
                getattr(self, name)()

    def wrap(self, command):
        """C{command} in the workload's session: a unique log entry."""
        self.sequence += 1
        return kv.encodeSession(CLIENT, self.sequence, command)

    # -- drawing requests -------------------------------------------------------

    def _selection(self):
        """(key, end, prefix) of a random key selection."""
        r = self.rng.random()
        if r < 0.3:
            return self.rng.choice(KEYS), None, False
        if r < 0.7:
            return self.rng.choice(PREFIXES), None, True
        lo, hi = sorted(self.rng.sample(KEYS + (ALL_KEYS_END,), 2))
        if lo == ALL_KEYS_END:
            lo, hi = hi, ALL_KEYS_END
        return lo, hi, False

    def _range(self):
        key, end, prefix = self._selection()
        rng = self.rng
        return Range(
            key, end, prefix, limit=rng.choice((0, 0, 1, 2)),
            after=rng.choice(KEYS) if rng.random() < 0.15 else None,
            keysOnly=rng.random() < 0.1, countOnly=rng.random() < 0.1,
        )

    def _value(self):
        self.run.counter += 1
        return b"%d" % self.run.counter

    def _compare(self, store):
        rng = self.rng
        key = rng.choice(KEYS)
        target = rng.choice(TARGETS)
        current = store.getKeyValue(key)
        if target == "value":
            value = rng.choice((current.value if current else b"0",
                                b"%d" % rng.randint(1, self.run.counter + 1)))
        else:
            value = rng.choice((getattr(current, target) if current else 0,
                                rng.randint(0, store.appliedIndex + 2)))
        return Compare(key, target, rng.choice(OPERATORS), value)

    def _op(self):
        r = self.rng.random()
        if r < 0.45:
            return Put(self.rng.choice(KEYS), self._value(), prevKv=self.rng.random() < 0.5)
        if r < 0.7:
            key, end, prefix = self._selection()
            return Delete(key, end, prefix, prevKv=self.rng.random() < 0.5)
        return self._range()

    # -- the ops ----------------------------------------------------------------

    def _leader(self):
        leaders = self.run.clientLeaders()
        return self.rng.choice(leaders) if leaders else None

    def rangeRead(self):
        node = self._leader()
        if node is None:
            return
        run = self.run
        request = self._range()
        run.counter += 1
        op = KvOp(run.counter, "range", request=request, start=run.cluster.clock.seconds())
        store = node.stateMachine.machine

        def done(_):
            op.result = store.range(
                request.key, request.end, request.prefix, request.limit, request.after,
                request.keysOnly, request.countOnly,
            )
            op.revision = op.result.revision
            op.end = run.cluster.clock.seconds()
            run.history.append(op)
            self.stats["range"] += 1

        node.readIndex().addCallbacks(done, lambda f: None)

    def _submit(self, what, txn, node=None):
        node = node or self._leader()
        if node is None:
            return
        self.stats[what] += 1
        run = self.run
        run.counter += 1
        op = KvOp(run.counter, "txn", request=txn, start=run.cluster.clock.seconds())
        run.submit(node, self.wrap(kv.encodeTxn(txn)), op)

    def transaction(self):
        node = self._leader()
        if node is None:
            return
        rng = self.rng
        store = node.stateMachine.machine
        compares = [self._compare(store) for _ in range(rng.randint(0, 2))]
        success = [self._op() for _ in range(rng.randint(1, 3))]
        failure = [self._op() for _ in range(rng.randint(0, 2))]
        self._submit("txn", Txn(compares, success, failure), node)

    def putPrevKv(self):
        put = Put(self.rng.choice(KEYS), self._value(), prevKv=True)
        self._submit("put-prev-kv", Txn(success=[put]))

    def deleteRange(self):
        key, end, prefix = self._selection()
        delete = Delete(key, end, prefix, prevKv=self.rng.random() < 0.5)
        self._submit("delete-range", Txn(success=[delete]))

    def answered(self, op):
        """Count a transaction refused before the metadata epoch."""
        if type(op.result) is MetadataUnavailable:
            self.stats["txn-refused"] += 1
