"""Take the root tree back out of a disk: the source of ManagedImage and SharedImageVersion builds.

The GPT is read here (it is a few structs), the root partition picked by its type GUID (the
x86-64 root of the Discoverable Partitions Specification, which kiln writes, else generic Linux
data) or, failing that, as the largest partition holding ext4. Raw disks and fixed VHDs (raw data
plus a 512-byte footer) have their partitions at plain byte offsets; other formats (dynamic VHD,
qcow2) must be converted by the caller first.

Copying out: `debugfs rdump` would be mount-free, but it drops device nodes, hardlinks and xattrs
(file capabilities among them), so the ext4 is loop-mounted read-only at its offset inside a
private mount namespace (`unshare --mount`): the mount is invisible to the host and disappears
with the namespace whatever happens to kiln, and `cp -a` copies everything a root tree has.
"""

from __future__ import annotations

import os
import shutil
import struct
import tempfile
import uuid
import zlib
from dataclasses import dataclass
from pathlib import Path

from kiln.disk.assemble import ESP_TYPE, LINUX_DATA_TYPE, ROOT_X86_64_TYPE, SECTOR
from kiln.errors import BuildFailed, InvalidInput
from kiln.events import Monitor, NullMonitor
from kiln.run import run

_EXT_MAGIC_OFFSET = 1024 + 56  # s_magic in the ext2/3/4 superblock
_EXT_MAGIC = b"\x53\xef"
_VHD_COOKIE = b"conectix"
_VHD_FIXED = 2


@dataclass(frozen=True)
class GptPartition:
    number: int
    type_guid: str  # upper case, as sgdisk prints it
    part_guid: str
    first_lba: int
    last_lba: int
    name: str

    @property
    def offset(self) -> int:
        return self.first_lba * SECTOR

    @property
    def size(self) -> int:
        return (self.last_lba - self.first_lba + 1) * SECTOR


def data_size(disk: Path, fmt: str) -> int:
    """Bytes of raw disk data in `disk` (a fixed VHD's footer excluded); refuses other formats."""
    size = disk.stat().st_size
    if fmt == "raw":
        return size
    if fmt == "vpc":
        with open(disk, "rb") as f:
            f.seek(size - 512)
            footer = f.read(512)
        if footer[:8] != _VHD_COOKIE:
            raise InvalidInput(f"{disk} is not a fixed VHD (no footer at its end)",
                               hint="convert it first: qemu-img convert -O raw")
        if struct.unpack(">I", footer[60:64])[0] != _VHD_FIXED:
            raise InvalidInput(f"{disk} is a dynamic VHD; its data is not at plain offsets",
                               hint="convert it first: qemu-img convert -f vpc -O raw")
        return size - 512
    raise InvalidInput(f"cannot read partitions of a {fmt!r} disk in place",
                       hint="convert it to raw first: qemu-img convert -O raw")


def read_gpt(disk: Path, fmt: str = "raw") -> tuple[GptPartition, ...]:
    """The GPT partitions of `disk` (512-byte sectors), from the primary header, CRC-checked."""
    limit = data_size(disk, fmt)
    with open(disk, "rb") as f:
        f.seek(SECTOR)
        header = f.read(92)
        if header[:8] != b"EFI PART":
            raise InvalidInput(f"{disk} has no GPT partition table", hint="kiln reads GPT disks (as Azure generation 2)")
        header_size = struct.unpack("<I", header[12:16])[0]
        f.seek(SECTOR)
        full = bytearray(f.read(header_size))
        crc = struct.unpack("<I", full[16:20])[0]
        full[16:20] = b"\0\0\0\0"
        if zlib.crc32(bytes(full)) != crc:
            raise InvalidInput(f"{disk}: the GPT header is corrupt (CRC mismatch)")
        entries_lba, count, entry_size, entries_crc = struct.unpack("<QIII", header[72:92])
        f.seek(entries_lba * SECTOR)
        table = f.read(count * entry_size)
    if zlib.crc32(table) != entries_crc:
        raise InvalidInput(f"{disk}: the GPT partition entries are corrupt (CRC mismatch)")
    found = []
    for i in range(count):
        entry = table[i * entry_size:(i + 1) * entry_size]
        type_guid = str(uuid.UUID(bytes_le=entry[:16])).upper()
        if type_guid == "00000000-0000-0000-0000-000000000000":
            continue
        first, last = struct.unpack("<QQ", entry[32:48])
        if (last + 1) * SECTOR > limit:
            raise InvalidInput(f"{disk}: partition {i + 1} extends past the end of the disk")
        name = entry[56:128].decode("utf-16-le", errors="replace").rstrip("\0")
        found.append(GptPartition(i + 1, type_guid, str(uuid.UUID(bytes_le=entry[16:32])), first, last, name))
    return tuple(found)


def find_root_partition(disk: Path, fmt: str = "raw") -> GptPartition:
    """The Linux root: by type GUID, else the largest ext4 partition."""
    parts = read_gpt(disk, fmt)
    ext4 = [p for p in parts if p.type_guid != ESP_TYPE and _is_ext(disk, p)]
    for wanted in (ROOT_X86_64_TYPE, LINUX_DATA_TYPE):
        typed = [p for p in ext4 if p.type_guid == wanted]
        if typed:
            return max(typed, key=lambda p: p.size)
    if ext4:
        return max(ext4, key=lambda p: p.size)
    raise InvalidInput(f"{disk} has no ext4 root partition",
                       hint="kiln can take the root out of Linux disks with an ext2/3/4 root")


def _is_ext(disk: Path, part: GptPartition) -> bool:
    with open(disk, "rb") as f:
        f.seek(part.offset + _EXT_MAGIC_OFFSET)
        return f.read(2) == _EXT_MAGIC


def extract_root(disk: Path, fmt: str, dest: Path, *, monitor: Monitor | None = None) -> Path:
    """Copy the root filesystem of `disk` into `dest` (new or empty), keeping owners, modes,
    links, device nodes, hardlinks and xattrs. Returns `dest`. Needs root (a loop mount)."""
    monitor = monitor or NullMonitor()
    disk, dest = Path(disk).absolute(), Path(dest).absolute()
    if not disk.is_file():
        raise InvalidInput(f"disk not found: {disk}")
    part = find_root_partition(disk, fmt)
    if dest.exists() and any(dest.iterdir()):
        raise InvalidInput(f"{dest} is not empty", hint="extract the root into a new directory")
    dest.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        raise BuildFailed("taking the root out of a disk needs root (a read-only loop mount)")
    monitor.log(f"extract: root is partition {part.number} ({part.size // (1024 * 1024)} MiB at {part.offset}) of {disk}")
    mnt = Path(tempfile.mkdtemp(prefix=".kiln-mnt-", dir=dest.parent))
    # In the private namespace: mount read-only (replaying no journal onto the disk), copy, and
    # let the namespace's end take the mount and the loop device with it.
    script = (
        'set -e\n'
        'mount -t ext4 -o "ro,loop,offset=$1,sizelimit=$2" "$3" "$4" 2>/dev/null'
        ' || mount -t ext4 -o "ro,noload,loop,offset=$1,sizelimit=$2" "$3" "$4"\n'
        'cp -a "$4"/. "$5"/\n'
        'rm -rf "$5/lost+found"\n'
    )
    try:
        run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh",
             str(part.offset), str(part.size), disk, mnt, dest], capture=True)
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise
    finally:
        try:
            mnt.rmdir()
        except OSError:
            pass
    return dest
