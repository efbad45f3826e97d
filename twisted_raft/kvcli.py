"""
The C{raftkv} command's key-value subcommands: C{put}, C{get} (a key, or a
range with a range's options), C{delete}/C{del} (a key, or with C{END} or
C{--prefix} a range), C{cas} and C{txn --json}: their options, how they
run (L{run}), and the JSON of ranges and transactions (the shapes are a
public contract; README.rst, "The raftkv command").  The exit codes are
L{twisted_raft.cli}'s: L{run} says whether the answer was negative.

    raftkv put KEY VALUE | put KEY --file PATH
    raftkv get KEY [END] [--prefix] [--from-key] [--limit N] [--after KEY]
               [--keys-only] [--count-only] [--json] [--stale]
    raftkv delete|del KEY [END] [--prefix] [--from-key]
    raftkv cas KEY EXPECTED NEW | cas --absent KEY NEW
    raftkv txn --json FILE|-

Values are base64 in JSON.  C{get --json} prints C{{"revision": R, "more":
false, "kvs": [{"key": "k", "value": "<base64>", "create_revision": C,
"mod_revision": M, "version": V}, ...]}} (C{--keys-only}: no C{value};
C{--count-only}: C{{"revision": R, "count": N}}).  A range is read a page at
a time (C{after} the last key of the page before): without C{--limit} to
its end, so C{more} is false and C{revision} is the first page's (every
change after it is then at or after C{revision + 1}).
"""

import base64
import binascii
import json
import os

from twisted.python import usage

from twisted_raft.kvrecords import ALL_KEYS_END
from twisted_raft.kvtxn import OPERATORS, TARGETS, Compare, Txn
from twisted_raft.kvtxn import Delete as DeleteOp
from twisted_raft.kvtxn import Put as PutOp
from twisted_raft.kvtxn import Range as RangeOp
from twisted_raft.tools.command import InterspersedOptions

def isRange(options):
    """Whether C{get}'s C{options} ask for more than today's raw value."""
    return bool(
        options["end"] is not None or options["prefix"] or options["limit"]
        or options["after"] is not None or options["keys-only"] or options["count-only"]
        or options["json"]
    )


def checkRangeOptions(options):
    """
    Check C{get}'s or C{del}'s range options; C{--from-key} becomes the
    END L{ALL_KEYS_END} (a NUL cannot be given on a command line).

    @raise usage.UsageError: they clash.
    """
    if options["from-key"]:
        if options["end"] is not None:
            raise usage.UsageError("give END or --from-key, not both")
        options["end"] = ALL_KEYS_END
    if options["prefix"] and options["end"] is not None:
        raise usage.UsageError("give END (or --from-key) or --prefix, not both")
    limit = options.get("limit")
    if limit is not None and limit < 0:
        raise usage.UsageError("--limit must be 0 (no limit) or positive")


# -- JSON -----------------------------------------------------------------------------


def _b64(value):
    return base64.b64encode(value).decode("ascii")


def keyValueJSON(kv):
    """One key-value as the JSON object of C{get --json} (no C{value} when
    it has none: keys only)."""
    obj = {"key": kv.key}
    if kv.value is not None:
        obj["value"] = _b64(kv.value)
    obj["create_revision"] = kv.create_revision
    obj["mod_revision"] = kv.mod_revision
    obj["version"] = kv.version
    return obj


def rangeJSON(result, countOnly=False):
    """A L{RangeResult} as C{get --json} prints it."""
    if countOnly:
        return {"revision": result.revision, "count": result.count}
    return {
        "revision": result.revision,
        "more": result.more,
        "kvs": [keyValueJSON(kv) for kv in result.kvs],
    }


class TxnSyntaxError(usage.UsageError):
    """A C{txn --json} document that is not one (a usage error: exit 2)."""


def _fields(where, obj, required, optional):
    if not isinstance(obj, dict):
        raise TxnSyntaxError(f"{where}: expected an object, not {type(obj).__name__}")
    unknown = sorted(set(obj) - set(required) - set(optional))
    if unknown:
        raise TxnSyntaxError(f"{where}: unknown field {unknown[0]!r}")
    for name in required:
        if name not in obj:
            raise TxnSyntaxError(f"{where}: missing {name!r}")
    return obj


