"""
The membership faults of C{raftkv chaos --membership}: the scheduled
changes (L{twisted_raft.tools.faults.makeChanges}) made one after another
against the running cluster, while the fault schedule goes on beside them.

  - add: a fresh node (an id never used before) is started with C{--join}
    and added as a learner, then promoted once it has caught up;
  - remove: a follower is removed, then its process stopped (SIGTERM);
  - remove-leader: the leader is removed (it steps down once the change
    commits), then its process stopped;
  - transfer: leadership is handed to a voter, or to node 0 ("the most
    up-to-date voter").

A third of the changes are struck by a crash in the middle: the leader
that received the request is sent SIGKILL or SIGSTOP a few milliseconds
later (before or after it appended the entry, before or after it committed
it), and restarted or resumed a second or three later; its outcome is then
often unknown, which the next member list settles.

Before each change the member list is read (the leader's committed
configuration) and is what the change is made against
(L{twisted_raft.tools.faults.resolveChange}): a change that failed or whose
outcome is unknown leaves the cluster as it is, and the next one starts from
what the cluster says.  A node that is no longer a member -- removed, or a
joined node that was never added -- has its process stopped and is never
started again; its id is never used again.

What the run needs from its owner (L{twisted_raft.tools.chaos.Chaos}) is
small: start a joining node, stop a node for good, a client on the current
members, who leads, and to be told when the members changed.
"""

import time

from twisted.internet import defer, task

from twisted_raft.tools.faults import Step, resolveChange

STEP_TIMEOUT = 10.0
"""Seconds a membership request may take, the client's retries included."""
CATCH_UP_TIMEOUT = 20.0
"""Seconds a learner may take to catch up before its promotion fails."""
LINGER = 1.0
"""Seconds a removed node runs on before its process is stopped: long
enough to hear of its removal, and for the watch to see what it says."""


def notApplied(exc):
    """Whether a failed membership request was certainly not applied."""
    from twisted_raft.client import NotProposed
    from twisted_raft.rpc.commands import (
        ChangeInProgress,
        InvalidArgument,
        NotCaughtUp,
        PermissionDenied,
        TransferFailed,
    )

    return isinstance(
        exc, (InvalidArgument, ChangeInProgress, NotCaughtUp, TransferFailed, NotProposed,
              PermissionDenied)
    )


def wants(action, target, address=None):
    """C{wants(members)}: whether the C{{id: voter}} members show C{action}
    done (C{None} for a transfer, which the members cannot show)."""
    if action == "add-learner":
        return lambda members: target in members
    if action == "promote":
        return lambda members: members.get(target) is True
    if action in ("remove", "remove-leader"):
        return lambda members: target not in members
    return None


