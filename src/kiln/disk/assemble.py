"""Assemble a root tree into a bootable GPT/UEFI disk, without mounting anything.

These machines cannot mount vfat and their loop devices have no partition nodes, so the disk is
written the way a disk writer would: the partition table with `sfdisk` on the image file, the EFI
system partition formatted with `mkfs.vfat --offset` and filled with mtools (`image@@offset`),
and the root filesystem written in place by `mkfs.ext4 -d ROOT -E offset=…`, which copies owners,
modes, xattrs, hardlinks and device nodes straight from the tree.

The layout is what Azure's generation 2 Linux images have: GPT, an ESP with systemd-boot (the
host's signed-or-not `systemd-bootx64.efi`, as `EFI/BOOT/BOOTX64.EFI` so firmware without boot
entries finds it), the kernel and initrd beside a Boot Loader Specification entry, and one ext4
root. Partitions start and end on MiB boundaries and the whole disk is a whole number of MiB
(Azure rejects anything else); the file is sparse.

The disk is hybrid too, as Debian's cloud images are, so it also boots as Hyper-V generation 1
(BIOS): a 1 MiB BIOS boot partition (partition 3, first on the disk) holds GRUB's core.img and the
protective MBR carries GRUB's boot code (`kiln.disk.bios`). The ESP is partition 1 and the root
partition 2, last on the disk.

The tree is made bootable first (`kiln.disk.boot.prepare_boot`), which chooses the filesystem ids
and writes them where the booted system reads them; its `BootConfig` is handed to
`assemble_disk(root, out, boot)`, which makes the filesystems carry those ids.
"""

from __future__ import annotations

import re
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kiln.disk import bios
from kiln.disk.boot import BootConfig, fat_uuid
from kiln.errors import BuildFailed, InvalidInput
from kiln.events import Monitor, NullMonitor
from kiln.run import run

MiB = 1024 * 1024
GiB = 1024 * MiB
SECTOR = 512

# Partition type GUIDs (UEFI spec; the Discoverable Partitions Specification for the x86-64 root).
ESP_TYPE = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
ROOT_X86_64_TYPE = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709"
LINUX_DATA_TYPE = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"

SYSTEMD_BOOT_EFI = Path("/usr/lib/systemd/boot/efi/systemd-bootx64.efi")


_BIOS_BOOT = 1 * MiB  # after the protective MBR and the primary GPT, aligned: the BIOS boot partition
_FIRST_PARTITION = _BIOS_BOOT + bios.BIOS_BOOT_SIZE  # the ESP's start: the BIOS boot partition is before it
_TAIL = 1 * MiB  # the backup GPT lives in the last 33 sectors; keep the root partition MiB-aligned
_MIN_ESP = 128 * MiB  # FAT32 wants >= 65525 clusters; 128 MiB is comfortably above that with 512 B ones


@dataclass(frozen=True)
class Partition:
    number: int
    type_guid: str
    part_guid: str
    label: str
    offset: int  # bytes from the start of the disk
    size: int  # bytes
    fs_uuid: str


@dataclass(frozen=True)
class DiskLayout:
    path: Path
    size_bytes: int  # virtual size: the whole raw file, a whole number of MiB
    disk_guid: str
    esp: Partition
    root: Partition
    kernel_version: str
    cmdline: str
    bios_boot: Partition  # GRUB's core.img; the MBR's boot code loads it (hyperVGeneration V1)

    @property
    def partitions(self) -> tuple[Partition, ...]:
        """In partition-number order (the BIOS boot partition is first on the disk, number 3)."""
        return (self.esp, self.root, self.bios_boot)


# ----------------------------------------------------------------------------------- assemble_disk


def assemble_disk(
    root: Path, out: Path, boot: BootConfig, *, size_bytes: int | None = None, monitor: Monitor | None = None
) -> DiskLayout:
    """Write `root` as a bootable GPT/UEFI raw disk at `out` (sparse); return its layout.

    `boot` is what `prepare_boot` made the tree expect of its disk (filesystem ids, command line).
    `size_bytes` is the disk's virtual size (vmProfile.osDiskSizeGB); None sizes it from the
    content plus headroom.
    """
    monitor = monitor or NullMonitor()
    root, out = Path(root), Path(out)
    kernel, initrd, version = find_kernel(root)
    if not SYSTEMD_BOOT_EFI.is_file():
        raise BuildFailed(f"{SYSTEMD_BOOT_EFI} is missing", hint="install systemd-boot-efi (scripts/setup does)")

    esp_size = max(_MIN_ESP, _align_up(2 * (kernel.stat().st_size + initrd.stat().st_size) + 16 * MiB, MiB))
    used, inodes = _tree_usage(root)
    total = _disk_size(size_bytes, used, esp_size)
    root_size = total - _FIRST_PARTITION - esp_size - _TAIL
    needed = _root_needs(used)
    if root_size < needed:
        overhead = _FIRST_PARTITION + esp_size + _TAIL
        raise InvalidInput(
            f"the disk size {total / GiB:.0f} GiB is too small for this image: its root needs "
            f"{(needed + overhead) / GiB:.1f} GiB",
            path=".properties.vmProfile.osDiskSizeGB",
            hint=f"set osDiskSizeGB to at least {-(-(needed + overhead) // GiB)}, or leave it out",
        )

    bios.check_host()
    out.parent.mkdir(parents=True, exist_ok=True)
    disk_guid = str(uuid.uuid4())
    bios_boot = Partition(3, bios.BIOS_BOOT_TYPE, str(uuid.uuid4()), "BIOS boot", _BIOS_BOOT, bios.BIOS_BOOT_SIZE, "")
    esp = Partition(1, ESP_TYPE, str(uuid.uuid4()), "EFI System", _FIRST_PARTITION, esp_size,
                    fat_uuid(boot.esp_volume_id))
    rootp = Partition(2, ROOT_X86_64_TYPE, str(uuid.uuid4()), "root", esp.offset + esp.size, root_size,
                      boot.root_fs_uuid)
    monitor.log(f"assemble: {total / GiB:.2f} GiB disk, ESP {esp_size // MiB} MiB, root {root_size // MiB} MiB "
                f"for {used / MiB:.0f} MiB in {inodes} inodes; kernel {version}")
    try:
        with open(out, "wb") as f:
            f.truncate(total)  # sparse: only what the filesystems write takes space
        _timed(monitor, "partition table", lambda: _write_gpt(out, disk_guid, (esp, rootp, bios_boot)))
        _timed(monitor, "ESP (vfat, systemd-boot)",
               lambda: _write_esp(out, esp, boot, kernel, initrd, version))
        _timed(monitor, "root (ext4 from the tree)", lambda: _write_root(out, rootp, root, inodes))
        # Last, so no file system tool can touch the MBR after GRUB's code is in it.
        _timed(monitor, "BIOS boot (GRUB core.img, MBR boot code)",
               lambda: _write_bios_boot(out, bios_boot, root, boot, version))
    except BaseException:
        out.unlink(missing_ok=True)
        raise
    return DiskLayout(out, total, disk_guid, esp, rootp, version, boot.cmdline, bios_boot)


def find_kernel(root: Path) -> tuple[Path, Path, str]:
    """The newest kernel in the tree's /boot with its initrd: (vmlinuz, initrd, version)."""
    boot = Path(root) / "boot"
    found = []
    for vmlinuz in boot.glob("vmlinuz-*"):
        version = vmlinuz.name[len("vmlinuz-"):]
        initrd = boot / f"initrd.img-{version}"
        if vmlinuz.is_file() and initrd.is_file():
            found.append((_version_key(version), vmlinuz, initrd, version))
    if not found:
        raise BuildFailed(
            f"the image has no kernel with an initrd in /boot ({root})",
            hint="install a kernel package (linux-image-cloud-amd64) and initramfs-tools in the image",
        )
    _, vmlinuz, initrd, version = max(found)
    return vmlinuz, initrd, version


def _version_key(version: str) -> tuple[tuple[int, int | str], ...]:
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in re.split(r"[.\-+~]", version))


def _tree_usage(root: Path) -> tuple[int, int]:
    """Bytes allocated and inodes used by the tree (what mkfs.ext4 -d will need)."""
    used = int(run(["du", "-s", "-x", "--block-size=1", root], capture=True).stdout.split()[0])
    inodes = int(run(["du", "-s", "-x", "--inodes", root], capture=True).stdout.split()[0])
    return used, inodes


def _root_needs(used: int) -> int:
    # ext4 metadata (journal, inode tables, group descriptors) plus room to boot and log.
    return _align_up(int(used * 1.1) + 256 * MiB, MiB)


