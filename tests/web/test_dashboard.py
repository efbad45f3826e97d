"""
The dashboard's HTTP side: the page and its files, C{/api/cluster}, the
headers that keep the page to the node's own resources, GET/HEAD only, and
the status fetcher closing what it opened.
"""

import json
import re

import pytest
import pytest_twisted
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.web.test.requesthelper import DummyRequest

from twisted_raft.raft.membership import Member
from twisted_raft.raft.messages import Status
from twisted_raft.web.dashboard import StatusFetcher, dashboardChildren, formatStatus
from twisted_raft.web.site import buildSite


class FakeView:
    def __init__(self):
        self.touched = 0

    def touch(self):
        self.touched += 1

    def snapshot(self):
        return {"node_id": 1, "members": [{"node_id": 1, "role": "leader",
                                           "address": "<b>x</b>"}]}


def get(site, path, method=b"GET"):
    """Render C{path} (C{b"/api/cluster"}) on C{site}: the request, its body."""
    request = DummyRequest(path.lstrip(b"/").split(b"/"))
    request.method = method
    request.uri = request.path = path
    resource = site.getResourceFor(request)
    body = resource.render(request)
    return request, body


@pytest.fixture
def site():
    view = FakeView()
    s = buildSite(dashboardChildren(view))
    s.view = view
    return s


def test_the_page_is_served_at_root_and_starts_the_polling(site):
    request, body = get(site, b"/")
    assert request.responseHeaders.getRawHeaders(b"content-type") == [
        b"text/html; charset=utf-8"
    ]
    assert b'<tbody id="member-rows">' in body
    assert site.view.touched == 1


def test_api_cluster_is_the_views_snapshot_as_json(site):
    request, body = get(site, b"/api/cluster")
    assert json.loads(body) == site.view.snapshot()  # JSON escapes nothing away
    assert request.responseHeaders.getRawHeaders(b"content-type") == [b"application/json"]
    assert request.responseHeaders.getRawHeaders(b"cache-control") == [b"no-store"]
    assert site.view.touched == 1


@pytest.mark.parametrize("path", [b"/", b"/dashboard.js", b"/dashboard.css", b"/api/cluster"])
def test_every_file_keeps_the_browser_to_the_nodes_own_resources(site, path):
    request, _ = get(site, path)
    policy = request.responseHeaders.getRawHeaders(b"content-security-policy")[0]
    assert b"default-src 'none'" in policy and b"script-src 'self'" in policy
    assert b"unsafe-inline" not in policy
    assert request.responseHeaders.getRawHeaders(b"x-content-type-options") == [b"nosniff"]


def test_the_page_loads_nothing_from_elsewhere_and_runs_no_inline_script(site):
    _, html = get(site, b"/")
    _, js = get(site, b"/dashboard.js")
    _, css = get(site, b"/dashboard.css")
    for text in (html, js, css):
        # the SVG namespace is a name, not a resource
        urls = set(re.findall(rb"(?:https?:)?//[\w.-]+", text)) - {b"http://www.w3.org"}
        assert urls == set(), urls
        assert b"@import" not in text
    assert re.findall(rb"<script[^>]*>", html) == [b'<script src="dashboard.js" defer>']
    assert b"<style" not in html and re.findall(rb"\son\w+\s*=", html) == []


def test_the_script_writes_data_as_text_only(site):
    _, js = get(site, b"/dashboard.js")
    assert b"innerHTML" not in js and b"outerHTML" not in js
    assert b"insertAdjacentHTML" not in js and b"document.write" not in js
    assert b"eval(" not in js
    # the public hooks
    assert b"dataset.nodeId" in js and b"dataset.role" in js


@pytest.mark.parametrize("method", [b"POST", b"PUT", b"DELETE"])
def test_nothing_but_get_and_head(site, method):
    for path in (b"/", b"/api/cluster"):
        request, body = get(site, path, method)
        assert request.responseCode == 405 and body == b""
        assert request.responseHeaders.getRawHeaders(b"allow") == [b"GET, HEAD"]
    assert site.view.touched == 0


