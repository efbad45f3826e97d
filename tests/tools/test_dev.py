"""
C{dev.py}'s decision to (re)install raftkv into C{.venv}: only when what an
install is made from changed, or extras are missing.
"""

import importlib.util
import json
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture
def dev():
    path = os.path.join(ROOT, "dev.py")
    if not os.path.exists(path):
        pytest.skip("dev.py is not beside the tests (an installed copy of the tests)")
    spec = importlib.util.spec_from_file_location("dev", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def tree(tmp_path):
    """A source tree like raftkv's, and a venv with a Python in it."""
    src = tmp_path / "src"
    (src / "twisted_raft" / "tools").mkdir(parents=True)
    (src / "twisted" / "plugins").mkdir(parents=True)
    (src / "setup.py").write_text("setup()\n")
    (src / "README.rst").write_text("raftkv\n")
    (src / "twisted_raft" / "__init__.py").write_text('__version__ = "1"\n')
    (src / "twisted_raft" / "tools" / "bench.py").write_text("x = 1\n")
    (src / "twisted" / "plugins" / "raftkv_plugin.py").write_text("p = 1\n")
    python = tmp_path / "venv" / "python"
    python.parent.mkdir()
    python.write_text("")
    return src, python, tmp_path / "venv" / "stamp.json"


def stamp(path, fingerprint, extras):
    path.write_text(json.dumps({"fingerprint": fingerprint, "extras": extras}))


def test_nothing_changed_installs_nothing(dev, tree):
    src, python, path = tree
    current = dev.fingerprint(str(src))
    assert dev.needsInstall(["test"], current, str(path), str(python))  # no stamp yet
    stamp(path, current, ["test"])
    assert not dev.needsInstall(["test"], dev.fingerprint(str(src)), str(path), str(python))


@pytest.mark.parametrize("change", [
    "setup.py", "README.rst", "twisted_raft/tools/bench.py", "twisted/plugins/raftkv_plugin.py",
    "twisted_raft/new.py",
])
def test_a_source_change_installs_again(dev, tree, change):
    src, python, path = tree
    stamp(path, dev.fingerprint(str(src)), ["test"])
    with open(src / change, "a") as f:
        f.write("# changed\n")
    assert dev.needsInstall(["test"], dev.fingerprint(str(src)), str(path), str(python))


def test_times_and_bytecode_do_not_count(dev, tree):
    src, python, path = tree
    before = dev.fingerprint(str(src))
    os.utime(src / "setup.py", (1, 1))  # a checkout that changed nothing
    (src / "twisted_raft" / "__pycache__").mkdir()
    (src / "twisted_raft" / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"\0")
    (src / "twisted" / "plugins" / "dropin.cache").write_bytes(b"\0")
    assert dev.fingerprint(str(src)) == before


def test_extras_and_a_missing_venv(dev, tree):
    src, python, path = tree
    current = dev.fingerprint(str(src))
    stamp(path, current, ["bench", "test"])
    assert not dev.needsInstall(["test"], current, str(path), str(python))  # a subset
    stamp(path, current, ["test"])
    assert dev.needsInstall(["test", "bench"], current, str(path), str(python))
    assert dev.needsInstall(["test"], current, str(path), str(python.parent / "nope"))
    path.write_text("{not json")
    assert dev.needsInstall(["test"], current, str(path), str(python))


def test_an_install_starts_from_no_build_dir(dev, tree, monkeypatch):
    """setuptools builds the wheel from build/lib, which keeps every file
    ever copied there: a file removed from the package would stay
    installed (a module, a plugin, a page of the dashboard)."""
    src, python, path = tree
    stale = src / "build" / "lib" / "twisted_raft" / "removed.py"
    stale.parent.mkdir(parents=True)
    stale.write_text("x = 1\n")
    ran = []

    def run(argv):
        ran.append((argv, (src / "build").exists()))

    monkeypatch.setattr(dev, "HERE", str(src))
    monkeypatch.setattr(dev, "PYTHON", str(python))
    monkeypatch.setattr(dev, "STAMP", str(path))
    monkeypatch.setattr(dev, "run", run)
    monkeypatch.setattr(dev, "fingerprint", lambda root=None: "new")
    dev.install("test")
    pip = [exists for argv, exists in ran if "pip" in argv]
    assert pip == [False]
    assert json.loads(path.read_text())["fingerprint"] == "new"
