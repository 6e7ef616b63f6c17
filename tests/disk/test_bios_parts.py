"""The BIOS half of kiln's hybrid disks, piece by piece, on small disks made here (no root tree,
no boot): GRUB's boot code in the MBR, core.img in the BIOS boot partition, its grub.cfg, and
reading back which firmware a disk can boot."""

from __future__ import annotations

import shutil
import struct
from pathlib import Path

import pytest

from envcheck import unavailable
from kiln.disk import bios
from kiln.disk.boot import BootConfig
from kiln.errors import BuildFailed, InvalidInput
from kiln.run import run

MiB = 1024 * 1024
ESP = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
LINUX = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
BOOT = BootConfig(root_fs_uuid="0b3a3c52-43b7-4fd2-a2b3-2d3d6f3c9d10", esp_volume_id="1234ABCD",
                  cmdline="root=UUID=0b3a3c52-43b7-4fd2-a2b3-2d3d6f3c9d10 ro console=tty1 console=ttyS0,115200n8")


@pytest.fixture(autouse=True)
def _tools() -> None:
    for tool in ("sfdisk", "grub-mkimage", "qemu-img"):
        if shutil.which(tool) is None:
            unavailable(f"{tool} is not installed (run scripts/setup)")
    if not (bios.GRUB_PC / "boot.img").is_file():
        unavailable("grub-pc-bin is not installed (run scripts/setup)")


def gpt_disk(path: Path, *partitions: tuple[int, int, str], size_mib: int = 16) -> Path:
    """A sparse raw disk with a GPT (sfdisk): (start MiB, size MiB, type GUID) per partition."""
    with open(path, "wb") as f:
        f.truncate(size_mib * MiB)
    lines = "".join(f"start={s * 2048}, size={n * 2048}, type={t}\n" for s, n, t in partitions)
    run(["sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", path], input=f"label: gpt\n{lines}", capture=True)
    return path


def hybrid_disk(path: Path) -> Path:
    """BIOS boot at 1 MiB, ESP at 2 MiB, Linux after: GRUB written as assemble_disk writes it."""
    gpt_disk(path, (1, 1, bios.BIOS_BOOT_TYPE), (2, 4, ESP), (6, 8, LINUX))
    core = bios.make_core_image(bios.grub_config(path.parent, BOOT, "6.1.0-0-amd64"), path.parent)
    bios.install_bios_boot(path, MiB, MiB, core)
    return path