_KINDS = {int: "an integer", str: "a string", bool: "true or false"}


def _typed(where, value, kind, name):
    if isinstance(value, bool) != (kind is bool) or not isinstance(value, kind):
        raise TxnSyntaxError(f"{where}: {name} must be {_KINDS[kind]}")
    return value


def _text(where, obj, name):
    """A required string field, or an optional one (absent or null: C{None})."""
    value = obj.get(name)
    if value is None and name != "key":
        return None
    return _typed(where, value, str, name)


def _flag(where, obj, name):
    return _typed(where, obj.get(name, False), bool, name)


def _bytes(where, value, name):
    _typed(where, value, str, name)
    try:
        return base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise TxnSyntaxError(f"{where}: {name} is not base64") from None


def _compare(where, obj):
    _fields(where, obj, ("key", "target", "op", "value"), ())
    target, op = obj["target"], obj["op"]
    if target not in TARGETS:
        raise TxnSyntaxError(f"{where}: target must be one of {', '.join(TARGETS)}")
    if op not in OPERATORS:
        raise TxnSyntaxError(f"{where}: op must be one of {' '.join(OPERATORS)}")
    if target == "value":
        value = _bytes(where, obj["value"], "value (base64)")
    else:
        value = _typed(where, obj["value"], int, "value")
    return Compare(_text(where, obj, "key"), target, op, value)


def _operation(where, obj):
    if not isinstance(obj, dict) or len(obj) != 1:
        raise TxnSyntaxError(
            f'{where}: expected one of {{"put": ...}}, {{"delete": ...}}, {{"get": ...}}'
        )
    (kind, body), = obj.items()
    where = f"{where}.{kind}"
    if kind == "put":
        _fields(where, body, ("key", "value"), ("prev_kv",))
        return PutOp(_text(where, body, "key"), _bytes(where, body["value"], "value"),
                     _flag(where, body, "prev_kv"))
    if kind == "delete":
        _fields(where, body, ("key",), ("end", "prefix", "prev_kv"))
        return DeleteOp(_text(where, body, "key"), _text(where, body, "end"),
                        _flag(where, body, "prefix"), _flag(where, body, "prev_kv"))
    if kind == "get":
        _fields(where, body, ("key",),
                ("end", "prefix", "limit", "after", "keys_only", "count_only"))
        limit = _typed(where, body.get("limit", 0), int, "limit")
        return RangeOp(_text(where, body, "key"), _text(where, body, "end"),
                       _flag(where, body, "prefix"), limit, _text(where, body, "after"),
                       _flag(where, body, "keys_only"), _flag(where, body, "count_only"))
    raise TxnSyntaxError(f"{where}: unknown operation (put, delete or get)")


def parseTxn(text):
    """
    The L{Txn} a C{txn --json} document describes (see README.rst).  Only
    its shape is checked here; its limits are the server's (and the
    client library's) to check.

    @raise TxnSyntaxError: it is not JSON, or not of that shape (naming
        where, as C{success[1].put: missing 'value'}).
    """
    try:
        doc = json.loads(text)
    except (ValueError, UnicodeDecodeError) as e:
        raise TxnSyntaxError(f"not JSON: {e}") from None
    _fields("the transaction", doc, (), ("compare", "success", "failure"))
    parts = {}
    for name in ("compare", "success", "failure"):
        items = doc.get(name, [])
        if not isinstance(items, list):
            raise TxnSyntaxError(f"{name}: expected a list")
        parse = _compare if name == "compare" else _operation
        parts[name] = [parse(f"{name}[{i}]", item) for i, item in enumerate(items)]
    return Txn(parts["compare"], parts["success"], parts["failure"])


