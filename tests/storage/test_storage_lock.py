"""
The data dir's lock (L{twisted_raft.storage.dirlock}) as L{FileStorage}
takes it: two storages on one dir in one process (C{flock} belongs to the
open file description, so the second one is refused here as it would be in
another process).  The two-process case is in tests/process/.
"""

import os

import pytest
import pytest_twisted

from twisted_raft.raft.messages import Entry, HardState
from twisted_raft.storage.dirlock import LOCK_NAME, DataDirLock
from twisted_raft.storage.errors import DataDirError
from twisted_raft.storage.files import DataDirLocked, FileStorage

from tests.storage.support import getReactor, opened, reload


def snapshotOf(path):
    """Every file under C{path} (but the lock file) and its bytes."""
    files = {}
    for root, _, names in os.walk(path):
        for name in names:
            full = os.path.join(root, name)
            if full != os.path.join(path, LOCK_NAME):
                with open(full, "rb") as f:
                    files[os.path.relpath(full, path)] = f.read()
    return files


@pytest_twisted.inlineCallbacks
def test_a_second_storage_on_a_held_dir_is_refused_and_touches_nothing(tmp_path):
    path = str(tmp_path / "data")
    first, _ = yield opened(path)
    yield first.saveHardState(HardState(3, 1))
    yield first.append([Entry(1, 3, b"one")])
    before = snapshotOf(path)
    lockBytes = (tmp_path / "data" / LOCK_NAME).read_bytes()
    assert lockBytes == b"%d\n" % os.getpid()

    second = FileStorage(path, 1, "cluster-a", getReactor())
    with pytest.raises(DataDirLocked) as info:
        second.start()
    error = info.value
    assert isinstance(error, DataDirError)  # the service's "refuses to start"
    assert error.pid == os.getpid()
    message = str(error)
    assert path in message and "another raftkv process" in message
    assert f"pid {os.getpid()}" in message
    # nothing read or written: the dir and the holder's pid are as they were
    assert snapshotOf(path) == before
    assert (tmp_path / "data" / LOCK_NAME).read_bytes() == lockBytes
    yield second.close()  # closing a refused storage releases nothing

    # the first one is unharmed and keeps its lock
    yield first.append([Entry(2, 3, b"two")])
    with pytest.raises(DataDirLocked):
        DataDirLock.lock(path)
    yield first.close()

    # once it is closed, the dir can be opened again, and nothing was lost
    state = yield reload(path)
    assert [e.data for e in state.entries] == [b"one", b"two"]
    assert state.hardState == HardState(3, 1)


@pytest_twisted.inlineCallbacks
def test_the_lock_is_released_on_close_and_taken_before_load(tmp_path):
    path = str(tmp_path / "new")
    storage = FileStorage(path, 1, "cluster-a", getReactor())
    storage.start()
    # start made the dir and holds it before load() has looked at anything
    assert os.listdir(path) == [LOCK_NAME]
    with pytest.raises(DataDirLocked):
        DataDirLock.lock(path)
    yield storage.load()
    yield storage.close()
    lock = DataDirLock.lock(path)
    assert lock.held and not lock.created
    lock.release()
    lock.release()  # twice is harmless
    assert not lock.held


def test_a_refused_pid_that_cannot_be_read_is_left_out(tmp_path):
    path = str(tmp_path)
    held = DataDirLock.lock(path)
    try:
        (tmp_path / LOCK_NAME).write_bytes(b"garbage")
        with pytest.raises(DataDirLocked) as info:
            DataDirLock.lock(path)
        assert info.value.pid is None
        assert "(pid" not in str(info.value)
        assert "another raftkv process holds it" in str(info.value)
    finally:
        held.release()


def test_a_data_dir_that_is_a_file_is_refused_at_start(tmp_path):
    path = tmp_path / "file"
    path.write_bytes(b"not a dir")
    storage = FileStorage(str(path), 1, "cluster-a", getReactor())
    with pytest.raises(DataDirError, match="not a directory"):
        storage.start()
    assert path.read_bytes() == b"not a dir"

