"""
The shared client test matrix's drivers: each makes one kind of client and
exposes the same calls synchronously, so that one test runs against every
client.  A driver is a name and a factory:

    client = driver.client(addresses, timeout=..., tls=..., clientId=...)
    client.put(key, value) ...   # the client's methods, returning values
    client.close()

Another client joins the matrix by adding its driver to L{DRIVERS}.
"""

from twisted_raft.client import BlockingClient, RaftKVClient
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


DRIVERS = [TwistedDriver(), BlockingDriver()]
