"""The VHD footer, owned by kiln: turning a raw disk into a fixed VHD without copying its data.

A fixed VHD is the raw disk followed by one 512-byte footer (Microsoft's "Virtual Hard Disk Image
Format Specification"). So converting a freshly assembled raw disk to a fixed VHD is: extend the
file sparsely to a whole number of MiB (Azure rejects other sizes), then append the footer in
place. No data byte moves.

Footer layout (big-endian):

    off size field
      0   8  cookie "conectix"
      8   4  features (2: reserved bit, always set)
     12   4  file format version 0x00010000
     16   8  data offset (0xFFFFFFFFFFFFFFFF for a fixed disk)
     24   4  timestamp (seconds since 2000-01-01 00:00:00 UTC)
     28   4  creator application
     32   4  creator version
     36   4  creator host OS ("Wi2k")
     40   8  original size
     48   8  current size
     56   4  disk geometry (cylinders u16, heads u8, sectors per track u8)
     60   4  disk type (2 fixed, 3 dynamic, 4 differencing)
     64   4  checksum: one's complement of the byte sum of the footer with this field zeroed
     68  16  unique id
     84   1  saved state
     85 427  zero

kiln's footers are *canonical*: the timestamp is 0 and the unique id is derived from the disk's
content digest, so equal disks give byte-equal VHDs (which is what lets the blob store
deduplicate them). The creator application is "win " (Hyper-V's): readers such as QEMU use it to
decide that `current size`, not the CHS geometry (which cannot express every whole MiB), is the
disk's size, as Hyper-V and Azure do. With any other creator QEMU would round the disk down to its
CHS geometry and lose the tail.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path

FOOTER_SIZE = 512
MIB = 1024 * 1024
COOKIE = b"conectix"
DISK_FIXED = 2
DISK_DYNAMIC = 3
DISK_DIFFERENCING = 4
_FIXED_DATA_OFFSET = 0xFFFFFFFFFFFFFFFF
_CREATOR_APP = b"win "
_CREATOR_VERSION = 0x00010000
_HOST_OS = b"Wi2k"
# ">8s I I Q I 4s I 4s Q Q H B B I I 16s B 427x"
_FMT = ">8sIIQI4sI4sQQHBBII16sB427x"
assert struct.calcsize(_FMT) == FOOTER_SIZE


@dataclass(frozen=True)
class Footer:
    """A parsed VHD footer (the fields kiln uses)."""

    disk_type: int
    current_size: int
    original_size: int
    data_offset: int
    cylinders: int
    heads: int
    sectors_per_track: int
    creator_app: bytes
    unique_id: bytes
    timestamp: int
    checksum_ok: bool

    @property
    def is_fixed(self) -> bool:
        return self.disk_type == DISK_FIXED


def chs_geometry(size: int) -> tuple[int, int, int]:
    """(cylinders, heads, sectors per track) for a disk of `size` bytes, per the VHD specification's
    appendix algorithm (capped at 65535 x 16 x 255 sectors)."""
    total = min(size // 512, 65535 * 16 * 255)
    if total >= 65535 * 16 * 63:
        spt, heads = 255, 16
        cyl_times_heads = total // spt
    else:
        spt = 17
        cyl_times_heads = total // spt
        heads = max((cyl_times_heads + 1023) // 1024, 4)
        if cyl_times_heads >= heads * 1024 or heads > 16:
            spt, heads = 31, 16
            cyl_times_heads = total // spt
        if cyl_times_heads >= heads * 1024:
            spt, heads = 63, 16
            cyl_times_heads = total // spt
    return cyl_times_heads // heads, heads, spt


def _checksum(raw: bytes) -> int:
    # One's complement of the sum of all bytes, the checksum field (64..68) counted as zero.
    return ~(sum(raw[:64]) + sum(raw[68:])) & 0xFFFFFFFF


def make_footer(virtual_size: int, unique_id: bytes = b"", *, timestamp: int = 0) -> bytes:
    """The 512-byte footer of a fixed VHD holding `virtual_size` bytes of disk data."""
    if virtual_size <= 0 or virtual_size % 512:
        raise ValueError(f"a VHD's size must be a positive multiple of 512, not {virtual_size}")
    cyl, heads, spt = chs_geometry(virtual_size)
    uid = (unique_id + bytes(16))[:16]
    fields = [
        COOKIE, 2, 0x00010000, _FIXED_DATA_OFFSET, timestamp, _CREATOR_APP, _CREATOR_VERSION, _HOST_OS,
        virtual_size, virtual_size, cyl, heads, spt, DISK_FIXED, 0, uid, 0,
    ]
    raw = struct.pack(_FMT, *fields)
    fields[14] = _checksum(raw)
    return struct.pack(_FMT, *fields)


def parse_footer(raw: bytes) -> Footer | None:
    """Parse 512 bytes as a VHD footer; None if the cookie is not there."""
    if len(raw) != FOOTER_SIZE or raw[:8] != COOKIE:
        return None
    (_, _, _, data_offset, timestamp, app, _, _, orig, cur, cyl, heads, spt, dtype, csum, uid, _) = struct.unpack(_FMT, raw)
    return Footer(
        disk_type=dtype, current_size=cur, original_size=orig, data_offset=data_offset,
        cylinders=cyl, heads=heads, sectors_per_track=spt, creator_app=app, unique_id=uid,
        timestamp=timestamp, checksum_ok=csum == _checksum(raw),
    )


def read_trailing_footer(path: Path) -> Footer | None:
    """The footer at the end of `path` if it is a valid fixed-VHD footer whose size matches the file."""
    size = path.stat().st_size
    if size < FOOTER_SIZE + 512:
        return None
    with path.open("rb") as f:
        f.seek(size - FOOTER_SIZE)
        footer = parse_footer(f.read(FOOTER_SIZE))
    if footer is None or not footer.checksum_ok or not footer.is_fixed:
        return None
    if footer.current_size != size - FOOTER_SIZE:
        return None
    return footer


def round_up_mib(size: int) -> int:
    return -(-size // MIB) * MIB


def append_fixed_footer(path: Path, unique_id: bytes = b"", *, data_size: int | None = None) -> int:
    """Turn the raw disk at `path` into a fixed VHD in place; return its virtual size.

    The data is first extended (sparsely: `ftruncate`, no block is written) to a whole number of
    MiB, then the footer is written after it. `data_size` says where the raw data ends when the
    file already carries a (non-canonical) footer that must be replaced.
    """
    with path.open("r+b") as f:
        size = data_size if data_size is not None else os.fstat(f.fileno()).st_size
        virtual_size = round_up_mib(max(size, 1))
        # Cut first (drops an old footer), then extend: the new tail must read as zeros.
        os.ftruncate(f.fileno(), size)
        os.ftruncate(f.fileno(), virtual_size)
        os.pwrite(f.fileno(), make_footer(virtual_size, unique_id), virtual_size)
        os.fsync(f.fileno())
    return virtual_size
