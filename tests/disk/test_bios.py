"""Hybrid disks, real: the Debian 12 disk assemble_disk made (shared with the other disk tests)
carries GRUB for BIOS beside systemd-boot, and the same disk boots to a login prompt under SeaBIOS
(hyperVGeneration V1) and under OVMF (V2).

The layout is read from the disk itself (sgdisk, the raw MBR and partition bytes), not from
kiln's DiskLayout; the boots run QEMU on a throwaway overlay, as the boot test does."""

from __future__ import annotations

import re
import struct
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from kiln.disk.bios import GRUB_PC, boot_generations
from kiln.run import run
from kiln.sandbox.vm import VirtualMachine
from store_helpers import kiln_cmd, snapshot

from .conftest import BuiltDisk, sha256_of

pytestmark = pytest.mark.integration

BIOS_BOOT_CODE = "EF02"  # sgdisk's short code for 21686148-6449-6E6F-744E-656564454649
BOOT_TIMEOUT_S = 900  # TCG on a shared, loaded host: generous, and never asserted on


@dataclass(frozen=True)
class Login:
    serial: str  # the serial console up to the login prompt (or to the timeout)
    reached: bool


def boot_to_login(disk: Path, firmware: str, log: Path) -> Login:
    text = ""
    with VirtualMachine(disk, "raw", serial_log=log, firmware=firmware, cpus=1, memory_mib=1536, network=False,
                        work_dir=log.parent) as vm:
        deadline = time.monotonic() + BOOT_TIMEOUT_S
        while time.monotonic() < deadline and vm.poll() is None:
            text += vm.read_serial()
            if re.search(r"^\S+ login: ", text, re.M):
                return Login(text, True)
            time.sleep(1)
        text += vm.read_serial()
    return Login(text, False)


@pytest.fixture(scope="session")
def bios_login(built_disk: BuiltDisk, tmp_path_factory: pytest.TempPathFactory) -> Login:
    return boot_to_login(built_disk.layout.path, "bios", tmp_path_factory.mktemp("seabios") / "serial.log")


@pytest.fixture(scope="session")
def uefi_login(built_disk: BuiltDisk, tmp_path_factory: pytest.TempPathFactory) -> Login:
    return boot_to_login(built_disk.layout.path, "uefi", tmp_path_factory.mktemp("ovmf") / "serial.log")


def _partitions(disk: Path) -> dict[str, tuple[int, int, int]]:
    """sgdisk's table: type code -> (number, first sector, last sector)."""
    out = run(["sgdisk", "-p", disk], capture=True).stdout
    found = {}
    for m in re.finditer(r"^\s+(\d+)\s+(\d+)\s+(\d+)\s+\S+ \S+\s+([0-9A-F]{4})\s", out, re.M):
        found[m.group(4)] = (int(m.group(1)), int(m.group(2)), int(m.group(3)))
    return found


def test_mbr_carries_grubs_boot_code_and_the_bios_boot_partition_holds_core(built_disk: BuiltDisk) -> None:
    disk = built_disk.layout.path
    parts = _partitions(disk)
    assert BIOS_BOOT_CODE in parts and "EF00" in parts and "8304" in parts, parts
    number, first, last = parts[BIOS_BOOT_CODE]
    assert (last - first + 1) * 512 == 1024 * 1024 and first * 512 % (1024 * 1024) == 0
    assert "BIOS boot" in run(["sgdisk", f"--info={number}", disk], capture=True).stdout
    # The root stays last on the disk, so it can grow into a larger OS disk.
    assert parts["8304"][1] > max(p[1] for code, p in parts.items() if code != "8304")
    with open(disk, "rb") as f:
        mbr = f.read(512)
        f.seek(first * 512)
        core_head = f.read(1024)
    boot_img = (GRUB_PC / "boot.img").read_bytes()
    assert mbr[0x68:0x1B8] == boot_img[0x68:0x1B8], "the MBR's boot code is not GRUB's boot.img"
    assert struct.unpack_from("<Q", mbr, 0x5C)[0] == first, "boot.img does not point at the BIOS boot partition"
    assert mbr[0x1BE + 4] == 0xEE and mbr[510:] == b"\x55\xaa"  # still a protective MBR
    diskboot = (GRUB_PC / "diskboot.img").read_bytes()
    assert core_head[:0x100] == diskboot[:0x100], "the BIOS boot partition does not start with GRUB's core.img"
    assert struct.unpack_from("<Q", core_head, 500)[0] == first + 1
    assert "No problems found" in run(["sgdisk", "-v", disk], capture=True).stdout
    assert boot_generations(disk, "raw") == ("V1", "V2")


def test_v1_boots_to_login_under_seabios(bios_login: Login, built_disk: BuiltDisk) -> None:
    assert bios_login.reached, bios_login.serial[-3000:]
    # GRUB booted Debian's /vmlinuz link (what linux-base moves to each newly installed kernel),
    # with the root by UUID and the serial console, as on the UEFI path.
    cmdline = re.search(r"Command line: (.*)", bios_login.serial)
    assert cmdline, bios_login.serial[:3000]
    assert cmdline.group(1).split()[0] == "BOOT_IMAGE=/vmlinuz"
    assert f"root=UUID={built_disk.layout.root.fs_uuid}" in cmdline.group(1)
    assert "console=ttyS0,115200n8" in cmdline.group(1)
    assert "Booting `newest kernel" in bios_login.serial


def test_the_same_disk_boots_to_login_under_ovmf(uefi_login: Login, built_disk: BuiltDisk) -> None:
    assert uefi_login.reached, uefi_login.serial[-3000:]
    cmdline = re.search(r"Command line: (.*)", uefi_login.serial)
    assert cmdline and "BOOT_IMAGE" not in cmdline.group(1)  # systemd-boot, not GRUB
    assert f"root=UUID={built_disk.layout.root.fs_uuid}" in cmdline.group(1)


def test_booting_left_the_disk_unchanged(bios_login: Login, uefi_login: Login, built_disk: BuiltDisk) -> None:
    assert sha256_of(built_disk.layout.path) == built_disk.sha256


def test_a_v1_import_of_the_disk_without_its_bios_half_is_refused(built_disk: BuiltDisk, tmp_path: Path,
                                                                   kiln_home: Path) -> None:
    # The same real disk with its MBR boot code wiped: what a UEFI-only (generation 2) VM's disk is.
    uefi_only = tmp_path / "uefi-only.raw"
    run(["cp", "--sparse=always", built_disk.layout.path, uefi_only])
    with open(uefi_only, "r+b") as f:
        f.write(bytes(440))
    assert boot_generations(uefi_only, "raw") == ("V2",)
    image_id = "/subscriptions/0000/resourceGroups/rg/providers/Microsoft.Compute/images/uefi-only"
    kiln_cmd(kiln_home, "image", "list", check=True)
    before = snapshot(kiln_home)
    proc = kiln_cmd(kiln_home, "image", "import", str(uefi_only), "--id", image_id, "--hyper-v-generation", "V1")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2 and "Traceback" not in out, out
    assert ".properties.hyperVGeneration" in out and "cannot boot with BIOS" in out and "hint:" in out
    assert snapshot(kiln_home) == before
