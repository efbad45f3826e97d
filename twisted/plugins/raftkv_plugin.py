"""
The C{raftkv} twistd plugin: C{twistd -n --pidfile= raftkv --id 1 --peers ... --data DIR}.

This module is imported by Twisted's plugin scan: it must stay cheap and must
never import the reactor (the service module is imported only when a service
is made).
"""

from twisted.application.service import IServiceMaker
from twisted.plugin import IPlugin
from zope.interface import implementer

from twisted_raft.options import Options


@implementer(IPlugin, IServiceMaker)
class RaftKVServiceMaker:
    tapname = "raftkv"
    description = "A node of raftkv, a Raft-replicated key-value store."
    options = Options

    def makeService(self, options):
        from twisted_raft.service import makeService

        return makeService(options)


serviceMaker = RaftKVServiceMaker()
