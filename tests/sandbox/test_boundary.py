"""A template cannot touch the host (issue 9): every attempt runs in a real Shell customizer of a
real `kiln build` and is refused; the build log shows what each attempt printed, and the host is
unchanged afterwards. apt still works in the same build. Fork bombs and memory hogs fail their
build with a clear message while the host stays responsive."""

from __future__ import annotations

import json
import os
import secrets
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from debian_root import TEST_CACHE, missing_tools
from envcheck import unavailable
from kiln.sandbox import limits

pytestmark = pytest.mark.integration

ATTACKS = r"""#!/bin/bash
# Host facts, filled in by the test: a host file, a host folder, a host process, host listeners.
export MARKER=@MARKER@ HOSTDIR=@HOSTDIR@ HOSTPID=@HOSTPID@ TOKEN=@TOKEN@
LOOPBACK=@LOOPBACK@ HOSTADDRS="@HOSTADDRS@" GATEWAY=@GATEWAY@

report() {  # name, exit code of the attempt (0 = it worked), what it printed
  if [ "$2" = 0 ]; then echo "ATTEMPT $1: SUCCEEDED: $3"; else echo "ATTEMPT $1: REFUSED: $3"; fi
}
try() {  # name, command...: run it, report whether it worked
  local name=$1; shift
  local out; out=$("$@" 2>&1); report "$name" $? "$(echo "$out" | tr '\n' ' ' | cut -c1-300)"
}
# perl's syscall(): number, args (numbers passed as integers). `sys` exits 0 only if the call
# succeeded; `door` also counts as success any error but EPERM (the call reached the kernel).
SYSCALL='@a = map { /^-?\d+$/ ? 0 + $_ : $_ } @ARGV; $n = shift @a; $r = syscall($n, @a);'
sys() { perl -e "$SYSCALL"' if ($r == -1) { print "errno: $!\n"; exit 1 } print "returned $r\n"; exit 0' "$@"; }
door() { perl -e "$SYSCALL"' if ($r == -1 && $!{EPERM}) { print "errno: $!\n"; exit 1 } print "reached the kernel: $r $!\n"; exit 0' "$@"; }

cd /tmp
# --- the classic chroot escape, then a read and a write of a host file
ESCAPE='mkdir "kiln-escape"; chroot "kiln-escape" or print "chroot: $!\n"; chdir ".." for 1..64;
        chroot "." or print "chroot: $!\n"; opendir(D, "/"); print "escaped / is: ", join(" ", sort grep !/^\./, readdir D), "\n";'
try chroot-escape-read perl -e "$ESCAPE"'open(F, "<", $ENV{MARKER}) or die "read: $!\n"; print "read: ", <F>;'
try chroot-escape-write perl -e "$ESCAPE"'open(F, ">>", $ENV{MARKER}) or die "write: $!\n"; print F "pwned\n"; close F or die;'
try chroot-escape-create perl -e "$ESCAPE"'open(F, ">", "$ENV{HOSTDIR}/escaped-$ENV{TOKEN}") or die "create: $!\n";'

# --- /proc/1/root, host pids, and `..` through every mount
echo "inside, /proc/1/root/ holds: $(ls /proc/1/root/ | tr '\n' ' ')"
try proc-1-root cat "/proc/1/root$MARKER"
try proc-host-pid cat "/proc/$HOSTPID/cmdline"
try proc-host-pid-root ls "/proc/$HOSTPID/root/"
try dotdot-stage cat "/run/kiln/../../..$MARKER"
try dotdot-sys cat "/sys/../../..$MARKER"
try dotdot-dev cat "/dev/pts/../../..$MARKER"
try dotdot-proc cat "/proc/self/root/../../..$MARKER"

# --- devices
try mknod-block mknod /tmp/kiln-sda b 8 0
try read-block dd if=/tmp/kiln-sda of=/dev/null bs=512 count=1
for dev in /sys/class/block/*/dev; do  # every disk of the host, by its numbers
  name=$(basename "$(dirname "$dev")"); IFS=: read -r major minor < "$dev"
  try "mknod-host-disk-$name" mknod "/tmp/kiln-$name" b "$major" "$minor"
  try "read-host-disk-$name" dd if="/tmp/kiln-$name" of=/dev/null bs=512 count=1
done
echo "inside, /dev holds: $(ls /dev | tr '\n' ' ')"

# --- mounts, modules, kexec, other kernel doors (x86_64 numbers; reboot's magic is invalid on purpose)
try mount-tmpfs mount -t tmpfs kiln /mnt
try mount-bind mount --bind / /mnt
try mount-proc mount -t proc proc /mnt
try mount-syscall door 165 "kiln" "/mnt" "tmpfs" 0 0
try unshare-mount unshare --mount true
try unshare-user unshare --user --map-root-user true
try module-init door 175 "\0\0\0\0" 4 ""
try module-finit perl -e 'open(F, "<", "/bin/true") or die; my $p = ""; $r = syscall(313, fileno(F), $p, 0); if ($r == -1 && $!{EPERM}) { print "errno: $!\n"; exit 1 } print "reached the kernel: $!\n"; exit 0'
try kexec-load door 246 0 0 0 0
try kexec-file-load door 320 -1 -1 0 "" 0
try bpf door 321 0 0 0
try keyctl door 250 0 0 0 0 0
try reboot door 169 0 0 0 0

# --- sysctls the host kernel acts on as root (each write puts back the value already there)
try sysctl-core-pattern sh -c 'v=$(cat /proc/sys/kernel/core_pattern) && echo "$v" > /proc/sys/kernel/core_pattern'
try sysctl-modprobe sh -c 'v=$(cat /proc/sys/kernel/modprobe) && echo "$v" > /proc/sys/kernel/modprobe'
try sysrq sh -c 'echo h > /proc/sysrq-trigger'

# --- processes outside: ptrace and kill of the test's own process
try ptrace-host-pid sys 101 16 "$HOSTPID" 0 0
try kill-host-pid kill -9 "$HOSTPID"

# --- the host's network services
try tcp-host-loopback timeout 5 bash -c "exec 3<>/dev/tcp/$LOOPBACK"
for target in $HOSTADDRS; do
  try "tcp-host-address-${target%:*}-${target##*:}" timeout 5 bash -c "exec 3<>/dev/tcp/${target%:*}/${target##*:}"
done
try tcp-gateway-mapped-to-host timeout 5 bash -c "exec 3<>/dev/tcp/$GATEWAY/${LOOPBACK##*/}"
echo "what this step holds: $(grep -E '^(CapEff|CapBnd|NoNewPrivs|Seccomp):' /proc/self/status | tr '\t\n' '  ')"
echo "ATTACKS DONE"
"""


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A state home whose bootstrap cache is the tests' shared one (repeated builds are fast)."""
    if why := missing_tools():
        unavailable(why)
    for tool in ("bwrap", "pasta", "ip"):
        if subprocess.run(["sh", "-c", f"command -v {tool}"], capture_output=True).returncode:
            unavailable(f"{tool} is not installed (run scripts/setup)")
    home = tmp_path_factory.mktemp("sandbox-home")
    shared = TEST_CACHE / "kiln-home" / "cache"
    shared.mkdir(parents=True, exist_ok=True)
    (home / "cache").symlink_to(shared)
    return home