def txnJSON(txn, response):
    """
    C{txn --json}'s output for the L{TxnResponse} of C{txn}: C{{"succeeded":
    true, "revision": R, "responses": [...]}}, one object per operation of
    the branch that ran: C{{"put": {}}} (with C{prev_kv}, C{{"put":
    {"prev_kv": KV or null}}}), C{{"delete": {"deleted": N}}} (with
    C{prev_kv}, also C{"prev_kvs": [KV, ...]}), C{{"get": ...}} (as C{get
    --json}).  C{"complete": false} is added when the answer came without
    its key-values (over 2 MiB of them, or a retry of a transaction whose
    result was too large to keep): the previous key-values are then left
    out and the gets' C{kvs} are empty.
    """
    ops = txn.success if response.succeeded else txn.failure
    responses = []
    for op, r in zip(ops, response.responses):
        if isinstance(op, PutOp):
            body = {}
            if op.prevKv and response.complete:
                body["prev_kv"] = None if r.prev_kv is None else keyValueJSON(r.prev_kv)
            responses.append({"put": body})
        elif isinstance(op, DeleteOp):
            body = {"deleted": r.deleted}
            if r.prev_kvs is not None:
                body["prev_kvs"] = [keyValueJSON(kv) for kv in r.prev_kvs]
            responses.append({"delete": body})
        else:
            responses.append({"get": rangeJSON(r, op.countOnly)})
    out = {"succeeded": response.succeeded, "revision": response.revision, "responses": responses}
    if not response.complete:
        out["complete"] = False
    return out


# -- running the commands ---------------------------------------------------------------


def _writeBytes(stdout, data):
    out = getattr(stdout, "buffer", None)
    if out is None:
        stdout.write(data.decode("utf-8", "replace"))
    else:
        stdout.flush()
        out.write(data)
        out.flush()


def _writeKeyValue(stdout, kv):
    """The text form of one key-value: its key on a line, then its value
    and a newline (etcdctl's); keys only: the key's line alone."""
    stdout.write(kv.key + "\n")
    if kv.value is not None:
        _writeBytes(stdout, kv.value + b"\n")


async def runGet(options, client, stdout):
    """
    C{raftkv get} with any of a range's options (L{isRange}).

    @return: C{False} if it asked for a single key (no C{END}, no
        C{--prefix}) that does not exist (the command's "not found"),
        C{True} otherwise: a range that matches nothing too.
    """
    key, end, prefix = options["key"], options["end"], bool(options["prefix"])
    single = end is None and not prefix
    keysOnly, asJSON = bool(options["keys-only"]), bool(options["json"])
    stale, limit, after = bool(options["stale"]), options["limit"] or 0, options["after"]
    if options["count-only"]:
        result = await client.range(key, end, prefix, limit, after, countOnly=True, stale=stale)
        if asJSON:
            stdout.write(json.dumps(rangeJSON(result, countOnly=True)) + "\n")
        else:
            stdout.write(f"{result.count}\n")
        found = result.count
    elif limit:
        # more is known only once the limit is reached: read it all first
        result = await client.rangeAll(key, end, prefix, limit, after, keysOnly, stale)
        if asJSON:
            stdout.write(json.dumps(rangeJSON(result)) + "\n")
        else:
            for kv in result.kvs:
                _writeKeyValue(stdout, kv)
        found = len(result.kvs)
    else:
        pages = client.rangePages(key, end, prefix, 0, after, keysOnly, stale)
        found = await _stream(pages, stdout, asJSON)
    return bool(found) or not single


async def _stream(pages, stdout, asJSON):
    """
    Print every page of C{pages} as it comes, so a range of any size costs
    this process one page.  The JSON is exactly C{json.dumps} of the whole
    (L{rangeJSON}): read to its end, the range's C{more} is false, and its
    C{revision} is the first page's.

    @return: how many key-values were printed.
    """
    found = 0
    started = False
    async for page in pages:
        if asJSON and not started:
            stdout.write(f'{{"revision": {page.revision}, "more": false, "kvs": [')
        started = True
        for kv in page.kvs:
            if asJSON:
                stdout.write((", " if found else "") + json.dumps(keyValueJSON(kv)))
            else:
                _writeKeyValue(stdout, kv)
            found += 1
    if asJSON:
        stdout.write("]}\n")
    return found


