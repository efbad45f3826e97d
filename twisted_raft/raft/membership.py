"""
Cluster membership as values: who is a member, who votes, and the changes
the leader may make to it (thesis chapter 4).

A L{Configuration} is the set of L{Member}s at one log index: voters, who
elect leaders and make up every quorum, and learners (non-voters), who
receive the log and snapshots but never count towards a quorum and never
campaign.  A L{ConfChange} is one change of it.  raftkv changes membership
one server at a time (thesis §4.1): every change adds, promotes or removes a
single member, so any majority of the old voters and any majority of the new
ones overlap, and no joint configuration is needed.  Why, and the rules that
make it safe, are in C{docs/design.rst} ("Membership change").

A configuration is stored in a log entry of kind L{CONFIGURATION} (see
L{twisted_raft.raft.messages.Entry}) and in a snapshot's metadata, encoded by
L{encodeMembers} as canonical JSON: small, readable in a hex dump, and no
pickle.  Nothing here does I/O.
"""

import json
from dataclasses import dataclass, field
from enum import Enum
from typing import Tuple

# The largest node id (ids travel as u64 on disk; AMP integers are unbounded,
# so the limit is ours).
MAX_NODE_ID = (1 << 63) - 1

# An address is a HOST:PORT an operator typed; bounded so that a
# configuration always fits one AMP value with room to spare.
MAX_ADDRESS = 255
MAX_MEMBERS = 64


class MembershipError(Exception):
    """A configuration change that cannot be made; nothing was proposed."""


class InvalidChange(MembershipError):
    """The change makes no sense for the current configuration (a client error)."""


class ChangeInProgress(MembershipError):
    """
    Another change is not yet committed, or this leader has not yet committed
    an entry of its own term (thesis §4.1, and the 2015 single-server
    change bug): retry shortly.
    """


class NotCaughtUp(MembershipError):
    """A learner is too far behind the leader's log to be promoted yet."""


@dataclass(frozen=True, slots=True)
class Member:
    """
    One member: its node id, the address it is reached at (C{HOST:PORT}, as
    the operator gave it; C{""} if the configuration never had one), and
    whether it votes.
    """

    id: int
    address: str = ""
    voter: bool = True


@dataclass(frozen=True, slots=True)
class Configuration:
    """
    The members at log index C{index} (0: the bootstrap configuration, before
    any entry), sorted by id.
    """

    members: Tuple[Member, ...] = ()
    index: int = 0
    _byId: dict = field(default=None, compare=False, repr=False)

    def __post_init__(self):
        members = tuple(sorted(self.members, key=lambda m: m.id))
        object.__setattr__(self, "members", members)
        object.__setattr__(self, "_byId", {m.id: m for m in members})

    @classmethod
    def ofVoters(cls, voterIds, addresses=None, index=0):
        """A configuration of C{voterIds}, with C{addresses} (C{{id: "HOST:PORT"}}) if given."""
        addresses = addresses or {}
        return cls(tuple(Member(i, addresses.get(i, ""), True) for i in set(voterIds)), index)

    def __contains__(self, nodeId):
        return nodeId in self._byId

    def __len__(self):
        return len(self.members)

    def member(self, nodeId):
        """The L{Member} with id C{nodeId}, or C{None}."""
        return self._byId.get(nodeId)

    @property
    def ids(self):
        """Every member's id, sorted."""
        return tuple(m.id for m in self.members)

    @property
    def voters(self):
        """The voters' ids, sorted."""
        return tuple(m.id for m in self.members if m.voter)

    @property
    def learners(self):
        """The learners' ids, sorted."""
        return tuple(m.id for m in self.members if not m.voter)

    def isVoter(self, nodeId):
        m = self._byId.get(nodeId)
        return m is not None and m.voter

    def at(self, index):
        """The same members, as the configuration of log index C{index}."""
        return Configuration(self.members, index)

    def withMember(self, member):
        """A copy where C{member} replaces any member with its id."""
        others = tuple(m for m in self.members if m.id != member.id)
        return Configuration(others + (member,), self.index)

    def without(self, nodeId):
        return Configuration(tuple(m for m in self.members if m.id != nodeId), self.index)


EMPTY = Configuration()


class ChangeKind(Enum):
    """What a L{ConfChange} does to one member."""

    ADD_LEARNER = "add_learner"
    PROMOTE = "promote"
    REMOVE = "remove"