def test_head_is_answered(site):
    request, _ = get(site, b"/api/cluster", b"HEAD")
    assert request.responseHeaders.getRawHeaders(b"content-type") == [b"application/json"]


def test_unknown_paths_are_not_found(site):
    request, body = get(site, b"/api/other")
    assert request.responseCode == 404


def test_the_local_row_has_the_status_commands_keys():
    from twisted_raft.rpc.commands import Status as StatusCommand

    row = formatStatus(Status(1, "leader", 3, 1, 10, 9, 11, True, 0), readsAnswered=7)
    names = {name.decode() for name, _ in StatusCommand.response}
    required = {name.decode() for name, arg in StatusCommand.response if not arg.optional}
    assert required <= set(row) <= names
    assert "reads" in row
    assert (row["commit_index"], row["last_applied"], row["reads"]) == (10, 9, 7)


# -- the fetcher -------------------------------------------------------------------


class FakeProto:
    def __init__(self):
        self.calls = []
        self.aborted = False
        self.transport = self
        self.disconnecting = False

    def callRemote(self, command, **kw):
        d = defer.Deferred()
        self.calls.append(d)
        return d

    def abortConnection(self):
        self.aborted = True
        self.disconnecting = True


def fetcherWith(proto):
    fetcher = StatusFetcher(Clock(), lambda m: m.address)
    fetcher.connections._connect = lambda address: defer.succeed(proto)
    return fetcher


def test_fetcher_asks_status_on_one_cached_connection_per_address():
    proto = FakeProto()
    fetcher = fetcherWith(proto)
    member = Member(2, "10.0.0.2:7000")
    first = fetcher(member)
    proto.calls[0].callback({"node_id": 2})
    assert first.result == {"node_id": 2}
    fetcher(member)
    assert len(proto.calls) == 2 and list(fetcher.connections.protocols) == ["10.0.0.2:7000"]


def test_fetcher_aborts_the_connection_of_a_question_timed_out():
    proto = FakeProto()
    fetcher = fetcherWith(proto)
    d = fetcher(Member(2, "10.0.0.2:7000"))
    d.addErrback(lambda f: f.trap(defer.CancelledError))
    d.cancel()  # what the view's timeout does
    assert proto.aborted and fetcher.connections.protocols == {}


def test_fetcher_refuses_a_member_without_address():
    fetcher = StatusFetcher(Clock(), lambda m: m.address)
    with pytest.raises(ValueError):
        fetcher(Member(2, ""))



@pytest_twisted.inlineCallbacks
def test_fetcher_logs_nothing_at_info_per_connection():
    """It reconnects to a member that does not answer twice a second: Twisted's
    per-factory lines would be a log line each time (the AMP lines are
    demoted by the node's log observer, L{twisted_raft.logs})."""
    from twisted.internet import protocol, reactor
    from twisted.logger import LogLevel, globalLogPublisher

    class Hangup(protocol.Protocol):
        def connectionMade(self):
            self.transport.loseConnection()

    server = protocol.ServerFactory.forProtocol(Hangup)
    server.noisy = False
    port = reactor.listenTCP(0, server, interface="127.0.0.1")
    events = []
    globalLogPublisher.addObserver(events.append)
    fetcher = StatusFetcher(reactor, lambda m: m.address)
    try:
        for i in range(2):
            d = fetcher(Member(2, f"127.0.0.1:{port.getHost().port}"))
            with pytest.raises(Exception):
                yield d
    finally:
        globalLogPublisher.removeObserver(events.append)
        yield fetcher.close()
        yield port.stopListening()
    noise = [e.get("log_format") for e in events
             if e.get("log_level") == LogLevel.info and "factory" in (e.get("log_format") or "")]
    assert noise == []