async def runTxn(options, client, stdout, stdin):
    """
    C{raftkv txn --json FILE|-}: the command succeeds whichever branch ran.

    @raise TxnSyntaxError: the document is not a transaction (a usage
        error); the client's errors as they are.
    """
    path = options["file"]
    text = _readFile(path, stdin)
    try:
        txn = parseTxn(text)
    except TxnSyntaxError as e:
        raise TxnSyntaxError(f"txn --json {path}: {e}") from None
    response = await client.txn(txn.compares, txn.success, txn.failure)
    stdout.write(json.dumps(txnJSON(txn, response)) + "\n")


async def runDelete(options, client, stdout):
    """
    C{raftkv del|delete KEY END} or C{--prefix}: prints how many keys were
    deleted (etcdctl's); none is no failure.  (A single key keeps
    C{delete}'s output: L{run}.)
    """
    response = await client.delete(options["key"], options["end"], bool(options["prefix"]))
    stdout.write(f"{response.deleted}\n")


class TxnOptions(InterspersedOptions):
    """C{raftkv txn}'s options."""

    synopsis = "raftkv [options] txn --json FILE|-"
    longdesc = (
        "Apply a transaction read as JSON from FILE (- for stdin): "
        '{"compare": [{"key": "k", "target": "value|version|create_revision|mod_revision", '
        '"op": "==|!=|<|>", "value": ...}], "success": [{"put": {"key": "k", "value": '
        '"<base64>"}}, {"delete": {"key": "k", "prefix": false}}, {"get": {"key": "k"}}], '
        '"failure": [...]} (a value compare takes base64, the others integers).  Prints '
        '{"succeeded": true, "revision": R, "responses": [...]}; exit 0 whichever branch ran.'
    )
    optFlags = [["json", None, "Read and print JSON (the only format; required)."]]

    def parseArgs(self, path):
        if not self["json"]:
            raise usage.UsageError("txn takes --json FILE|- (JSON is its only format)")
        self["file"] = path


# -- put, get, delete, cas: options -------------------------------------------------


def _argBytes(arg):
    """A command-line argument as UTF-8 bytes (undoing surrogateescape)."""
    return os.fsencode(arg) if os.name != "nt" else arg.encode("utf-8")


class PutOptions(InterspersedOptions):
    synopsis = "raftkv [options] put KEY VALUE | put KEY --file PATH"
    longdesc = "Set KEY to VALUE (UTF-8 text) or to the bytes of PATH; prints the revision."
    optParameters = [["file", "f", None, 'Read the value from this file ("-" for stdin).']]

    def parseArgs(self, key, value=None):
        if (value is None) == (self["file"] is None):
            raise usage.UsageError("give either VALUE or --file PATH (exactly one)")
        self["key"] = key
        self["value"] = None if value is None else _argBytes(value)


class GetOptions(InterspersedOptions):
    synopsis = (
        "raftkv [options] get KEY [END] [--prefix] [--from-key] [--limit N] [--after KEY]"
        " [--keys-only] [--count-only] [--json] [--stale]"
    )
    longdesc = (
        "Print KEY's value (raw bytes); exit 1 if there is no such key.  With END, the "
        "keys of [KEY, END) (--from-key: every key from KEY on); with --prefix, every "
        "key starting with KEY (\"\": every key); each as its key's line, then its value "
        "and a newline (--keys-only: the keys' lines; --count-only: how many); a range "
        "that matches nothing exits 0.  --json: {\"revision\": R, \"more\": false, "
        "\"kvs\": [{\"key\": \"k\", \"value\": \"<base64>\", \"create_revision\": C, "
        "\"mod_revision\": M, \"version\": V}, ...]} (a single key too)."
    )
    optFlags = [
        ["stale", "s", "Allow any node to answer from its possibly stale state."],
        ["prefix", None, "Every key starting with KEY."],
        ["from-key", None, "Every key from KEY on (as END; etcdctl's flag)."],
        ["keys-only", None, "Keys only, no values."],
        ["count-only", None, "Only how many keys there are."],
        ["json", None, "Print JSON (values base64), with each key's revisions and version."],
    ]
    optParameters = [
        ["limit", None, None, "At most N keys (default: all, read a page at a time).", int],
        ["after", None, None, "Start strictly after this key (how a script pages on)."],
    ]

    def parseArgs(self, key, end=None):
        self["key"] = key
        self["end"] = end

    def postOptions(self):
        checkRangeOptions(self)


