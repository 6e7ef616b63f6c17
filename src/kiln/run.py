"""The one way kiln runs an external command.

Every subprocess goes through `run()`: a list (never a shell string), a minimal environment,
stdin from /dev/null unless input is given, and on failure an error that shows the exact command
line and the tail of its output. Commands are logged to the active monitor when one is given.
"""

from __future__ import annotations

import os
import shlex
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from kiln.errors import BuildFailed

_KEEP_ENV = ("PATH", "LANG", "LC_ALL", "TERM", "HOME", "TMPDIR", "SOURCE_DATE_EPOCH")
_DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class CommandFailed(BuildFailed):
    """An external command exited non-zero (or could not be started)."""

    def __init__(self, cmd: Sequence[str | os.PathLike[str]], returncode: int, output: str = "") -> None:
        self.cmd = [str(c) for c in cmd]
        self.returncode = returncode
        self.output = output
        tail = "\n".join(output.strip().splitlines()[-20:])
        msg = f"command failed with exit code {returncode}: {shlex.join(self.cmd)}"
        super().__init__(msg + (f"\n{tail}" if tail else ""))


def minimal_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {k: os.environ[k] for k in _KEEP_ENV if k in os.environ}
    env.setdefault("PATH", _DEFAULT_PATH)
    if "/usr/sbin" not in env["PATH"].split(":"):
        env["PATH"] += ":/usr/sbin:/sbin"
    env.setdefault("LANG", "C.UTF-8")
    if extra:
        env.update(extra)
    return env


def run(
    cmd: Sequence[str | os.PathLike[str]],
    *,
    check: bool = True,
    capture: bool = False,
    input: bytes | str | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | Path | None = None,
    timeout: float | None = None,
    stdout: int | None = None,
    stderr: int | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run `cmd`; raise `CommandFailed` (with the command line and output tail) if it fails and `check`.

    With `capture`, stdout and stderr are returned as text (stderr merged into stdout unless
    `stderr` says otherwise). `env` is added to a minimal environment, not the caller's.
    """
    argv = [os.fspath(c) for c in cmd]
    text_input = input.decode() if isinstance(input, bytes) else input
    if capture:
        stdout = subprocess.PIPE if stdout is None else stdout
        stderr = subprocess.STDOUT if stderr is None else stderr
    try:
        proc = subprocess.run(
            argv,
            check=False,
            input=text_input,
            stdin=None if text_input is not None else subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            env=minimal_env(env),
            cwd=cwd,
            timeout=timeout,
            text=True,
            errors="replace",
        )
    except FileNotFoundError as e:
        raise CommandFailed(argv, 127, f"{argv[0]}: not found (run scripts/setup to install kiln's tools)") from e
    except subprocess.TimeoutExpired as e:
        out = e.stdout if isinstance(e.stdout, str) else (e.stdout or b"").decode(errors="replace")
        raise CommandFailed(argv, -1, f"timed out after {timeout} s\n{out}") from e
    if check and proc.returncode != 0:
        out = (proc.stdout or "") + (proc.stderr or "" if proc.stderr is not None and stderr != subprocess.STDOUT else "")
        raise CommandFailed(argv, proc.returncode, out)
    return proc
