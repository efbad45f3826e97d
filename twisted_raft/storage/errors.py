"""
Errors raised by the file-backed storage when a data dir cannot be used.
"""


class DataDirError(Exception):
    """
    The data dir cannot be used: it belongs to another node or cluster, has an
    unknown format version, or one of its files is damaged.  The node must not
    start on it; an operator has to look.
    """


class CorruptLogError(DataDirError):
    """
    The write-ahead log is damaged somewhere other than a torn tail left by a
    crash mid-write, so recovering would silently lose acknowledged entries.

    @ivar path: the segment file.
    @ivar offset: the byte offset of the bad header or record in it.
    @ivar reason: what is wrong there.
    """

    def __init__(self, path, offset, reason):
        self.path = path
        self.offset = offset
        self.reason = reason
        super().__init__(
            f"corrupt write-ahead log segment {path} at byte offset {offset}: "
            f"{reason}; refusing to start rather than drop data"
        )
