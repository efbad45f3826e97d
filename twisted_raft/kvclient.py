"""
The client's ranges and transactions: L{KVRequests}, mixed into
L{twisted_raft.client.RaftKVClient} (C{range}, C{rangePages}, C{rangeAll},
C{txn}), and the check of a range's arguments.  The answers' decoding and
a transaction's encoding are L{twisted_raft.rpc.kvwire}'s, one with the
server's.
"""

from twisted.internet.defer import Deferred

from twisted_raft.clientpath import checkKey, deferredErrors
from twisted_raft.kvrecords import RangeResult
from twisted_raft.kvtxn import Txn
from twisted_raft.rpc import kvwire
from twisted_raft.rpc.commands import Range, Unavailable
from twisted_raft.rpc.commands import Txn as TxnCommand


def _rangeArguments(key, end, prefix, limit, after, keysOnly, countOnly, stale):
    """The L{Range} arguments of L{RaftKVClient.range}'s, checked for type."""
    kwargs = {"key": checkKey(key)}
    if end is not None:
        kwargs["end"] = checkKey(end)
    if prefix:
        kwargs["prefix"] = True
    if isinstance(limit, bool) or not isinstance(limit, int):
        raise TypeError(f"limit must be int, not {type(limit).__name__}")
    if limit:
        kwargs["limit"] = limit
    if after is not None:
        kwargs["after"] = checkKey(after)
    if keysOnly:
        kwargs["keys_only"] = True
    if countOnly:
        kwargs["count_only"] = True
    if stale:
        kwargs["stale"] = True
    return kwargs


def nextPage(pages):
    """
    The next page of L{KVRequests.rangePages}' iterator C{pages}, for a
    caller outside a coroutine of the client's reactor (the blocking and
    asyncio clients drive it a page at a time from their own side).

    @return: Deferred of a L{RangeResult}, or of C{None} once none is left.
    """
    async def step():
        try:
            return await pages.__anext__()
        except StopAsyncIteration:
            return None

    return Deferred.fromCoroutine(step())


def closePages(pages):
    """End C{pages} early (L{nextPage}'s caller left): a Deferred."""
    async def close():
        await pages.aclose()

    return Deferred.fromCoroutine(close())


class KVRequests:
    """
    Mixed into L{twisted_raft.client.RaftKVClient}: ranges and
    transactions, sent down its operation path
    (L{twisted_raft.clientpath.OperationPath}).
    """

    @deferredErrors
    def range(
        self, key, end=None, prefix=False, limit=0, after=None, keysOnly=False,
        countOnly=False, stale=False,
    ):
        """
        Read one page of C{key} alone, every key starting with C{key}
        (C{prefix}; C{""}: every key) or C{[key, end)} (C{end} C{"\\0"}:
        every key from C{key} on), in the byte order of the keys' UTF-8,
        from strictly after C{after} if given.  A page holds at most
        C{limit} keys (0: no limit) and at most what one answer carries
        (1,000 keys, about 1 MiB); L{rangePages} and L{rangeAll} go on
        from there.  Linearizable unless C{stale}.

        @return: Deferred[L{RangeResult}]: C{kvs} (L{KeyValue}s in key
            order, without values if C{keysOnly}, none if C{countOnly}),
            C{more} (keys were left out), C{count} (the keys in the range
            after C{after}, whatever the limit) and C{revision} (the
            store's revision the whole page was read at).
        """
        kwargs = _rangeArguments(key, end, prefix, limit, after, keysOnly, countOnly, stale)
        return self._operation(
            f"range {key!r}", Range, kwargs, write=False, extract=kvwire.rangeResult,
        )

    def rangePages(
        self, key, end=None, prefix=False, limit=0, after=None, keysOnly=False, stale=False,
    ):
        """
        Every page of a range (as L{range}'s arguments), each read with
        C{after} the last key of the one before, until the range or
        C{limit} keys (0: all) are done: an asynchronous iterator of
        L{RangeResult}s (C{async for page in client.rangePages(...)}).
        Each page is consistent at its own C{revision}; under writes, a
        key is returned at most once and every key that exists from the
        first page to the last is returned.
        """
        _rangeArguments(key, end, prefix, limit, after, keysOnly, False, stale)
        return self._pages(key, end, prefix, limit, after, keysOnly, stale)

    async def _pages(self, key, end, prefix, limit, after, keysOnly, stale):
        got = 0
        while True:
            want = limit - got if limit else 0
            page = await self.range(key, end, prefix, want, after, keysOnly, False, stale)
            got += len(page.kvs)
            yield page
            if not page.more or (limit and got >= limit):
                return
            if not page.kvs:
                raise Unavailable(f"range {key!r}: a page said more keys but held none")
            after = page.kvs[-1].key

    @deferredErrors
    def rangeAll(
        self, key, end=None, prefix=False, limit=0, after=None, keysOnly=False, stale=False,
    ):
        """
        L{rangePages}' pages together.

        @return: Deferred[L{RangeResult}]: every key-value (at most
            C{limit}, if given), C{more} whether C{limit} left keys out,
            and the first page's C{count} and C{revision}.  Under writes
            that revision is the one to watch from (C{revision + 1}): every
            change after it is then seen, including those later pages
            already show.
        """
        pages = self.rangePages(key, end, prefix, limit, after, keysOnly, stale)

        async def collect():
            kvs, first, last = [], None, None
            async for page in pages:
                if first is None:
                    first = page
                last = page
                kvs.extend(page.kvs)
            return RangeResult(kvs, last.more, first.count, first.revision)

        return Deferred.fromCoroutine(collect())

    @deferredErrors
    def txn(self, compare=(), success=(), failure=()):
        """
        A transaction, applied atomically as one log entry: if every
        L{Compare} in C{compare} holds, the C{success} operations run, else
        the C{failure} ones, in order (L{PutOp}, L{DeleteOp}, L{RangeOp}).
        Exactly-once and retried like every write.

        @return: Deferred[L{TxnResponse}] (C{succeeded}, C{revision},
            C{responses}: a L{PutResult}, L{DeleteResult} or L{RangeResult}
            per operation that ran; C{complete}).
        @raise InvalidArgument, ValueTooLarge: (in the Deferred) it breaks
            a rule or limit; nothing was sent.
        """
        data = kvwire.encodeTxn(Txn(compare, success, failure))
        return self._operation(
            "txn", TxnCommand, self._session({"txn": data}), write=True,
            extract=kvwire.txnResponse,
        )