def kiln_build(home: Path, template: dict, tmp: Path, **env: str) -> subprocess.CompletedProcess[str]:
    path = tmp / "template.json"
    path.write_text(json.dumps(template))
    return subprocess.run([sys.executable, "-m", "kiln", "build", str(path), "--no-validate"],
                          env={**os.environ, "KILN_HOME": str(home), **env}, text=True, capture_output=True,
                          timeout=1800, stdin=subprocess.DEVNULL)


def template(customize: list[dict], name: str, minutes: int = 30) -> dict:
    image = f"/subscriptions/00000000-0000-0000-0000-0000000000a9/resourceGroups/rg/providers/Microsoft.Compute/images/{name}"
    return {
        "type": "Microsoft.VirtualMachineImages/imageTemplates",
        "apiVersion": "2022-07-01",
        "location": "westus2",
        "properties": {
            "source": {"type": "PlatformImage", "publisher": "Debian", "offer": "debian-12", "sku": "12-gen2",
                       "version": "latest"},
            "buildTimeoutInMinutes": minutes,
            "customize": customize,
            "distribute": [{"type": "ManagedImage", "imageId": image, "location": "westus2", "runOutputName": name}],
        },
    }


def run_log(home: Path) -> str:
    """The text of the last run's log (what the steps printed)."""
    out = subprocess.run([sys.executable, "-m", "kiln", "runs", "list", "--json"], env={**os.environ, "KILN_HOME": str(home)},
                         text=True, capture_output=True, check=True).stdout
    return Path(json.loads(out)[-1]["logPath"]).read_text(errors="replace")


