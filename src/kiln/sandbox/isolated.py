"""Running commands inside a root tree, isolated from the host.

An `IsolatedRoot` is the only way kiln runs anything inside an image's root tree (customizers,
generalization, a deprovisioning script). Each command gets fresh mount, pid, uts and ipc
namespaces made by util-linux `unshare`; inside them a small host-side shell prologue mounts
/proc, /sys (read-only), a minimal /dev (null zero full random urandom tty, a private devpts,
/dev/shm) and a tmpfs /run into the root, makes the host's resolv.conf visible there (network
stays on: the network namespace is shared) and then `chroot`s into the root.

Why this shape:
- Every mount is made inside the new mount namespace with private propagation, so nothing ever
  appears on the host and nothing needs unmounting: when the namespace's last process exits,
  the kernel drops its mounts, even if kiln was killed with SIGKILL.
- The command becomes pid 1 of its pid namespace; when it exits, the kernel kills every process
  it left behind (daemons a package started, `sleep &`). `unshare --kill-child` SIGKILLs that
  pid 1 when `unshare` dies, and `setpriv --pdeathsig KILL` makes `unshare` die with kiln, so a
  killed kiln (SIGTERM, SIGINT, SIGKILL) leaves no process behind.
- While the root is open (`with IsolatedRoot(...)`), a `policy-rc.d` that returns 101 is in
  place so package scripts start no services; it is removed on exit (and by generalize, should
  kiln have been killed before it could remove it).
- Scripts to run are not copied into the image: a host folder can be bind-mounted read-only at
  /run/kiln inside the namespace (`stage=`), which vanishes with it.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from kiln.errors import BuildFailed
from kiln.events import Monitor, NullMonitor
from kiln.run import CommandFailed, run_streamed

POLICY_RC_D = "usr/sbin/policy-rc.d"
POLICY_MARK = "# kiln: no services start while customizing"
STAGE_DIR = "/run/kiln"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# The prologue runs on the host's /bin/sh as pid 1 of the new namespaces, before chroot.
# Positional parameters: root, resolv mode (run|bind|none), resolv path inside the root,
# stage folder (or ""), hostname, then the command.
_PROLOGUE = r"""
set -eu
R=$1 RESOLV_MODE=$2 RESOLV_PATH=$3 STAGE=$4 HOST=$5
shift 5
mount -t proc -o nosuid,nodev,noexec proc "$R/proc"
mount -t sysfs -o ro,nosuid,nodev,noexec sysfs "$R/sys"
mount -t tmpfs -o nosuid,mode=0755,size=16m kiln-dev "$R/dev"
mknod -m 666 "$R/dev/null" c 1 3
mknod -m 666 "$R/dev/zero" c 1 5
mknod -m 666 "$R/dev/full" c 1 7
mknod -m 666 "$R/dev/random" c 1 8
mknod -m 666 "$R/dev/urandom" c 1 9
mknod -m 666 "$R/dev/tty" c 5 0
mkdir -m 755 "$R/dev/pts"
mkdir -m 1777 "$R/dev/shm"
mount -t devpts -o newinstance,ptmxmode=0666,mode=0620,gid=5 devpts "$R/dev/pts"
mount -t tmpfs -o nosuid,nodev tmpfs "$R/dev/shm"
ln -s pts/ptmx "$R/dev/ptmx"
ln -s /proc/self/fd "$R/dev/fd"
ln -s /proc/self/fd/0 "$R/dev/stdin"
ln -s /proc/self/fd/1 "$R/dev/stdout"
ln -s /proc/self/fd/2 "$R/dev/stderr"
mount -t tmpfs -o nosuid,nodev,mode=0755 kiln-run "$R/run"
mkdir -m 1777 "$R/run/lock"
case "$RESOLV_MODE" in
  run) mkdir -p "$R$(dirname "$RESOLV_PATH")"; cat /etc/resolv.conf > "$R$RESOLV_PATH" ;;
  bind) cat /etc/resolv.conf > "$R/run/kiln-resolv.conf"
        mount --bind "$R/run/kiln-resolv.conf" "$R$RESOLV_PATH" ;;
esac
if [ -n "$STAGE" ]; then
  mkdir -p "$R/run/kiln"
  mount --bind -o ro "$STAGE" "$R/run/kiln"
