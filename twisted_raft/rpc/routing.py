"""
The one path of a client request through a node, and its one outcome mapping.

Writes and linearizable reads are served by the leader.  L{Router.serve}
takes a L{Request} in two steps:

  1. If this node leads (and, for a write, has disk space), the request
     starts here: the write is proposed, the read starts its ReadIndex round
     (thesis §6.4).  This is the common case, and it costs one Deferred and
     two callbacks from the core's answer to the client's, the deadline
     included: no generator and no closure, which at thousands of requests a
     second show in profiles.
  2. Otherwise, or if the core answers L{NotLeader} (nothing was proposed),
     L{Router._routeAround} finds the leader, forwards the request to it over
     the peer link (with C{forwarded=True}) and relays the answer, retrying
     while nothing was proposed; while no leader is known it waits for one
     (bounded), so a client writing during a fail-over gets through.  A
     forwarded request is never forwarded again, so two nodes with stale
     ideas of the leader cannot bounce a request between them.

A write holds its bytes against the node's budget (the factory's
C{pendingWrites}, L{twisted_raft.rpc.limits.PendingBytes}) from the moment
L{Router.serve} accepts it until all the work done for it has ended,
whichever way: the core's own Deferred for each proposal has fired and the
forward to the leader has ended.  That may be after the client was answered:
a request that times out is answered at once, but its proposal is still held
by the core until it commits or fails, and a budget released with the answer
would let a flood pile up proposals without bound.  Over the budget a write
is refused at once as L{Overloaded}, a L{NotProposed}.  At a follower that
covers the requests it forwards.

The whole request is bounded by the factory's C{requestTimeout}
(L{_timedOut}).  Whatever ends it, L{Router._settle} and L{Router._relayed}
answer through L{Router.contractError}: the one place where a core failure
(L{messages.CommitUnknown}, L{messages.StorageFailed}, a membership change's
refusal, anything unexpected) becomes the client contract's error.  Whether
a write may have been applied travels as a type (L{NotProposed},
L{NodeDiskFull}, L{Overloaded}), never in the text.
"""

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from twisted_raft.raft import membership, messages
from twisted_raft.rpc.commands import (
    ERRORS,
    ChangeInProgress,
    InvalidArgument,
    NodeDiskFull,
    NotCaughtUp,
    NotProposed,
    Overloaded,
    TransferFailed,
    Unavailable,
)
from twisted_raft.rpc.peers import NOT_SENT_ERRORS

DECLARED = tuple(ERRORS)
"""The errors every command declares: answered as they are."""

_MEMBERSHIP_ERRORS = {
    membership.InvalidChange: InvalidArgument,
    membership.ChangeInProgress: ChangeInProgress,
    membership.NotCaughtUp: NotCaughtUp,
    messages.TransferFailed: TransferFailed,
}
"""The core's refusals of a membership change or a transfer, and the
contract's error for each: nothing was proposed for any of them."""


class Request:
    """
    One client request being served: what to do at the leader, how to
    forward it, and how far it got.  One object per request carries all of
    it, so the path needs no closure per request.

    Subclasses set L{command} and L{what} and implement L{start},
    L{respond} and L{arguments}.

    @ivar forwarded: this request was forwarded by a follower: never forward
        it again.
    @ivar proposed: a request that may have taken effect (a write that may
        have been proposed, a transfer that may have started), so its
        outcome is unknown if it fails now.
    @ivar answered: the Deferred of the answer, once L{Router.serve} runs.
    @ivar rerouted: the general path's Deferred, if the request took it.
    @ivar charged: the bytes it holds against the node's budget.
    @ivar work: how many of its Deferreds (the core's, the general path's)
        have not fired yet; the bytes are released when none is left.
    """

    __slots__ = ("key", "forwarded", "proposed", "answered", "rerouted", "charged", "work")

    command = None
    """The AMP command that forwards this request to the leader."""
    what = None
    """What to call the request in errors and logs."""
    isWrite = False
    """Whether it is a write: then it has C{data}, the command proposed
    to the log, whose size is charged to the node's pending-writes budget."""
    mayChange = False
    """Whether starting it may change the cluster (every write; a leadership
    transfer too, though it writes nothing), so that a failure after it
    started leaves its outcome unknown."""

    def start(self, node):
        """Start the request at C{node}, the leader: @return: the core's Deferred."""
        raise NotImplementedError()

    def respond(self, outcome, store):
        """The command's response, from what L{start}'s Deferred fired with."""
        raise NotImplementedError()

    def arguments(self):
        """The arguments of L{command} that forward this request."""
        raise NotImplementedError()


