"""The boot test, for real: QEMU + OVMF boots the built disk (TCG here), the guest hook reports.

Boots in this file: one of the built raw disk with two validations (shared by several tests), one
run_in_vm of the same disk as a fixed VHD, and short firmware-only boots of a disk with nothing
to boot (for the failure and kill tests).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from kiln.errors import BuildFailed
from kiln.run import run
from kiln.sandbox.vm import VirtualMachine
from kiln.validate.boottest import GuestScript, boot_test, run_in_vm
from processes import eventually

from .conftest import Booted, BuiltDisk

pytestmark = pytest.mark.integration


def processes_mentioning(text: str) -> list[int]:
    """Pids whose command line contains `text` (a test's unique temp path)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if text.encode() in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
            except OSError:
                pass
    return pids



@pytest.fixture(scope="module")
def unbootable_disk(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A GPT disk with no partitions: the firmware finds nothing to boot and the guest never reports."""
    disk = tmp_path_factory.mktemp("unbootable") / "empty.raw"
    with open(disk, "wb") as f:
        f.truncate(64 * 1024 * 1024)
    run(["sgdisk", "--clear", disk], capture=True)
    return disk


def test_guest_reports_ready_and_shows_a_login_prompt(booted: Booted, prepared_root: Path) -> None:
    report = booted.report
    assert report.marker_seen, report.message
    # the check follows what the image holds: the serial one (and why) without cloud-init
    if (prepared_root / "usr/bin/cloud-init").exists():
        assert report.check == "ssh-login"
    else:
        assert (report.check, report.check_reason) == ("serial", "the image has no cloud-init (/usr/bin/cloud-init)")
    assert report.login_prompt_seen
    assert report.system_state in ("running", "degraded")
    serial = booted.serial_log.read_text(errors="replace")
    assert "Linux version" in serial  # kernel messages on ttyS0
    assert "Reached target" in serial  # systemd's status lines on the serial console
    assert " login: " in serial
    assert report.ready_seconds is not None and report.ready_seconds < report.seconds


def test_validations_run_in_order_with_their_exit_codes(booted: Booted, built_disk: BuiltDisk) -> None:
    passes, fails = booted.report.results
    assert (passes.name, passes.exit_code) == ("passes", 0)
    assert "guest-says-hello" in passes.output_tail
    # the guest runs from the disk we built: its root filesystem and command line are ours
    assert "ext4" in passes.output_tail
    assert f"root=UUID={built_disk.layout.root.fs_uuid}" in passes.output_tail
    assert "console=ttyS0,115200n8" in passes.output_tail
    assert (fails.name, fails.exit_code) == ("fails", 7)
    assert "about to fail" in fails.output_tail
    assert not booted.report.ok
    assert "validation 'fails' exited 7" in booted.report.message


def test_the_boot_never_writes_the_published_disk(booted: Booted, built_disk: BuiltDisk) -> None:
    assert booted.disk_sha256_after == built_disk.sha256


def test_run_in_vm_boots_a_fixed_vhd(built_disk: BuiltDisk, tmp_path: Path) -> None:
    vhd = tmp_path / "disk.vhd"
    run(["qemu-img", "convert", "-f", "raw", "-O", "vpc", "-o", "subformat=fixed,force_size",
         built_disk.layout.path, vhd])
    result = run_in_vm(vhd, "vpc", "set -e\ntest -b /dev/disk/by-id/virtio-kiln-check\ncat /etc/fstab\n",
                       timeout_s=300, work_dir=tmp_path / "work")
    assert result.exit_code == 0, result.output_tail
    assert f"UUID={built_disk.layout.root.fs_uuid} / ext4" in result.output_tail
    assert not processes_mentioning(str(tmp_path))
    assert not list((tmp_path / "work").iterdir())


def test_a_guest_that_never_gets_ready_fails_cleanly(unbootable_disk: Path, tmp_path: Path) -> None:
    work = tmp_path / "work"
    serial = tmp_path / "serial.log"
    report = boot_test(unbootable_disk, "raw", scripts=[GuestScript("never", b"true")], timeout_s=15,
                       serial_log=serial, work_dir=work)
    assert not report.ok and not report.marker_seen and report.results == ()
    assert "did not report readiness within 15 s" in report.message
    assert "serial console, last lines" in report.message
    assert str(serial) in report.message
    assert serial.stat().st_size > 0  # the firmware's own output is kept for the user
    with pytest.raises(BuildFailed, match="did not report readiness"):
        report.raise_for_failure()
    assert not processes_mentioning(str(work))
    assert list(work.iterdir()) == []


def test_run_in_vm_raises_when_the_guest_never_gets_ready(unbootable_disk: Path, tmp_path: Path) -> None:
    with pytest.raises(BuildFailed, match="did not report readiness within 5 s"):
        run_in_vm(unbootable_disk, "raw", "true", timeout_s=5, work_dir=tmp_path / "work")
    assert not processes_mentioning(str(tmp_path))


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL], ids=["ctrl-c", "sigterm", "kill-9"])
def test_killing_kiln_leaves_no_qemu_and_no_temp_dir(unbootable_disk: Path, tmp_path: Path, sig: int) -> None:
    work = tmp_path / "work"
    code = (
        "from pathlib import Path\nfrom kiln.validate.boottest import boot_test\n"
        f"boot_test(Path({str(unbootable_disk)!r}), 'raw', timeout_s=600, work_dir=Path({str(work)!r}))\n"
    )
    # Popen: this test needs kiln running in another process so it can kill it mid-boot.
    kiln = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        qemu_running = eventually(lambda: any(
            b"qemu-system" in Path(f"/proc/{p}/cmdline").read_bytes() for p in processes_mentioning(str(work))
            if Path(f"/proc/{p}").exists()
        ))
        assert qemu_running, kiln.stderr.read().decode() if kiln.poll() is not None else "QEMU did not start"
        assert list(work.glob("kiln-vm-*"))
        kiln.send_signal(sig)
        kiln.wait(timeout=300)
    finally:
        if kiln.poll() is None:
            kiln.kill()
            kiln.wait()
    assert eventually(lambda: not processes_mentioning(str(work))), "QEMU (or the watchdog) outlived kiln"
    assert eventually(lambda: not list(work.iterdir())), f"left behind: {list(work.iterdir())}"


def test_qemu_runs_with_seccomp_and_sees_only_its_own_files(unbootable_disk: Path, tmp_path: Path) -> None:
    work = tmp_path / "work"
    serial = tmp_path / "logs" / "serial.log"
    with VirtualMachine(unbootable_disk, "raw", work_dir=work, serial_log=serial) as vm:
        def qemu_pid() -> int | None:
            return next((p for p in processes_mentioning(str(work))
                         if Path(f"/proc/{p}/cmdline").read_bytes().startswith(b"qemu-system")), None)

        assert eventually(lambda: qemu_pid() is not None), vm.qemu_output()
        qemu = qemu_pid()
        # QEMU installs its filter after parsing its options: on a busy host the process can be
        # seen before that moment. Wait for it (a QEMU that never installs one fails here).
        eventually(lambda: "Seccomp:\t2" in Path(f"/proc/{qemu}/status").read_text())
        status = Path(f"/proc/{qemu}/status").read_text()
        mountinfo = Path(f"/proc/{qemu}/mountinfo").read_text()
        tmp = vm.tmp
    assert "Seccomp:\t2" in status  # -sandbox on: a seccomp filter
    assert "CapEff:\t0000000000000000" in status
    mounts = {line.split()[4] for line in mountinfo.splitlines()}
    own = {str(unbootable_disk), str(tmp), str(serial)}
    system = {"/", "/usr", "/etc/ld.so.cache", "/etc/resolv.conf", "/etc/hosts", "/etc/nsswitch.conf",
              "/proc", "/tmp", "/var/tmp"}
    assert own <= mounts
    # bwrap's /dev and /proc have mounts of their own inside (/dev/pts, /proc/sys read-only...)
    assert {m for m in mounts if not m.startswith(("/dev", "/proc/"))} - own <= system, mounts