fi
hostname "$HOST"
exec chroot "$R" "$@"
"""


class SandboxTimeout(BuildFailed):
    """A command inside the isolated root ran longer than its timeout and was killed."""


@dataclass(frozen=True)
class Completed:
    """What a command inside the root did: its exit code and the last lines of its output."""

    argv: tuple[str, ...]
    returncode: int
    tail: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0


class IsolatedRoot:
    """A root tree opened for running commands in it; use as a context manager.

    `run()` streams every output line to `monitor.log` (the run's customization.log) and keeps
    the last lines for error messages. Inside, the environment is minimal (PATH, HOME=/root,
    LANG=C.UTF-8, DEBIAN_FRONTEND=noninteractive) plus what the caller passes.
    """

    def __init__(self, root: Path, monitor: Monitor | None = None, *, hostname: str | None = None) -> None:
        self.root = Path(root).absolute()
        self.monitor = monitor or NullMonitor()
        self.hostname = hostname or _read_hostname(self.root)
        self._saved_policy: bytes | None = None
        self._depth = 0  # re-entrant: only the outermost `with` puts policy-rc.d in and takes it out

    # -------------------------------------------------------------- policy-rc.d lifetime

    def __enter__(self) -> IsolatedRoot:
        self._depth += 1
        if self._depth > 1:
            return self
        _check_mount_points(self.root)
        policy = self.root / POLICY_RC_D
        if policy.is_file() and not policy.is_symlink() and POLICY_MARK not in policy.read_text(errors="replace"):
            self._saved_policy = policy.read_bytes()  # the image's own policy: put it back afterwards
        if policy.parent.is_dir() and not policy.parent.is_symlink():
            if policy.is_symlink():
                policy.unlink()
            policy.write_text(f"#!/bin/sh\n{POLICY_MARK}\nexit 101\n")
            policy.chmod(0o755)
        return self

    def __exit__(self, *exc: object) -> None:
        self._depth -= 1
        if self._depth:
            return
        remove_policy_rc_d(self.root)
        if self._saved_policy is not None:
            policy = self.root / POLICY_RC_D
            policy.write_bytes(self._saved_policy)
            policy.chmod(0o755)

    # -------------------------------------------------------------- running

    def command(self, argv: Sequence[str], *, stage: Path | None = None) -> list[str]:
        """The host command line that runs `argv` inside the root (for logs and `abort` hints)."""
        mode, path = _resolv_plan(self.root)
        return [
            "setpriv", "--pdeathsig", "KILL", "--",
            "unshare", "--mount", "--pid", "--uts", "--ipc", "--fork", "--kill-child=SIGKILL",
            "--propagation", "private", "--",
            "/bin/sh", "-c", _PROLOGUE, "kiln-sandbox",
            str(self.root), mode, path, str(stage.absolute()) if stage else "", self.hostname,
            *argv,
        ]

    def run(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        timeout: float | None = None,
        stage: Path | None = None,
        check: bool = False,
        name: str = "",
    ) -> Completed:
        """Run `argv` inside the root; return its exit code and output tail.

        With `check`, a non-zero exit raises `CommandFailed`. A `timeout` (seconds) kills the
        whole namespace and raises `SandboxTimeout`. `stage` is a host folder visible read-only at
        /run/kiln inside. `name` labels the log lines (the step's name).
        """
        if not self._depth:
            raise RuntimeError("IsolatedRoot.run() outside its `with` block")
        argv = [str(a) for a in argv]
        inner_env = {"PATH": DEFAULT_PATH, "HOME": "/root", "LANG": "C.UTF-8", "TERM": "dumb",
                     "DEBIAN_FRONTEND": "noninteractive", "SHELL": "/bin/sh", "USER": "root", "LOGNAME": "root"}
        inner_env.update(env or {})
        self.monitor.log(f"$ {shlex.join(argv)}", name=name)
        result = run_streamed(self.command(argv, stage=stage), self.monitor, name=name, timeout=timeout,
                              env=inner_env, replace_env=True)
        text = result.tail
        returncode = result.returncode
        if result.timed_out:
            raise SandboxTimeout(f"command inside the root timed out after {timeout:g} s: {shlex.join(argv)}\n{text}")
        if check and returncode != 0:
            raise CommandFailed(argv, returncode, text)
        return Completed(tuple(argv), returncode, text)


def remove_policy_rc_d(root: Path) -> bool:
    """Remove a policy-rc.d that kiln put in place (not the image's own); True if one was removed."""
    policy = Path(root) / POLICY_RC_D
    if policy.is_file() and not policy.is_symlink() and POLICY_MARK in policy.read_text(errors="replace"):
        policy.unlink()
        return True
    return False


def _read_hostname(root: Path) -> str:
    try:
        name = (root / "etc/hostname").read_text().strip()
    except OSError:
        name = ""
    return name if name and len(name) <= 64 and name.replace("-", "").replace(".", "").isalnum() else "localhost"


def _check_mount_points(root: Path) -> None:
    """The prologue mounts over these; in a tree from an untrusted image they must be real folders."""
    if not root.is_dir():
        raise BuildFailed(f"root tree {root} does not exist")
    for name in ("proc", "sys", "dev", "run", "tmp"):
        p = root / name
        if p.is_symlink() or (p.exists() and not p.is_dir()):
            raise BuildFailed(f"root tree {root}: /{name} is not a folder", hint="the source image is damaged")
        if not p.exists():
            p.mkdir(mode=0o1777 if name == "tmp" else 0o755)


def resolve_in_root(root: Path, path: str, *, max_links: int = 40) -> PurePosixPath:
    """Resolve `path` as if `root` were `/`: symlinks (absolute or relative) never leave the root.

    Returns the resolved absolute path inside the root (the last component may not exist).
    """
    parts = list(PurePosixPath("/", path).parts[1:])
    resolved: list[str] = []
    links = 0
    while parts:
        part = parts.pop(0)
        if part in ("", "."):
            continue
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        host = root.joinpath(*resolved, part)
        if host.is_symlink():
            links += 1
            if links > max_links:
                raise BuildFailed(f"too many levels of symbolic links resolving {path} in {root}")
            target = os.readlink(host)
            if target.startswith("/"):
                resolved = []
            parts = list(PurePosixPath(target).parts[1 if target.startswith("/") else 0:]) + parts
            continue
        resolved.append(part)
    return PurePosixPath("/", *resolved)


def _resolv_plan(root: Path) -> tuple[str, str]:
    """How to show the host's resolv.conf inside: write it into /run (resolved's symlink), or bind it."""
    link = root / "etc/resolv.conf"
    if not (root / "etc").is_dir() or (root / "etc").is_symlink():
        return "none", ""
    target = resolve_in_root(root, "/etc/resolv.conf")
    if target.parts[:2] == ("/", "run"):
        return "run", str(target)
    host_target = root / str(target).lstrip("/")
    if host_target.is_file() and not host_target.is_symlink():
        return "bind", str(target)
    if not link.exists() and not link.is_symlink():
        link.touch()  # a mount point for the bind; generalize resets resolv.conf afterwards
        return "bind", "/etc/resolv.conf"
    return "none", ""
