"""
The shared client test matrix's drivers: each makes one kind of client and
exposes the same calls synchronously, so that one test runs against every
client.  A driver is a name and a factory:

    client = driver.client(addresses, timeout=..., tls=..., clientId=...)
    client.put(key, value) ...   # the client's methods, returning values
    client.close()

Another client joins the matrix by adding its driver to L{DRIVERS}.
"""

import asyncio
import threading

from twisted_raft.client import AsyncioClient, BlockingClient, RaftKVClient
from twisted_raft.reactorthread import ReactorThread


class _Synchronous:
    """
    A L{RaftKVClient} as a Twisted program uses it, on a running reactor,
    each call's Deferred waited for.  (Not pytest-twisted's reactor: a test
    runs inside it and cannot wait on it; a reactor of the driver's own,
    in a thread.)
    """

    def __init__(self, addresses, options):
        self._thread = ReactorThread(name="twisted-driver").start()
        self._client = self._thread.call(
            RaftKVClient, addresses, reactor=self._thread.reactor, **options
        )
        self.clientId = self._client.clientId

    def __getattr__(self, name):
        method = getattr(self._client, name)

        def call(*args, **kwargs):
            return self._thread.call(method, *args, **kwargs)

        return call

    def close(self):
        try:
            self._thread.call(self._client.close)
        finally:
            self._thread.stop()


class TwistedDriver:
    name = "twisted"

    def client(self, addresses, **options):
        return _Synchronous(addresses, options)


class BlockingDriver:
    name = "blocking"

    def client(self, addresses, **options):
        return BlockingClient(addresses, **options)


class _OnALoop:
    """
    An L{AsyncioClient} as an asyncio program uses it, each call a
    coroutine awaited on its loop: a loop of the driver's own, running in
    a thread (the client belongs to the loop it was made on, so a test
    cannot run a new loop around each call).
    """

    def __init__(self, addresses, options):
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="asyncio-driver")
        self._thread.start()

        async def make():
            return AsyncioClient(addresses, **options)

        try:
            self._client = self._run(make())
        except BaseException:
            self._stop()
            raise
        self.clientId = self._client.clientId

    def _run(self, coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def __getattr__(self, name):
        method = getattr(self._client, name)

        def call(*args, **kwargs):
            return self._run(method(*args, **kwargs))

        return call

    def close(self):
        try:
            self._run(self._client.close())
        finally:
            self._stop()

    def _stop(self):
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()


class AsyncioDriver:
    name = "asyncio"

    def client(self, addresses, **options):
        return _OnALoop(addresses, options)


DRIVERS = [TwistedDriver(), BlockingDriver(), AsyncioDriver()]
