"""Long-running host commands whose output is streamed, line by line, to a monitor.

`kiln.run.run()` is for commands whose output matters only when they fail. A bootstrap or a
customizer runs for minutes and its output belongs in the run's customization.log as it
happens; it must also be killable on a timeout or when kiln is interrupted. `run_streamed` is
that variant: same minimal-environment rules, Popen underneath, the output's tail kept for errors.
"""

from __future__ import annotations

import collections
import subprocess
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from kiln.events import Monitor
from kiln.run import CommandFailed, minimal_env

TAIL_LINES = 40


@dataclass(frozen=True)
class Streamed:
    returncode: int
    tail: str
    timed_out: bool


def run_streamed(
    cmd: Sequence[str],
    monitor: Monitor,
    *,
    name: str = "",
    timeout: float | None = None,
    env: Mapping[str, str] | None = None,
    replace_env: bool = False,
) -> Streamed:
    """Run `cmd`, sending each output line (stdout and stderr merged) to `monitor.log(line, name)`.

    On timeout the process is killed (SIGKILL) and `timed_out` is set. With `replace_env`, `env`
    is the whole environment instead of additions to the minimal one.
    """
    argv = [str(c) for c in cmd]
    tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
    try:
        # Popen, not run(): the output is needed while the command runs, and it must be killable.
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=dict(env or {}) if replace_env else minimal_env(env),
            cwd="/",
            start_new_session=True,  # Ctrl-C reaches kiln, which then kills this process
        )
    except FileNotFoundError as e:
        raise CommandFailed(argv, 127, f"{argv[0]}: not found (run scripts/setup to install kiln's tools)") from e
    expired = threading.Event()

    def expire() -> None:
        expired.set()
        proc.kill()

    timer = threading.Timer(timeout, expire) if timeout else None
    try:
        if timer:
            timer.daemon = True
            timer.start()
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.decode("utf-8", errors="replace").rstrip("\n")
            tail.append(line)
            monitor.log(line, name=name)
        code = proc.wait()
    finally:
        if timer:
            timer.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout:
            proc.stdout.close()
    return Streamed(code, "\n".join(tail), expired.is_set())
