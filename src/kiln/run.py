"""The one way kiln runs an external program.

`run()` is for commands that finish and whose output matters only when they fail; `spawn()` starts
a process kiln keeps a handle on (QEMU, a streamed bootstrap, a reaper); `run_streamed()` is spawn
with each output line sent to a monitor as it comes. All three take a list (never a shell string),
give the child a minimal environment and stdin from /dev/null unless told otherwise, and share one
failure path:

- a program that is not installed raises `ToolMissing` (the Debian package, `kiln doctor`), never a
  bare exit code 127;
- kiln's own tool call that fails (sfdisk, mkfs, qemu-img...) raises `ToolFailed`, which shows the
  command line and the tail of its output and says it is kiln's or the host's problem;
- a command run on the user's behalf (a customizer's command in the isolated root, the bootstrap
  of the user's package list) that fails is `CommandFailed`, a `BuildFailed`: the build failed.
"""

from __future__ import annotations

import collections
import ctypes
import os
import shlex
import signal
import subprocess
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from kiln.errors import BuildFailed, HostFailed
from kiln.events import Monitor
from kiln.tools import ToolMissing

_KEEP_ENV = ("PATH", "LANG", "LC_ALL", "TERM", "HOME", "TMPDIR", "SOURCE_DATE_EPOCH")
_DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
OUTPUT_TAIL_LINES = 20  # of a failed command's output, in its error
TAIL_LINES = 40  # of a streamed command's output, kept for its caller's error

Cmd = Sequence[str | os.PathLike[str]]


def _describe(cmd: Sequence[str], returncode: int, output: str) -> str:
    tail = "\n".join(output.strip().splitlines()[-OUTPUT_TAIL_LINES:])
    msg = f"command failed with exit code {returncode}: {shlex.join(cmd)}"
    return msg + (f"\n{tail}" if tail else "")


class CommandFailed(BuildFailed):
    """A command run on the user's behalf (in the isolated root, the bootstrap) exited non-zero."""

    def __init__(self, cmd: Cmd, returncode: int, output: str = "") -> None:
        self.cmd = [os.fspath(c) for c in cmd]
        self.returncode = returncode
        self.output = output
        super().__init__(_describe(self.cmd, returncode, output))


class ToolFailed(HostFailed):
    """kiln's own call of one of its tools failed (exited non-zero or timed out)."""

    def __init__(self, cmd: Cmd, returncode: int, output: str = "", *, timeout: float | None = None) -> None:
        self.cmd = [os.fspath(c) for c in cmd]
        self.returncode = returncode
        self.output = output
        self.timed_out = timeout is not None
        if timeout is not None:
            what = f"kiln's own command timed out after {timeout:g} s: {shlex.join(self.cmd)}"
            tail = "\n".join(output.strip().splitlines()[-OUTPUT_TAIL_LINES:])
            message = what + (f"\n{tail}" if tail else "")
        else:
            message = "kiln's own " + _describe(self.cmd, returncode, output)
        super().__init__(
            message,
            hint="this is a problem of kiln or of this host, not of the template or its customizers: "
                 "`kiln doctor` checks the host; if it persists, report it with the command line above",
        )


def minimal_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {k: os.environ[k] for k in _KEEP_ENV if k in os.environ}
    env.setdefault("PATH", _DEFAULT_PATH)
    if "/usr/sbin" not in env["PATH"].split(":"):
        env["PATH"] += ":/usr/sbin:/sbin"
    env.setdefault("LANG", "C.UTF-8")
    if extra:
        env.update(extra)
    return env


def _die_with_parent() -> None:
    """preexec_fn: SIGKILL this child when the thread that forked it dies (PR_SET_PDEATHSIG)."""
    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)


