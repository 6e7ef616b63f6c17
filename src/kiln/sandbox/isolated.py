"""Running commands inside a root tree, isolated from the host.

An `IsolatedRoot` is the only way kiln runs anything inside an image's root tree (customizers,
generalization, a deprovisioning script), whatever source the root came from (platform image,
ISO, ManagedImage, SharedImageVersion: the build opens every root through this class). Templates
are untrusted code, so each command runs in a sandbox made by bubblewrap (`bwrap`):

- Filesystem: the image root becomes the root of a new mount namespace (bwrap's pivot_root; the
  host's root is detached and unmounted there), so a chroot escape, /proc/1/root and `..` through
  any mount all lead back into the image. On top: a new /proc, bwrap's minimal /dev (null zero
  full random urandom tty, a private devpts, /dev/shm), the host's /sys read-only, a tmpfs /run,
  the host's resolv.conf as a read-only copy, and a host folder read-only at /run/kiln (`stage=`).
  /proc/sys is read-only: root there could otherwise set kernel.core_pattern or kernel.modprobe,
  programs the host kernel would run as root.
- Processes: new pid, ipc, uts and cgroup namespaces; the command's pid namespace dies with it.
- Capabilities: all are dropped but the ones package installation needs -
  CHOWN, FOWNER, FSETID, DAC_OVERRIDE (dpkg unpacking files owned by other users and setting
  their modes, chown in maintainer scripts), SETUID, SETGID (apt drops to _apt to download;
  useradd, su, runuser, setpriv), SETFCAP (postinst scripts that setcap, e.g. ping),
  KILL (stopping a package's own processes of other uids), SYS_CHROOT (dpkg --root, chroot
  inside the image; it leads nowhere but the image), AUDIT_WRITE (useradd, passwd and su log
  to audit), NET_BIND_SERVICE (inside its own network namespace only). Never kept: SYS_ADMIN,
  SYS_MODULE, SYS_RAWIO, MKNOD, SYS_PTRACE, SYS_BOOT, SYS_TIME, NET_ADMIN, BPF and the rest.
- no_new_privs (bwrap sets it: no exec can gain a capability back, although bwrap 0.8 leaves
  the bounding set full when run as root) and a seccomp filter (kiln.sandbox.seccomp: mount,
  module loading, kexec, bpf, keyctl, reboot, unshare/setns and namespace-creating clone are
  refused).
- Network: its own network namespace made by pasta, IPv4 through pasta's user-mode stack; the
  host's loopback, its own addresses and link-local space are unreachable (kiln.sandbox.network).
- Resources: a memory, a process-count and a devices cgroup per command (kiln.sandbox.limits);
  hitting the memory or process limit fails the build with a message that says which; the
  devices cgroup lets only the minimal /dev's character devices open (not a disk node an image
  brought along). Where the host has no such cgroups, the run log says so once per root.

Lifetimes: the launcher runs under `setpriv --pdeathsig KILL`, so it dies with kiln; pasta is its
next image and bwrap is pasta's child with `--die-with-parent`; the command's pid namespace and
mount namespace vanish with bwrap. A killed kiln (SIGTERM, SIGINT, SIGKILL) leaves no process
and no mount behind. While the root is open (`with IsolatedRoot(...)`), a `policy-rc.d` that
returns 101 is in place so package scripts start no services; it is removed on exit (and by
generalize, should kiln have been killed before it could remove it).
"""

from __future__ import annotations

import os
import shlex
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from kiln.errors import BuildFailed
from kiln.events import Monitor, NullMonitor
from kiln.run import CommandFailed, run_streamed
from kiln.sandbox import limits, network, seccomp

POLICY_RC_D = "usr/sbin/policy-rc.d"
POLICY_MARK = "# kiln: no services start while customizing"
STAGE_DIR = "/run/kiln"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

KEPT_CAPABILITIES = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER", "CAP_FSETID", "CAP_SETUID", "CAP_SETGID",
    "CAP_SETFCAP", "CAP_KILL", "CAP_SYS_CHROOT", "CAP_AUDIT_WRITE", "CAP_NET_BIND_SERVICE",
)

