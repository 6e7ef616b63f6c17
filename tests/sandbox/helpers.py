"""Host-side evidence that nothing of a sandbox is left: processes and mounts under a root."""

from __future__ import annotations

import os
import time
from pathlib import Path


def processes_in(root: Path) -> list[int]:
    """Pids of processes whose root directory is `root` (chrooted or pivoted into it).

    Compared by device and inode: after a pivot_root in another mount namespace, the host's
    readlink of /proc/<pid>/root says "/", but the link still leads to the image's root folder.
    """
    target = os.stat(root)
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            st = os.stat(f"/proc/{entry}/root")
        except OSError:
            continue
        if (st.st_dev, st.st_ino) == (target.st_dev, target.st_ino):
            found.append(int(entry))
    return found


def host_mounts_under(root: Path) -> list[str]:
    """Mount points in the host's (this process's) mount namespace at or under `root`."""
    target = str(root.resolve())
    lines = Path("/proc/self/mountinfo").read_text().splitlines()
    return [line.split()[4] for line in lines if line.split()[4] == target or line.split()[4].startswith(target + "/")]


def wait_until(predicate, limit_s: float = 30.0) -> bool:
    """Poll `predicate` until true or `limit_s` passes (a bound on waiting, not an assertion on time)."""
    end = time.monotonic() + limit_s
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()
