"""The VM runner: boot a disk in QEMU with UEFI firmware, and never leave QEMU behind.

A `VirtualMachine` boots a kiln disk (raw, or a fixed VHD: `vpc`) the way Azure boots a
generation 2 image: UEFI firmware (OVMF, with a per-boot copy of its variable store), one
virtio disk, the first serial port written to a log file. By default the disk is the backing
file of a throwaway qcow2 overlay, so a boot never changes the disk that will be published;
small read-only data disks (identified to the guest by their serial) carry per-boot material.

Acceleration: KVM when it really works, else TCG. `/dev/kvm` opening is not enough (these
machines load `kvm_pvm`, under which QEMU hangs or asserts), so KVM is used only with kvm_intel
or kvm_amd loaded and after a probe VM that executes one instruction and exits within seconds.

Cleanup is unconditional: QEMU runs in its own process group with PR_SET_PDEATHSIG (it dies with
the thread that started it, even if kiln is killed -9), and a small watchdog process, told the
group id and the temp dir, kills the group and removes the dir when kiln goes away without
saying goodbye. Normal exits, exceptions, Ctrl-C and SIGTERM are handled by `stop()`.
"""

from __future__ import annotations

import ctypes
import functools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from kiln.errors import BuildFailed, InvalidInput
from kiln.events import Monitor, NullMonitor
from kiln.run import minimal_env, run

QEMU = "qemu-system-x86_64"
DISK_FORMATS = ("raw", "vpc")
_OVMF_PAIRS = (
    ("/usr/share/OVMF/OVMF_CODE_4M.fd", "/usr/share/OVMF/OVMF_VARS_4M.fd"),
    ("/usr/share/OVMF/OVMF_CODE.fd", "/usr/share/OVMF/OVMF_VARS.fd"),
)

# The watchdog: a process in its own session that outlives kiln. kiln tells it the QEMU process
# group; EOF on its stdin (kiln exited, however) makes it kill that group and remove the temp dir,
# unless kiln said "done" first (then the group id may already belong to someone else).
_WATCHDOG = r"""
import os, shutil, signal, sys
tmp, pgid = sys.argv[1], 0
for line in sys.stdin:
    word = line.split()
    if word[:1] == ["pgid"]:
        pgid = int(word[1])
    elif word[:1] == ["done"]:
        sys.exit(0)
if pgid:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass
shutil.rmtree(tmp, ignore_errors=True)
"""


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
        except BuildFailed:  # timed out: the hang this probe exists for
            return False
    return proc.returncode == 3


def ovmf_firmware() -> tuple[Path, Path]:
    """The OVMF code image and its matching variable-store template (no Secure Boot)."""
    for code, vars_ in _OVMF_PAIRS:
        if Path(code).is_file() and Path(vars_).is_file():
            return Path(code), Path(vars_)
    raise BuildFailed("no OVMF UEFI firmware found under /usr/share/OVMF", hint="install ovmf (scripts/setup does)")


