"""GRUB for BIOS on kiln's disks (hyperVGeneration V1), written without mounting anything.

Every disk kiln assembles is hybrid, as Debian's cloud images are: UEFI firmware finds
systemd-boot on the EFI system partition, and a BIOS (SeaBIOS, Hyper-V generation 1) runs GRUB.
The BIOS half is two pieces of GRUB that `grub-bios-setup` would write, placed here by hand:

- `boot.img`, the 440 bytes of MBR boot code, goes into the protective MBR's code area; the
  BPB range, the disk signature and the partition table of the MBR `sfdisk` wrote are kept. Its
  `kernel_sector` field is set to the first sector of the BIOS boot partition, the boot drive to
  "the one the BIOS booted" (0xff) and the floppy check turned off (both what grub-bios-setup does).
- `core.img`, made by `grub-mkimage -O i386-pc` from the host's grub-pc-bin modules, goes into
  the BIOS boot partition (GPT type 21686148-6449-6E6F-744E-656564454649). Its first sector
  (diskboot.img) carries a block list telling it where the rest of itself is: the following
  sectors of that partition.

core.img holds every module the boot needs and a memdisk with one grub.cfg, so nothing of GRUB
is in the guest's file systems and nothing there can go stale. The grub.cfg finds the root file
system by UUID and boots `/vmlinuz` and `/initrd.img`, the symlinks Debian's linux-base keeps
pointing at the newest kernel: a kernel upgraded inside the VM boots under BIOS too, without
GRUB in the guest. Fallbacks follow: `/vmlinuz.old` (the previous kernel) and the kernel the
image was built with. The serial console is ttyS0, as on the UEFI path.

`boot_generations` reads any disk (raw, fixed or dynamic VHD, qcow2) and says which firmware can
boot it: "V1" if its MBR has boot code and (on GPT) a BIOS boot partition or a legacy-bootable
partition holds something, "V2" if it has an EFI system partition. That is what keeps a V1
gallery definition or managed image from receiving a UEFI-only disk.
"""

from __future__ import annotations

import io
import re
import struct
import tarfile
import tempfile
import uuid
from pathlib import Path

from kiln.disk.boot import BootConfig
from kiln.disk.formats import detect
from kiln.errors import BuildFailed, InvalidInput
from kiln.run import run

SECTOR = 512
BIOS_BOOT_TYPE = "21686148-6449-6E6F-744E-656564454649"
BIOS_BOOT_SIZE = 1024 * 1024  # core.img is ~150 KiB; 1 MiB keeps the partitions after it MiB-aligned
GRUB_PC = Path("/usr/lib/grub/i386-pc")  # grub-pc-bin: boot.img and the i386-pc modules

# What the BIOS boot needs, all inside core.img: BIOS disks, GPT (and MBR) partitions, ext2/3/4,
# the memdisk holding grub.cfg, the normal-mode script language, the Linux loader, the serial port.
MODULES = (
    "biosdisk", "part_gpt", "part_msdos", "ext2", "memdisk", "tar", "normal", "configfile", "search",
    "search_fs_uuid", "test", "echo", "linux", "boot", "serial", "terminal",
)

# boot.img fields (GRUB's include/grub/i386/pc/boot.h).
_BPB = slice(0x03, 0x5A)  # a BIOS parameter block, if the disk had one: kept
_KERNEL_SECTOR = 0x5C  # u64: LBA of core.img's first sector
_BOOT_DRIVE = 0x64  # 0xff: use the drive the BIOS passed in DL
_DRIVE_CHECK = 0x66  # a jmp that, on floppies only, forces drive 0; hard disks nop it out
_MBR_TAIL = slice(0x1B8, 0x1FE)  # disk signature and partition table: the MBR's own
_BOOT_CODE = 440  # bytes of boot code before the disk signature
# diskboot.img (core.img's first sector) ends with block lists, 12 bytes each, growing down:
# u64 start LBA, u16 sectors, u16 load segment.
_BLOCKLIST_END = SECTOR
_BLOCKLIST_SIZE = 12
_LOAD_SEGMENT = 0x820  # GRUB_BOOT_I386_PC_KERNEL_SEG (0x800) + one sector (0x20 paragraphs)

