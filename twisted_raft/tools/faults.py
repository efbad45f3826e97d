"""
The fault schedule of C{raftkv chaos}, pure: which faults to inject, when,
for how long, and which directed links a partition cuts.  Deterministic for
a seed, so a failing run can be replayed.
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


def planPartition(fault, nodes, leader):
    """
    The node groups for a partition fault given the current C{leader} (0 if
    unknown): C{(groups, bridge)} where links between different groups are
    cut, except that C{bridge} (a node id or None) reaches everyone.
    """
    order = list(fault.order)
    everyone = list(range(1, nodes + 1))
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
