"""Shared test fixtures: every test gets its own state home; nothing touches the user's.

Fixtures more than one test folder uses live here, once: the Debian 12 root (tests/debian_root.py:
the sources, sandbox and customizers tests) and the small real disks of tests/store_helpers.py
(the store, distribute and factory tests).
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from corpus import REPO, conformance
from store_helpers import azurite, disk_dir, load, other_disk, raw_disk  # noqa: F401 - fixtures

__all__ = ["REPO", "conformance"]

if TYPE_CHECKING:
    from debian_root import CachedRoot

# scripts/test runs the suite with pytest-xdist, one test folder per worker at a time: a folder's
# session fixtures (its built images, its booted VMs) are then made once, by the worker that runs
# the folder. Folders are handed out in this order, the longest first, so that the last one to
# start is a short one. (xdist's own `--dist loadgroup` cannot do it with pytest 9: it renames
# items through an attribute pytest no longer reads, so the folder is the scheduler's scope here.)
# A suite started in the background by a non-interactive shell (`scripts/test &`, a CI runner's
# job) inherits SIGINT ignored, and so does every kiln it starts: Python installs its Ctrl-C
# handler only where SIGINT is not ignored, so the Ctrl-C tests' builds would never see their
# Ctrl-C and run to their end. A handler (not an ignore) is reset to the default by exec, so
# each kiln a test starts gets Ctrl-C as a user's terminal gives it.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

LONGEST_FIRST = ("pipeline", "firstboot", "vms", "validate", "api", "disk", "cluster", "factory",
                 "customizers", "sources", "sandbox", "distribute", "store", "template")


def _folder_of(nodeid: str) -> str:
    """`tests/disk/test_x.py::test_y` -> "disk"; a test directly in tests/ -> "tests"."""
    parts = nodeid.split("::", 1)[0].split("/")
    return parts[1] if len(parts) > 2 else "tests"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(_folder_of(item.nodeid), len(rank)))  # stable: a folder keeps its order


@pytest.hookimpl(tryfirst=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object:
    from xdist.scheduler import LoadScopeScheduling

    class FolderScheduling(LoadScopeScheduling):
        """xdist's scope scheduling, with the test's top-level folder as its scope."""

        def _split_scope(self, nodeid: str) -> str:
            return _folder_of(nodeid)

    return FolderScheduling(config, log)


@pytest.fixture
def kiln_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "kiln-home"
    home.mkdir()
    monkeypatch.setenv("KILN_HOME", str(home))
    return home


@pytest.fixture
def corpus() -> Path:
    """The conformance corpus folder (see tests/corpus.py: skipped, or failed under CI, without it)."""
    return conformance()


@pytest.fixture(scope="session")
def debian12(tmp_path_factory: pytest.TempPathFactory) -> CachedRoot:
    """The Debian 12 platform root, bootstrapped (or taken from the test cache) once per session."""
    from debian_root import bootstrap_debian12

    return bootstrap_debian12(tmp_path_factory.mktemp("debian12"))


@pytest.fixture
def fresh_root(debian12: CachedRoot, tmp_path: Path) -> Path:
    """A private, writable copy of the Debian 12 root."""
    from debian_root import fresh_copy

    return fresh_copy(debian12, tmp_path / "root")
