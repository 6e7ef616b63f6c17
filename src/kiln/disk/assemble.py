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

Two steps, because the root tree names its own filesystems: `prepare_boot(root)` chooses the
UUIDs and writes them where the booted system reads them (`/etc/fstab`, `/etc/kernel/cmdline`),
enables the serial console and installs kiln's inert boot-test hook; `assemble_disk(root, out)`
reads those UUIDs back from the tree and makes the filesystems carry them.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import time
import uuid
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

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
CONSOLE_ARGS = ("console=tty1", "console=ttyS0,115200n8")  # as Azure's images: the serial port last,
# so it is /dev/console and gets systemd's status lines and the emergency shell.

HOOK_UNIT = "kiln-guest-check.service"
HOOK_DEVICE_UNIT = r"dev-disk-by\x2did-virtio\x2dkiln\x2dcheck.device"

_FIRST_PARTITION = 1 * MiB  # room for the protective MBR and the primary GPT, aligned
_TAIL = 1 * MiB  # the backup GPT lives in the last 33 sectors; keep the root partition MiB-aligned
_MIN_ESP = 128 * MiB  # FAT32 wants >= 65525 clusters; 128 MiB is comfortably above that with 512 B ones


@dataclass(frozen=True)
class BootConfig:
    """What the root tree says about its own disk: filesystem ids and the kernel command line."""

    root_fs_uuid: str  # ext4 UUID, as in root=UUID=…
    esp_volume_id: str  # FAT volume id, XXXX-XXXX, as in fstab's UUID=…
    cmdline: str


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

    @property
    def partitions(self) -> tuple[Partition, ...]:
        return (self.esp, self.root)


# ------------------------------------------------------------------------------------ prepare_boot


def prepare_boot(root: Path, *, extra_cmdline: tuple[str, ...] = ()) -> BootConfig:
    """Make the root tree bootable in place; return the ids the disk's filesystems must carry.

    Writes /etc/fstab (root and /boot/efi by UUID; other lines are kept), /etc/kernel/cmdline,
    enables a getty on ttyS0 and installs the kiln guest hook (inert outside kiln's boot test).
    Fresh UUIDs every call: every disk kiln makes is distinct, as Azure's are.
    """
    root = Path(root)
    if not (root / "etc").is_dir():
        raise InvalidInput(f"{root} is not a root tree (no /etc)", hint="prepare_boot needs an unpacked OS tree")
    # A tree made under mkdtemp() is 0700; as the filesystem's / it would lock every user out.
    os.chown(root, 0, 0)
    os.chmod(root, 0o755)
    boot = BootConfig(
        root_fs_uuid=str(uuid.uuid4()),
        esp_volume_id=_fat_volume_id(),
        cmdline="",
    )
    cmdline = " ".join((f"root=UUID={boot.root_fs_uuid}", "ro", *CONSOLE_ARGS, *extra_cmdline))
    boot = BootConfig(boot.root_fs_uuid, boot.esp_volume_id, cmdline)
    _write_fstab(root, boot)
    (root / "etc/kernel").mkdir(parents=True, exist_ok=True)
    (root / "etc/kernel/cmdline").write_text(cmdline + "\n")
    (root / "boot/efi").mkdir(parents=True, exist_ok=True)
    _enable_serial_getty(root)
    install_guest_hook(root)
    return boot


def read_boot_config(root: Path) -> BootConfig | None:
    """The ids `prepare_boot` wrote into the tree, or None if it has not run on it."""
    fstab = Path(root) / "etc/fstab"
    cmdline_file = Path(root) / "etc/kernel/cmdline"
    if not fstab.is_file() or not cmdline_file.is_file():
        return None
    root_uuid = esp_id = None
    for line in fstab.read_text(errors="replace").splitlines():
        words = line.split("#", 1)[0].split()
        if len(words) >= 2 and words[0].startswith("UUID="):
            if words[1] == "/":
                root_uuid = words[0][5:]
            elif words[1] == "/boot/efi":
                esp_id = words[0][5:].replace("-", "").upper()
    cmdline = cmdline_file.read_text().strip()
    if not root_uuid or not esp_id or f"root=UUID={root_uuid}" not in cmdline:
        return None
    return BootConfig(root_uuid, esp_id, cmdline)


def install_guest_hook(root: Path) -> None:
    """Ship kiln's boot-test hook: a unit wanted only by the kiln check disk's device."""
    here = resources.files("kiln.validate")
    script = root / "usr/lib/kiln/kiln-guest-check"
    script.parent.mkdir(parents=True, exist_ok=True)
    script.write_bytes(here.joinpath("kiln-guest-check.sh").read_bytes())
    script.chmod(0o755)
    unit = root / "usr/lib/systemd/system" / HOOK_UNIT
    unit.parent.mkdir(parents=True, exist_ok=True)
    unit.write_bytes(here.joinpath(HOOK_UNIT).read_bytes())
    unit.chmod(0o644)
    # Wanted by the device unit, so the service exists in the boot transaction only when that disk does.
    wants = root / "etc/systemd/system" / f"{HOOK_DEVICE_UNIT}.wants"
    wants.mkdir(parents=True, exist_ok=True)
    link = wants / HOOK_UNIT
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(f"/usr/lib/systemd/system/{HOOK_UNIT}")


def _fat_volume_id() -> str:
    return secrets.token_hex(4).upper()


def _fat_uuid(volume_id: str) -> str:
    return f"{volume_id[:4]}-{volume_id[4:]}"


