"""
C{raftkv cluster add}, C{raftkv cluster remove ID}, C{raftkv cluster stop ID}
and C{raftkv cluster restart ID}: membership changes and node restarts of a
running C{raftkv cluster}, sent to it over its control socket.

The running C{raftkv cluster} owns its node processes (it echoes their
output and stops them all on Ctrl-C), so a node is started or stopped by it,
not by the command typed in another terminal: that command connects to
C{DATA/control.sock} (a Unix socket, mode 0600: only its user may change the
cluster), sends L{AddNode}, L{RemoveNode}, L{StopNode} or L{RestartNode},
and prints the answer.  The work itself is L{LocalCluster.addNode},
L{LocalCluster.removeNode}, L{LocalCluster.stopNode} and
L{LocalCluster.restartNode}.

Exit codes: 0 done, 1 failed (the message says why and what was left
running), 2 bad usage.
"""

import os
import sys

from twisted.internet import defer
from twisted.protocols import amp
from twisted.python import usage

from twisted_raft.tools.command import InterspersedOptions

CONTROL_SOCKET = "control.sock"
"""The control socket's name, in the cluster's data dir."""


class ClusterFailed(Exception):
    """An add or remove failed; the message says why."""


class AddNode(amp.Command):
    arguments = [(b"learner", amp.Boolean())]
    response = [
        (b"node_id", amp.Integer()),
        (b"address", amp.Unicode()),
        (b"revision", amp.Integer()),
    ]
    errors = {ClusterFailed: b"CLUSTER_FAILED"}


class RemoveNode(amp.Command):
    arguments = [(b"node_id", amp.Integer())]
    response = [(b"revision", amp.Integer())]
    errors = {ClusterFailed: b"CLUSTER_FAILED"}


class StopNode(amp.Command):
    """Stop a node's process; it stays a member."""

    arguments = [(b"node_id", amp.Integer())]
    response = [(b"address", amp.Unicode())]
    errors = {ClusterFailed: b"CLUSTER_FAILED"}


class RestartNode(amp.Command):
    """Stop a node's process if it runs, start it again, wait until it answers."""

    arguments = [(b"node_id", amp.Integer())]
    response = [(b"address", amp.Unicode()), (b"pid", amp.Integer(optional=True))]
    errors = {ClusterFailed: b"CLUSTER_FAILED"}


# -- the running cluster's side ------------------------------------------------------


class ControlProtocol(amp.AMP):
    """Serves L{AddNode} and L{RemoveNode} with the factory's C{cluster}."""

    def _run(self, coroutine):
        from twisted_raft.tools.cluster import ClusterError

        def failed(f):
            f.trap(ClusterError)
            raise ClusterFailed(str(f.value))

        return defer.Deferred.fromCoroutine(coroutine).addErrback(failed)

    @AddNode.responder
    def addNode(self, learner):
        async def add():
            nodeId, address, revision = await self.factory.cluster.addNode(learner=learner)
            return {"node_id": nodeId, "address": address, "revision": revision}

        return self._run(add())

    @RemoveNode.responder
    def removeNode(self, node_id):
        async def remove():
            return {"revision": await self.factory.cluster.removeNode(node_id)}

        return self._run(remove())

    @StopNode.responder
    def stopNode(self, node_id):
        async def stop():
            return {"address": await self.factory.cluster.stopNode(node_id)}

        return self._run(stop())

    @RestartNode.responder
    def restartNode(self, node_id):
        async def restart():
            address, pid = await self.factory.cluster.restartNode(node_id)
            return {"address": address, "pid": pid}

        return self._run(restart())


def controlFactory(cluster):
    """The server factory of the control socket of C{cluster} (a L{LocalCluster})."""
    from twisted.internet import protocol

    factory = protocol.ServerFactory.forProtocol(ControlProtocol)
    factory.cluster = cluster
    factory.noisy = False
    return factory


async def serve(reactor, cluster):
    """
    Listen on C{cluster}'s control socket.

    @return: the listening port, or C{None} (said why: add/remove are then
        unavailable, the cluster runs anyway).
    """
    from twisted.internet.endpoints import UNIXServerEndpoint

    path = os.path.join(cluster.dataDir, CONTROL_SOCKET)
    endpoint = UNIXServerEndpoint(reactor, path, mode=0o600, wantPID=True)
    try:
        return await endpoint.listen(controlFactory(cluster))
    except Exception as e:
        cluster.echo(f"[cluster] no control socket at {path} ({e}): add/remove unavailable")
        return None