def test_boot_code_goes_into_the_mbr_and_the_partition_table_stays(tmp_path: Path) -> None:
    disk = gpt_disk(tmp_path / "d.raw", (1, 1, bios.BIOS_BOOT_TYPE), (2, 4, ESP))
    before = disk.read_bytes()[:34 * 512]
    core = bios.make_core_image(bios.grub_config(tmp_path, BOOT, "6.1.0-0-amd64"), tmp_path)
    bios.install_bios_boot(disk, MiB, MiB, core)
    data = disk.read_bytes()
    mbr, boot_img = data[:512], (bios.GRUB_PC / "boot.img").read_bytes()
    # GRUB's code, byte for byte, after the fields grub-bios-setup patches (0x5c..0x68).
    assert mbr[0x68:0x1B8] == boot_img[0x68:0x1B8] and mbr[:3] == boot_img[:3]
    assert struct.unpack_from("<Q", mbr, 0x5C)[0] == 2048  # core.img's first sector: the BIOS boot partition
    assert mbr[0x64] == 0xFF and mbr[0x66:0x68] == b"\x90\x90"
    # The protective MBR's partition table and signature, and the whole GPT, are untouched.
    assert mbr[0x1B8:] == before[0x1B8:512] and data[512:34 * 512] == before[512:]
    assert mbr[0x1BE + 4] == 0xEE
    # core.img is in the partition, its first block list pointing at its own next sectors.
    sectors = -(-len(core) // 512)
    part = data[MiB:MiB + sectors * 512]
    assert part[512:len(core)] == core[512:]
    start, count, segment = struct.unpack_from("<QHH", part, 500)
    assert (start, count, segment) == (2049, sectors - 1, 0x820)
    assert part[488:500] == bytes(12)  # the list's terminator
    assert "No problems found" in run(["sgdisk", "-v", disk], capture=True).stdout


def test_core_image_too_big_for_its_partition_is_refused(tmp_path: Path) -> None:
    disk = gpt_disk(tmp_path / "d.raw", (1, 1, bios.BIOS_BOOT_TYPE))
    before = disk.read_bytes()
    with pytest.raises(BuildFailed, match="does not fit"):
        bios.install_bios_boot(disk, MiB, 64 * 1024, b"\x01" * (128 * 1024))
    assert disk.read_bytes() == before


def test_grub_config_boots_debians_kernel_links_then_falls_back(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "boot").mkdir(parents=True)
    for name in ("vmlinuz-6.1.0-9-amd64", "initrd.img-6.1.0-9-amd64"):
        (root / "boot" / name).write_bytes(b"x")
    (root / "vmlinuz").symlink_to("boot/vmlinuz-6.1.0-9-amd64")
    (root / "initrd.img").symlink_to("boot/initrd.img-6.1.0-9-amd64")
    cfg = bios.grub_config(root, BOOT, "6.1.0-9-amd64")
    assert f"search --no-floppy --fs-uuid --set=root {BOOT.root_fs_uuid}" in cfg
    assert "serial --unit=0 --speed=115200" in cfg and "terminal_output serial console" in cfg
    entries = [line.split()[1] for line in cfg.splitlines() if line.strip().startswith("linux ")]
    assert entries == ["/vmlinuz", "/boot/vmlinuz-6.1.0-9-amd64"]  # newest by the link, then as built
    assert f"linux /vmlinuz {BOOT.cmdline}\n" in cfg and "initrd /initrd.img\n" in cfg
    assert 'set fallback="1"' in cfg and "set timeout=0" in cfg
    # A tree without the links boots the kernel it was built with.
    bare = tmp_path / "bare"
    bare.mkdir()
    cfg = bios.grub_config(bare, BOOT, "6.1.0-9-amd64")
    assert [line.split()[1] for line in cfg.splitlines() if line.strip().startswith("linux ")] == \
        ["/boot/vmlinuz-6.1.0-9-amd64"]
    # Words GRUB's parser would split or expand are quoted.
    odd = BootConfig(BOOT.root_fs_uuid, BOOT.esp_volume_id, BOOT.cmdline + " kiln.note=$x;y")
    assert "'kiln.note=$x;y'" in bios.grub_config(bare, odd, "6.1.0-9-amd64")


def test_generations_are_read_from_the_disk(tmp_path: Path) -> None:
    uefi_only = gpt_disk(tmp_path / "uefi.raw", (1, 4, ESP), (5, 8, LINUX))
    assert bios.boot_generations(uefi_only, "raw") == ("V2",)
    hybrid = hybrid_disk(tmp_path / "hybrid.raw")
    assert bios.boot_generations(hybrid, "raw") == ("V1", "V2")
    for fmt, opts in (("qcow2", []), ("vpc", ["-o", "subformat=dynamic"]), ("vpc", ["-o", "subformat=fixed"])):
        out = tmp_path / f"hybrid-{opts[-1] if opts else fmt}.img"
        run(["qemu-img", "convert", "-f", "raw", "-O", fmt, *opts, hybrid, out], capture=True)
        assert bios.boot_generations(out, fmt) == ("V1", "V2"), out
    # An empty BIOS boot partition gives the boot code nothing to load: not bootable with BIOS.
    empty = gpt_disk(tmp_path / "empty.raw", (1, 1, bios.BIOS_BOOT_TYPE), (2, 4, ESP))
    data = bytearray(empty.read_bytes())
    data[:440] = (bios.GRUB_PC / "boot.img").read_bytes()[:440]
    empty.write_bytes(bytes(data))
    assert bios.boot_generations(empty, "raw") == ("V2",)
    # A classic MBR disk with boot code and a Linux partition: BIOS only.
    mbr = tmp_path / "mbr.raw"
    with open(mbr, "wb") as f:
        f.truncate(8 * MiB)
    run(["sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", mbr], input="label: dos\nstart=2048, type=83, bootable\n",
        capture=True)
    data = bytearray(mbr.read_bytes())
    data[:440] = (bios.GRUB_PC / "boot.img").read_bytes()[:440]
    mbr.write_bytes(bytes(data))
    assert bios.boot_generations(mbr, "raw") == ("V1",)
    blank = tmp_path / "blank.raw"
    blank.write_bytes(bytes(MiB))
    assert bios.boot_generations(blank, "raw") == ()


def test_a_generation_the_disk_cannot_boot_is_refused() -> None:
    with pytest.raises(InvalidInput, match="cannot boot with BIOS: it boots only with UEFI") as e:
        bios.require_generation("V1", ("V2",), what="image X", path=".properties.hyperVGeneration")
    assert e.value.path == ".properties.hyperVGeneration" and "V2" in e.value.hint
    with pytest.raises(InvalidInput, match="no BIOS boot code"):
        bios.require_generation("V1", (), what="image X")
    with pytest.raises(InvalidInput, match="boots only with BIOS"):
        bios.require_generation("V2", ("V1",), what="image X")
    bios.require_generation("V1", ("V1", "V2"), what="image X")
    bios.require_generation("V2", ("V1", "V2"), what="image X")
    bios.require_generation("V2", (), what="image X")  # V2 is the default kiln always took any disk as