def _die_with_parent() -> None:
    """preexec_fn: SIGKILL this child when the thread that forked it dies (PR_SET_PDEATHSIG)."""
    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)


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
        self.accel = ""
        self.tmp: Path | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self._watchdog: subprocess.Popen[bytes] | None = None
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
        self._start_watchdog()
        if self.serial_log is None:
            self.serial_log = self.tmp / "serial.log"
        self.serial_log.parent.mkdir(parents=True, exist_ok=True)
        self.serial_log.write_bytes(b"")
        argv = self._qemu_argv()
        self.monitor.log(f"vm: {QEMU} accel={self.accel}, {self.cpus} vCPU, {self.memory_mib} MiB, "
                         f"disk {self.disk} ({self.fmt}{', overlay' if self.overlay else ''}), serial {self.serial_log}")
        qemu_log = open(self.tmp / "qemu.log", "wb")  # noqa: SIM115 - handed to the child
        try:
            # Popen, not run(): QEMU is a long-running process we watch and kill ourselves. Its own
            # session keeps the terminal's Ctrl-C away from it (kiln stops it in order); the
            # death signal kills it with kiln even on kill -9.
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=qemu_log, stderr=subprocess.STDOUT,
                env=minimal_env(), start_new_session=True, preexec_fn=_die_with_parent,
            )
        except FileNotFoundError as e:
            raise BuildFailed(f"{QEMU} is not installed", hint="install qemu-system-x86 (scripts/setup does)") from e
        finally:
            qemu_log.close()
        self._tell_watchdog(f"pgid {self.proc.pid}")

    def stop(self) -> None:
        """Kill QEMU (its whole process group), remove the temp dir, dismiss the watchdog. Idempotent."""
        proc, self.proc = self.proc, None
        if proc is not None:
            if proc.poll() is None:
                _killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    _killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = None
        if self._watchdog is not None:
            self._tell_watchdog("done")
            try:
                self._watchdog.stdin.close()  # type: ignore[union-attr]
            except OSError:
                pass
            try:
                self._watchdog.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._watchdog.kill()
                self._watchdog.wait()
            self._watchdog = None

    # -- while running

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def poll(self) -> int | None:
        """QEMU's exit code once it has exited (the guest powered off), else None."""
        return self.proc.poll() if self.proc else -1

    def wait(self, timeout: float) -> int | None:
        if self.proc is None:
            return -1
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

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

    def _qemu_argv(self) -> list[str]:
        assert self.tmp is not None
        code, vars_template = ovmf_firmware()
        vars_copy = self.tmp / "OVMF_VARS.fd"
        shutil.copyfile(vars_template, vars_copy)
        if self.overlay:
            boot_disk, boot_fmt = self.tmp / "overlay.qcow2", "qcow2"
            run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", self.disk, "-F", self.fmt, boot_disk], capture=True)
        else:
            boot_disk, boot_fmt = self.disk, self.fmt
        self.accel = detect_accel()
        # cx16=off: QEMU 7.2's TCG emulation of cmpxchg16b corrupts the SLUB allocator of Linux 6.12
        # (Debian 13 guests panic in __kmalloc/mtree_load in most boots); without it SLUB falls back.
        tcg_cpu = "max,cx16=off"
        accel = ["-accel", "kvm", "-cpu", "host"] if self.accel == "kvm" else ["-accel", "tcg,thread=multi", "-cpu", tcg_cpu]
        argv = [
            QEMU, "-name", "kiln-vm", "-machine", "q35", *accel, "-smp", str(self.cpus), "-m", str(self.memory_mib),
            "-nodefaults", "-display", "none", "-no-reboot", "-monitor", "none",
            "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={code}",
            "-drive", f"if=pflash,format=raw,unit=1,file={vars_copy}",
            # cache=unsafe only for the overlay: it is thrown away, so flushes buy nothing.
            "-drive", f"if=none,id=os,file={boot_disk},format={boot_fmt},cache={'unsafe' if self.overlay else 'writeback'}",
            "-device", "virtio-blk-pci,drive=os,bootindex=0",
            "-chardev", f"file,id=serial0,path={self.serial_log}", "-serial", "chardev:serial0",
            "-device", "virtio-rng-pci",
        ]
        if self.network:
            argv += ["-netdev", "user,id=net0", "-device", "virtio-net-pci,netdev=net0"]
        for i, data in enumerate(self.data_disks):
            path = self.tmp / f"data{i}.img"
            padded = data.content + b"\0" * (-len(data.content) % 512)
            path.write_bytes(padded or b"\0" * 512)
            argv += ["-drive", f"if=none,id=data{i},file={path},format=raw,readonly=on",
                     "-device", f"virtio-blk-pci,drive=data{i},serial={data.serial}"]
        return [str(a) for a in argv]

    def _start_watchdog(self) -> None:
        assert self.tmp is not None
        # Popen, not run(): the watchdog must outlive this call (and kiln) to do its job.
        self._watchdog = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", _WATCHDOG, str(self.tmp)],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            env=minimal_env(), start_new_session=True,
        )

    def _tell_watchdog(self, line: str) -> None:
        if self._watchdog is None or self._watchdog.stdin is None:
            return
        try:
            self._watchdog.stdin.write(f"{line}\n".encode())
            self._watchdog.stdin.flush()
        except (BrokenPipeError, ValueError):
            pass


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass

