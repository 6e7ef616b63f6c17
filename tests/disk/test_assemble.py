"""assemble_disk: a real Debian 12 root into a GPT/UEFI disk, checked with the tools a user would use."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from kiln.disk.assemble import ESP_TYPE, ROOT_X86_64_TYPE, SYSTEMD_BOOT_EFI, assemble_disk, find_kernel
from kiln.disk.boot import prepare_boot, read_boot_config
from kiln.errors import BuildFailed, InvalidInput
from kiln.run import run

from .conftest import CAP_FILE, ODD_FILE, BuiltDisk

pytestmark = pytest.mark.integration

MiB = 1024 * 1024
MTOOLS_ENV = {"MTOOLS_SKIP_CHECK": "1"}


def sgdisk(*args: str) -> str:
    return run(["sgdisk", *args], capture=True).stdout


def test_gpt_is_valid_aligned_and_typed(built_disk: BuiltDisk) -> None:
    disk = str(built_disk.layout.path)
    assert "No problems found" in sgdisk("-v", disk)
    size = os.path.getsize(disk)
    assert size == built_disk.layout.size_bytes and size % MiB == 0
    infos = {n: sgdisk(f"--info={n}", disk) for n in (1, 2)}
    assert f"Partition GUID code: {ESP_TYPE}" in infos[1]
    assert f"Partition GUID code: {ROOT_X86_64_TYPE}" in infos[2]
    for n, info in infos.items():
        first = int(re.search(r"First sector: (\d+)", info).group(1))
        last = int(re.search(r"Last sector: (\d+)", info).group(1))
        assert first * 512 % MiB == 0, f"partition {n} does not start on a MiB boundary"
        assert (last + 1) * 512 % MiB == 0, f"partition {n} does not end on a MiB boundary"
    # the backup GPT header sits in the very last sector of the raw data
    with open(disk, "rb") as f:
        f.seek(size - 512)
        assert f.read(8) == b"EFI PART"


def test_disk_file_is_sparse(built_disk: BuiltDisk) -> None:
    st = os.stat(built_disk.layout.path)
    assert st.st_blocks * 512 < st.st_size * 0.75


def test_esp_has_the_guests_systemd_boot_kernel_and_entry(built_disk: BuiltDisk, prepared_root: Path) -> None:
    layout = built_disk.layout
    image = f"{layout.path}@@{layout.esp.offset}"
    listing = run(["mdir", "-/", "-i", image, "::"], env=MTOOLS_ENV, capture=True).stdout
    assert "systemd-bootx64.efi" in listing
    # the guest's own kernel-install wrote the entry (entry token: the os-release ID)
    version = layout.kernel_version
    assert f"debian-{version}.conf" in listing
    entry = run(["mtype", "-i", image, f"::/loader/entries/debian-{version}.conf"], env=MTOOLS_ENV, capture=True).stdout
    assert re.search(rf"^linux +/debian/{re.escape(version)}/linux$", entry, re.M), entry
    assert f"options    root=UUID={layout.root.fs_uuid} ro console=tty1 console=ttyS0,115200n8" in entry
    assert "random-seed" not in listing  # per machine: never in an image
    # the ESP's copies are byte-identical to the image's own boot loader and kernel
    for src, name in ((prepared_root / "usr/lib/systemd/boot/efi/systemd-bootx64.efi", "::/EFI/BOOT/BOOTX64.EFI"),
                      (find_kernel(prepared_root)[0], f"::/debian/{version}/linux")):
        copy = layout.path.parent / "copied"
        run(["mcopy", "-o", "-i", image, name, copy], env=MTOOLS_ENV)
        assert copy.read_bytes() == src.read_bytes()
        copy.unlink()
    info = run(["minfo", "-i", image, "::"], env=MTOOLS_ENV, capture=True).stdout
    assert f"serial number: {layout.esp.fs_uuid.replace('-', '')}".lower() in info.lower()


def test_an_image_without_systemd_boot_gets_the_hosts(prepared_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "boot").mkdir()
    kernel, initrd, version = find_kernel(prepared_root)
    for src in (kernel, initrd):
        (root / "boot" / src.name).write_bytes(src.read_bytes())
    boot = prepare_boot(root)
    esp = root / "boot/efi"
    assert (esp / "EFI/BOOT/BOOTX64.EFI").read_bytes() == SYSTEMD_BOOT_EFI.read_bytes()
    entry = (esp / f"loader/entries/kiln-{version}.conf").read_text()
    assert f"linux /kiln/{version}/linux" in entry and f"options {boot.cmdline}" in entry


def test_root_ext4_is_clean_and_matches_fstab(built_disk: BuiltDisk, prepared_root: Path) -> None:
    layout = built_disk.layout
    dev = f"{layout.path}?offset={layout.root.offset}"
    fsck = run(["e2fsck", "-fn", dev], check=False, capture=True)
    assert fsck.returncode == 0, fsck.stdout
    uuid_line = run(["dumpe2fs", "-h", dev], capture=True).stdout
    assert f"Filesystem UUID:          {layout.root.fs_uuid}" in uuid_line
    stat = run(["debugfs", "-R", f"stat /{ODD_FILE}", dev], capture=True).stdout
    assert "User:  1234" in stat and "Group:  5678" in stat and "Mode:  04750" in stat
    caps = run(["debugfs", "-R", f"ea_get /{CAP_FILE} security.capability", dev], capture=True).stdout
    assert "01 00 00 02 00 20" in caps
    fstab = run(["debugfs", "-R", "cat /etc/fstab", dev], capture=True).stdout
    assert f"UUID={layout.root.fs_uuid} / ext4" in fstab
    assert f"UUID={layout.esp.fs_uuid} /boot/efi vfat" in fstab
    assert read_boot_config(prepared_root).root_fs_uuid == layout.root.fs_uuid
    hook = run(["debugfs", "-R", "ls -l /etc/systemd/system/dev-disk-by\\x2did-virtio\\x2dkiln\\x2dcheck.device.wants",
                dev], capture=True).stdout
    assert "kiln-guest-check.service" in hook


def test_requested_size_is_honoured_and_too_small_is_a_user_error(
    prepared_root: Path, tmp_path: Path, built_disk: BuiltDisk
) -> None:
    out = tmp_path / "sized.raw"
    layout = assemble_disk(prepared_root, out, read_boot_config(prepared_root), size_bytes=3 * 1024**3)
    assert os.path.getsize(out) == 3 * 1024**3
    assert layout.root.offset + layout.root.size == 3 * 1024**3 - MiB
    assert "No problems found" in sgdisk("-v", str(out))
    out.unlink()
    with pytest.raises(InvalidInput) as e:
        assemble_disk(prepared_root, out, read_boot_config(prepared_root), size_bytes=256 * MiB)
    assert e.value.path == ".properties.vmProfile.osDiskSizeGB"
    assert "osDiskSizeGB" in e.value.hint
    assert not out.exists()


def test_a_root_without_kernel_is_refused_before_writing(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "boot").mkdir()
    boot = prepare_boot(root)
    out = tmp_path / "nokernel.raw"
    with pytest.raises(BuildFailed, match="no kernel") as e:
        assemble_disk(root, out, boot, size_bytes=None)
    assert "linux-image" in e.value.hint
    assert not out.exists()


def test_prepare_boot_sets_console_and_keeps_other_fstab_lines(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/fstab").write_text("# UNCONFIGURED FSTAB FOR BASE SYSTEM\n/dev/vdb /data ext4 defaults 0 2\n")
    first = prepare_boot(root)
    second = prepare_boot(root)
    assert first.root_fs_uuid != second.root_fs_uuid  # every disk distinct
    fstab = (root / "etc/fstab").read_text()
    assert "/dev/vdb /data ext4" in fstab and "UNCONFIGURED" not in fstab
    assert fstab.count(" / ext4") == 1 and f"UUID={second.root_fs_uuid} / ext4" in fstab
    assert "console=tty1 console=ttyS0,115200n8" in (root / "etc/kernel/cmdline").read_text()
    assert (root / "etc/systemd/system/getty.target.wants/serial-getty@ttyS0.service").is_symlink()
    assert os.access(root / "usr/lib/kiln/kiln-guest-check", os.X_OK)
    assert read_boot_config(root) == second