ESP_TYPE = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"  # as kiln.disk.assemble's (which imports this module)
_MBR_ESP = 0xEF
_MBR_PROTECTIVE = 0xEE
_LEGACY_BIOS_BOOTABLE = 1 << 2  # GPT partition attribute bit 2 (syslinux's gptmbr boots that partition)


# ---------------------------------------------------------------------------------- writing GRUB


def check_host() -> None:
    """Fail early, with the package to install, if this host cannot write the BIOS half."""
    for name in ("boot.img", "diskboot.img", "kernel.img", "biosdisk.mod"):
        if not (GRUB_PC / name).is_file():
            raise BuildFailed(f"{GRUB_PC / name} is missing: GRUB's BIOS modules are needed for hybrid disks",
                              hint="install grub-pc-bin (scripts/setup does); it does not touch the host's boot loader")


def grub_config(root: Path, boot: BootConfig, kernel_version: str) -> str:
    """The grub.cfg core.img carries: the newest kernel by Debian's symlinks, then fallbacks."""
    candidates = [
        ("newest kernel", "/vmlinuz", "/initrd.img"),  # linux-base, link_in_boot = no (Debian's default)
        ("newest kernel", "/boot/vmlinuz", "/boot/initrd.img"),  # link_in_boot = yes
        ("previous kernel", "/vmlinuz.old", "/initrd.img.old"),
        ("previous kernel", "/boot/vmlinuz.old", "/boot/initrd.img.old"),
    ]
    # Only the links the tree has (a missing one would cost an error and GRUB's pause before each
    # fallback); the kernel the image was built with is always last, so a disk without links boots.
    entries = [(title, k, i) for title, k, i in candidates if _is_link_or_file(root, k) and _is_link_or_file(root, i)]
    entries.append((f"Linux {kernel_version} (as built)", f"/boot/vmlinuz-{kernel_version}",
                    f"/boot/initrd.img-{kernel_version}"))
    options = " ".join(_grub_word(w) for w in boot.cmdline.split())
    lines = [
        "# Written by kiln into core.img (BIOS boot partition); the guest has no GRUB to update it.",
        "serial --unit=0 --speed=115200",
        "terminal_input serial console",
        "terminal_output serial console",
        "set timeout=0",
        "set default=0",
        f'set fallback="{" ".join(str(n) for n in range(1, len(entries)))}"',
        f"search --no-floppy --fs-uuid --set=root {boot.root_fs_uuid}",
    ]
    for title, kernel, initrd in entries:
        lines += [f"menuentry {_grub_word(title)} {{", f"  linux {kernel} {options}", f"  initrd {initrd}", "}"]
    return "\n".join(lines) + "\n"


def make_core_image(config: str, work: Path) -> bytes:
    """core.img for i386-pc with MODULES and a memdisk holding `config` as /boot/grub/grub.cfg."""
    check_host()
    with tempfile.TemporaryDirectory(prefix=".kiln-grub-", dir=work) as tmp:
        memdisk = Path(tmp) / "memdisk.tar"
        memdisk.write_bytes(_tar({"boot/grub/grub.cfg": config.encode()}))
        core = Path(tmp) / "core.img"
        # Normal mode reads $prefix/grub.cfg; every module is already in core.img, none is loaded from $prefix.
        run(["grub-mkimage", "-O", "i386-pc", "-d", GRUB_PC, "-p", "(memdisk)/boot/grub", "-m", memdisk, "-o", core,
             *MODULES], capture=True)
        return core.read_bytes()


