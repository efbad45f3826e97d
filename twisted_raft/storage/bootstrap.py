"""
The data dir's C{bootstrap} file: the configuration the cluster started
with (the operator's C{--peers}, see
L{twisted_raft.raft.interfaces.IStorage.bootstrap}), written once, before
the node's first log entry, so that a later C{--peers} cannot change who
the members are.  A small checksummed file (see
L{twisted_raft.storage.smallfile}) of kind C{b"RKVBOOTS"} whose payload is
the configuration as L{twisted_raft.raft.membership.encodeMembers} writes
it (every member's id, address and voter flag); its index is 0.
"""

import os

from twisted_raft.raft.membership import Configuration, decodeMembers, encodeMembers
from twisted_raft.storage import smallfile
from twisted_raft.storage.errors import DataDirError

MAGIC = b"RKVBOOTS"
FORMAT_VERSION = 1

# The payload's offset in the file: the small file's magic, version, length.
_PAYLOAD_OFFSET = 16


def encodePayload(configuration):
    """
    The payload for C{configuration}.

    @raise ValueError: it is not a L{Configuration} that reads back as
        itself (ids out of range, an address too long, ...).
    """
    if not isinstance(configuration, Configuration):
        raise ValueError(f"not a Configuration: {configuration!r}")
    configuration = configuration.at(0)
    try:
        payload = encodeMembers(configuration)
        ok = decodeMembers(payload) == configuration
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"not a storable configuration: {configuration!r}")
    return payload


def write(path, configuration, fsync, pwrite=os.pwrite):
    smallfile.replace(
        path, MAGIC, FORMAT_VERSION, encodePayload(configuration), fsync, pwrite
    )


def read(path):
    """
    @return: the stored L{Configuration} (index 0), or C{None} if there is
        none.
    @raise DataDirError: naming C{path} (and the byte offset) if it is
        damaged or of an unknown version.
    """
    found = smallfile.read(path, MAGIC)
    if found is None:
        return None
    version, payload = found
    if version != FORMAT_VERSION:
        raise DataDirError(
            f"{path} has unknown format version {version} (supported: {FORMAT_VERSION})"
        )
    try:
        return decodeMembers(payload)
    except ValueError as e:
        raise DataDirError(
            f"{path} is damaged at byte offset {_PAYLOAD_OFFSET}: {e}"
        ) from None
