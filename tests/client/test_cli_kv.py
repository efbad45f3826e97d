"""
The C{raftkv} command's ranges, transactions and range deletes
(L{twisted_raft.kvcli}): every output shape and exit code, run against real
servers over in-memory AMP (L{tests.kvsupport}).
"""

import base64
import json

import pytest

from twisted_raft import cli, kv, kvcli
from twisted_raft.kvlimits import MAX_TXN_OPS, MAX_VALUE_BYTES
from twisted_raft.rpc import kvwire

from tests.kvsupport import Nodes, runCLI


def b64(data):
    return base64.b64encode(data).decode("ascii")


@pytest.fixture
def nodes():
    """Three nodes holding a/1, a/2, b (revisions 2 to 4: 1 is the metadata epoch)."""
    n = Nodes(3)
    for key, value in [("a/1", b"x"), ("a/2", b"\x00\xff"), ("b", b"z")]:
        n.write(kv.encodePut(key, value))
    return n


def kvJSON(key, value, revision, version=1, create=None):
    obj = {"key": key}
    if value is not None:
        obj["value"] = b64(value)
    obj.update(create_revision=create or revision, mod_revision=revision, version=version)
    return obj


# -- get --------------------------------------------------------------------------


def test_get_without_new_flags_is_unchanged(nodes):
    assert runCLI(nodes, ["get", "a/2"]) == (0, b"\x00\xff", "")
    assert runCLI(nodes, ["get", "missing"]) == (1, b"", "not found\n")
    assert runCLI(nodes, ["get", "a/1", "--stale"]) == (0, b"x", "")
    assert nodes.leader.reads == 2  # through Get, not Range: the stale one read locally


def test_get_a_prefix_prints_keys_then_values(nodes):
    assert runCLI(nodes, ["get", "a/", "--prefix"]) == (0, b"a/1\nx\na/2\n\x00\xff\n", "")
    assert runCLI(nodes, ["get", "a/", "--prefix", "--keys-only"]) == (0, b"a/1\na/2\n", "")
    assert runCLI(nodes, ["get", "a/", "--prefix", "--count-only"]) == (0, b"2\n", "")
    assert runCLI(nodes, ["get", "a/2", "c"]) == (0, b"a/2\n\x00\xff\nb\nz\n", "")
    assert runCLI(nodes, ["get", "a/2", "--from-key", "--keys-only"]) == (0, b"a/2\nb\n", "")
    assert runCLI(nodes, ["get", "", "--prefix", "--after", "a/1", "--keys-only"]) == (
        0, b"a/2\nb\n", "",
    )


def test_get_json_shapes(nodes):
    code, out, err = runCLI(nodes, ["get", "a/", "--prefix", "--json"])
    assert (code, err) == (0, "")
    assert out == (json.dumps({"revision": 4, "more": False, "kvs": [
        kvJSON("a/1", b"x", 2), kvJSON("a/2", b"\x00\xff", 3),
    ]}) + "\n").encode()
    code, out, _ = runCLI(nodes, ["get", "a/", "--prefix", "--json", "--keys-only"])
    assert json.loads(out) == {"revision": 4, "more": False, "kvs": [
        kvJSON("a/1", None, 2), kvJSON("a/2", None, 3),
    ]}
    code, out, _ = runCLI(nodes, ["get", "a/", "--prefix", "--json", "--count-only"])
    assert json.loads(out) == {"revision": 4, "count": 2}
    code, out, _ = runCLI(nodes, ["get", "b", "--json"])  # a single key too
    assert (code, json.loads(out)) == (0, {"revision": 4, "more": False, "kvs": [
        kvJSON("b", b"z", 4),
    ]})