class Process:
    """A process started by `spawn()`. As a context manager it kills what still runs on exit."""

    def __init__(self, popen: subprocess.Popen[Any], argv: list[str], session: bool) -> None:
        self.popen = popen
        self.argv = argv
        self.session = session  # its own session and process group: signals go to the whole group

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        return self.popen.returncode

    @property
    def stdin(self) -> IO[Any] | None:
        return self.popen.stdin

    @property
    def stdout(self) -> IO[Any] | None:
        return self.popen.stdout

    @property
    def stderr(self) -> IO[Any] | None:
        return self.popen.stderr

    def poll(self) -> int | None:
        return self.popen.poll()

    def wait(self, timeout: float | None = None) -> int | None:
        """The exit code, or None if it still runs after `timeout` seconds."""
        try:
            return self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def communicate(self, input: Any = None, timeout: float | None = None) -> tuple[Any, Any]:
        return self.popen.communicate(input, timeout)

    def signal(self, sig: int) -> None:
        """Send `sig` to the process (to its whole group if it has its own session), if still running."""
        if self.popen.poll() is not None:
            return  # reaped: its pid (and group id) may already be someone else's
        try:
            if self.session:
                os.killpg(self.popen.pid, sig)
            else:
                self.popen.send_signal(sig)
        except (ProcessLookupError, PermissionError):
            pass

    def kill(self) -> None:
        self.signal(signal.SIGKILL)

    def stop(self, grace: float = 5.0) -> int:
        """SIGTERM, then SIGKILL after `grace` seconds; returns the exit code."""
        if self.popen.poll() is None:
            self.signal(signal.SIGTERM)
            if self.wait(grace) is None:
                self.kill()
        return self.popen.wait()

    def check(self, output: str = "") -> None:
        """Raise `ToolFailed` if the process exited non-zero (call after it has exited)."""
        code = self.popen.wait()
        if code != 0:
            raise ToolFailed(self.argv, code, output)

    def close(self) -> None:
        """Kill it if it still runs, reap it, close kiln's ends of its pipes. Idempotent."""
        if self.popen.poll() is None:
            self.kill()
        self.popen.wait()
        for pipe in (self.popen.stdin, self.popen.stdout, self.popen.stderr):
            if pipe is not None:
                try:
                    pipe.close()
                except OSError:
                    pass

    def __enter__(self) -> Process:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def spawn(
    cmd: Cmd,
    *,
    stdin: int | IO[Any] | None = subprocess.DEVNULL,
    stdout: int | IO[Any] | None = None,
    stderr: int | IO[Any] | None = None,
    env: Mapping[str, str] | None = None,
    replace_env: bool = False,
    cwd: str | Path | None = None,
    text: bool = False,
    session: bool = True,
    die_with_parent: bool = False,
) -> Process:
    """Start `cmd` and return its handle; raise `ToolMissing` if the program is not installed.

    `session`: its own session and process group, so the terminal's Ctrl-C reaches kiln (which
    then stops it in order) and `kill()` gets its children too. `die_with_parent`: the kernel
    kills it (SIGKILL) when kiln dies, even by SIGKILL. `env` is added to a minimal environment,
    or with `replace_env` is the whole environment.
    """
    argv = [os.fspath(c) for c in cmd]
    try:
        popen = subprocess.Popen(
            argv,
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            env=dict(env or {}) if replace_env else minimal_env(env),
            cwd=cwd,
            text=text,
            errors="replace" if text else None,
            start_new_session=session,
            preexec_fn=_die_with_parent if die_with_parent else None,
        )
    except FileNotFoundError as e:
        if cwd is not None and e.filename == os.fspath(cwd):
            raise  # a missing working directory is kiln's bug, not a missing tool
        raise ToolMissing(argv[0]) from e
    return Process(popen, argv, session)


def run(
    cmd: Cmd,
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
    """Run `cmd` to its end; raise `ToolFailed` (command line, output tail) if it fails and `check`.

    With `capture`, stdout and stderr are returned as text (stderr merged into stdout unless
    `stderr` says otherwise). A `timeout` kills it and raises `ToolFailed` whatever `check` says.
    """
    argv = [os.fspath(c) for c in cmd]
    text_input = input.decode() if isinstance(input, bytes) else input
    if capture:
        stdout = subprocess.PIPE if stdout is None else stdout
        stderr = subprocess.STDOUT if stderr is None else stderr
    # No session of its own: a short command gets the terminal's Ctrl-C along with kiln.
    with spawn(argv, stdin=subprocess.PIPE if text_input is not None else subprocess.DEVNULL,
               stdout=stdout, stderr=stderr, env=env, cwd=cwd, text=True, session=False) as proc:
        try:
            out, err = proc.communicate(text_input, timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            raise ToolFailed(argv, -9, out or "", timeout=timeout) from None
    code = proc.returncode
    assert code is not None
    if check and code != 0:
        raise ToolFailed(argv, code, (out or "") + (err or ""))
    return subprocess.CompletedProcess(argv, code, out, err)


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

    For commands that run for minutes and whose output belongs in the run's log as it happens (a
    bootstrap, a customizer). On timeout the process group is killed and `timed_out` is set; the
    caller decides what a non-zero exit means (its last `TAIL_LINES` lines come back for that).
    """
    tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
    expired = threading.Event()
    with spawn(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, replace_env=replace_env,
               cwd="/") as proc:

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
            code = proc.popen.wait()
        finally:
            if timer:
                timer.cancel()
    return Streamed(code, "\n".join(tail), expired.is_set())
