"""
Mistakes a test run may not reach: a name defined twice in one scope (the
second silently replaces the first) and a name used but never defined.

pyflakes finds both without running the code.  Its other findings (an
import kept for its side effect or to check a dependency is installed) are
not errors here, so only these kinds fail the suite.
"""

import os


from pyflakes import api, messages, reporter

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHECKED = ["twisted_raft", "twisted", "tests", "bench", "examples", "dev.py", "setup.py"]
FATAL = (
    messages.RedefinedWhileUnused,
    messages.UndefinedName,
    messages.UndefinedLocal,
    messages.UndefinedExport,
    messages.DuplicateArgument,
)


class _Collect(reporter.Reporter):
    def __init__(self):
        self.found = []

    def unexpectedError(self, filename, msg):
        self.found.append(f"{filename}: {msg}")

    def syntaxError(self, filename, msg, lineno, offset, text):
        self.found.append(f"{filename}:{lineno}: {msg}")

    def flake(self, message):
        if isinstance(message, FATAL):
            self.found.append(str(message))


def test_no_redefined_or_undefined_names():
    collect = _Collect()
    api.checkRecursive([os.path.join(ROOT, p) for p in CHECKED], collect)
    assert collect.found == []


def test_the_check_finds_a_redefinition(tmp_path):
    # The check above must be able to fail: this is the shape of a real bug
    # (two functions named _main in the CLI, the second shadowing the first).
    bad = tmp_path / "bad.py"
    bad.write_text("def _main(a):\n    pass\n\n\ndef _main(a, b):\n    pass\n")
    collect = _Collect()
    api.checkRecursive([str(bad)], collect)
    assert len(collect.found) == 1 and "redefinition" in collect.found[0]