def test_limit_stops_with_more_and_after_pages_on(nodes):
    code, out, _ = runCLI(nodes, ["get", "", "--prefix", "--limit", "2", "--json"])
    first = json.loads(out)
    assert first["more"] is True and [k["key"] for k in first["kvs"]] == ["a/1", "a/2"]
    code, out, _ = runCLI(nodes, ["get", "", "--prefix", "--after", "a/2", "--json"])
    rest = json.loads(out)
    assert rest["more"] is False and [k["key"] for k in rest["kvs"]] == ["b"]
    # repeating the last key as the new start also works (it comes again)
    code, out, _ = runCLI(nodes, ["get", "a/2", "--from-key", "--limit", "5", "--keys-only"])
    assert out == b"a/2\nb\n"


def test_exit_codes_of_a_missing_key_and_an_empty_range(nodes):
    code, out, err = runCLI(nodes, ["get", "nope", "--json"])
    assert (code, json.loads(out), err) == (
        1, {"revision": 4, "more": False, "kvs": []}, "not found\n",
    )
    assert runCLI(nodes, ["get", "nope", "--count-only"]) == (1, b"0\n", "not found\n")
    assert runCLI(nodes, ["get", "nope", "--keys-only"]) == (1, b"", "not found\n")
    assert runCLI(nodes, ["get", "nope/", "--prefix"]) == (0, b"", "")
    code, out, err = runCLI(nodes, ["get", "nope/", "--prefix", "--json"])
    assert (code, json.loads(out), err) == (0, {"revision": 4, "more": False, "kvs": []}, "")
    assert runCLI(nodes, ["get", "c", "d", "--count-only"]) == (0, b"0\n", "")


def test_without_limit_every_page_is_printed_as_one_document(nodes, monkeypatch):
    monkeypatch.setattr(kvwire, "RANGE_PAGE_KEYS", 2)
    for i in range(7):
        nodes.write(kv.encodePut(f"p/{i}", b"%d" % i))
    code, out, _ = runCLI(nodes, ["get", "p/", "--prefix", "--json"])
    doc = json.loads(out)
    assert code == 0 and [k["key"] for k in doc["kvs"]] == [f"p/{i}" for i in range(7)]
    assert doc["more"] is False and doc["revision"] == 11
    assert out == (json.dumps(doc) + "\n").encode()  # as json.dumps would print it whole
    assert nodes.leader.reads == 4  # four pages
    code, out, _ = runCLI(nodes, ["get", "p/", "--prefix", "--keys-only"])
    assert out == b"".join(b"p/%d\n" % i for i in range(7))


def test_a_stale_range_reads_the_node_asked(nodes):
    nodes.nodes[1].store.data["a/1"] = b"old"
    nodes.client._preferred = nodes.addresses[1]
    code, out, _ = runCLI(nodes, ["get", "a/1", "--stale", "--json"])
    assert json.loads(out)["kvs"][0]["value"] == b64(b"old")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["get", "a", "b", "--prefix"], "not both"),
        (["get", "a", "b", "--from-key"], "not both"),
        (["get", "a", "--limit", "-1"], "--limit"),
        (["get", "a", "--limit", "many"], "'many'"),
        (["get", "a", "b", "c"], "Wrong number of arguments"),
        (["del", "a", "b", "--prefix"], "not both"),
        (["del"], ""),
        (["txn", "doc.json"], "--json"),
        (["txn", "--json"], ""),
    ],
)
def test_bad_usage_is_exit_2(nodes, argv, message):
    code, out, err = runCLI(nodes, argv)
    assert code == cli.EXIT_USAGE and message in err, err


