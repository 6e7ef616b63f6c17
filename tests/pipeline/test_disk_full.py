"""A full disk during bootstrap, assemble and publish: the state home is a small tmpfs mounted by
the test, and the step under test is made to write there (scratch space and cache are placed so
that this step, not another, is the one that runs out). Each must fail with a clear error (what ran
out, where, how much is free, a hint; exit 1, no traceback), leave the catalog as it was and
`kiln store check` clean, and give the space back (the tmpfs's usage returns to what it was)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from store_helpers import make_disk
from templates import debian12_template

from .conftest import RG, SUB

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
TEST_CACHE = Path(os.environ.get("KILN_TEST_CACHE", "/var/tmp/kiln-test-cache"))
SHARED_CACHE = TEST_CACHE / "kiln-home" / "cache"  # the root cache the factory tests share
IMAGE_ID = f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.Compute/images/full-disk"



@contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "--lazy", str(path)], check=True)


def kiln(home: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "KILN_HOME": str(home), "PYTHONPATH": str(REPO / "src"), **env}
    return subprocess.run([sys.executable, "-m", "kiln", *args], env=full, text=True, capture_output=True,
                          timeout=1800, stdin=subprocess.DEVNULL)


def usage(home: Path) -> dict[str, int]:
    """Bytes used under `home`, per file, leaving out what a failed run adds on purpose: its record
    in the catalog and its log under runs/."""
    used = {}
    for p in home.rglob("*"):
        rel = p.relative_to(home)
        if rel.parts[0] in ("runs",) or rel.name.startswith("catalog.sqlite") or p.is_symlink():
            continue
        used[str(rel)] = p.lstat().st_blocks * 512 if p.is_file() else 0
    return used


def settled_usage(home: Path, want: dict[str, int]) -> dict[str, int]:
    """The usage once the scratch reapers (which delete trees after kiln exits) are done."""
    for _ in range(120):
        now = usage(home)
        if now == want:
            return now
        time.sleep(0.5)
    return usage(home)


def catalog(home: Path) -> dict:
    return {what: json.loads(kiln(home, *what.split(), "--json").stdout) for what in ("image list", "gallery list")}



def assert_clear_no_space(proc: subprocess.CompletedProcess[str], home: Path) -> None:
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    err = proc.stderr
    assert "no space left on the filesystem of" in err, err
    assert f"tmpfs mounted at {home} has" in err and "free of" in err, err  # where, and how much is left
    assert "hint: free some space there" in err and "KILN_HOME" in err, err


def assert_store_as_before(home: Path, before: dict) -> None:
    assert catalog(home) == before
    check = kiln(home, "store", "check")
    assert check.returncode == 0, check.stdout + check.stderr


def test_disk_full_during_bootstrap(tmp_path: Path) -> None:
    """The bootstrap's tree (KILN_SCRATCH) is on the full tmpfs; the cache is elsewhere and gets no entry."""
    cache = tmp_path / "cache"
    (cache / "debs").mkdir(parents=True)
    shared_debs = SHARED_CACHE / "debs" / "debian-bookworm"
    if shared_debs.is_dir():  # a warm package cache: the bootstrap reaches unpacking without downloading
        subprocess.run(["cp", "-a", str(shared_debs), str(cache / "debs")], check=True)
    with tmpfs(tmp_path / "home", "48m") as home:
        (home / "cache").symlink_to(cache)
        (home / "scratch").mkdir()
        kiln(home, "store", "check")  # creates the catalog: what a first build would find
        before, used = catalog(home), usage(home)
        cache_before = sorted(p.name for p in (cache / "roots").iterdir()) if (cache / "roots").exists() else []
        proc = kiln(home, "build", str(debian12_template(tmp_path, IMAGE_ID)), KILN_SCRATCH=str(home / "scratch"))
        assert_clear_no_space(proc, home)
        assert f"no space left on the filesystem of {home}/scratch/kiln-bootstrap-" in proc.stderr  # the bootstrap's tree
        assert_store_as_before(home, before)
        assert sorted(p.name for p in (cache / "roots").iterdir() if not p.name.endswith(".lock")) == \
            [n for n in cache_before if not n.endswith(".lock")]  # no partial cache entry
        run = json.loads(kiln(home, "runs", "list", "--json").stdout)[-1]["lastRunStatus"]
        assert run["runState"] == "Failed" and "no space left" in run["message"], run
        assert settled_usage(home, used) == used


def test_disk_full_during_assemble(tmp_path: Path) -> None:
    """The root tree is in roomy scratch space and the cached root is shared; the disk image is
    written in the work directory, on the full tmpfs."""
    SHARED_CACHE.mkdir(parents=True, exist_ok=True)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    with tmpfs(tmp_path / "home", "64m") as home:
        (home / "cache").symlink_to(SHARED_CACHE)
        kiln(home, "store", "check")
        before, used = catalog(home), usage(home)
        proc = kiln(home, "build", str(debian12_template(tmp_path, IMAGE_ID)), KILN_SCRATCH=str(scratch))
        assert_clear_no_space(proc, home)
        assert f"no space left on the filesystem of {home}/work/" in proc.stderr and "while mkfs.ext4 ran" in proc.stderr
        run = json.loads(kiln(home, "runs", "list", "--json").stdout)[-1]["lastRunStatus"]
        assert run["runState"] == "Failed" and "no space left" in run["message"], run
        assert_store_as_before(home, before)
        assert settled_usage(home, used) == used


def test_disk_full_during_publish(tmp_path: Path) -> None:
    """Importing a disk copies it into the blob store first: the copy runs out of room."""
    disk = make_disk(tmp_path / "big.raw", size_mib=96, data_mib=40, seed=3)
    with tmpfs(tmp_path / "home", "24m") as home:
        kiln(home, "store", "check")
        before, used = catalog(home), usage(home)
        proc = kiln(home, "image", "import", str(disk), "--id", IMAGE_ID, "--location", "westus2")
        assert_clear_no_space(proc, home)
        assert_store_as_before(home, before)
        assert settled_usage(home, used) == used
