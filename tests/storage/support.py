"""
Helpers shared by the storage tests: a L{FileStorage} opened on the real
reactor (its writer thread is real), and polling for a condition.
"""

from twisted.internet import defer, task

from twisted_raft.storage.files import DataDirError, FileStorage


def getReactor():
    from twisted.internet import reactor

    return reactor


@defer.inlineCallbacks
def opened(path, nodeId=1, token="cluster-a", **kw):
    storage = FileStorage(path, nodeId, token, getReactor(), **kw)
    storage.start()
    try:
        state = yield storage.load()
    except BaseException:
        yield storage.close()
        raise
    return storage, state


@defer.inlineCallbacks
def reload(path, **kw):
    storage, state = yield opened(path, **kw)
    yield storage.close()
    return state


@defer.inlineCallbacks
def loadFails(path, nodeId=1, token="cluster-a", **kw):
    storage = FileStorage(path, nodeId, token, getReactor(), **kw)
    storage.start()
    try:
        yield storage.load()
    except DataDirError as e:
        return e
    finally:
        yield storage.close()
    raise AssertionError("load() succeeded")


@defer.inlineCallbacks
def waitUntil(predicate, timeout=10.0, step=0.005):
    """Poll C{predicate} on the real reactor (the writer thread is real)."""
    reactor = getReactor()
    deadline = reactor.seconds() + timeout
    while not predicate():
        if reactor.seconds() > deadline:
            raise AssertionError("condition not met in time")
        yield task.deferLater(reactor, step, lambda: None)