def test_help_lists_the_new_commands(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for line in ("raftkv get KEY [END] [--prefix]", "raftkv del KEY [END] [--prefix]",
                 "raftkv txn --json FILE|-"):
        assert line in out
    assert "  del " in out and "  txn " in out  # in the table of commands


# -- del ---------------------------------------------------------------------------


def test_del_a_key_is_delete(nodes):
    assert runCLI(nodes, ["del", "b"]) == (0, b"5\n", "")
    assert runCLI(nodes, ["del", "b"]) == (1, b"", "not found\n")
    assert runCLI(nodes, ["delete", "a/1"]) == (0, b"7\n", "")
    # the old entries, in the CLI client's session
    entries = [kv.decodeSession(p)[2] for p in nodes.leader.proposed[4:]]
    assert entries == [kv.encodeDelete(k) for k in ("b", "b", "a/1")]


def test_del_a_range_or_prefix_prints_the_count(nodes):
    assert runCLI(nodes, ["del", "a/", "--prefix"]) == (0, b"2\n", "")
    assert runCLI(nodes, ["del", "a/", "--prefix"]) == (0, b"0\n", "")
    assert runCLI(nodes, ["delete", "", "--from-key"]) == (0, b"1\n", "")
    assert nodes.leader.store.data == {}
    for key, value in [("m", b"1"), ("n", b"2"), ("o", b"3")]:
        nodes.write(kv.encodePut(key, value))
    assert runCLI(nodes, ["del", "m", "o"]) == (0, b"2\n", "")
    assert list(nodes.leader.store.data) == ["o"]


# -- txn --------------------------------------------------------------------------------


def txnDoc(**parts):
    return json.dumps(parts).encode()


def test_txn_reads_json_and_prints_the_branch_that_ran(nodes, tmp_path):
    doc = txnDoc(
        compare=[
            {"key": "a/1", "target": "value", "op": "==", "value": b64(b"x")},
            {"key": "b", "target": "mod_revision", "op": "<", "value": 5},
        ],
        success=[
            {"put": {"key": "c", "value": b64(b"\x01"), "prev_kv": True}},
            {"put": {"key": "a/1", "value": b64(b"y")}},
            {"delete": {"key": "a/", "prefix": False}},
            {"delete": {"key": "b", "prev_kv": True}},
            {"get": {"key": "a/", "prefix": True}},
            {"get": {"key": "", "prefix": True, "count_only": True}},
            {"get": {"key": "a/", "prefix": True, "keys_only": True, "limit": 1}},
        ],
        failure=[{"get": {"key": "b"}}],
    )
    path = tmp_path / "txn.json"
    path.write_bytes(doc)
    code, out, err = runCLI(nodes, ["txn", "--json", str(path)])
    assert (code, err) == (0, "")
    assert json.loads(out) == {"succeeded": True, "revision": 5, "responses": [
        {"put": {"prev_kv": None}},
        {"put": {}},
        {"delete": {"deleted": 0}},
        {"delete": {"deleted": 1, "prev_kvs": [kvJSON("b", b"z", 4)]}},
        {"get": {"revision": 5, "more": False, "kvs": [
            kvJSON("a/1", b"y", 5, version=2, create=2), kvJSON("a/2", b"\x00\xff", 3),
        ]}},
        {"get": {"revision": 5, "count": 3}},
        {"get": {"revision": 5, "more": True, "kvs": [kvJSON("a/1", None, 5, 2, 2)]}},
    ]}
    # the same again from stdin: the compares fail now, and that is exit 0 too
    code, out, err = runCLI(nodes, ["txn", "--json", "-"], stdin=doc)
    assert (code, err) == (0, "")
    assert json.loads(out) == {"succeeded": False, "revision": 6, "responses": [
        {"get": {"revision": 6, "more": False, "kvs": []}},
    ]}


def test_txn_of_nothing_is_a_transaction(nodes):
    code, out, err = runCLI(nodes, ["txn", "--json", "-"], stdin=b"{}")
    assert (code, json.loads(out)) == (0, {"succeeded": True, "revision": 5, "responses": []})


@pytest.mark.parametrize(
    "doc, message",
    [
        (b"{not json", "not JSON"),
        (b"[]", "expected an object"),
        (txnDoc(compares=[]), "unknown field 'compares'"),
        (txnDoc(success={}), "success: expected a list"),
        (txnDoc(success=[{"put": {"key": "k"}}]), "success[0].put: missing 'value'"),
        (txnDoc(success=[{"put": {"key": "k", "value": "%%%"}}]), "value is not base64"),
        (txnDoc(success=[{"put": {"key": 7, "value": ""}}]), "key must be a string"),
        (txnDoc(success=[{"put": {"key": None, "value": ""}}]), "key must be a string"),
        (txnDoc(success=[{"get": {"key": "k", "limit": "9"}}]), "limit must be an integer"),
        (txnDoc(success=[{"get": {"key": "k", "limit": True}}]), "limit must be an integer"),
        (txnDoc(success=[{"delete": {"key": "k", "prefix": 1}}]), "prefix must be true or false"),
        (txnDoc(failure=[{"rename": {"key": "k"}}]), "failure[0].rename: unknown operation"),
        (txnDoc(failure=[{"put": {}, "get": {}}]), "failure[0]: expected one of"),
        (txnDoc(compare=[{"key": "k", "target": "size", "op": "==", "value": 1}]), "target"),
        (txnDoc(compare=[{"key": "k", "target": "version", "op": "=", "value": 1}]), "op must"),
        (txnDoc(compare=[{"key": "k", "target": "version", "op": "==", "value": "1"}]),
         "value must be an integer"),
        (txnDoc(compare=[{"key": "k", "target": "value", "op": "==", "value": 1}]),
         "value (base64) must be a string"),
    ],
)
def test_a_bad_txn_document_is_a_usage_error_naming_where(nodes, doc, message):
    code, out, err = runCLI(nodes, ["txn", "--json", "-"], stdin=doc)
    assert (code, out) == (cli.EXIT_USAGE, b"")
    assert err.startswith("error: txn --json -: ") and message in err, err
    assert len(nodes.leader.proposed) == 4  # nothing sent (the epoch and the three puts)


@pytest.mark.parametrize(
    "success, code, word",
    [
        ([{"put": {"key": "k", "value": ""}}] * (MAX_TXN_OPS + 1), cli.EXIT_INVALID_ARGUMENT,
         "INVALID_ARGUMENT"),
        ([{"put": {"key": "", "value": ""}}], cli.EXIT_INVALID_ARGUMENT, "empty put key"),
        ([{"put": {"key": "k", "value": b64(b"v" * (MAX_VALUE_BYTES + 1))}}],
         cli.EXIT_VALUE_TOO_LARGE, "VALUE_TOO_LARGE"),
    ],
)
def test_a_txn_over_a_limit_has_the_contracts_exit_code(nodes, success, code, word):
    result = runCLI(nodes, ["txn", "--json", "-"], stdin=txnDoc(success=success))
    assert result[0] == code and word in result[2], result


def test_an_unreadable_txn_file_is_exit_7(nodes, tmp_path):
    code, out, err = runCLI(nodes, ["txn", "--json", str(tmp_path / "missing.json")])
    assert code == cli.EXIT_ERROR and "FileNotFoundError" in err


def test_a_txn_answer_without_its_key_values_says_so(nodes, monkeypatch):
    monkeypatch.setattr(kvwire, "ANSWER_KV_BYTES", 10)
    doc = txnDoc(success=[{"put": {"key": "b", "value": "", "prev_kv": True}},
                          {"get": {"key": "a/", "prefix": True}}])
    code, out, err = runCLI(nodes, ["txn", "--json", "-"], stdin=doc)
    assert (code, json.loads(out)) == (0, {
        "succeeded": True, "revision": 5, "complete": False, "responses": [
            {"put": {}}, {"get": {"revision": 5, "more": False, "kvs": []}},
        ],
    })


def test_the_parsed_transaction_is_the_kv_layers():
    txn = kvcli.parseTxn(txnDoc(
        compare=[{"key": "k", "target": "create_revision", "op": "!=", "value": 0}],
        success=[{"delete": {"key": "a", "end": "b", "prev_kv": True}}],
        failure=[{"get": {"key": "a", "after": "a0", "count_only": True}}],
    ))
    assert txn == kv.Txn(
        [kv.Compare("k", "create_revision", "!=", 0)],
        [kv.Delete("a", "b", False, True)],
        [kv.Range("a", None, False, 0, "a0", False, True)],
    )