def install_bios_boot(disk: Path, partition_offset: int, partition_size: int, core: bytes) -> None:
    """Write GRUB's boot.img into `disk`'s MBR code area and `core` into its BIOS boot partition."""
    if partition_offset % SECTOR:
        raise ValueError("the BIOS boot partition must start on a sector")
    core_sectors = -(-len(core) // SECTOR)
    if core_sectors * SECTOR > partition_size or core_sectors > 0xFFFF:
        raise BuildFailed(f"GRUB's core.img ({len(core)} bytes) does not fit the {partition_size}-byte BIOS boot partition")
    first = partition_offset // SECTOR
    image = bytearray(core.ljust(core_sectors * SECTOR, b"\0"))
    _point_core_at_itself(image, first, core_sectors)
    boot_img = (GRUB_PC / "boot.img").read_bytes()
    if len(boot_img) != SECTOR or boot_img[510:] != b"\x55\xaa":
        raise BuildFailed(f"{GRUB_PC / 'boot.img'} is not a 512-byte boot sector", hint="reinstall grub-pc-bin")
    with open(disk, "r+b") as f:
        mbr = f.read(SECTOR)
        if len(mbr) != SECTOR or mbr[510:] != b"\x55\xaa":
            raise ValueError(f"{disk} has no MBR to put boot code in (write the partition table first)")
        code = bytearray(boot_img)
        code[_BPB] = mbr[_BPB]
        code[_MBR_TAIL] = mbr[_MBR_TAIL]
        struct.pack_into("<Q", code, _KERNEL_SECTOR, first)
        code[_BOOT_DRIVE] = 0xFF
        code[_DRIVE_CHECK:_DRIVE_CHECK + 2] = b"\x90\x90"
        f.seek(partition_offset)
        f.write(image)
        f.seek(0)
        f.write(code)


def _point_core_at_itself(image: bytearray, first_lba: int, sectors: int) -> None:
    # As grub-bios-setup's save_blocklists for a contiguous embedding: clear the lists, then one
    # entry for sectors 2..n of core.img (diskboot.img, sector 1, is what boot.img loads), then a
    # zero terminator below it.
    at = _BLOCKLIST_END - _BLOCKLIST_SIZE
    while at > 0 and struct.unpack_from("<H", image, at + 8)[0]:
        image[at:at + _BLOCKLIST_SIZE] = bytes(_BLOCKLIST_SIZE)
        at -= _BLOCKLIST_SIZE
    top = _BLOCKLIST_END - _BLOCKLIST_SIZE
    struct.pack_into("<QHH", image, top, first_lba + 1, sectors - 1, _LOAD_SEGMENT)
    image[top - _BLOCKLIST_SIZE:top] = bytes(_BLOCKLIST_SIZE)


def _tar(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _is_link_or_file(root: Path, path: str) -> bool:
    p = Path(root) / path.lstrip("/")
    return p.is_symlink() or p.is_file()


_PLAIN = re.compile(r"[A-Za-z0-9_./,:=+@%-]+")


def _grub_word(word: str) -> str:
    """One word of GRUB's shell-like script: as is if plain, else single-quoted (sh's rules)."""
    return word if _PLAIN.fullmatch(word) else "'" + word.replace("'", "'\\''") + "'"


# ---------------------------------------------------------------------------------- reading disks


def boot_generations(disk: Path, fmt: str) -> tuple[str, ...]:
    """Which Hyper-V generations can boot `disk`, read from its bytes: ("V1", "V2"), one, or ().

    V1 (BIOS) needs boot code in the MBR and, on a GPT disk, something for it to load: a BIOS
    boot partition or a legacy-BIOS-bootable partition that is not blank. V2 (UEFI) needs an EFI
    system partition. Neither looks inside the file systems: this is about what firmware can start.
    """
    head = _read(disk, fmt, 0, 34 * SECTOR)
    if len(head) < 2 * SECTOR or head[510:512] != b"\x55\xaa":
        return ()  # no MBR: not even a protective one, so no firmware of either kind boots it
    has_code = any(head[:_BOOT_CODE])
    if head[SECTOR:SECTOR + 8] != b"EFI PART":  # an MBR-partitioned disk
        types = [head[0x1BE + 16 * i + 4] for i in range(4)]
        bios = has_code and any(t not in (0, _MBR_PROTECTIVE) for t in types)
        return _generations(bios, _MBR_ESP in types)
    entries_lba, count, entry_size = struct.unpack_from("<QII", head, SECTOR + 72)
    if entry_size < 128 or count > 1024:
        return _generations(False, False)  # not a GPT header kiln can trust
    table = _read(disk, fmt, entries_lba * SECTOR, -(-count * entry_size // SECTOR) * SECTOR)
    uefi, loadable = False, []
    for i in range(min(count, len(table) // entry_size)):
        entry = table[i * entry_size:(i + 1) * entry_size]
        if not any(entry[:16]):
            continue  # an unused entry
        type_guid = str(uuid.UUID(bytes_le=entry[:16])).upper()
        first, _last, attributes = struct.unpack_from("<QQQ", entry, 32)
        if type_guid == ESP_TYPE:
            uefi = True
        if type_guid == BIOS_BOOT_TYPE or attributes & _LEGACY_BIOS_BOOTABLE:
            loadable.append(first)
    bios = has_code and any(any(_read(disk, fmt, lba * SECTOR, SECTOR)) for lba in loadable)
    return _generations(bios, uefi)


def require_generation(generation: str, boots: tuple[str, ...], *, what: str, path: str = "",
                       file: str = "", hint: str = "") -> None:
    """Refuse to make `what` (an image, a gallery image version) a `generation` one when its disk,
    which boots `boots`, cannot boot that way. V1 must be proven by the disk; V2, kiln's default,
    is refused only for a disk known to boot BIOS alone (kiln has always taken any disk as V2)."""
    if generation == "V1" and "V1" not in boots:
        raise InvalidInput(
            f"{what} is hyperVGeneration V1 (BIOS), but its disk cannot boot with BIOS: "
            + ("it boots only with UEFI (V2)" if boots == ("V2",) else "it has no BIOS boot code")
            + " (no GRUB boot code in the MBR with a BIOS boot partition for it to load)",
            path=path, file=file,
            hint=hint or "use hyperVGeneration V2 for a UEFI-only disk, or give a hybrid disk (a BIOS boot "
                         "partition and MBR boot code, as every disk kiln builds has)")
    if generation == "V2" and boots == ("V1",):
        raise InvalidInput(
            f"{what} is hyperVGeneration V2 (UEFI), but its disk boots only with BIOS (it has no EFI system partition)",
            path=path, file=file, hint=hint or "use hyperVGeneration V1 for a BIOS-only disk")


def _generations(bios: bool, uefi: bool) -> tuple[str, ...]:
    return tuple(g for g, ok in (("V1", bios), ("V2", uefi)) if ok)


def _read(disk: Path, fmt: str, offset: int, length: int) -> bytes:
    """`length` bytes of the disk's data at `offset` (short at its end). Raw data and fixed VHDs
    are read in place; qcow2 and dynamic VHDs through `qemu-img dd` on a raw slice of the image
    (QEMU 7.2's `dd skip=` counts `count` from the start of the disk, so no skip is used)."""
    if fmt == "raw" or (fmt == "vpc" and _fixed_vhd(disk)):
        with open(disk, "rb") as f:
            f.seek(offset)
            return f.read(length)
    if offset % SECTOR or length % SECTOR:
        raise ValueError("reads through qemu-img are whole sectors")
    length = min(length, max(0, detect(disk).virtual_size - offset))
    if not length:
        return b""
    name = str(Path(disk).absolute()).replace(",", ",,")  # the option syntax doubles commas
    opts = f"driver=raw,offset={offset},size={length},file.driver={fmt},file.file.driver=file,file.file.filename={name}"
    with tempfile.TemporaryDirectory(prefix=".kiln-probe-") as tmp:
        out = Path(tmp) / "slice.raw"
        run(["qemu-img", "dd", "--image-opts", "-O", "raw", f"bs={SECTOR}", f"count={length // SECTOR}",
             f"if={opts}", f"of={out}"], capture=True)
        return out.read_bytes()


def _fixed_vhd(disk: Path) -> bool:
    with open(disk, "rb") as f:
        f.seek(0, 2)
        size = f.tell()
        if size < SECTOR:
            return False
        f.seek(size - SECTOR)
        footer = f.read(SECTOR)
    return footer[:8] == b"conectix" and struct.unpack(">I", footer[60:64])[0] == 2
