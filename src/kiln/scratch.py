"""Scratch space for a build's root tree: in RAM when the host has room, and never left behind.

A root tree lives only while a build runs: it is bootstrapped or copied, customized, generalized,
written into the disk by `mkfs.ext4 -d`, and thrown away. On a disk-backed filesystem every one of
those steps pays for journaling and writeback it does not need (dpkg's fsyncs, ten thousand inodes
created and then deleted), and on a busy host that I/O competes with everyone else's. So the tree
goes to a tmpfs when one with enough free room is mounted at /dev/shm (as on every systemd host):
measured on 2 cores, a bootstrap there takes about a quarter less time, a cached root is copied
in well under a second and deleted in a fraction of one. The disk image itself stays in the
state home's work directory, on the same filesystem as the blobs, so publishing remains a rename.

`KILN_SCRATCH` overrides the choice: a folder to use, or `state` for the run's own work directory
(the place kiln used before; also the fallback when /dev/shm is missing, not tmpfs, or too small).

Never left behind: a `ScratchDir` hands its folder to a `kiln.reaper.Reaper` (a tiny process in
its own session, so Ctrl-C does not reach it, waiting on a pipe from kiln). When the build is
done, or kiln exits in any way including SIGKILL, the pipe closes and the reaper deletes the folder. Deleting a
finished tree therefore costs the build nothing; failure paths may still `remove()` it
synchronously when they promise a clean host on return.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from kiln.reaper import Reaper
from kiln.reaper import wait_for_reapers as wait_for_reapers  # re-exported: tests and benchmarks wait here
from kiln.run import run

SHM = Path("/dev/shm")
# A root tree with a customizer's packages is a few GiB at most; below this much free RAM-backed
# room (or on a host that caps /dev/shm, as containers do) the state home is the safer place.
MIN_FREE_BYTES = 8 * 1024**3
SCRATCH_ENV = "KILN_SCRATCH"


def is_tmpfs(path: Path) -> bool:
    try:
        for line in Path("/proc/self/mounts").read_text().splitlines():
            fields = line.split()
            if len(fields) >= 3 and fields[1] == str(path):
                return fields[2] == "tmpfs"
    except OSError:
        pass
    return False


def scratch_parent(fallback: Path) -> Path:
    """Where scratch trees go: $KILN_SCRATCH, else /dev/shm if it is a roomy tmpfs, else `fallback`."""
    choice = os.environ.get(SCRATCH_ENV, "").strip()
    if choice == "state":
        return fallback
    if choice:
        return Path(choice)
    try:
        st = os.statvfs(SHM)
    except OSError:
        return fallback
    if is_tmpfs(SHM) and st.f_bavail * st.f_frsize >= MIN_FREE_BYTES and os.access(SHM, os.W_OK):
        return SHM
    return fallback


class ScratchDir:
    """A fresh folder for one run's root tree, deleted by a reaper when released or when kiln dies."""

    def __init__(self, parent: Path, prefix: str) -> None:
        parent.mkdir(parents=True, exist_ok=True)
        self.path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
        self._reaper = Reaper([self.path], name="kiln-scratch-reaper")

    @classmethod
    def create(cls, fallback: Path, run_id: str) -> ScratchDir:
        return cls(scratch_parent(fallback), f"kiln-{run_id}-")

    @property
    def in_memory(self) -> bool:
        return is_tmpfs(self.path.parent)

    @property
    def released(self) -> bool:
        return not self._reaper.active

    def release(self) -> None:
        """Hand the folder to the reaper, which deletes it in the background. Idempotent."""
        self._reaper.release()

    def remove(self) -> None:
        """Delete the folder now (a failure path that promises a clean host on return); a folder
        already released is the reaper's to delete."""
        if not self.released:
            shutil.rmtree(self.path, ignore_errors=True)
            self.release()

    def keep_in(self, dest: Path) -> Path:
        """Move what the folder holds into `dest` (errorHandling `abort` and --keep-work keep the
        tree for inspection where the work directory is); returns `dest`."""
        if not self.released and self.path.exists():
            dest.mkdir(parents=True, exist_ok=True)
            if os.stat(self.path).st_dev == os.stat(dest).st_dev:
                for child in self.path.iterdir():
                    os.rename(child, dest / child.name)
            else:
                run(["cp", "-a", f"{self.path}/.", f"{dest}/"], capture=True)
        self.remove()
        return dest