@dataclass(frozen=True, slots=True)
class ConfChange:
    """
    One single-server change (thesis §4.1): add node C{nodeId} at C{address}
    as a learner, promote the learner C{nodeId} to voter, or remove member
    C{nodeId} (voter or learner).
    """

    kind: ChangeKind
    nodeId: int
    address: str = ""

    def __post_init__(self):
        if not isinstance(self.kind, ChangeKind):
            raise InvalidChange(f"unknown change {self.kind!r}")
        if isinstance(self.nodeId, bool) or not isinstance(self.nodeId, int):
            raise InvalidChange(f"node id must be an integer, not {self.nodeId!r}")
        if not 1 <= self.nodeId <= MAX_NODE_ID:
            raise InvalidChange(f"node id {self.nodeId} is out of range 1..{MAX_NODE_ID}")
        if self.kind is ChangeKind.ADD_LEARNER:
            checkAddress(self.address)

    def applyTo(self, configuration):
        """
        The configuration after this change, or L{InvalidChange} if it does
        not apply (adding a member, promoting a voter or a stranger, removing
        a stranger or the last voter).
        """
        current = configuration.member(self.nodeId)
        if self.kind is ChangeKind.ADD_LEARNER:
            if current is not None:
                role = "a voter" if current.voter else "a learner"
                raise InvalidChange(f"node {self.nodeId} is already a member ({role})")
            if len(configuration) >= MAX_MEMBERS:
                raise InvalidChange(f"a cluster has at most {MAX_MEMBERS} members")
            taken = [m.id for m in configuration.members if m.address == self.address]
            if taken:
                raise InvalidChange(f"address {self.address} is already node {taken[0]}'s")
            return configuration.withMember(Member(self.nodeId, self.address, False))
        if current is None:
            raise InvalidChange(f"node {self.nodeId} is not a member")
        if self.kind is ChangeKind.PROMOTE:
            if current.voter:
                raise InvalidChange(f"node {self.nodeId} is already a voter")
            return configuration.withMember(Member(current.id, current.address, True))
        if current.voter and configuration.voters == (self.nodeId,):
            raise InvalidChange(f"node {self.nodeId} is the last voter; it cannot be removed")
        return configuration.without(self.nodeId)


def checkAddress(address):
    """
    Refuse an address that is not C{HOST:PORT} (IPv6 in brackets).

    @raise InvalidChange: naming what is wrong with it.
    """
    if not isinstance(address, str) or not address:
        raise InvalidChange("a new member needs an address HOST:PORT")
    if len(address) > MAX_ADDRESS or not address.isprintable() or any(c.isspace() for c in address):
        raise InvalidChange(f"address {address[:MAX_ADDRESS]!r} is not HOST:PORT")
    host, sep, port = address.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InvalidChange(f"address {address!r} is not HOST:PORT (a port 1..65535)")
    return address


def encodeMembers(configuration):
    """The canonical bytes of C{configuration}'s members (not its index)."""
    doc = [{"id": m.id, "address": m.address, "voter": m.voter} for m in configuration.members]
    return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode("utf-8")


def decodeMembers(data, index=0):
    """
    The L{Configuration} that L{encodeMembers} wrote, as of log index C{index}.

    @raise ValueError: if C{data} is not such an encoding.
    """
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        # RecursionError: deeply nested brackets, which no encoding of ours has.
        raise ValueError(f"configuration is not JSON: {e}") from None
    if not isinstance(doc, list) or len(doc) > MAX_MEMBERS:
        raise ValueError("configuration is not a list of members")
    members = []
    for item in doc:
        if not isinstance(item, dict) or set(item) != {"id", "address", "voter"}:
            raise ValueError(f"configuration member {item!r} is malformed")
        nodeId, address, voter = item["id"], item["address"], item["voter"]
        if (
            isinstance(nodeId, bool)
            or not isinstance(nodeId, int)
            or not 1 <= nodeId <= MAX_NODE_ID
            or not isinstance(address, str)
            or len(address) > MAX_ADDRESS
            or not isinstance(voter, bool)
        ):
            raise ValueError(f"configuration member {item!r} is malformed")
        members.append(Member(nodeId, address, voter))
    if len({m.id for m in members}) != len(members):
        raise ValueError("configuration lists a node twice")
    return Configuration(tuple(members), index)
