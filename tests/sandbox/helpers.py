"""Host-side evidence that nothing of a sandbox is left: processes and mounts under a root."""

from __future__ import annotations

import os
import time
from pathlib import Path


def processes_in(root: Path) -> list[int]:
    """Pids of processes whose root directory is `root` (i.e. chrooted into it)."""
    target = str(root.resolve())
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.readlink(f"/proc/{entry}/root") == target:
                found.append(int(entry))
        except OSError:
            continue
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
