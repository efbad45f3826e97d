"""
Which configuration is in force at each index of a node's log (thesis §4.1).

A server uses the latest configuration in its log, whether or not that entry
is committed; so when a conflicting suffix is truncated (§5.3) the node falls
back to the configuration before it, and a snapshot replaces everything it
covers with the configuration recorded in its metadata (§7).  A
L{ConfigurationLog} keeps one L{Configuration} per configuration entry still
in the log, above a base: the configuration in force at the log's start (a
snapshot's, or the bootstrap one at index 0).  One change is in flight at a
time, so the list stays short; nothing here is per request.
"""

from twisted_raft.raft.membership import decodeMembers
from twisted_raft.raft.messages import CONFIGURATION


class ConfigurationLog:
    """
    @ivar configurations: the base configuration, then one per configuration
        entry in the log, by ascending index.
    """

    __slots__ = ("configurations",)

    def __init__(self, base):
        self.configurations = [base]

    @property
    def latest(self):
        """The configuration in force: the latest in the log (thesis §4.1)."""
        return self.configurations[-1]

    def previous(self):
        """The configuration the latest one replaced, or C{None} if there is none in the log."""
        configurations = self.configurations
        return configurations[-2] if len(configurations) > 1 else None

    def at(self, index):
        """The configuration in force at log index C{index}."""
        for configuration in reversed(self.configurations):
            if configuration.index <= index:
                return configuration
        return self.configurations[0]

    def append(self, entries):
        """
        Take in the configuration entries among C{entries}, just appended.

        @return: whether the configuration in force changed.
        @raise ValueError: if a configuration entry cannot be decoded.
        """
        changed = False
        for entry in entries:
            if entry.kind is CONFIGURATION:
                self.configurations.append(decodeMembers(entry.data, entry.index))
                changed = True
        return changed

    def truncateFrom(self, index):
        """Entries from C{index} on are gone. @return: whether the configuration in force changed."""
        configurations = self.configurations
        keep = len(configurations)
        while keep > 1 and configurations[keep - 1].index >= index:
            keep -= 1
        changed = keep != len(configurations)
        del configurations[keep:]
        return changed

    def compact(self, upTo):
        """The log now starts after C{upTo}: the configuration in force there becomes the base."""
        configurations = self.configurations
        first = 0
        while first + 1 < len(configurations) and configurations[first + 1].index <= upTo:
            first += 1
        del configurations[:first]

    def reset(self, base):
        """A snapshot replaced the whole log. @return: whether the configuration in force changed."""
        changed = base != self.latest
        self.configurations = [base]
        return changed