# The launcher runs on the host's /bin/sh: it joins the run's cgroups (so every process that
# follows is counted), then becomes pasta, which makes the network namespace and runs _INNER in
# it. pasta prints harmless complaints about user-namespace maps as root: its stderr goes to
# /dev/null, the command's stderr is handed through on fd 3.
# Positional parameters: cgroup.procs files, prohibited routes, seccomp BPF path, resolv.conf
# source, the inner script, pasta's options (split on spaces), then bwrap's arguments.
_LAUNCHER = r"""
set -euf
CGROUPS=$1 ROUTES=$2 BPF=$3 RESOLV=$4 INNER=$5 PASTA_OPTIONS=$6
shift 6
for f in $CGROUPS; do echo $$ > "$f"; done
for tool in pasta bwrap ip; do
  command -v $tool >/dev/null || { echo "kiln sandbox: $tool is not installed (run scripts/setup)" >&2; exit 127; }
done
[ -c /dev/net/tun ] || { echo "kiln sandbox: /dev/net/tun is missing (pasta needs it: modprobe tun)" >&2; exit 127; }
exec pasta $PASTA_OPTIONS -- /bin/sh -c "$INNER" kiln-net "$ROUTES" "$BPF" "$RESOLV" "$@" 3>&2 2>/dev/null
"""

# Inside the new network namespace, still with the host's capabilities and on the host's
# filesystem: shut the ways to the host's addresses, then become bwrap (which drops them).
_INNER = r"""
exec 2>&3 3>&-
set -eu
ROUTES=$1 BPF=$2 RESOLV=$3
shift 3
for f in /proc/sys/net/ipv6/conf/all/disable_ipv6 /proc/sys/net/ipv6/conf/default/disable_ipv6; do
  if [ -e "$f" ]; then echo 1 > "$f"; fi
done
for r in $ROUTES; do ip route add prohibit "$r"; done
exec bwrap "$@" 5<"$BPF" 6<"$RESOLV"  # dash: single-digit fds only
"""


