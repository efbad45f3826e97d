"""
The data dir's C{identity} file: which node of which cluster owns the dir,
and the format version of everything in it.  A small checksummed file (see
L{twisted_raft.storage.smallfile}) of kind C{b"RKVIDENT"} whose payload is::

    nodeId       u64
    tokenLength  u16
    clusterToken tokenLength bytes of UTF-8
"""

import os
import struct

from twisted_raft.storage import smallfile
from twisted_raft.storage.errors import DataDirError

MAGIC = b"RKVIDENT"
FORMAT_VERSION = 1

_FIXED = struct.Struct(">QH")


def tokenBytes(clusterToken):
    if isinstance(clusterToken, str):
        clusterToken = clusterToken.encode("utf-8")
    if not isinstance(clusterToken, bytes) or not clusterToken:
        raise ValueError(f"cluster token must be a non-empty str or bytes, not {clusterToken!r}")
    if len(clusterToken) > 0xFFFF:
        raise ValueError("cluster token too long")
    return clusterToken


def encodePayload(nodeId, token):
    return _FIXED.pack(nodeId, len(token)) + token


def decodePayload(path, payload):
    if len(payload) < _FIXED.size:
        raise DataDirError(f"{path} is damaged: identity payload too short")
    nodeId, length = _FIXED.unpack_from(payload)
    token = payload[_FIXED.size :]
    if len(token) != length:
        raise DataDirError(f"{path} is damaged: bad cluster token length")
    return nodeId, token


def write(path, nodeId, clusterToken, fsync, pwrite=os.pwrite):
    smallfile.replace(
        path,
        MAGIC,
        FORMAT_VERSION,
        encodePayload(nodeId, tokenBytes(clusterToken)),
        fsync,
        pwrite,
    )


def read(dataDir, path):
    """
    Read the identity file C{path} of C{dataDir}.

    @return: C{(nodeId, clusterToken bytes)}, or C{None} if there is none.
    @raise DataDirError: if it is damaged or of an unknown format version.
    """
    found = smallfile.read(path, MAGIC)
    if found is None:
        return None
    version, payload = found
    if version != FORMAT_VERSION:
        raise DataDirError(
            f"data dir {dataDir} has unknown format version {version} "
            f"(this raftkv supports version {FORMAT_VERSION}); see {path}"
        )
    return decodePayload(path, payload)


def check(dataDir, path, nodeId, clusterToken):
    """
    Verify that the identity file C{path} of C{dataDir} names C{nodeId} and
    C{clusterToken} and a known format version.

    @return: C{False} if there is no identity file yet, C{True} if it matches.
    @raise DataDirError: if it is damaged or does not match.
    """
    found = read(dataDir, path)
    if found is None:
        return False
    storedId, storedToken = found
    token = tokenBytes(clusterToken)
    # The token is a secret: say whether it matches, never what it is.
    if storedId != nodeId:
        raise DataDirError(
            f"data dir {dataDir} belongs to node {storedId}, but node {nodeId} was"
            f" requested: wrong --data dir or node id?"
        )
    if storedToken != token:
        raise DataDirError(
            f"data dir {dataDir} belongs to node {nodeId} of a cluster with another"
            f" token: wrong --data dir or --cluster-token?"
        )
    return True