class MemberChanges:
    """
    The membership changes of one run, and its view of the members.

    @param run: the L{twisted_raft.tools.chaos.Chaos} this belongs to.
    @param changes: the L{twisted_raft.tools.faults.Change}s to make.
    @param freshIds: node ids never used, for the nodes to add, in order.
    @ivar members: C{{id: voter}} as the cluster last said (its committed
        configuration), updated by every change done.
    @ivar revision: that configuration's revision.
    @ivar retired: ids whose processes are stopped for good.
    """

    def __init__(self, run, changes, freshIds):
        self.run = run
        self.changes = changes
        self.freshIds = list(freshIds)
        self.members = {i: True for i in run.initialIds}
        self.revision = 0
        self.retired = set()
        self.leader = 0  # the leader when the current change was made
        self.stopped = False
        self._calls = set()  # pending strikes and their undoing

    # -- the view ------------------------------------------------------------

    def voters(self):
        return sorted(i for i, voter in self.members.items() if voter)

    def learners(self):
        return sorted(i for i, voter in self.members.items() if not voter)

    @defer.inlineCallbacks
    def reconcile(self, patience=STEP_TIMEOUT):
        """
        Read the member list (for up to C{patience} seconds) and take it as
        the view; stop every node process that is not a member.
        @return: Deferred[bool]: whether it was read.
        """
        end = time.monotonic() + patience
        while True:
            client = self.run.memberClient()
            try:
                membership = yield self.run.watch.readMembers(client)
            finally:
                yield self.run.closeClient(client)
            if membership is not None:
                break
            if time.monotonic() >= end:
                return False
            yield task.deferLater(self.run.reactor, 0.5, lambda: None)
        self.members = {m.id: bool(m.voter) for m in membership.members}
        self.revision = membership.revision
        strays = [i for i in self.run.nodes if i not in self.members and i not in self.retired]
        for i in strays:
            yield self.retire(i, "not a member")
        self.run.membersChanged()
        return True

    def retire(self, nodeId, why):
        """Stop node C{nodeId}'s process for good (once). @return: Deferred."""
        if nodeId in self.retired:
            return defer.succeed(None)
        self.retired.add(nodeId)
        self.run.log(f"[chaos] {self.run.elapsed():6.1f}s stopping n{nodeId} for good ({why})")
        return self.run.retire(nodeId)

    # -- the loop --------------------------------------------------------------

    @defer.inlineCallbacks
    def loop(self):
        """Make every change in turn, each no earlier than its time."""
        for change in self.changes:
            delay = self.run.loadStart + change.at - time.monotonic()
            if delay > 0:
                yield task.deferLater(self.run.reactor, delay, lambda: None)
            if self.run.stopClients:
                return
            yield self.make(change)

    @defer.inlineCallbacks
    def make(self, change):
        if not (yield self.reconcile()):
            change.skipped = "the member list could not be read"
            self.run.log(f"[chaos] {self.run.elapsed():6.1f}s change #{change.index} "
                         f"({change.kind}) skipped: {change.skipped}")
            return
        client = self.run.memberClient()
        try:
            leader = self.leader = yield self.run.findLeader(client)
            gone = sorted(i for i in self.members if i in self.retired)
            if gone:
                # a member whose process was stopped for good (its add was
                # thought not to have happened): take it out first
                action, target = "remove", gone[0]
            else:
                action, target = resolveChange(
                    change, self.voters(), self.learners(), leader, bool(self.freshIds),
                    self.run.n,
                )
            if action == "skip":
                change.skipped = target
                self.run.log(f"[chaos] {self.run.elapsed():6.1f}s change #{change.index} "
                             f"({change.kind}) skipped: {target}")
            elif action == "add":
                yield self.add(change, client)
            elif action == "promote":
                yield self.promote(change, client, target)
            elif action in ("remove", "remove-leader"):
                yield self.remove(change, client, action, target)
            else:
                yield self.transfer(change, client, target)
        finally:
            yield self.run.closeClient(client)

    @defer.inlineCallbacks
    def step(self, change, client, action, target, call, address=None):
        """
        One request C{call()} of C{change}, recorded as a L{Step}; an
        acknowledged configuration change is noted for the checks, and one
        whose outcome is unknown is settled by the member list.
        @return: Deferred[the Step].
        """
        step = Step(action, target, started=time.monotonic())
        change.steps.append(step)
        what = f"{action} n{target}" if target else f"{action} (to the most up-to-date voter)"
        self.run.log(f"[chaos] {self.run.elapsed():6.1f}s change #{change.index}: {what}")
        sent = call()
        if change.strike and len(change.steps) - 1 == change.strikeStep and self.leader:
            self._later(change.strikeAfter, self.strike, change, step, self.leader)
        try:
            result = yield sent
        except Exception as e:
            step.outcome = "failed" if notApplied(e) else "unknown"
            step.error = f"{type(e).__name__}: {e}"[:300]
        else:
            step.outcome = "done"
            if action == "transfer":
                step.leader = result
            else:
                step.revision = result
        step.ended = time.monotonic()
        took = step.ended - step.started
        if step.outcome == "done":
            result = (f"new leader n{step.leader}" if action == "transfer"
                      else f"revision {step.revision}")
            self.run.log(f"[chaos] {self.run.elapsed():6.1f}s change #{change.index}: {what} "
                         f"done in {took:.2f}s, {result}")
            if action != "transfer":
                self.run.watch.observations.changed(action, target, address, step.revision)
                # the configuration at that revision, to check the change
                # against (unless another change follows at once)
                yield self.run.watch.readMembers(client)
        else:
            self.run.log(f"[chaos] {self.run.elapsed():6.1f}s change #{change.index}: {what} "
                         f"{step.outcome} after {took:.2f}s: {step.error}")
            wanted = wants(action, target)
            if wanted is not None and (yield self.reconcile()):
                step.settled = "applied" if wanted(self.members) else "not applied"
        return step

    # -- the changes -------------------------------------------------------------

    @defer.inlineCallbacks
    def add(self, change, client):
        nodeId = self.freshIds.pop(0)
        try:
            address = yield self.run.startJoiner(nodeId)
        except Exception as e:
            change.skipped = f"n{nodeId} did not start: {e}"
            self.run.log(f"[chaos] {self.run.elapsed():6.1f}s change #{change.index}: "
                         f"{change.skipped}")
            yield self.retire(nodeId, "it did not start")
            return
        step = yield self.step(
            change, client, "add-learner", nodeId,
            lambda: client.addMember(nodeId, address, learner=True), address,
        )
        if step.outcome == "done":
            self.members[nodeId] = False
            self.run.membersChanged()
        elif nodeId not in self.members:
            # not added (or not known to be): the node goes, its id with it
            yield self.retire(nodeId, "it was not added")
            return
        yield self.promote(change, client, nodeId)

    @defer.inlineCallbacks
    def promote(self, change, client, nodeId):
        step = yield self.step(
            change, client, "promote", nodeId,
            lambda: client.promoteMember(nodeId, timeout=CATCH_UP_TIMEOUT),
        )
        if step.outcome == "done":
            self.members[nodeId] = True

    @defer.inlineCallbacks
    def remove(self, change, client, action, nodeId):
        step = yield self.step(change, client, action, nodeId,
                               lambda: client.removeMember(nodeId))
        if step.outcome == "done":
            self.members.pop(nodeId, None)
        if nodeId not in self.members and nodeId not in self.retired:
            self.run.membersChanged()
            yield task.deferLater(self.run.reactor, LINGER, lambda: None)
            yield self.retire(nodeId, "removed")

    def transfer(self, change, client, nodeId):
        return self.step(change, client, "transfer", nodeId,
                         lambda: client.transferLeader(nodeId))

    # -- crashes in the middle of a change ----------------------------------------

    def _later(self, seconds, f, *args):
        def run():
            self._calls.discard(call)
            if not self.stopped:
                f(*args)

        call = self.run.reactor.callLater(seconds, run)
        self._calls.add(call)

    def strike(self, change, step, nodeId):
        """Kill or pause node C{nodeId}, the leader that got C{step}'s
        request, and undo it C{change.strikeFor} seconds later."""
        node = self.run.nodes.get(nodeId)
        if node is None or nodeId in self.retired or not node.running or node.paused:
            return
        after = f"{(time.monotonic() - step.started) * 1000:.0f} ms"
        if change.strike == "kill":
            node.kill()
            step.strike = f"SIGKILL n{nodeId} (leader) {after} after it was sent"
        else:
            node.pause()
            step.strike = f"SIGSTOP n{nodeId} (leader) {after} after it was sent"
        step.strike += f", for {change.strikeFor:g}s"
        self.run.log(f"[chaos] {self.run.elapsed():6.1f}s change #{change.index}: {step.strike}")
        self._later(change.strikeFor, self.unstrike, nodeId)

    def unstrike(self, nodeId):
        """Restart or resume node C{nodeId} after a strike, unless it is
        stopped for good, the load is over (the final heal does it), or the
        fault loop has taken it for a fault of its own."""
        fault = self.run.currentFault
        if nodeId in self.retired or self.run.stopClients or (
            fault is not None and fault.node == nodeId
        ):
            return
        node = self.run.nodes[nodeId]
        node.resume()
        if not node.running:
            node.start()

    def stop(self):
        """No more strikes, nor their undoing (the run is ending)."""
        self.stopped = True
        for call in list(self._calls):
            if call.active():
                call.cancel()
        self._calls.clear()

    # -- figures -------------------------------------------------------------------

    def steps(self):
        return [s for c in self.changes for s in c.steps]

    def figures(self):
        """C{{"tried", "done", "failed", "unknown", "by_action": {...}}}."""
        def count(steps):
            out = {"tried": len(steps), "done": 0, "failed": 0, "unknown": 0}
            for s in steps:
                out[s.outcome] = out.get(s.outcome, 0) + 1
            out["unknown_applied"] = sum(1 for s in steps if s.settled == "applied")
            out["unknown_not_applied"] = sum(1 for s in steps if s.settled == "not applied")
            return out

        steps = self.steps()
        figures = count(steps)
        figures["by_action"] = {
            a: count([s for s in steps if s.action == a])
            for a in ("add-learner", "promote", "remove", "remove-leader", "transfer")
        }
        figures["skipped"] = sum(1 for c in self.changes if c.skipped)
        figures["struck"] = sum(1 for s in steps if s.strike)
        # a transfer to one node answered with another as the new leader
        # (the core ends a transfer on any new leader, e.g. after an
        # election that the target lost)
        figures["transfers_elsewhere"] = sum(
            1 for s in steps
            if s.action == "transfer" and s.outcome == "done" and s.target
            and s.leader != s.target
        )
        return figures
