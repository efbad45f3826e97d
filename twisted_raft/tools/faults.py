"""
The fault schedule of C{raftkv chaos}, pure: which faults to inject, when,
for how long, and which directed links a partition cuts; and, with
C{--membership}, the schedule of membership changes (L{makeChanges}) and
what each becomes given the cluster's members when its time comes
(L{resolveChange}).  Deterministic for a seed, so a failing run can be
replayed.
"""

import random
from dataclasses import dataclass, field

from twisted.python import usage

FAULT_GROUPS = {
    "partition": ("isolate", "halves", "bridge"),
    "kill": ("kill",),
    "pause": ("pause",),
}
FAULT_KINDS = ("isolate", "halves", "bridge", "kill", "pause")


def parseFaults(text, nodes):
    """
    C{"partition,kill"} -> the fault kinds, in L{FAULT_KINDS} order, that
    make sense for C{nodes} nodes.
    """
    kinds = set()
    for name in (t.strip().lower() for t in text.split(",")):
        if not name or name == "none":
            continue
        if name in FAULT_GROUPS:
            kinds.update(FAULT_GROUPS[name])
        elif name in FAULT_KINDS:
            kinds.add(name)
        else:
            raise usage.UsageError(
                f"unknown fault {name!r}: choose from partition, kill, pause, "
                + ", ".join(FAULT_KINDS)
            )
    if nodes < 2:
        kinds -= {"isolate", "halves", "bridge"}
    if nodes < 3:
        kinds.discard("bridge")
    return [k for k in FAULT_KINDS if k in kinds]


@dataclass
class Fault:
    """
    One scheduled fault.  C{at} and C{duration} are seconds from the start
    of the load; C{leader} says whether to aim at the leader (resolved when
    injected); C{order} is a random permutation of node ids used to pick
    nodes and halves.
    """

    index: int
    kind: str
    at: float
    duration: float
    leader: bool
    order: list
    # filled in when injected:
    description: str = ""
    injected: float = None  # monotonic
    healed: float = None
    blocked: list = field(default_factory=list)  # [(i, j)] directed links
    node: int = None


def makeSchedule(seed, seconds, nodes, kinds, warmup=3.0, tail=3.0):
    """
    The faults for a run: deterministic for C{(seed, seconds, nodes, kinds)}.
    Each lasts 2.5-6 s and is followed by a 2.5-4.5 s healing gap; none
    starts before C{warmup} or ends after C{seconds - tail}.
    """
    rng = random.Random(f"chaos-schedule-{seed}")
    faults = []
    if not kinds:
        return faults
    t = warmup
    for index in range(10_000):
        duration = round(rng.uniform(2.5, 6.0), 2)
        if t + duration > seconds - tail:
            break
        kind = rng.choice(kinds)
        if kind == "isolate":
            leader = True
        elif kind == "bridge":
            leader = rng.random() < 0.3
        else:
            leader = rng.random() < 0.5
        order = rng.sample(range(1, nodes + 1), nodes)
        faults.append(Fault(index + 1, kind, round(t, 2), duration, leader, order))
        t += duration + round(rng.uniform(2.5, 4.5), 2)
    return faults


def orderAmong(fault, members):
    """
    C{fault}'s random order of nodes, over C{members} (the node ids that
    are members now): C{fault.order} itself while the members are the nodes
    it was drawn for, else a permutation of C{members} derived from it (the
    same for the same members).
    """
    members = sorted(members)
    if members == sorted(fault.order):
        return list(fault.order)
    rng = random.Random(f"chaos-order-{fault.index}-{fault.order}")
    return rng.sample(members, len(members))


def planPartition(fault, nodes, leader, members=None):
    """
    The node groups for a partition fault given the current C{leader} (0 if
    unknown): C{(groups, bridge)} where links between different groups are
    cut, except that C{bridge} (a node id or None) reaches everyone.

    @param members: the ids of the nodes to partition (default: 1 to
        C{nodes}); a run that changes its members passes those of the moment.
    """
    if members is None:
        members = range(1, nodes + 1)
    everyone = sorted(members)
    nodes = len(everyone)
    order = orderAmong(fault, everyone)
    if fault.kind == "isolate":
        target = leader if leader else order[0]
        return [[target], [n for n in everyone if n != target]], None
    if fault.kind == "halves":
        small = nodes // 2
        if fault.leader and leader and leader not in order[:small]:
            # put the leader into the minority
            i = order.index(leader)
            order[0], order[i] = order[i], order[0]
        return [sorted(order[:small]), sorted(order[small:])], None
    if fault.kind == "bridge":
        if fault.leader and leader:
            i = order.index(leader)
            order[0], order[i] = order[i], order[0]
        bridge, rest = order[0], order[1:]
        half = len(rest) // 2
        return [sorted(rest[:half]), sorted(rest[half:])], bridge
    raise ValueError(fault.kind)


def cutLinks(groups, bridge):
    """Directed links (i, j) to block for C{groups} and a C{bridge} node."""
    where = {}
    for g, members in enumerate(groups):
        for n in members:
            where[n] = g
    links = []
    for i in where:
        for j in where:
            if i != j and where[i] != where[j] and bridge not in (i, j):
                links.append((i, j))
    return sorted(links)


# -- membership changes ------------------------------------------------------------

CHANGE_KINDS = ("add", "remove", "remove-leader", "transfer")
"""
The membership changes C{raftkv chaos --membership} makes: C{add} starts a
fresh node with C{--join}, adds it as a learner and promotes it once it has
caught up; C{remove} removes a follower (then stops its process);
C{remove-leader} removes the leader; C{transfer} hands leadership to a voter
or to "the most up-to-date voter" (node id 0).
"""


def parseChanges(text):
    """C{"add,transfer"} -> those change kinds, in L{CHANGE_KINDS} order."""
    kinds = set()
    for name in (t.strip().lower() for t in text.split(",")):
        if not name:
            continue
        if name not in CHANGE_KINDS:
            raise usage.UsageError(
                f"unknown membership change {name!r}: choose from " + ", ".join(CHANGE_KINDS)
            )
        kinds.add(name)
    if not kinds:
        raise usage.UsageError("--changes names no membership change")
    return [k for k in CHANGE_KINDS if k in kinds]


def voterBounds(nodes):
    """
    C{(fewest, most)} voters a run of C{nodes} nodes keeps while it changes
    its members: never fewer than 3 (a cluster that can lose a node and
    serve), nor more than one above where it started.
    """
    return max(3, nodes - 1), nodes + 1


@dataclass
class Change:
    """
    One scheduled membership change.  C{at} is the earliest time, in seconds
    from the start of the load, to make it (it waits for the one before);
    C{pick} in [0, 1) chooses among the candidates (the follower to remove,
    the voter to hand leadership to); C{toAny} makes a transfer one to node
    0, "the most up-to-date voter".

    C{strike}, if not C{""}, is a crash in the middle of the change: the
    leader that receives its step number C{strikeStep} (an add has two, the
    learner and the promotion; other changes one) is sent SIGKILL
    (C{"kill"}) or SIGSTOP (C{"pause"}) C{strikeAfter} seconds after the
    request went out, and restarted or resumed C{strikeFor} seconds later.
    """

    index: int
    kind: str
    at: float
    pick: float
    toAny: bool = False
    strike: str = ""
    strikeStep: int = 0
    strikeAfter: float = 0.0
    strikeFor: float = 0.0
    # filled in when made: one Step per configuration change or transfer
    steps: list = field(default_factory=list)
    skipped: str = ""  # why nothing was done, if so


@dataclass
class Step:
    """
    One request of a change: C{action} is C{add-learner}, C{promote},
    C{remove}, C{remove-leader} or C{transfer}; C{outcome} C{done},
    C{failed} (refused or never proposed: not applied) or C{unknown} (it may
    or may not have been applied; C{settled} says what the member list
    showed later: C{applied}, C{not applied}, or C{""} if never read).
    """

    action: str
    target: int
    started: float = None  # monotonic
    ended: float = None
    outcome: str = ""
    revision: int = None  # of a configuration change done
    leader: int = None  # of a transfer done: the new leader
    error: str = ""
    settled: str = ""
    strike: str = ""  # what was struck while it ran, if anything


