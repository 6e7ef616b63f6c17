"""A helper process that cleans up after kiln, however kiln ends (even by SIGKILL).

What kiln leaves while it works (a scratch root tree in /dev/shm, a VM's temp dir, QEMU itself)
must not outlive it. A `Reaper` is a tiny shell in its own session (Ctrl-C does not reach it),
started with the paths it owns and reading a pipe from kiln; kiln may also tell it process groups
("pgid N"). When kiln's end of the pipe closes without a word (kiln released it, exited, crashed
or was killed -9) the reaper kills those groups and deletes those paths. When the owner cleaned
up itself it says "done" and the reaper exits without touching anything: by then a group id may
already be someone else's.

The shell, not Python: it starts in about a millisecond, so a scratch tree costs nothing to hand
over, and rm -rf of a large tree runs in the background while kiln goes on.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence

from kiln.run import Process, spawn

# $@: the paths. Groups are SIGKILLed before the paths go, so nothing writes into them meanwhile.
_SCRIPT = r"""
groups=
while read -r word arg; do
  case "$word" in
    pgid) groups="$groups $arg" ;;
    done) exit 0 ;;
  esac
done
for g in $groups; do kill -s KILL -- "-$g" 2>/dev/null; done
exec rm -rf --one-file-system -- "$@"
"""

_PENDING: list[Process] = []  # released reapers still deleting; polled so none is left a zombie


class Reaper:
    """Owns `paths` (and any process group it is told) until released or dismissed."""

    def __init__(self, paths: Sequence[str | os.PathLike[str]] = (), *, name: str = "kiln-reaper") -> None:
        self.name = name
        self._proc: Process | None = spawn(
            ["/bin/sh", "-c", _SCRIPT, name, *(os.fspath(p) for p in paths)],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd="/", session=True,
        )

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def active(self) -> bool:
        return self._proc is not None

    def kill_group(self, pgid: int) -> None:
        """Kill process group `pgid` too if kiln goes away (a process started with session=True)."""
        self._tell(f"pgid {pgid}")

    def release(self) -> None:
        """Let it clean up now, in the background (not waited for: that is the point). Idempotent."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        _close_stdin(proc)
        _PENDING.append(proc)
        _PENDING[:] = [p for p in _PENDING if p.poll() is None]

    def dismiss(self, timeout: float = 5.0) -> None:
        """The owner cleaned up itself: the reaper exits without touching anything. Idempotent."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        self._tell_proc(proc, "done")
        _close_stdin(proc)
        if proc.wait(timeout) is None:
            proc.kill()
            proc.wait()

    def _tell(self, line: str) -> None:
        if self._proc is not None:
            self._tell_proc(self._proc, line)

    @staticmethod
    def _tell_proc(proc: Process, line: str) -> None:
        if proc.stdin is None:
            return
        try:
            proc.stdin.write(f"{line}\n".encode())
            proc.stdin.flush()
        except (BrokenPipeError, ValueError):
            pass


def _close_stdin(proc: Process) -> None:
    try:
        proc.stdin.close()  # type: ignore[union-attr]
    except OSError:
        pass


def wait_for_reapers(timeout: float = 60.0) -> None:
    """Block until released reapers are done (tests and benchmarks that measure disk use)."""
    for p in list(_PENDING):
        p.wait(timeout)
    _PENDING.clear()
