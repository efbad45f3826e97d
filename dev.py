#!/usr/bin/env python3
"""
One-command bootstrap for raftkv: ``python3 dev.py cluster`` or ``python3 dev.py test``.

Creates ``.venv`` next to this file (if missing), installs raftkv into it with
its test extra (non-editable, so Twisted's plugin scan finds ``raftkv``), then
runs the requested command inside that environment.  Only the Python 3.11
standard library is needed to start.  It installs again only when setup.py,
the README or a file of the package changed since the last install (a stamp
in ``.venv`` records what that was made from).

    python3 dev.py cluster [raftkv cluster options...]   start a local cluster
    python3 dev.py test [pytest options...] [tests...]   run the whole test suite (or
                                                         the tests named)
    python3 dev.py raftkv ARGS...                        run the raftkv command
    python3 dev.py bench [raftkv bench options...]       benchmark (installs the bench
                                                         extra: PySyncObj, matplotlib)
"""

import hashlib
import json
import os
import shutil
import subprocess
import sys
import venv

HERE = os.path.dirname(os.path.abspath(__file__))
VENV = os.path.join(HERE, ".venv")
BIN = os.path.join(VENV, "Scripts" if os.name == "nt" else "bin")
PYTHON = os.path.join(BIN, "python")


def run(argv):
    print("+ " + " ".join(argv), flush=True)
    subprocess.check_call(argv, cwd=HERE)


STAMP = os.path.join(VENV, "raftkv-install.json")
"""What the last install into .venv was made from (L{fingerprint}, extras)."""


def fingerprint(root=HERE):
    """
    A hash of what an install of raftkv is made from: setup.py, the README
    (its long description) and every file of the package and its plugin,
    by path and contents (contents, not times: a checkout that changes
    nothing installs nothing).
    """
    paths = [os.path.join(root, "setup.py"), os.path.join(root, "README.rst")]
    for top in ("twisted_raft", os.path.join("twisted", "plugins")):
        for folder, dirs, files in os.walk(os.path.join(root, top)):
            dirs[:] = sorted(d for d in dirs if d != "__pycache__")
            paths += [os.path.join(folder, f) for f in files if not f.endswith((".pyc", ".cache"))]
    digest = hashlib.sha256()
    for path in sorted(paths):
        digest.update(os.path.relpath(path, root).encode() + b"\0")
        try:
            with open(path, "rb") as f:
                digest.update(hashlib.sha256(f.read()).digest())
        except FileNotFoundError:
            digest.update(b"-")
    return digest.hexdigest()


def needsInstall(extras, current, stampPath=STAMP, python=PYTHON):
    """
    Whether raftkv must be (re)installed into the venv: it has no Python
    yet, or its stamp is missing or unreadable, or records another
    L{fingerprint} than C{current}, or lacks one of C{extras}.
    """
    if not os.path.exists(python):
        return True
    try:
        with open(stampPath, encoding="utf-8") as f:
            stamp = json.load(f)
        return stamp["fingerprint"] != current or not set(extras) <= set(stamp["extras"])
    except (OSError, ValueError, KeyError, TypeError):
        return True


def install(extras="test"):
    wanted = extras.split(",")
    current = fingerprint()
    if not needsInstall(wanted, current):
        return
    if not os.path.exists(PYTHON):
        venv.EnvBuilder(with_pip=True).create(VENV)
    if os.path.exists(STAMP):
        os.remove(STAMP)  # a failed install leaves none: the next run retries
    # setuptools makes the wheel from build/lib, where every file once
    # copied stays: without this a file removed from the package stays installed.
    shutil.rmtree(os.path.join(HERE, "build"), ignore_errors=True)
    run([PYTHON, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
         HERE + f"[{extras}]"])
    # Rebuild Twisted's plugin cache now, so the first twistd run does not warn.
    run([PYTHON, "-c", "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))"])
    with open(STAMP, "w", encoding="utf-8") as f:
        json.dump({"fingerprint": current, "extras": sorted(wanted)}, f)


def main(argv):
    if not argv or argv[0] not in ("cluster", "test", "raftkv", "bench"):
        sys.stderr.write(__doc__)
        return 2
    command, rest = argv[0], argv[1:]
    install("test,bench" if command == "bench" else "test")
    if command == "test":
        # The whole suite unless some tests are named (a path, or path::test).
        named = any(os.path.exists(a.split("::")[0]) for a in rest if not a.startswith("-"))
        argv = [PYTHON, "-m", "pytest", "-p", "no:cacheprovider"] + ([] if named else ["tests"]) + rest
    elif command in ("cluster", "bench"):
        argv = [os.path.join(BIN, "raftkv"), command] + rest
    else:
        argv = [os.path.join(BIN, "raftkv")] + rest
    print("+ " + " ".join(argv), flush=True)
    os.chdir(HERE)
    os.execv(argv[0], argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