class SandboxLimit(BuildFailed):
    """A command inside the root hit the sandbox's memory or process limit and was stopped."""


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
        self._bpf_fd: int | None = None  # the compiled seccomp filter, made once per `with`
        self._prohibited: list[str] | None = None  # the host's addresses, looked up once per `with`

    # -------------------------------------------------------------- policy-rc.d lifetime

    def __enter__(self) -> IsolatedRoot:
        self._depth += 1
        if self._depth > 1:
            return self
        _check_mount_points(self.root)
        available = limits.probe()
        for why in available.why_not:
            self.monitor.log(f"kiln sandbox: {why}; steps run without that limit")
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
        self._release()
        remove_policy_rc_d(self.root)
        if self._saved_policy is not None:
            policy = self.root / POLICY_RC_D
            policy.write_bytes(self._saved_policy)
            policy.chmod(0o755)

    # -------------------------------------------------------------- running

    def command(self, argv: Sequence[str], *, stage: Path | None = None, cgroups: Sequence[str] = (),
                tmpfs: Sequence[str] = ()) -> list[str]:
        """The host command line that runs `argv` inside the root (for logs and `abort` hints).

        `tmpfs`: folders inside that get an empty tmpfs of their own for this command (a mount
        point on another filesystem, as a mounted ESP is to kernel-install)."""
        mode, path = _resolv_plan(self.root)
        bwrap = [
            "--die-with-parent", "--new-session", "--as-pid-1",  # the command is pid 1, as before
            "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
            "--hostname", self.hostname,
            "--bind", str(self.root), "/",
            "--proc", "/proc",
            # bwrap leaves /proc/sys writable; root there could set kernel.core_pattern or
            # kernel.modprobe (programs the host kernel runs as root): read-only.
            "--ro-bind", "/proc/sys", "/proc/sys",
            "--dev", "/dev",
            "--ro-bind", "/sys", "/sys",
            "--tmpfs", "/run",
            "--perms", "1777", "--dir", "/run/lock",
        ]
        if mode != "none":
            bwrap += ["--perms", "0644", "--ro-bind-data", "6", path]  # bwrap's default 0600 hides it from _apt
        if stage is not None:
            bwrap += ["--ro-bind", str(stage.absolute()), STAGE_DIR]
        for inside in tmpfs:
            bwrap += ["--tmpfs", inside]
        bwrap += ["--cap-drop", "ALL"]
        for cap in KEPT_CAPABILITIES:
            bwrap += ["--cap-add", cap]
        bwrap += ["--seccomp", "5", "--chdir", "/", "--", *argv]
        return [
            "setpriv", "--pdeathsig", "KILL", "--",
            "/bin/sh", "-c", _LAUNCHER, "kiln-sandbox",
            " ".join(cgroups), " ".join(self._routes()), self._bpf_path(),
            "/etc/resolv.conf" if mode != "none" else "/dev/null", _INNER, " ".join(network.PASTA_OPTIONS),
            *bwrap,
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
        tmpfs: Sequence[str] = (),
    ) -> Completed:
        """Run `argv` inside the root; return its exit code and output tail.

        With `check`, a non-zero exit raises `CommandFailed`. A `timeout` (seconds) kills the
        whole namespace and raises `SandboxTimeout`; a command that exhausts the sandbox's memory
        or process limit raises `SandboxLimit`. `stage` is a host folder visible read-only at
        /run/kiln inside. `name` labels the log lines (the step's name).
        """
        if not self._depth:
            raise RuntimeError("IsolatedRoot.run() outside its `with` block")
        argv = [str(a) for a in argv]
        inner_env = {"PATH": DEFAULT_PATH, "HOME": "/root", "LANG": "C.UTF-8", "TERM": "dumb",
                     "DEBIAN_FRONTEND": "noninteractive", "SHELL": "/bin/sh", "USER": "root", "LOGNAME": "root"}
        inner_env.update(env or {})
        self.monitor.log(f"$ {shlex.join(argv)}", name=name)
        settings = limits.settings()
        groups = limits.Cgroups(settings)
        stop = threading.Event()
        bombed = threading.Event()

        def watch_forks() -> None:
            # pids.max makes fork() fail; a fork bomb then spins for ever: stop the step instead.
            while not stop.wait(0.25):
                if groups.fork_refusals():
                    bombed.set()
                    groups.kill_all()
                    return

        watcher = threading.Thread(target=watch_forks, name="kiln-sandbox-pids", daemon=True)
        if "pids" in groups.dirs:
            watcher.start()
        try:
            result = run_streamed(self.command(argv, stage=stage, cgroups=groups.procs_files, tmpfs=tmpfs), self.monitor,
                                  name=name, timeout=timeout, env=inner_env, replace_env=True)
            oom_kills = groups.oom_kills()
        finally:
            stop.set()
            if watcher.is_alive():
                watcher.join()
            groups.kill_all()  # nothing should be left; a daemon that escaped the pid namespace cannot
            groups.remove()
        text = result.tail
        returncode = result.returncode
        label = f"step {name!r}" if name else "command"
        if bombed.is_set():
            msg = (f"{label} was stopped: it tried to run more than {settings.pids_max} processes at once "
                   f"(a fork bomb?): {shlex.join(argv)}")
            self.monitor.log(f"kiln: {msg}", name=name)
            raise SandboxLimit(f"{msg}\n{text}", hint="raise KILN_SANDBOX_PIDS_MAX if the step really needs more")
        if oom_kills and returncode != 0:
            msg = (f"{label} ran out of memory: the sandbox allows {settings.memory_bytes // 2**20} MiB and the "
                   f"kernel killed a process of it: {shlex.join(argv)}")
            self.monitor.log(f"kiln: {msg}", name=name)
            raise SandboxLimit(f"{msg}\n{text}", hint="raise KILN_SANDBOX_MEMORY_MIB if the step really needs more")
        if result.timed_out:
            raise SandboxTimeout(f"command inside the root timed out after {timeout:g} s: {shlex.join(argv)}\n{text}")
        if check and returncode != 0:
            raise CommandFailed(argv, returncode, text)
        return Completed(tuple(argv), returncode, text)

    # -------------------------------------------------------------- per-`with` resources

    def _bpf_path(self) -> str:
        if self._bpf_fd is None:
            self._bpf_fd = seccomp.bpf_memfd()
        return f"/proc/{os.getpid()}/fd/{self._bpf_fd}"

    def _routes(self) -> list[str]:
        if self._prohibited is None:
            self._prohibited = network.prohibited_routes()
        return self._prohibited

    def _release(self) -> None:
        if self._bpf_fd is not None:
            os.close(self._bpf_fd)
            self._bpf_fd = None
        self._prohibited = None


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