def _disk_size(size_bytes: int | None, used: int, esp_size: int) -> int:
    if size_bytes is not None:
        if size_bytes <= 0:
            raise InvalidInput("the disk size must be positive", path=".properties.vmProfile.osDiskSizeGB")
        return _align_up(size_bytes, MiB)
    # Content plus a quarter (at least 1 GiB) of free space, rounded up to whole GiB as Azure's are.
    root = _root_needs(used) + max(GiB, used // 4)
    return _align_up(_FIRST_PARTITION + esp_size + root + _TAIL, GiB)


def _align_up(n: int, to: int) -> int:
    return -(-n // to) * to


def _timed(monitor: Monitor, what: str, fn: Callable[[], None]) -> None:
    t0 = time.monotonic()
    fn()
    monitor.log(f"assemble: {what} in {time.monotonic() - t0:.1f} s")


def _write_gpt(out: Path, disk_guid: str, partitions: tuple[Partition, ...]) -> None:
    # sfdisk (util-linux), not sgdisk: sgdisk ends with a global sync(), which on a busy host
    # waits for everyone's dirty pages (1-2 s measured); sfdisk fsyncs only the image file.
    def line(p: Partition) -> str:
        return (f'start={p.offset // SECTOR}, size={p.size // SECTOR}, type={p.type_guid}, '
                f'uuid={p.part_guid}, name="{p.label}"')

    body = "\n".join(line(p) for p in sorted(partitions, key=lambda p: p.number))  # sfdisk numbers them in order
    script = f"label: gpt\nlabel-id: {disk_guid}\n{body}\n"
    run(["sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", "--wipe", "never", out], input=script, capture=True)


def _write_esp(out: Path, esp: Partition, boot: BootConfig, kernel: Path, initrd: Path, version: str) -> None:
    # One sector per cluster keeps a small ESP above FAT32's minimum cluster count; the hidden
    # sectors field records where the partition starts, as a partitioning tool would.
    sectors = esp.offset // SECTOR
    run(["mkfs.vfat", "-F", "32", "-s", "1", "-h", str(sectors), "-n", "ESP", "-i", boot.esp_volume_id,
         f"--offset={sectors}", out, str(esp.size // 1024)], capture=True)
    image = f"{out}@@{esp.offset}"
    # mtools refuses images whose geometry it finds odd; the FAT is fine, the check is for floppies.
    env = {"MTOOLS_SKIP_CHECK": "1"}
    entry_dir = f"::/kiln/{version}"
    run(["mmd", "-i", image, "::/EFI", "::/EFI/BOOT", "::/EFI/systemd", "::/loader", "::/loader/entries",
         "::/kiln", entry_dir], env=env, capture=True)
    staging = out.with_name(f".{out.name}.esp-files")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        (staging / "loader.conf").write_text("timeout 0\ndefault kiln-*\neditor no\n")
        (staging / "entry.conf").write_text(
            f"title Linux {version}\nversion {version}\n"
            f"linux /kiln/{version}/linux\ninitrd /kiln/{version}/initrd\noptions {boot.cmdline}\n"
        )
        copies = [
            (SYSTEMD_BOOT_EFI, "::/EFI/BOOT/BOOTX64.EFI"),
            (SYSTEMD_BOOT_EFI, "::/EFI/systemd/systemd-bootx64.efi"),
            (kernel, f"{entry_dir}/linux"),
            (initrd, f"{entry_dir}/initrd"),
            (staging / "loader.conf", "::/loader/loader.conf"),
            (staging / "entry.conf", f"::/loader/entries/kiln-{version}.conf"),
        ]
        for src, dest in copies:
            run(["mcopy", "-i", image, "-o", src, dest], env=env, capture=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _write_root(out: Path, rootp: Partition, root: Path, inodes: int) -> None:
    # ^orphan_file: newer e2fsprogs enable it by default, and Debian 11's kernel and e2fsck refuse it.
    cmd: list[str | Path] = ["mkfs.ext4", "-q", "-F", "-t", "ext4", "-O", "^orphan_file", "-L", "root", "-U", rootp.fs_uuid,
           "-d", root, "-E", f"offset={rootp.offset}"]
    # mkfs's default of one inode per 16 KiB is too few for a small disk full of small files.
    if inodes * 2 > rootp.size // 16384:
        cmd += ["-N", str(inodes * 2 + 16384)]
    run([*cmd, out, f"{rootp.size // 1024}k"], capture=True)


def _write_bios_boot(out: Path, part: Partition, root: Path, boot: BootConfig, version: str) -> None:
    core = bios.make_core_image(bios.grub_config(root, boot, version), out.parent)
    bios.install_bios_boot(out, part.offset, part.size, core)