STRIKE_SHARE = 1 / 3
"""The share of membership changes that a crash strikes in the middle."""


def makeChanges(seed, seconds, nodes, kinds, warmup=4.0, tail=4.0, gap=(3.0, 7.0),
                strikes=True):
    """
    The membership changes for a run: deterministic for C{(seed, seconds,
    nodes, kinds)}, and drawn from their own random stream, so adding them
    leaves a seed's fault schedule (L{makeSchedule}) as it was.  One every
    C{gap} seconds from C{warmup} until C{tail} before the end, each kind
    allowed only while the voters it leaves stay within L{voterBounds},
    counting as if every change before it succeeded.  A share
    (L{STRIKE_SHARE}) of them are struck by a crash in the middle (see
    L{Change}), drawn from a stream of their own again, unless not
    C{strikes}.
    """
    rng = random.Random(f"chaos-membership-{seed}")
    strikes = random.Random(f"chaos-strikes-{seed}") if strikes else None
    changes = []
    if not kinds:
        return changes
    fewest, most = voterBounds(nodes)
    voters = nodes
    t = warmup + rng.uniform(0.0, gap[0])
    index = 0
    while t <= seconds - tail:
        allowed = [
            k for k in kinds
            if (k == "add" and voters < most)
            or (k in ("remove", "remove-leader") and voters > fewest)
            or k == "transfer"
        ]
        pick, toAny = rng.random(), rng.random() < 0.5
        if allowed:
            kind = rng.choice(allowed)
            index += 1
            change = Change(index, kind, round(t, 2), pick, toAny and kind == "transfer")
            if strikes is not None and strikes.random() < STRIKE_SHARE:
                change.strike = strikes.choice(["kill", "pause"])
                change.strikeStep = strikes.randrange(2) if kind == "add" else 0
                change.strikeAfter = round(strikes.uniform(0.0, 0.012), 4)
                change.strikeFor = round(strikes.uniform(1.0, 3.0), 2)
            changes.append(change)
            voters += {"add": 1, "remove": -1, "remove-leader": -1}.get(kind, 0)
        t += rng.uniform(*gap)
    return changes


def plannedAdds(changes):
    """How many nodes C{changes} add (each needs a fresh node id)."""
    return sum(1 for c in changes if c.kind == "add")


def resolveChange(change, voters, learners, leader, canAdd, nodes):
    """
    What C{change} becomes given the members now: C{(action, target)},
    C{action} one of C{add}, C{promote}, C{remove}, C{remove-leader},
    C{transfer} or C{skip} (target: why).

    A learner left by an add that did not finish is promoted first.  A
    change that would take the voters out of L{voterBounds} becomes the
    opposite one (an add a removal and back), or a transfer; an add with no
    fresh node id left (C{canAdd} false) likewise.

    @param voters: the voters' ids; C{learners}: the learners' ids.
    @param leader: the leader's id, or 0 if unknown.
    """
    voters, learners = sorted(voters), sorted(learners)
    fewest, most = voterBounds(nodes)
    if learners:
        return "promote", learners[0]
    kind = change.kind
    mayAdd = canAdd and len(voters) < most
    mayRemove = len(voters) > fewest
    if kind == "add" and not mayAdd:
        kind = "remove" if mayRemove else "transfer"
    elif kind in ("remove", "remove-leader") and not mayRemove:
        kind = "add" if mayAdd else "transfer"
    if kind == "add":
        return "add", None
    if kind == "remove-leader":
        if leader not in voters:
            return "skip", "no known leader to remove"
        return "remove-leader", leader
    others = [v for v in voters if v != leader]
    if kind == "remove":
        if not others:
            return "skip", "no follower to remove"
        return "remove", others[int(change.pick * len(others))]
    if change.toAny or not others:
        return "transfer", 0
    return "transfer", others[int(change.pick * len(others))]