# -- the command's side ----------------------------------------------------------------


class _ActionOptions(InterspersedOptions):
    optParameters = [
        ["data", "d", "data", "The data directory of the running raftkv cluster."],
    ]


class AddOptions(_ActionOptions):
    synopsis = "raftkv cluster add [--learner] [--data DIR]"
    longdesc = (
        "Start the next local node of the raftkv cluster running with DIR (with "
        "--join), then add it to the cluster: as a learner, promoted to voter "
        "once it has caught up (unless --learner).  Prints its id, address and "
        "the configuration's revision."
    )
    optFlags = [["learner", "l", "Leave it a learner (a non-voter)."]]


class _NodeOptions(_ActionOptions):
    def parseArgs(self, nodeId):
        if not nodeId.isdigit() or int(nodeId) < 1:
            raise usage.UsageError(f"ID {nodeId!r} is not a node id (an integer from 1)")
        self["id"] = int(nodeId)


class RemoveOptions(_NodeOptions):
    synopsis = "raftkv cluster remove ID [--data DIR]"
    longdesc = (
        "Remove local node ID from the raftkv cluster running with DIR, then stop "
        "its process.  Prints the configuration's revision."
    )


class StopOptions(_NodeOptions):
    synopsis = "raftkv cluster stop ID [--data DIR]"
    longdesc = (
        "Stop local node ID of the raftkv cluster running with DIR (SIGTERM, then "
        "SIGKILL after a grace period).  It stays a member: the others go on "
        "without it, and 'raftkv cluster restart ID' starts it again."
    )


class RestartOptions(_NodeOptions):
    synopsis = "raftkv cluster restart ID [--data DIR]"
    longdesc = (
        "Stop local node ID of the raftkv cluster running with DIR if it runs, "
        "start it again on its data, and wait until it answers.  Prints its "
        "address and process id."
    )


async def send(reactor, dataDir, command, **arguments):
    """
    Send C{command} to the cluster running with C{dataDir}.

    @raise ClusterFailed: no cluster answers there, or it failed.
    """
    from twisted.internet.endpoints import UNIXClientEndpoint, connectProtocol

    path = os.path.join(os.path.abspath(dataDir), CONTROL_SOCKET)
    try:
        proto = await connectProtocol(UNIXClientEndpoint(reactor, path, timeout=5), amp.AMP())
    except Exception as e:
        raise ClusterFailed(
            f"no raftkv cluster is running with data dir {dataDir} ({path}: {e}); start"
            " one with raftkv cluster, or give its --data"
        )
    try:
        return await proto.callRemote(command, **arguments)
    finally:
        proto.transport.loseConnection()


async def _act(reactor, action, options, out):
    if action == "add":
        r = await send(reactor, options["data"], AddNode, learner=bool(options["learner"]))
        role = "learner" if options["learner"] else "voter"
        out.write(f"added node {r['node_id']} at {r['address']} as a {role},"
                  f" revision {r['revision']}\n")
    elif action == "remove":
        r = await send(reactor, options["data"], RemoveNode, node_id=options["id"])
        out.write(f"removed node {options['id']}, revision {r['revision']}\n")
    elif action == "stop":
        r = await send(reactor, options["data"], StopNode, node_id=options["id"])
        out.write(f"stopped node {options['id']} ({r['address']})\n")
    else:
        r = await send(reactor, options["data"], RestartNode, node_id=options["id"])
        out.write(f"restarted node {options['id']} at {r['address']}, pid {r['pid']}\n")


def main(action, options, out=None, err=None):
    """Run C{raftkv cluster add|remove|stop|restart}; returns the exit status."""
    from twisted.internet.task import react

    out = out or sys.stdout
    err = err or sys.stderr
    failed = []

    async def run(reactor):
        try:
            await _act(reactor, action, options, out)
        except ClusterFailed as e:
            failed.append(str(e))
        except Exception as e:  # e.g. the cluster stopped while it worked
            failed.append(f"{type(e).__name__}: {e}; check with raftkv member list")

    try:
        react(run)
    except SystemExit as e:
        if e.code:
            return e.code
    if failed:
        err.write(f"error: {failed[0]}\n")
        return 1
    return 0
