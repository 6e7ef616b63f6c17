"""OpenSSH's client against a guest on 127.0.0.1: wait until a login works, run commands.

Host keys are not checked (a test guest's keys are new at every boot and its port is on loopback
only), and nothing is written to the user's known_hosts.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from kiln.run import ToolFailed, run

SSH = "ssh"


@dataclass(frozen=True)
class SshTarget:
    user: str
    port: int
    key: Path
    host: str = "127.0.0.1"
    # A ControlPath: every session then goes over one connection, which the first login opens and
    # keeps (ControlPersist) until `close_connection`. Under TCG each new connection costs the
    # guest a key exchange, and each new login a PAM session and a start of the user's systemd
    # manager (the last session's end stops it): seconds per session.
    control: Path | None = None


def ssh_argv(target: SshTarget, *command: str, connect_timeout: int = 10, tty: bool = False,
             batch: bool = True) -> list[str]:
    """OpenSSH's command line for `target` (a login shell when `command` is empty)."""
    return [
        SSH, "-p", str(target.port), "-i", str(target.key), "-o", "IdentitiesOnly=yes",
        "-o", f"BatchMode={'yes' if batch else 'no'}", "-o", "StrictHostKeyChecking=no",
        "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
        "-o", f"ConnectTimeout={connect_timeout}", "-o", "ServerAliveInterval=15",
        *_multiplexing(target),
        "-t" if tty else "-T", f"{target.user}@{target.host}", *command,
    ]


def _multiplexing(target: SshTarget) -> list[str]:
    if target.control is None:
        return []
    return ["-o", "ControlMaster=auto", "-o", f"ControlPath={target.control}", "-o", "ControlPersist=yes"]


@contextmanager
def shared_connection(target: SshTarget) -> Iterator[SshTarget]:
    """`target`'s sessions share one connection until the block ends (see SshTarget.control)."""
    try:
        yield target
    finally:
        close_connection(target)


def close_connection(target: SshTarget) -> None:
    """End the shared connection of a target with a ControlPath (nothing if none is open)."""
    if target.control is not None and target.control.exists():
        run([SSH, "-o", f"ControlPath={target.control}", "-O", "exit", f"{target.user}@{target.host}"],
            check=False, capture=True, timeout=30)


@dataclass(frozen=True)
class Result:
    exit_code: int
    output: str


def ssh_run(target: SshTarget, command: str, *, input: str | None = None, timeout: float = 600) -> Result:
    """Run `command` (a shell command line) in the guest; exit code 255 means ssh itself failed."""
    proc = run(ssh_argv(target, command), check=False, capture=True, input=input, timeout=timeout)
    return Result(proc.returncode, proc.stdout)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (QEMU binds it a moment later)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_in_use(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def wait_for_login(target: SshTarget, *, timeout_s: float, alive: Callable[[], bool],
                   check: str = "true", poll_s: float = 2.0,
                   on_poll: Callable[[], None] = lambda: None) -> float | None:
    """Seconds until `check` ran over SSH with exit 0, or None after `timeout_s` or once `alive()`
    says the VM is gone. `on_poll()` runs before every attempt (the boot test reads the serial
    console there)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        on_poll()
        if not alive():
            return None
        try:
            # A generous ConnectTimeout (it bounds the banner exchange too): a starved TCG guest's sshd
            # can take many seconds to answer, and a client that gives up first never gets in, while
            # a closed port is refused at once whatever the timeout.
            if run(ssh_argv(target, check, connect_timeout=30), check=False, capture=True, timeout=90).returncode == 0:
                return time.monotonic() - started
        except ToolFailed:  # the guest accepted the connection and then hung: try again
            pass
        time.sleep(poll_s)
    return None


def interactive(target: SshTarget, command: Sequence[str] = ()) -> list[str]:
    """The command line that logs a person in (a terminal, or runs `command`)."""
    return ssh_argv(target, *command, tty=not command, batch=False)
