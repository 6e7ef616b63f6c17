"""Resource limits for commands in an IsolatedRoot: memory, process-count and device cgroups per run.

Only cgroup v1 `memory`, `pids` and `devices` hierarchies are used (what kiln's machines have). Each run
gets child cgroups of the ones kiln itself sits in (never the hierarchy's root: kiln may itself
be inside a limited memory cgroup, and a child can only narrow that), named
kiln-sandbox-<kiln pid>-<n>, removed when the run ends; ones left by a killed kiln are removed by
the next run. The host-side launcher writes its own pid into them before it starts anything, so
every process of the step is counted.

What happens at a limit:
- memory: the kernel's OOM killer kills inside the cgroup only; the step fails, and the cgroup's
  oom_kill counter says why.
- pids: fork() fails with EAGAIN; a fork bomb would spin there forever, so the first refusal
  (pids.events "max") makes kiln kill the whole step.

- devices: only the character devices of the sandbox's minimal /dev may be opened (and
  /dev/net/tun, which pasta opens from inside the cgroup). A device node that came with the
  image itself (an ISO or a disk can carry a node for the host's disk) stays unusable.

Defaults: memory = half the machine's RAM (at most 16 GiB), 4096 processes. The environment
variables KILN_SANDBOX_MEMORY_MIB and KILN_SANDBOX_PIDS_MAX change them (0 = no limit).
"""

from __future__ import annotations

import itertools
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
PREFIX = "kiln-sandbox-"
_seq = itertools.count()
CONTROLLERS = ("memory", "pids", "devices")
# null zero full random urandom, tty, ptmx, the private devpts' ptys, tun (for pasta)
ALLOWED_DEVICES = ("c 1:3 rwm", "c 1:5 rwm", "c 1:7 rwm", "c 1:8 rwm", "c 1:9 rwm", "c 5:0 rwm", "c 5:2 rwm",
                   "c 136:* rwm", "c 10:200 rwm")


@dataclass(frozen=True)
class Availability:
    """Which limits this host can enforce, and for the missing ones why not (for `kiln doctor`)."""

    memory: bool
    pids: bool
    devices: bool
    why_not: tuple[str, ...]


@dataclass(frozen=True)
class Settings:
    memory_bytes: int  # 0: no limit
    pids_max: int  # 0: no limit


def settings() -> Settings:
    mem_total = _mem_total()
    default_mib = min(mem_total // 2 // 2**20, 16 * 1024) if mem_total else 4096
    mib = _env_int("KILN_SANDBOX_MEMORY_MIB", default_mib)
    return Settings(memory_bytes=mib * 2**20, pids_max=_env_int("KILN_SANDBOX_PIDS_MAX", 4096))


def probe() -> Availability:
    """What the sandbox can limit here: the memory, pids and devices cgroup v1 controllers, writable by kiln."""
    why: list[str] = []
    found = {}
    for controller in CONTROLLERS:
        base, problem = _own_cgroup(controller)
        if base is not None and not os.access(base, os.W_OK):
            base, problem = None, f"{base} is not writable (kiln runs as uid {os.geteuid()})"
        found[controller] = base is not None
        if problem:
            why.append(f"{controller} limit unavailable: {problem}")
    return Availability(memory=found["memory"], pids=found["pids"], devices=found["devices"], why_not=tuple(why))


class Cgroups:
    """The cgroups of one sandboxed run; `procs_files` are what the launcher writes its pid into."""

    def __init__(self, limits: Settings) -> None:
        self.limits = limits
        self.dirs: dict[str, Path] = {}
        name = f"{PREFIX}{os.getpid()}-{next(_seq)}"
        for controller in CONTROLLERS:
            base, _ = _own_cgroup(controller)
            if base is None or not os.access(base, os.W_OK):
                continue
            _remove_stale(base)
            path = base / name
            try:
                path.mkdir()
                if controller == "memory" and limits.memory_bytes:
                    (path / "memory.limit_in_bytes").write_text(str(limits.memory_bytes))
                    swap = path / "memory.memsw.limit_in_bytes"
                    if swap.exists():  # no swapping past the limit either
                        swap.write_text(str(limits.memory_bytes))
                if controller == "pids" and limits.pids_max:
                    (path / "pids.max").write_text(str(limits.pids_max))
                if controller == "devices":
                    (path / "devices.deny").write_text("a")
                    for rule in ALLOWED_DEVICES:
                        (path / "devices.allow").write_text(rule)
            except OSError:
                _rmdir(path)
                continue
            self.dirs[controller] = path

    @property
    def procs_files(self) -> list[str]:
        return [str(d / "cgroup.procs") for d in self.dirs.values()]

    def oom_kills(self) -> int:
        return _counter(self.dirs.get("memory"), "memory.oom_control", "oom_kill")

    def fork_refusals(self) -> int:
        return _counter(self.dirs.get("pids"), "pids.events", "max")

    def kill_all(self) -> None:
        """SIGKILL every process of the run (repeated: a fork bomb makes new ones while we kill)."""
        for _ in range(200):
            pids = set()
            for d in self.dirs.values():
                try:
                    pids |= {int(p) for p in (d / "cgroup.procs").read_text().split()}
                except OSError:
                    pass
            if not pids:
                return
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.02)

    def remove(self) -> None:
        for d in self.dirs.values():
            for _ in range(100):  # the last processes may still be exiting
                if _rmdir(d):
                    break
                time.sleep(0.02)


def _own_cgroup(controller: str) -> tuple[Path | None, str]:
    """The v1 cgroup directory this process is in for `controller`, or None and why not."""
    mount = None
    try:
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            fields = line.split()
            sep = fields.index("-")
            if fields[sep + 1] == "cgroup" and controller in fields[sep + 3].split(","):
                mount = Path(fields[4])
                break
    except (OSError, ValueError):
        return None, "cannot read /proc/self/mountinfo"
    if mount is None:
        v2 = (CGROUP_ROOT / "cgroup.controllers").exists()
        return None, ("the host uses cgroup v2 only, which kiln's sandbox does not drive yet" if v2
                      else f"no cgroup v1 '{controller}' hierarchy is mounted")
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if controller in controllers.split(","):
            return mount / path.lstrip("/"), ""
    return None, f"this process is in no '{controller}' cgroup"


def _remove_stale(base: Path) -> None:
    """Cgroups a killed kiln left behind (its pid is gone); empty ones only, so rmdir may fail."""
    for entry in base.glob(PREFIX + "*"):
        pid = entry.name[len(PREFIX):].split("-")[0]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            _rmdir(entry)


def _rmdir(path: Path) -> bool:
    try:
        path.rmdir()
        return True
    except FileNotFoundError:
        return True
    except OSError:
        return False


def _counter(directory: Path | None, file: str, key: str) -> int:
    if directory is None:
        return 0
    try:
        for line in (directory / file).read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    except (OSError, ValueError):
        pass
    return 0


def _mem_total() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    return int(value) if value.isdigit() else default
