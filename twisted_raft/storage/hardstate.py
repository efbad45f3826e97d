"""
The C{state} file holding Raft's hard state.  A small checksummed file (see
L{twisted_raft.storage.smallfile}) of kind C{b"RKVSTATE"}, replaced
atomically through C{state.tmp}, whose payload is::

    term      u64
    votedFor  u64   (0: no vote in this term)
"""

import os
import struct

from twisted_raft.raft.messages import HardState
from twisted_raft.storage import smallfile
from twisted_raft.storage.errors import DataDirError

MAGIC = b"RKVSTATE"
FORMAT_VERSION = 1

_PAYLOAD = struct.Struct(">QQ")


def write(path, hardState, fsync, pwrite=os.pwrite):
    payload = _PAYLOAD.pack(hardState.term, hardState.votedFor)
    smallfile.replace(path, MAGIC, FORMAT_VERSION, payload, fsync, pwrite)


def read(path):
    """
    @return: the stored L{HardState}, or C{HardState()} if there is none.
    @raise DataDirError: naming C{path} if it is damaged or of an unknown
        version.
    """
    found = smallfile.read(path, MAGIC)
    if found is None:
        return HardState()
    version, payload = found
    if version != FORMAT_VERSION:
        raise DataDirError(f"{path} has unknown format version {version}")
    if len(payload) != _PAYLOAD.size:
        raise DataDirError(f"{path} is damaged: payload of {len(payload)} bytes")
    term, votedFor = _PAYLOAD.unpack(payload)
    return HardState(term=term, votedFor=votedFor)
