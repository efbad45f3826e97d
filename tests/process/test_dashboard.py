"""
The dashboard in a real headless Chromium (issue 12): three real nodes
with C{--http}, the page of one of them renders the cluster, and after the
leader's SIGKILL it shows the killed node down and the new leader within
2 s of the election.

Skips, saying what is missing, without Debian's chromium and
chromium-driver or the selenium package (L{twisted_raft.tools.browser}).
"""

import json
import time
import urllib.request

import pytest
import pytest_twisted
from twisted.internet import defer

from tests.process.support import Cluster, sleep, statuses, waitForLeader
from twisted_raft.tools import browser, launcher

pytestmark = pytest.mark.integration

SHOWN_AFTER_ELECTION = 2.0
"""The issue's bound: a new leader is on the page within 2 s of its election."""
DEADLINE = 20.0
"""Seconds for anything else (start-up, the election itself on a busy machine)."""


@pytest.fixture
def chromium():
    why = browser.missing()
    if why is not None:
        pytest.skip(why)
    b = browser.HeadlessChromium()
    try:
        yield b
    finally:
        b.quit()


def fetchJSON(url):
    with urllib.request.urlopen(url, timeout=2) as r:
        return json.load(r)


@defer.inlineCallbacks
def pageShows(b, c, what, check, deadline=DEADLINE):
    """Poll the page's rows until C{check(rows)} holds; return them."""
    end = time.monotonic() + deadline
    while True:
        rows = b.rows()
        if check(rows):
            return rows
        if time.monotonic() > end:
            pytest.fail(f"the page never showed {what}: rows {rows}\n{c.logs()}")
        yield sleep(0.05)


def leaders(rows):
    return [i for i, role in rows if role == "leader"]


@pytest_twisted.inlineCallbacks
def test_the_page_shows_the_cluster_and_a_new_leader_after_a_kill(httpCluster, chromium):
    c, b = httpCluster, chromium
    c.start()
    leader = yield waitForLeader(c)
    viewer = min(i for i in c.ids if i != leader)  # the page is not served by the leader
    b.driver.get(c.url(viewer))
    rows = yield pageShows(b, c, "three members and one leader",
                           lambda r: len(r) == 3 and leaders(r) == [leader])
    assert sorted(i for i, _ in rows) == [1, 2, 3]
    oldTerm = fetchJSON(c.url(viewer, "/api/cluster"))["term"]

    c.kill(leader)
    killedAt = time.monotonic()
    elected = shown = None
    newLeader = None
    while shown is None or elected is None:
        now = time.monotonic()
        if elected is None:
            # when the test first sees a survivor lead a later term (a little
            # after the election itself, so the bound below is if anything
            # easier to meet than the issue's)
            s = yield statuses(c)
            won = [i for i, st in s.items() if st["role"] == "leader" and st["term"] > oldTerm]
            if won:
                elected, newLeader = time.monotonic(), won[0]
        if shown is None:
            rows = dict(b.rows())
            if rows.get(leader) == "down" and len(leaders(rows.items())) == 1:
                shown = time.monotonic()
                shownLeader = leaders(rows.items())[0]
        if elected is not None and shown is None:
            assert now - elected <= SHOWN_AFTER_ELECTION + 0.5, (
                f"node {newLeader} was elected {now - elected:.1f}s ago and the page"
                f" still shows {b.rows()}\n{c.logs()}"
            )
        if now - killedAt > DEADLINE:
            pytest.fail(f"no new leader on the page {DEADLINE}s after the kill:"
                        f" {b.rows()}\n{c.logs()}")
        yield sleep(0.05)
    print(f"elected {elected - killedAt:.2f}s after the kill, on the page {shown - killedAt:.2f}s")
    assert shownLeader == newLeader != leader
    assert shown - elected <= SHOWN_AFTER_ELECTION, (shown - elected, c.logs())
    # the JSON agrees with the page
    data = fetchJSON(c.url(viewer, "/api/cluster"))
    assert data["leader_id"] == newLeader and data["term"] > oldTerm
    assert {m["node_id"]: m["role"] for m in data["members"]}[leader] == "down"
    assert data["failures_tolerated"] == 0


@pytest_twisted.inlineCallbacks
def test_under_mutual_tls_the_node_asks_the_others_with_its_own_certificate(tmp_path):
    """No browser needed: every member answers the view of a mutual-TLS
    cluster (each connection presents the node's own certificate)."""
    tls = launcher.LocalTLS(str(tmp_path / "tls"), 3)
    c = Cluster(tmp_path, tls=tls, http=True)
    try:
        c.start()
        end = time.monotonic() + DEADLINE
        while True:
            try:
                data = fetchJSON(c.url(2, "/api/cluster"))
            except OSError:
                data = None  # not listening yet
            if data is not None:
                roles = sorted(m["role"] for m in data["members"])
                if roles == ["follower", "follower", "leader"]:
                    break
            if time.monotonic() > end:
                pytest.fail(f"the view never showed the TLS cluster: {data}\n{c.logs()}")
            yield sleep(0.1)
        assert data["failures_tolerated"] == 1
        assert all(m["last_contact"] is not None for m in data["members"])
    finally:
        c.killAll()