class DeleteOptions(InterspersedOptions):
    synopsis = "raftkv [options] delete|del KEY [END] [--prefix] [--from-key]"
    longdesc = (
        "Delete KEY; prints the revision; exit 1 if there was no such key.  With END, "
        "every key of [KEY, END) (--from-key: every key from KEY on); with --prefix, every "
        "key starting with KEY (\"\": every key): prints how many keys were deleted "
        "(exit 0, none too)."
    )
    optFlags = [
        ["prefix", None, "Every key starting with KEY."],
        ["from-key", None, "Every key from KEY on (as END; etcdctl's flag)."],
    ]

    def parseArgs(self, key, end=None):
        self["key"] = key
        self["end"] = end

    def postOptions(self):
        checkRangeOptions(self)


class CasOptions(InterspersedOptions):
    synopsis = "raftkv [options] cas KEY EXPECTED NEW | cas --absent KEY NEW"
    longdesc = (
        "Set KEY to NEW only if its value is EXPECTED, or with --absent only if "
        "KEY does not exist.  Prints the revision; exit 1 if the comparison failed."
    )
    optFlags = [["absent", "a", "KEY must not exist (instead of EXPECTED)."]]

    def parseArgs(self, *args):
        if self["absent"]:
            if len(args) != 2:
                raise usage.UsageError("cas --absent takes KEY NEW")
            key, new = args
            self["expected"] = None
        else:
            if len(args) != 3:
                raise usage.UsageError("cas takes KEY EXPECTED NEW (or --absent KEY NEW)")
            key, expected, new = args
            self["expected"] = _argBytes(expected)
        self["key"] = key
        self["value"] = _argBytes(new)


# -- running any of them ----------------------------------------------------------------


COMMANDS = ("put", "get", "delete", "del", "cas", "txn")
"""The subcommands L{run} runs."""


def _readFile(path, stdin):
    if path == "-":
        return stdin.buffer.read() if hasattr(stdin, "buffer") else stdin.read()
    with open(path, "rb") as f:
        return f.read()


async def run(command, options, client, stdout, stderr, stdin):
    """
    Run the key-value subcommand C{command} (one of L{COMMANDS}) with
    C{client}; its failures are raised as they are.

    @param stdout: a text stream; raw values go to its C{buffer}.
    @param stdin: where C{put --file -} and C{txn --json -} read.
    @return: C{False} if the answer is negative (said on C{stderr}): C{get}
        or C{delete} found no such key, C{cas} did not match (a range that
        matches nothing is not); C{True} otherwise.
    """
    if command == "put":
        value = options["value"]
        if value is None:
            value = _readFile(options["file"], stdin)
        revision = await client.put(options["key"], value)
        stdout.write(f"{revision}\n")
    elif command == "get" and isRange(options):
        if not await runGet(options, client, stdout):
            stderr.write("not found\n")
            return False
    elif command in ("delete", "del") and (options["end"] is not None or options["prefix"]):
        await runDelete(options, client, stdout)
    elif command == "txn":
        await runTxn(options, client, stdout, stdin)
    elif command == "get":
        value = await client.get(options["key"], stale=bool(options["stale"]))
        if value is None:
            stderr.write("not found\n")
            return False
        _writeBytes(stdout, value)
        if stdout.isatty():
            stdout.write("\n")
    elif command in ("delete", "del"):
        deleted, revision = await client.delete(options["key"])
        # Only a change has a revision to print: a failed one prints none.
        if not deleted:
            stderr.write("not found\n")
            return False
        stdout.write(f"{revision}\n")
    elif command == "cas":
        succeeded, revision = await client.compareAndSet(
            options["key"], options["expected"], options["value"]
        )
        if not succeeded:
            stderr.write(
                "compare failed: key exists\n" if options["expected"] is None
                else "compare failed: value differs or key missing\n"
            )
            return False
        stdout.write(f"{revision}\n")
    else:
        raise ValueError(f"not a key-value command: {command}")
    return True
