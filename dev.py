#!/usr/bin/env python3
"""
One-command bootstrap for raftkv: ``python3 dev.py cluster`` or ``python3 dev.py test``.

Creates ``.venv`` next to this file (if missing), installs raftkv into it with
its test extra (non-editable, so Twisted's plugin scan finds ``raftkv``), then
runs the requested command inside that environment.  Only the Python 3.11
standard library is needed to start.

    python3 dev.py cluster [raftkv cluster options...]   start a local cluster
    python3 dev.py test [pytest options...] [tests...]   run the whole test suite (or
                                                         the tests named)
    python3 dev.py raftkv ARGS...                        run the raftkv command
    python3 dev.py bench [raftkv bench options...]       benchmark (installs the bench
                                                         extra: PySyncObj, matplotlib)
"""

import os
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


def install(extras="test"):
    if not os.path.exists(PYTHON):
        venv.EnvBuilder(with_pip=True).create(VENV)
    run([PYTHON, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
         HERE + f"[{extras}]"])
    # Rebuild Twisted's plugin cache now, so the first twistd run does not warn.
    run([PYTHON, "-c", "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))"])


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
