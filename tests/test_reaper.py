"""The reaper: what kiln leaves while it works (a scratch tree, a QEMU) is gone however kiln ends."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from envcheck import unavailable
from kiln.reaper import Reaper
from kiln.run import spawn
from processes import alive, eventually

# kiln in miniature: a scratch tree and a QEMU (paused before its first instruction, so it costs
# nothing), each handed to a reaper, QEMU without the death signal so only the reaper can stop it.
_OWNER = """
import subprocess, sys, time
from pathlib import Path
from kiln.reaper import Reaper
from kiln.run import spawn
from kiln.scratch import ScratchDir
scratch = ScratchDir(Path(sys.argv[1]), "owner-")
(scratch.path / "root" / "etc").mkdir(parents=True)
vm_tmp = Path(sys.argv[1]) / "vm-tmp"
vm_tmp.mkdir()
reaper = Reaper([vm_tmp], name="kiln-vm-reaper")
qemu = spawn(["qemu-system-x86_64", "-machine", "none", "-nodefaults", "-display", "none", "-S",
              "-monitor", "none", "-name", str(vm_tmp)], session=True)
reaper.kill_group(qemu.pid)
print(scratch.path, qemu.pid, flush=True)
time.sleep(600)
"""


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["kill-9", "sigterm"])
def test_a_killed_owner_leaves_no_scratch_tree_and_no_qemu(tmp_path: Path, sig: signal.Signals) -> None:
    if shutil.which("qemu-system-x86_64") is None:
        unavailable("qemu-system-x86_64 is not installed (run scripts/setup)")
    owner = subprocess.Popen([sys.executable, "-c", _OWNER, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        line = owner.stdout.readline().split()  # type: ignore[union-attr]
        scratch, qemu = Path(line[0]), int(line[1])
        assert (scratch / "root" / "etc").is_dir() and (tmp_path / "vm-tmp").is_dir()
        # spawn() returns once the exec began; the kernel fills in the new command line a moment later
        assert eventually(lambda: b"qemu-system" in Path(f"/proc/{qemu}/cmdline").read_bytes()) and alive(qemu)
        owner.send_signal(sig)
        owner.wait(timeout=30)
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait()
    assert eventually(lambda: not alive(qemu)), f"QEMU outlived its owner's {sig.name}"
    assert eventually(lambda: not scratch.exists()), f"{scratch} was left behind"
    assert eventually(lambda: not (tmp_path / "vm-tmp").exists()), "the VM's temp dir was left behind"


def test_released_it_cleans_up_in_the_background(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "deep" / "er").mkdir(parents=True)
    with spawn(["sleep", "300"], session=True) as group:
        reaper = Reaper([tree])
        reaper.kill_group(group.pid)
        reaper.release()
        assert not reaper.active
        assert eventually(lambda: not tree.exists())
        assert group.wait(20) == -signal.SIGKILL
    reaper.release()  # idempotent


def test_dismissed_it_touches_nothing_and_exits(tmp_path: Path) -> None:
    """The owner cleaned up itself: a group id it was told may already be someone else's."""
    tree = tmp_path / "tree"
    tree.mkdir()
    with spawn(["sleep", "300"], session=True) as group:
        reaper = Reaper([tree])
        pid = reaper.pid
        assert pid is not None
        reaper.kill_group(group.pid)
        reaper.dismiss()
        assert not alive(pid)
        assert group.poll() is None  # still running: the reaper did not kill it
    assert tree.is_dir()
    reaper.dismiss()  # idempotent