def _write_fstab(root: Path, boot: BootConfig) -> None:
    fstab = root / "etc/fstab"
    kept = []
    if fstab.is_file():
        for line in fstab.read_text(errors="replace").splitlines():
            words = line.split("#", 1)[0].split()
            if len(words) >= 2 and words[1] in ("/", "/boot/efi"):
                continue
            if line.strip() == "# UNCONFIGURED FSTAB FOR BASE SYSTEM":
                continue
            kept.append(line)
    lines = [
        "# <file system> <mount point> <type> <options> <dump> <pass>  (root and ESP written by kiln)",
        f"UUID={boot.root_fs_uuid} / ext4 defaults,discard,errors=remount-ro 0 1",
        # nofail: a missing or unreadable ESP must not stop the boot; only kernel updates need it.
        f"UUID={_fat_uuid(boot.esp_volume_id)} /boot/efi vfat umask=0077,nofail 0 2",
        *[line for line in kept if line.strip()],
    ]
    fstab.write_text("\n".join(lines) + "\n")


def _enable_serial_getty(root: Path) -> None:
    # systemd's getty generator adds it for the console= on the command line too; enabling it
    # explicitly keeps the login prompt on ttyS0 even if someone edits the command line.
    wants = root / "etc/systemd/system/getty.target.wants"
    wants.mkdir(parents=True, exist_ok=True)
    link = wants / "serial-getty@ttyS0.service"
    if not (link.is_symlink() or link.exists()):
        link.symlink_to("/lib/systemd/system/serial-getty@.service")


# ----------------------------------------------------------------------------------- assemble_disk


def assemble_disk(
    root: Path, out: Path, *, size_bytes: int | None = None, monitor: Monitor | None = None
) -> DiskLayout:
    """Write `root` as a bootable GPT/UEFI raw disk at `out` (sparse); return its layout.

    `size_bytes` is the disk's virtual size (vmProfile.osDiskSizeGB); None sizes it from the
    content plus headroom. Calls `prepare_boot` first if the tree has not been prepared.
    """
    monitor = monitor or NullMonitor()
    root, out = Path(root), Path(out)
    boot = read_boot_config(root) or prepare_boot(root)
    kernel, initrd, version = find_kernel(root)
    if not SYSTEMD_BOOT_EFI.is_file():
        raise BuildFailed(f"{SYSTEMD_BOOT_EFI} is missing", hint="install systemd-boot-efi (scripts/setup does)")

    esp_size = max(_MIN_ESP, _align_up(2 * (kernel.stat().st_size + initrd.stat().st_size) + 16 * MiB, MiB))
    used, inodes = _tree_usage(root)
    total = _disk_size(size_bytes, used, esp_size)
    root_size = total - _FIRST_PARTITION - esp_size - _TAIL
    needed = _root_needs(used)
    if root_size < needed:
        raise InvalidInput(
            f"the disk size {size_bytes / GiB:.0f} GiB is too small for this image: its root needs "
            f"{(needed + esp_size + 2 * MiB) / GiB:.1f} GiB",
            path=".properties.vmProfile.osDiskSizeGB",
            hint=f"set osDiskSizeGB to at least {-(-(needed + esp_size + 2 * MiB) // GiB)}, or leave it out",
        )

    out.parent.mkdir(parents=True, exist_ok=True)
    disk_guid = str(uuid.uuid4())
    esp = Partition(1, ESP_TYPE, str(uuid.uuid4()), "EFI System", _FIRST_PARTITION, esp_size,
                    _fat_uuid(boot.esp_volume_id))
    rootp = Partition(2, ROOT_X86_64_TYPE, str(uuid.uuid4()), "root", esp.offset + esp.size, root_size,
                      boot.root_fs_uuid)
    monitor.log(f"assemble: {total / GiB:.2f} GiB disk, ESP {esp_size // MiB} MiB, root {root_size // MiB} MiB "
                f"for {used / MiB:.0f} MiB in {inodes} inodes; kernel {version}")
    try:
        with open(out, "wb") as f:
            f.truncate(total)  # sparse: only what the filesystems write takes space
        _timed(monitor, "partition table", lambda: _write_gpt(out, disk_guid, esp, rootp))
        _timed(monitor, "ESP (vfat, systemd-boot)",
               lambda: _write_esp(out, esp, boot, kernel, initrd, version))
        _timed(monitor, "root (ext4 from the tree)", lambda: _write_root(out, rootp, root, inodes))
    except BaseException:
        out.unlink(missing_ok=True)
        raise
    return DiskLayout(out, total, disk_guid, esp, rootp, version, boot.cmdline)


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


def _version_key(version: str) -> tuple:
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


def _timed(monitor: Monitor, what: str, fn) -> None:
    t0 = time.monotonic()
    fn()
    monitor.log(f"assemble: {what} in {time.monotonic() - t0:.1f} s")


def _write_gpt(out: Path, disk_guid: str, esp: Partition, rootp: Partition) -> None:
    # sfdisk (util-linux), not sgdisk: sgdisk ends with a global sync(), which on a busy host
    # waits for everyone's dirty pages (1-2 s measured); sfdisk fsyncs only the image file.
    def line(p: Partition) -> str:
        return (f'start={p.offset // SECTOR}, size={p.size // SECTOR}, type={p.type_guid}, '
                f'uuid={p.part_guid}, name="{p.label}"')

    script = f"label: gpt\nlabel-id: {disk_guid}\n{line(esp)}\n{line(rootp)}\n"
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
    cmd = ["mkfs.ext4", "-q", "-F", "-t", "ext4", "-O", "^orphan_file", "-L", "root", "-U", rootp.fs_uuid,
           "-d", root, "-E", f"offset={rootp.offset}"]
    # mkfs's default of one inode per 16 KiB is too few for a small disk full of small files.
    if inodes * 2 > rootp.size // 16384:
        cmd += ["-N", str(inodes * 2 + 16384)]
    run([*cmd, out, f"{rootp.size // 1024}k"], capture=True)
