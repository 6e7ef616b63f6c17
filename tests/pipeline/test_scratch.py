"""Scratch space for root trees: where it goes, and that it is gone however kiln ends."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kiln import scratch
from kiln.scratch import ScratchDir, scratch_parent, wait_for_reapers


def wait_gone(path: Path, seconds: float = 20) -> bool:
    end = time.monotonic() + seconds
    while path.exists() and time.monotonic() < end:
        time.sleep(0.05)
    return not path.exists()


def test_kiln_scratch_overrides_the_choice(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KILN_SCRATCH", str(tmp_path / "elsewhere"))
    assert scratch_parent(tmp_path / "state") == tmp_path / "elsewhere"
    monkeypatch.setenv("KILN_SCRATCH", "state")
    assert scratch_parent(tmp_path / "state") == tmp_path / "state"


def test_default_is_shm_only_when_it_is_a_roomy_tmpfs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KILN_SCRATCH", raising=False)
    chosen = scratch_parent(tmp_path)
    st = os.statvfs("/dev/shm") if Path("/dev/shm").exists() else None
    roomy = st is not None and st.f_bavail * st.f_frsize >= scratch.MIN_FREE_BYTES
    assert chosen == (Path("/dev/shm") if roomy and scratch.is_tmpfs(Path("/dev/shm")) else tmp_path)
    monkeypatch.setattr(scratch, "MIN_FREE_BYTES", 1 << 62)  # no host has that much: fall back
    assert scratch_parent(tmp_path) == tmp_path


def test_release_deletes_in_the_background_and_remove_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KILN_SCRATCH", str(tmp_path))
    a = ScratchDir.create(tmp_path / "unused", "run1")
    (a.path / "root" / "etc").mkdir(parents=True)
    (a.path / "root" / "etc" / "hostname").write_text("x\n")
    a.release()
    assert a.released
    wait_for_reapers()
    assert not a.path.exists()
    b = ScratchDir.create(tmp_path / "unused", "run2")
    (b.path / "file").write_text("x")
    b.remove()
    assert not b.path.exists()  # synchronous: a failure path promises a clean host on return
    wait_for_reapers()


def test_keep_in_moves_the_tree_next_to_the_work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KILN_SCRATCH", str(tmp_path / "scratch"))
    s = ScratchDir.create(tmp_path, "run3")
    (s.path / "root" / "etc").mkdir(parents=True)
    (s.path / "root" / "etc" / "clue").write_text("clue\n")
    os.symlink("clue", s.path / "root" / "etc" / "link")
    work = tmp_path / "work" / "run3"
    assert s.keep_in(work) == work
    assert (work / "root" / "etc" / "clue").read_text() == "clue\n"
    assert os.readlink(work / "root" / "etc" / "link") == "clue"
    assert not s.path.exists()
    wait_for_reapers()


_OWNER = """
import sys, time
from pathlib import Path
from kiln.scratch import ScratchDir
s = ScratchDir(Path(sys.argv[1]), "killed-")
(s.path / "root").mkdir()
print(s.path, flush=True)
time.sleep(600)
"""


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_a_killed_kiln_leaves_no_scratch_tree(tmp_path: Path, sig: signal.Signals) -> None:
    owner = subprocess.Popen([sys.executable, "-c", _OWNER, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        path = Path(owner.stdout.readline().strip())  # type: ignore[union-attr]
        assert (path / "root").is_dir()
        owner.send_signal(sig)
        owner.wait(timeout=30)
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait()
    assert wait_gone(path), f"{path} was left behind after {sig.name}"