class Listener:
    """A TCP listener on the host that records every connection it accepts."""

    def __init__(self, address: str) -> None:
        self.sock = socket.create_server((address, 0))
        self.sock.settimeout(0.2)
        self.address = f"{address}:{self.sock.getsockname()[1]}"
        self.accepted: list[str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, peer = self.sock.accept()
            except TimeoutError:
                continue
            self.accepted.append(str(peer))
            conn.close()

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        self.sock.close()


def host_ipv4_addresses() -> list[str]:
    out = subprocess.run(["ip", "-j", "-4", "addr", "show"], capture_output=True, text=True, check=True).stdout
    return [a["local"] for link in json.loads(out) for a in link.get("addr_info", [])
            if not a["local"].startswith("127.")]


def default_gateway() -> str:
    out = subprocess.run(["ip", "-j", "-4", "route", "show", "default"], capture_output=True, text=True, check=True).stdout
    routes = [r["gateway"] for r in json.loads(out) if r.get("gateway")]
    return routes[0] if routes else "192.0.2.1"


def kiln_cgroups() -> list[Path]:
    """Sandbox cgroups left behind: their kiln (named by pid) has exited. A live kiln's are its own
    business (the suite runs tests in parallel, and another test's build may be running now)."""
    found = []
    for controller in ("memory", "pids"):
        base, _ = limits._own_cgroup(controller)
        if base is not None:
            for entry in base.glob(limits.PREFIX + "*"):
                pid = entry.name[len(limits.PREFIX):].split("-")[0]
                if not (pid.isdigit() and Path(f"/proc/{pid}").exists()):
                    found.append(entry)
    return found


@pytest.fixture
def outside_process() -> Iterator[subprocess.Popen]:
    proc = subprocess.Popen(["sleep", "600"])
    yield proc
    proc.kill()
    proc.wait()


@pytest.fixture
def listeners() -> Iterator[tuple[Listener, list[Listener]]]:
    loop = Listener("127.0.0.1")
    own = [Listener(a) for a in host_ipv4_addresses()]
    yield loop, own
    for lst in [loop, *own]:
        lst.close()


def test_every_escape_is_refused_and_apt_still_works(home: Path, tmp_path: Path, outside_process: subprocess.Popen,
                                                     listeners: tuple[Listener, list[Listener]]) -> None:
    loopback, own = listeners
    hostdir = tmp_path / "host-side"
    hostdir.mkdir()
    marker = hostdir / "marker"
    marker.write_text("host file, must not change\n")
    os.utime(marker, (1_000_000_000, 1_000_000_000))
    marker_stat = marker.stat()
    token = secrets.token_hex(4)
    gateway = default_gateway()
    script = tmp_path / "attacks.sh"
    script.write_text(ATTACKS.replace("@MARKER@", str(marker)).replace("@HOSTDIR@", str(hostdir))
                      .replace("@HOSTPID@", str(outside_process.pid)).replace("@TOKEN@", token)
                      .replace("@LOOPBACK@", loopback.address.replace(":", "/"))
                      .replace("@HOSTADDRS@", " ".join(lst.address for lst in own)).replace("@GATEWAY@", gateway))
    payload = tmp_path / "payload.txt"
    payload.write_text("written by a File customizer\n")
    top_before = sorted(os.listdir("/"))
    root_home_before = sorted(os.listdir("/root"))

    proc = kiln_build(home, template([
        {"type": "Shell", "name": "attacks", "scriptUri": f"file://{script}"},
        {"type": "Shell", "name": "symlink-chain", "inline": [
            "mkdir -p /opt/kiln-link",
            "ln -s /opt/kiln-link/b /opt/kiln-link/a",
            f"ln -s {hostdir} /opt/kiln-link/b",
        ]},
        {"type": "File", "name": "file-through-symlinks", "sourceUri": f"file://{payload}",
         "destination": f"/opt/kiln-link/a/evil-{token}.txt"},
        {"type": "Shell", "name": "where-the-file-landed", "inline": [
            f"test -f {hostdir}/evil-{token}.txt && echo 'ATTEMPT file-symlink-chain: REFUSED: landed inside the image'",
        ]},
        {"type": "Shell", "name": "apt", "inline": [
            "apt-get update", "apt-get install -y jq", "echo \"jq works: $(echo '{\"a\": 41}' | jq '.a + 1')\"",
        ]},
    ], "sandbox-boundary"), tmp_path)

    log = run_log(home)
    assert proc.returncode == 0, f"{proc.stderr}\n{log[-4000:]}"
    attempts = [line[line.index("ATTEMPT "):] for line in log.splitlines() if "ATTEMPT " in line]
    succeeded = [a for a in attempts if ": SUCCEEDED" in a]
    assert succeeded == [], "\n".join(succeeded)
    names = {a.split(":")[0].removeprefix("ATTEMPT ") for a in attempts}
    expected = {"chroot-escape-read", "chroot-escape-write", "chroot-escape-create", "proc-1-root", "proc-host-pid",
                "proc-host-pid-root", "dotdot-stage", "dotdot-sys", "dotdot-dev", "dotdot-proc", "mknod-block",
                "read-block", "mount-tmpfs", "mount-bind", "mount-proc", "mount-syscall", "unshare-mount",
                "unshare-user", "module-init", "module-finit", "kexec-load", "kexec-file-load", "bpf", "keyctl",
                "reboot", "sysctl-core-pattern", "sysctl-modprobe", "sysrq", "ptrace-host-pid", "kill-host-pid", "tcp-host-loopback", "tcp-gateway-mapped-to-host",
                "file-symlink-chain"} | {f"tcp-host-address-{lst.address.replace(':', '-')}" for lst in own}
    assert expected <= names, f"missing: {expected - names}"
    assert any(n.startswith("mknod-host-disk-") for n in names) or not list(Path("/sys/class/block").iterdir())
    assert "ATTACKS DONE" in log
    # What the step saw: the escape led back into the image; capabilities and filters in force.
    assert "escaped / is: " in log and "vmlinuz" in log.split("escaped / is: ")[1].splitlines()[0]
    status = log.split("what this step holds: ")[1].splitlines()[0]
    cap_eff = int(status.split("CapEff:")[1].split()[0], 16)
    for bit, cap in ((21, "SYS_ADMIN"), (16, "SYS_MODULE"), (17, "SYS_RAWIO"), (27, "MKNOD"), (19, "SYS_PTRACE"),
                     (22, "SYS_BOOT"), (25, "SYS_TIME"), (12, "NET_ADMIN"), (39, "BPF")):
        assert not cap_eff & (1 << bit), f"CAP_{cap} kept"
    assert "NoNewPrivs: 1" in status and "Seccomp: 2" in status
    # apt, through the sandbox's own network stack, still works.
    assert "jq works: 42" in log
    # The host is unchanged.
    assert marker.read_text() == "host file, must not change\n"
    assert marker.stat().st_mtime == marker_stat.st_mtime and marker.stat().st_ino == marker_stat.st_ino
    assert sorted(os.listdir(hostdir)) == ["marker"]
    assert outside_process.poll() is None, "the process outside was killed"
    assert loopback.accepted == [] and all(lst.accepted == [] for lst in own)
    assert sorted(os.listdir("/")) == top_before and sorted(os.listdir("/root")) == root_home_before
    assert not Path("/tmp/kiln-escape").exists() and not Path("/tmp/kiln-sda").exists()
    assert kiln_cgroups() == []


class Responsiveness:
    """Runs a trivial host command over and over while a build runs; records every failure."""

    def __init__(self) -> None:
        self.runs = 0
        self.failures: list[str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self.stop.wait(0.5):
            try:
                done = subprocess.run(["sh", "-c", "echo alive"], capture_output=True, text=True, timeout=60)
                if done.stdout != "alive\n":
                    self.failures.append(f"exit {done.returncode}: {done.stderr}")
            except (OSError, subprocess.SubprocessError) as e:
                self.failures.append(repr(e))
            self.runs += 1

    def __enter__(self) -> Responsiveness:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


def build_under_limits(home: Path, tmp_path: Path, inline: list[str], name: str, **env: str) -> tuple[subprocess.CompletedProcess[str], str, Responsiveness]:
    if not (limits.probe().memory and limits.probe().pids):
        unavailable(f"cgroup limits unavailable here: {limits.probe().why_not}")
    with Responsiveness() as host:
        proc = kiln_build(home, template([{"type": "Shell", "name": name, "inline": inline}], name, minutes=10),
                          tmp_path, **env)
        time.sleep(1)  # one more probe after the build
    return proc, run_log(home), host


def test_fork_bomb_fails_its_build(home: Path, tmp_path: Path) -> None:
    proc, log, host = build_under_limits(home, tmp_path, [
        "echo bombing", "bomb() { bomb | bomb & }", "bomb", "sleep 600",
    ], "fork-bomb", KILN_SANDBOX_PIDS_MAX="300")
    assert proc.returncode == 1, proc.stderr
    assert "fork-bomb" in proc.stderr and "more than 300 processes" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "bombing" in log and "more than 300 processes" in log
    assert host.runs > 0 and host.failures == []
    assert kiln_cgroups() == []
    assert subprocess.run(["pgrep", "-f", "bomb"], capture_output=True).stdout.strip() == b""


def test_memory_hog_fails_its_build(home: Path, tmp_path: Path) -> None:
    proc, log, host = build_under_limits(home, tmp_path, [
        "echo hogging", "head -c 8G /dev/zero | tail > /dev/null",
    ], "memory-hog", KILN_SANDBOX_MEMORY_MIB="256")
    assert proc.returncode == 1, proc.stderr
    assert "memory-hog" in proc.stderr and "ran out of memory" in proc.stderr and "256 MiB" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "hogging" in log and "ran out of memory" in log
    assert host.runs > 0 and host.failures == []
    assert kiln_cgroups() == []


def test_a_device_node_that_came_with_the_image_cannot_be_opened(fresh_root: Path) -> None:
    """mknod is refused inside, but an image (an ISO, a disk) may carry a node for the host's disk.

    Where the host's filesystem is mounted nodev the kernel refuses it for that reason too;
    test_limits.py checks the devices cgroup on its own."""
    from kiln.sandbox.isolated import IsolatedRoot

    if not limits.probe().devices:
        unavailable(f"the devices cgroup is unavailable here: {limits.probe().why_not}")
    disks = sorted(Path("/sys/class/block").glob("*/dev"), key=lambda p: p.parent.name.startswith("loop"))
    if not disks:
        unavailable("the host has no block device to point a node at")
    major, minor = (int(n) for n in disks[0].read_text().split(":"))
    node = fresh_root / "tmp/kiln-host-disk"
    os.mknod(node, 0o600 | stat.S_IFBLK, os.makedev(major, minor))
    try:
        with IsolatedRoot(fresh_root) as sandbox:
            done = sandbox.run(["sh", "-c", "ls -l /tmp/kiln-host-disk; dd if=/tmp/kiln-host-disk of=/dev/null bs=512 count=1"])
    finally:
        node.unlink()
    assert not done.ok, done.tail
    assert "failed to open '/tmp/kiln-host-disk'" in done.tail, done.tail  # EPERM or EACCES: the devices cgroup
