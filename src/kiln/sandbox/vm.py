"""The VM runner: boot a disk in QEMU with UEFI firmware, confined, and never leave QEMU behind.

A `VirtualMachine` boots a kiln disk (raw, or a fixed VHD: `vpc`) the way Azure boots a
generation 2 image: UEFI firmware (OVMF, with a per-boot copy of its variable store), one
virtio disk, the first serial port written to a log file. By default the disk is the backing
file of a throwaway qcow2 overlay, so a boot never changes the disk that will be published;
small read-only data disks (identified to the guest by their serial) carry per-boot material.
`qemu_command()` is the one place a QEMU command line is built (the boot test's and the one
kiln prints for a person to boot a kept disk by hand).

Acceleration: KVM when it really works, else TCG. `/dev/kvm` opening is not enough (these
machines load `kvm_pvm`, under which QEMU hangs or asserts), so KVM is used only with kvm_intel
or kvm_amd loaded and after a probe VM that executes one instruction and exits within seconds.

Confinement: a guest is untrusted code and QEMU is its first way out. QEMU runs with its seccomp
filter on (`-sandbox on`, denying obsolete syscalls, privilege changes, fork/exec and resource
control) inside a bubblewrap mount namespace that holds read-only system files (/usr and the
loader's cache), its disk(s), its temp dir (overlay, variable store, data disks) and its serial
log, and nothing else of the host: no /home, no state home, no other build's work, no
capabilities. With a network, it runs in a pasta network namespace of its own
(`kiln.sandbox.network.own_network`): QEMU's user networking maps the guest's gateway onto the
loopback of QEMU's namespace, which is then an empty one, and the host's addresses are prohibited
there, so the guest reaches the outside world (the mirror) but no service of the host; a forwarded
SSH port is carried from the host's 127.0.0.1 by pasta. It costs nothing measurable: bwrap starts in ~6 ms, and QEMU used the same CPU time
for a Debian 12 boot to readiness with and without it (26.4 s vs 26.5 s, two boots each, TCG on a
busy 2-core host). `KILN_QEMU_CONFINE=off` drops the namespace (not the seccomp filter), for hosts
where bubblewrap cannot create one.

Cleanup is unconditional: QEMU runs in its own process group with PR_SET_PDEATHSIG (it dies with
the thread that started it, even if kiln is killed -9), and a `kiln.reaper.Reaper`, told the
group id and owning the temp dir, kills the group and removes the dir when kiln goes away without
saying goodbye. Normal exits, exceptions, Ctrl-C and SIGTERM are handled by `stop()`.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from kiln.errors import HostFailed, InvalidInput
from kiln.events import Monitor, NullMonitor
from kiln.reaper import Reaper
from kiln.run import Process, ToolFailed, minimal_env, run, spawn
from kiln.sandbox.network import own_network
from kiln.tools import ToolMissing

QEMU = "qemu-system-x86_64"
BWRAP = "bwrap"
DISK_FORMATS = ("raw", "vpc")
_OVMF_PAIRS = (
    ("/usr/share/OVMF/OVMF_CODE_4M.fd", "/usr/share/OVMF/OVMF_VARS_4M.fd"),
    ("/usr/share/OVMF/OVMF_CODE.fd", "/usr/share/OVMF/OVMF_VARS.fd"),
)
# QEMU 7.2's seccomp filter with every optional group denied: no obsolete syscalls, no setuid &
# co., no fork/exec (nothing in a kiln VM's QEMU needs a helper), no scheduler/affinity changes.
SECCOMP = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"
CONFINE_ENV = "KILN_QEMU_CONFINE"


@dataclass(frozen=True)
class DataDisk:
    """A small read-only disk for one boot; the guest finds it as /dev/disk/by-id/virtio-<serial>."""

    serial: str
    content: bytes


@functools.cache
def detect_accel() -> str:
    """'kvm' if KVM really runs a guest here, else 'tcg'. KILN_QEMU_ACCEL overrides."""
    forced = os.environ.get("KILN_QEMU_ACCEL", "").strip().lower()
    if forced in ("kvm", "tcg"):
        return forced
    if not any(Path("/sys/module", m).is_dir() for m in ("kvm_intel", "kvm_amd")):
        return "tcg"  # e.g. kvm_pvm: /dev/kvm opens, but QEMU hangs on it
    try:
        os.close(os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC))
    except OSError:
        return "tcg"
    return "kvm" if _probe_kvm() else "tcg"


def _probe_kvm() -> bool:
    # A 64 KiB "BIOS" whose reset vector writes to the isa-debug-exit port: QEMU exits with 3 if
    # the vCPU really executed guest code; a hang or an assertion means KVM is not usable.
    rom = bytearray(b"\xf4" * 65536)
    rom[-16:-11] = b"\xb0\x01\xe6\xf4\xf4"  # mov al,1; out 0xf4,al; hlt
    with tempfile.TemporaryDirectory(prefix="kiln-kvm-probe-") as tmp:
        bios = Path(tmp, "probe.rom")
        bios.write_bytes(bytes(rom))
        try:
            proc = run([QEMU, "-accel", "kvm", "-machine", "q35", "-nodefaults", "-display", "none",
                        "-bios", bios, "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"],
                       check=False, capture=True, timeout=15)
        except ToolFailed:  # timed out: the hang this probe exists for
            return False
    return proc.returncode == 3


def ovmf_firmware() -> tuple[Path, Path]:
    """The OVMF code image and its matching variable-store template (no Secure Boot)."""
    for code, vars_ in _OVMF_PAIRS:
        if Path(code).is_file() and Path(vars_).is_file():
            return Path(code), Path(vars_)
    raise HostFailed("no OVMF UEFI firmware found under /usr/share/OVMF", hint="install ovmf (scripts/setup does)")


def qemu_command(
    disk: Path,
    fmt: str,
    *,
    firmware_vars: Path,
    firmware_code: Path,
    accel: str,
    cpus: int,
    memory_mib: int,
    serial_log: Path | None,
    cache: str = "writeback",
    snapshot: bool = False,
    network: bool = True,
    data_disks: Sequence[tuple[Path, str]] = (),
    firmware: str = "uefi",
    ssh_port: int | None = None,
    cdrom: Path | None = None,
    name: str = "kiln-vm",
) -> list[str]:
    """The QEMU command line of a kiln VM: q35, UEFI (`firmware_code` + a variable store) or BIOS
    (SeaBIOS, `firmware="bios"`: hyperVGeneration V1), `disk` on virtio, the first serial port to
    `serial_log` (None: the terminal, for a person), seccomp on.

    `snapshot` keeps every write in a temporary file (the disk and variable store stay unchanged);
    `data_disks` are (raw image, serial) pairs attached read-only; `cdrom` is an ISO on the q35
    AHCI controller (how virt-install and cloud-localds users attach a NoCloud seed);
    `ssh_port` forwards 127.0.0.1:`ssh_port` on the host to the guest's port 22.
    """
    # cx16=off: QEMU 7.2's TCG emulation of cmpxchg16b corrupts the SLUB allocator of Linux 6.12
    # (Debian 13 guests panic in __kmalloc/mtree_load in most boots); without it SLUB falls back.
    tcg_cpu = "max,cx16=off"
    accel_args = ["-accel", "kvm", "-cpu", "host"] if accel == "kvm" else ["-accel", "tcg,thread=multi", "-cpu", tcg_cpu]
    snap = ",snapshot=on" if snapshot else ""
    serial = ["-chardev", f"file,id=serial0,path={serial_log}", "-serial", "chardev:serial0"] if serial_log \
        else ["-serial", "mon:stdio"]
    argv = [
        QEMU, "-name", name, "-machine", "q35", *accel_args, "-smp", str(cpus), "-m", str(memory_mib),
        "-nodefaults", "-display", "none", "-no-reboot", "-sandbox", SECCOMP,
        *(["-monitor", "none"] if serial_log else []),
    ]
    if firmware == "uefi":
        argv += ["-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={firmware_code}",
                 "-drive", f"if=pflash,format=raw,unit=1,file={firmware_vars}{snap}"]
    elif firmware != "bios":  # bios: QEMU's own SeaBIOS, nothing to attach
        raise ValueError(f"unknown firmware {firmware!r}")
    argv += [
        "-drive", f"if=none,id=os,file={disk},format={fmt},cache={cache}{snap}",
        "-device", "virtio-blk-pci,drive=os,bootindex=0",
        *serial,
        "-device", "virtio-rng-pci",
    ]
    if network:
        forward = f",hostfwd=tcp:127.0.0.1:{ssh_port}-:22" if ssh_port else ""
        argv += ["-netdev", f"user,id=net0{forward}", "-device", "virtio-net-pci,netdev=net0"]
    if cdrom is not None:
        argv += ["-drive", f"if=none,id=cd0,file={cdrom},format=raw,media=cdrom,readonly=on",
                 "-device", "ide-cd,drive=cd0,bus=ide.0"]
    for i, (path, serial_no) in enumerate(data_disks):
        argv += ["-drive", f"if=none,id=data{i},file={path},format=raw,readonly=on",
                 "-device", f"virtio-blk-pci,drive=data{i},serial={serial_no}"]
    return [str(a) for a in argv]


def interactive_command(disk: Path, fmt: str, *, memory_mib: int = 2048) -> list[str]:
    """A command line a person can paste to boot `disk` on the terminal; writes go to a snapshot."""
    found = [pair for pair in _OVMF_PAIRS if all(Path(p).is_file() for p in pair)]
    code, vars_ = found[0] if found else _OVMF_PAIRS[0]
    return qemu_command(Path(disk).absolute(), fmt, firmware_code=Path(code), firmware_vars=Path(vars_),
                        accel=detect_accel(), cpus=2, memory_mib=memory_mib, serial_log=None, snapshot=True)


def confined(argv: Sequence[str], *, read_only: Sequence[Path], writable: Sequence[Path], network: bool,
             devices: Sequence[str] = ()) -> list[str]:
    """`argv` run in a bubblewrap namespace that sees only system files, these paths and devices.

    Each path is bound at its own name, so the command line needs no rewriting (a qcow2 overlay
    names its backing file by absolute path).
    """
    out = [BWRAP, "--die-with-parent", "--unshare-ipc", "--unshare-pid", "--unshare-uts", "--unshare-cgroup-try",
           "--cap-drop", "ALL", *([] if network else ["--unshare-net"]), "--ro-bind", "/usr", "/usr"]
    for top in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        p = Path("/", top)
        if p.is_symlink():  # merged /usr: /lib -> usr/lib
            out += ["--symlink", os.readlink(p), str(p)]
        elif p.is_dir():
            out += ["--ro-bind", str(p), str(p)]
    etc = ["/etc/ld.so.cache", *(["/etc/resolv.conf", "/etc/hosts", "/etc/nsswitch.conf"] if network else [])]
    for name in etc:
        out += ["--ro-bind-try", name, name]
    out += ["--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp", "--tmpfs", "/var/tmp"]
    for dev in devices:
        out += ["--dev-bind", dev, dev]
    for ro in read_only:
        out += ["--ro-bind", str(ro), str(ro)]
    for rw in writable:
        out += ["--bind", str(rw), str(rw)]
    return [*out, "--chdir", "/", "--", *argv]


def confinement_enabled() -> bool:
    return os.environ.get(CONFINE_ENV, "").strip().lower() not in ("off", "0", "no", "false")


class VirtualMachine:
    """One QEMU boot of `disk`, as a context manager: started on enter, killed and cleaned on exit."""

    def __init__(
        self,
        disk: Path,
        fmt: str,
        *,
        serial_log: Path | None = None,
        data_disks: Sequence[DataDisk] = (),
        memory_mib: int = 1536,
        cpus: int = 2,
        overlay: bool = True,
        network: bool = True,
        work_dir: Path | None = None,
        monitor: Monitor | None = None,
        firmware: str = "uefi",
        ssh_port: int | None = None,
        cdrom: Path | None = None,
    ) -> None:
        if fmt not in DISK_FORMATS:
            raise InvalidInput(f"cannot boot a {fmt!r} disk", hint=f"convert it to one of {', '.join(DISK_FORMATS)} first")
        self.disk = Path(disk).absolute()
        if not self.disk.is_file():
            raise InvalidInput(f"disk not found: {self.disk}")
        self.fmt = fmt
        self.serial_log = Path(serial_log).absolute() if serial_log else None
        self.data_disks = tuple(data_disks)
        self.memory_mib = memory_mib
        self.cpus = cpus
        self.overlay = overlay
        self.network = network
        self.work_dir = work_dir
        self.monitor = monitor or NullMonitor()
        self.firmware = firmware
        self.ssh_port = ssh_port
        self.cdrom = Path(cdrom).absolute() if cdrom else None
        self.accel = ""
        self.tmp: Path | None = None
        self.proc: Process | None = None
        self._reaper: Reaper | None = None
        self._serial_pos = 0

    # -- lifecycle

    def __enter__(self) -> VirtualMachine:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        if self.work_dir:
            Path(self.work_dir).mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix="kiln-vm-", dir=self.work_dir))
        self._reaper = Reaper([self.tmp], name="kiln-vm-reaper")
        if self.serial_log is None:
            self.serial_log = self.tmp / "serial.log"
        self.serial_log.parent.mkdir(parents=True, exist_ok=True)
        self.serial_log.write_bytes(b"")
        argv = self._argv()
        self.monitor.log(f"vm: {QEMU} accel={self.accel}, {self.firmware.upper()}, {self.cpus} vCPU, {self.memory_mib} MiB, "
                         f"disk {self.disk} ({self.fmt}{', overlay' if self.overlay else ''}), serial {self.serial_log}"
                         f"{', confined' if argv[0] != QEMU else ''}")
        with open(self.tmp / "qemu.log", "wb") as qemu_log:
            # Its own session keeps the terminal's Ctrl-C away from it (kiln stops it in order);
            # the death signal kills it with kiln even on kill -9, and the reaper gets the rest.
            self.proc = spawn(argv, stdout=qemu_log, stderr=subprocess.STDOUT, session=True, die_with_parent=True)
        self._reaper.kill_group(self.proc.pid)

    def stop(self) -> None:
        """Kill QEMU (its whole process group), remove the temp dir, dismiss the reaper. Idempotent."""
        proc, self.proc = self.proc, None
        if proc is not None:
            proc.stop(grace=5)
            proc.close()
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = None
        reaper, self._reaper = self._reaper, None
        if reaper is not None:
            reaper.dismiss()

    # -- while running

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def poll(self) -> int | None:
        """QEMU's exit code once it has exited (the guest powered off), else None."""
        return self.proc.poll() if self.proc else -1

    def wait(self, timeout: float) -> int | None:
        return self.proc.wait(timeout) if self.proc else -1

    def read_serial(self) -> str:
        """Serial console text written since the last call."""
        if self.serial_log is None or not self.serial_log.exists():
            return ""
        with open(self.serial_log, "rb") as f:
            f.seek(self._serial_pos)
            data = f.read()
        self._serial_pos += len(data)
        return data.decode("utf-8", errors="replace")

    def qemu_output(self) -> str:
        """What QEMU itself printed (errors starting it, warnings)."""
        log = self.tmp / "qemu.log" if self.tmp else None
        return log.read_text(errors="replace") if log and log.exists() else ""

    # -- internals

    def _argv(self) -> list[str]:
        """Prepare the temp dir (variable store, overlay, data disks) and return QEMU's command line."""
        assert self.tmp is not None and self.serial_log is not None
        if shutil.which(QEMU, path=minimal_env()["PATH"]) is None:
            raise ToolMissing(QEMU)  # before bwrap, which would only say it cannot exec it
        if self.firmware == "uefi":
            code, vars_template = ovmf_firmware()
            vars_copy = self.tmp / "OVMF_VARS.fd"
            shutil.copyfile(vars_template, vars_copy)
        else:
            code = vars_copy = Path("/dev/null")  # SeaBIOS is QEMU's default: nothing to attach
        if self.overlay:
            boot_disk, boot_fmt = self.tmp / "overlay.qcow2", "qcow2"
            run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", self.disk, "-F", self.fmt, boot_disk], capture=True)
        else:
            boot_disk, boot_fmt = self.disk, self.fmt
        self.accel = detect_accel()
        data = []
        for i, disk in enumerate(self.data_disks):
            path = self.tmp / f"data{i}.img"
            padded = disk.content + b"\0" * (-len(disk.content) % 512)
            path.write_bytes(padded or b"\0" * 512)
            data.append((path, disk.serial))
        argv = qemu_command(
            boot_disk, boot_fmt, firmware_code=code, firmware_vars=vars_copy, accel=self.accel, cpus=self.cpus,
            memory_mib=self.memory_mib, serial_log=self.serial_log, network=self.network, data_disks=data,
            # cache=unsafe only for the overlay: it is thrown away, so flushes buy nothing.
            cache="unsafe" if self.overlay else "writeback",
            firmware=self.firmware, ssh_port=self.ssh_port, cdrom=self.cdrom,
        )
        if not confinement_enabled():
            return argv
        # The overlay's backing file is opened read-only; a persistent boot writes the disk itself.
        writable = [self.tmp] + ([] if self.overlay else [self.disk])
        if not self.serial_log.is_relative_to(self.tmp):
            writable.append(self.serial_log)
        read_only = ([self.disk] if self.overlay else []) + ([self.cdrom] if self.cdrom else [])
        argv = confined(argv, read_only=read_only, writable=writable,
                        network=self.network, devices=["/dev/kvm"] if self.accel == "kvm" else [])
        return own_network(argv, forward_port=self.ssh_port) if self.network else argv