def _diskFull(node):
    """Whether C{node}'s storage is waiting for disk space (writes pend)."""
    return bool(getattr(getattr(node, "storage", None), "diskFull", False))


def _detached(d):
    """
    A new L{Deferred} with C{d}'s result.  Cancelling it (e.g. on a request
    timeout) does not touch C{d}, which belongs to someone else (the core).
    """
    r = defer.Deferred()

    def relay(result):
        if not r.called:
            r.callback(result)
        # else r was cancelled: drop the late result (a failure is consumed)
        return None

    d.addBoth(relay)
    return r


def _timedOut(result, request, timeout):
    """The answer to a request whose deadline passed; its work is cancelled."""
    if request.rerouted is not None:
        request.rerouted.cancel()
    if request.proposed:
        return defer.fail(
            Unavailable(f"outcome unknown: {request.what} timed out after {timeout}s")
        )
    return defer.fail(
        NotProposed(f"{request.what} timed out after {timeout}s (no leader reachable)")
    )


class Router:
    """
    Serves client requests for one node (see the module docstring).

    @param server: the L{NodeServerFactory} holding the node, the key-value
        store, the peer transport, the clock, the timeouts and the
        deadlines.
    """

    log = Logger()

    def __init__(self, server):
        self.server = server

    def serve(self, request):
        """
        Serve C{request}.  @return: a Deferred of its response, or failing
        with one of the declared errors.
        """
        server = self.server
        node = server.node
        leading = node.role == messages.LEADER
        if leading and request.isWrite and _diskFull(node):
            # Refuse at once rather than queue behind a write that waits for
            # space; nothing is proposed.
            raise NodeDiskFull(node.nodeId)
        request.charged = request.work = 0
        if request.isWrite:
            size = len(request.data)
            server.pendingWrites.charge(size)  # or Overloaded
            request.charged = size
        answered = request.answered = defer.Deferred()
        timeout = server.requestTimeout
        server.deadlines.add(answered, timeout, _timedOut, request, timeout)
        if leading:
            request.proposed = request.mayChange
            try:
                started = request.start(node)
            except Exception:
                # Answered (and its deadline retired) like any other failure.
                started = defer.fail()
            request.work += 1
            started.addBoth(self._settled, request)
        else:
            self._reroute(request)
        return answered

    def _workDone(self, result, request):
        """
        One of C{request}'s Deferreds fired; once none is left, its bytes
        are released (see the module docstring).  Passes C{result} through.
        """
        request.work -= 1
        if not request.work and request.charged:
            size, request.charged = request.charged, 0
            self.server.pendingWrites.release(None, size)
        return result

    def _settled(self, outcome, request):
        """
        L{_settle}, then the core's part of the work is done (after it: it
        may have rerouted, which is more work).  One callback for both: this
        runs for every request.
        """
        self._settle(outcome, request)
        return self._workDone(None, request)

    def _settle(self, outcome, request):
        """Step 1's end: answer from the core's C{outcome} at this node."""
        answered = request.answered
        if answered.called:
            return None  # timed out; the late outcome is dropped
        if not isinstance(outcome, Failure):
            try:
                response = request.respond(outcome, self.server.stateMachine)
            except Exception:
                answered.errback(self.contractError(Failure(), request.what))
            else:
                answered.callback(response)
        elif outcome.check(messages.NotLeader):
            # The core's promise: nothing was proposed.
            request.proposed = False
            if request.forwarded:
                answered.errback(NotProposed(str(outcome.value)))
            else:
                self._reroute(request)
        else:
            answered.errback(self.contractError(outcome, request.what))
        return None

    def _reroute(self, request):
        """Step 2: the general path, its outcome relayed to the answer."""
        request.work += 1
        d = request.rerouted = self._routeAround(request)
        d.addBoth(self._relayed, request)
        d.addBoth(self._workDone, request)

    def _relayed(self, result, request):
        answered = request.answered
        if answered.called:
            return None  # timed out (the CancelledError is the deadline's)
        if isinstance(result, Failure):
            answered.errback(self.contractError(result, request.what))
        else:
            answered.callback(result)
        return None

    def contractError(self, f, what):
        """
        The client contract's error for the failure C{f} of serving C{what}:
        the one mapping from what the core (or anything else) failed with to
        what a client is answered.
        """
        if f.check(*DECLARED):
            return f
        if f.check(messages.CommitUnknown):
            return Unavailable(f"outcome unknown: {f.value}")
        if f.check(messages.StorageFailed):
            return Unavailable(f"outcome unknown: storage failed: {f.value}")
        for refusal, contract in _MEMBERSHIP_ERRORS.items():
            if f.check(refusal):
                return contract(str(f.value))
        return self.internalError(f, what)

    def internalError(self, f, what):
        """Log an undeclared failure C{f}; @return: the UNAVAILABLE to answer."""
        self.log.failure("unexpected error serving {what}", failure=f, what=what)
        return Unavailable(f"internal error serving {what}: {f.value!r}")

    @defer.inlineCallbacks
    def _routeAround(self, request):
        """
        Step 2: serve C{request} at the leader, wherever it is; retry while
        nothing was proposed, up to C{server.maxTries} times, within the
        deadline (which cancels this).  Core failures are raised as they
        are, for L{contractError}.
        """
        server = self.server
        node = server.node
        isWrite, forwarded = request.isWrite, request.forwarded
        mayChange = request.mayChange
        tries = 0
        while True:
            tries += 1
            if node.role == messages.LEADER:
                if isWrite and _diskFull(node):
                    raise NodeDiskFull(node.nodeId)
                request.proposed = mayChange
                try:
                    started = request.start(node)
                    # The deadline may cancel this wait, never the core's
                    # work: the bytes stay held until that is done.
                    request.work += 1
                    detached = _detached(started)
                    started.addBoth(self._workDone, request)
                    outcome = yield detached
                except messages.NotLeader as e:
                    # nothing was proposed; the leader changed under us
                    request.proposed = False
                    if forwarded or tries >= server.maxTries:
                        raise NotProposed(str(e))
                    yield self._pause()
                    continue
                return request.respond(outcome, server.stateMachine)
            if forwarded:
                raise NotProposed(
                    f"node {node.nodeId} is not the leader"
                    f" (leader is {node.leaderId or 'unknown'})"
                )
            leaderId = node.leaderId
            if not leaderId or leaderId == node.nodeId:
                try:
                    leaderId = yield self._waitForLeader()
                except defer.TimeoutError:
                    raise NotProposed(f"no leader known after {server.leaderTimeout}s")
                if leaderId == node.nodeId:
                    if node.role != messages.LEADER:
                        # our own view is stale; look again shortly
                        if tries >= server.maxTries:
                            raise NotProposed("no leader")
                        yield self._pause()
                    continue
            try:
                request.proposed = mayChange
                result = yield server.transport.callPeer(
                    leaderId, request.command, **request.arguments()
                )
                return result
            except NOT_SENT_ERRORS as e:
                request.proposed = False
                if tries >= server.maxTries:
                    raise NotProposed(f"leader {leaderId} unreachable: {e}")
                yield self._pause()
                continue
            except (NodeDiskFull, Overloaded):
                # the leader refuses writes for now: relay that at once
                raise
            except NotProposed:
                # the node we took for the leader is not (any more)
                request.proposed = False
                if tries >= server.maxTries:
                    raise
                yield self._pause()
                continue
            except DECLARED:
                raise
            except defer.CancelledError:
                raise
            except defer.TimeoutError:
                raise Unavailable(
                    f"outcome unknown: leader {leaderId} did not answer in time"
                )
            except Exception as e:
                # connection lost mid-request and the like
                if mayChange:
                    raise Unavailable(
                        f"outcome unknown: forwarding to leader {leaderId}"
                        f" failed: {e!r}"
                    )
                raise Unavailable(f"forwarding to leader {leaderId} failed: {e!r}")

    def _pause(self):
        """A cancellable wait of C{server.retryDelay} seconds."""

        def cancel(_):
            if call.active():
                call.cancel()

        d = defer.Deferred(cancel)
        call = self.server.clock.callLater(self.server.retryDelay, d.callback, None)
        return d

    def _waitForLeader(self):
        server = self.server
        r = _detached(server.node.whenLeaderKnown())
        r.addTimeout(server.leaderTimeout, server.clock)
        return r
