"""
L{AsyncioClient} with mutual TLS, against three real nodes run with
L{launcher.LocalTLS}'s certificates (one cluster for the module); and a
TLS program that never imports the global reactor (Twisted's TLS layer
takes the client's reactor as its clock: C{tls.endpointWithTLS}).
"""

import asyncio
import json
import subprocess
import sys
import textwrap

import pytest

from tests.process.support import Cluster
from twisted_raft.client import AsyncioClient, Unavailable
from twisted_raft.tls import TLSCredentials
from twisted_raft.tools import certs, launcher

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def tlsCluster(tmp_path_factory):
    base = tmp_path_factory.mktemp("aiotls")
    tls = launcher.LocalTLS(str(base / "tls"), 3)
    c = Cluster(base, tls=tls)
    c.start()
    try:
        yield c
    finally:
        c.killAll()


def withClient(addresses, body, **options):
    async def main():
        async with AsyncioClient(addresses, timeout=options.pop("timeout", 30),
                                 **options) as client:
            return await body(client)

    return asyncio.run(main())


def test_tls(tlsCluster):
    async def body(client):
        revision = await client.put("tls", b"yes")
        assert await client.get("tls") == b"yes"
        async with client.watch("tls", startRevision=revision) as events:
            assert (await events.__anext__()).value == b"yes"
        return (await client.status())["role"]

    credentials = tlsCluster.tls.credentials()
    assert withClient(tlsCluster.peers, body, tls=credentials) == "leader"


def test_tls_refused_without_the_clusters_certificate(tlsCluster, tmp_path):
    certs.makeCertificates(str(tmp_path), 0, clients=["mallory"])
    cert, key = certs.clientFiles(str(tmp_path), "mallory")
    from twisted_raft.tls import TLSFiles

    foreign = TLSCredentials(TLSFiles(ca=str(tmp_path / certs.CA_FILE), cert=cert, key=key))

    async def body(client):
        with pytest.raises(Unavailable, match="no node"):
            await client.get("tls")

    withClient(tlsCluster.peers, body, tls=foreign, timeout=1)


PROGRAM = """
import asyncio, json, sys

from twisted_raft.client import AsyncioClient
from twisted_raft.tls import TLSCredentials, TLSFiles


async def main(addresses, ca, cert, key):
    tls = TLSCredentials(TLSFiles(ca=ca, cert=cert, key=key))
    async with AsyncioClient(addresses, timeout=5, tls=tls) as client:
        await client.put("tls-program", b"1")


asyncio.run(main(sys.argv[1].split(","), *sys.argv[2:]))
print(json.dumps("twisted.internet.reactor" in sys.modules))
"""


def test_tls_leaves_the_global_reactor_alone(tlsCluster):
    files = tlsCluster.tls.clientFiles()
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(PROGRAM), ",".join(tlsCluster.peers),
         files.ca, files.cert, files.key],
        capture_output=True, text=True, timeout=60, env=launcher.environment(),
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) is False
