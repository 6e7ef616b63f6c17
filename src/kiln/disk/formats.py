"""Disk image formats: recognised by content, converted with qemu-img.

kiln never trusts a file name. `detect()` looks at the bytes: qcow2's magic, a VHD footer at the
end (fixed) or its copy at the start (dynamic), or, for raw, something a disk must have (an MBR
boot signature, a GPT header, or a filesystem superblock at offset 0). Anything else is refused
with a hint, so a text file or a tarball never becomes an "image".

Conversions other than raw -> fixed VHD (which is kiln's own footer code, `kiln.disk.vhd`) go
through `qemu-img convert`, the standard tool; its outputs stay sparse.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NotRequired, TypedDict, TypeGuard, cast

from kiln.disk import vhd
from kiln.errors import InvalidInput
from kiln.run import run

Format = Literal["raw", "qcow2", "vpc"]
ExportFormat = Literal["raw", "vhd", "vhd-dynamic", "qcow2"]
EXPORT_FORMATS: tuple[ExportFormat, ...] = ("raw", "vhd", "vhd-dynamic", "qcow2")


def is_export_format(name: str) -> TypeGuard[ExportFormat]:
    return name in EXPORT_FORMATS


# The part of `qemu-img info --output=json` kiln reads (functional form: the keys have hyphens).
QemuImgInfo = TypedDict("QemuImgInfo", {"virtual-size": int, "backing-filename": NotRequired[str]})

# Formats qemu knows that kiln does not take as input: name them instead of calling them "not a disk".
_OTHER_MAGIC = (
    (0, b"KDMV", "VMDK"),
    (0, b"# Disk DescriptorFile", "VMDK descriptor"),
    (0, b"vhdxfile", "VHDX"),
    (0, b"QED\x00", "QED"),
    (64, b"\x7f\x10\xda\xbe", "VDI"),
)


@dataclass(frozen=True)
class DiskInfo:
    """What a disk file holds. `data_size` is where the raw data ends (raw and fixed VHD only)."""

    format: Format
    subformat: str  # "" (raw, qcow2), "fixed", "dynamic"
    virtual_size: int
    data_size: int = 0
    footer: vhd.Footer | None = None

    @property
    def label(self) -> str:
        return {"raw": "raw", "qcow2": "qcow2"}.get(self.format, f"VHD ({self.subformat})")


def _not_a_disk(path: Path, why: str) -> InvalidInput:
    return InvalidInput(
        f"not a disk image: {why}",
        file=str(path),
        hint="give a raw disk (with a partition table or filesystem), a qcow2, or a VHD (fixed or dynamic)",
    )


def _qemu_info(path: Path, fmt: str) -> QemuImgInfo:
    out = run(["qemu-img", "info", "--output=json", "-f", fmt, path], capture=True, check=False)
    if out.returncode != 0:
        raise _not_a_disk(path, f"qemu-img cannot read it as {fmt}: {out.stdout.strip().splitlines()[-1:]}")
    return cast(QemuImgInfo, json.loads(out.stdout))


def detect(path: Path) -> DiskInfo:
    """Recognise the disk format of `path` by its content (never its name)."""
    try:
        st = path.stat()
        with path.open("rb") as f:
            head = f.read(0x10048)
            tail = b""
            if st.st_size >= vhd.FOOTER_SIZE:
                f.seek(st.st_size - vhd.FOOTER_SIZE)
                tail = f.read(vhd.FOOTER_SIZE)
    except FileNotFoundError:
        raise InvalidInput("no such file", file=str(path), hint="check the path") from None
    except IsADirectoryError:
        raise _not_a_disk(path, "it is a directory") from None
    except PermissionError as e:
        raise InvalidInput(f"cannot read it ({e.strerror})", file=str(path), hint="check its permissions") from None
    if not path.is_file():
        raise _not_a_disk(path, "it is not a regular file")
    if st.st_size == 0:
        raise _not_a_disk(path, "it is empty")

    if head[:4] == b"QFI\xfb":
        info = _qemu_info(path, "qcow2")
        if info.get("backing-filename"):
            raise InvalidInput(
                f"a qcow2 with a backing file ({info['backing-filename']})",
                file=str(path), hint="flatten it first: qemu-img convert -O qcow2 IN OUT",
            )
        return DiskInfo("qcow2", "", int(info["virtual-size"]))

    if head[:8] == vhd.COOKIE:
        footer = vhd.parse_footer(head[:512])
        if footer is None or not footer.checksum_ok:
            raise _not_a_disk(path, "its VHD header copy has a bad checksum")
        if footer.disk_type == vhd.DISK_DIFFERENCING:
            raise InvalidInput("a differencing VHD (it needs its parent)", file=str(path),
                               hint="merge it into its parent first (qemu-img convert -O vpc)")
        if footer.disk_type != vhd.DISK_DYNAMIC:
            raise _not_a_disk(path, f"unknown VHD disk type {footer.disk_type}")
        info = _qemu_info(path, "vpc")
        return DiskInfo("vpc", "dynamic", int(info["virtual-size"]), footer=footer)

    footer = vhd.parse_footer(tail)
    if footer is not None:
        if not footer.checksum_ok:
            raise _not_a_disk(path, "it ends in a VHD footer with a bad checksum")
        if not footer.is_fixed:
            raise _not_a_disk(path, f"it ends in a VHD footer of disk type {footer.disk_type} without a header")
        data = st.st_size - vhd.FOOTER_SIZE
        if footer.current_size > data:
            raise _not_a_disk(path, f"its VHD footer says {footer.current_size} bytes but the file holds {data}")
        return DiskInfo("vpc", "fixed", footer.current_size, data_size=footer.current_size, footer=footer)

    for offset, magic, name in _OTHER_MAGIC:
        if head[offset:offset + len(magic)] == magic:
            raise InvalidInput(
                f"a {name} image, which kiln does not import",
                file=str(path), hint=f"convert it first: qemu-img convert -O qcow2 {path} OUT.qcow2",
            )

    if st.st_size % 512:
        raise _not_a_disk(path, f"its size ({st.st_size} bytes) is not a whole number of 512-byte sectors")
    if not _looks_like_raw_disk(head):
        raise _not_a_disk(path, "no partition table (MBR or GPT) and no filesystem at its start")
    return DiskInfo("raw", "", st.st_size, data_size=st.st_size)


def _looks_like_raw_disk(head: bytes) -> bool:
    mbr = head[510:512] == b"\x55\xaa"
    gpt = head[512:520] == b"EFI PART" or head[4096:4104] == b"EFI PART"
    ext = head[1080:1082] == b"\x53\xef"
    xfs = head[:4] == b"XFSB"
    btrfs = head[0x10040:0x10048] == b"_BHRfS_M" if len(head) >= 0x10048 else False
    return mbr or gpt or ext or xfs or btrfs


def qemu_format(info: DiskInfo) -> str:
    return info.format


def convert_to_raw(src: Path, info: DiskInfo, dst: Path) -> None:
    """qcow2 / dynamic VHD -> sparse raw at `dst` (qemu-img skips zero clusters)."""
    run(["qemu-img", "convert", "-q", "-f", info.format, "-O", "raw", "-S", "4k", src, dst], capture=True)


def export(src: Path, src_format: Format, dst: Path, fmt: ExportFormat) -> None:
    """Write the disk `src` to `dst` in `fmt` via qemu-img (dynamic VHD with force_size: MiB-exact)."""
    opts: list[str] = []
    out_fmt = {"raw": "raw", "vhd": "vpc", "vhd-dynamic": "vpc", "qcow2": "qcow2"}[fmt]
    if fmt == "vhd":
        opts = ["-o", "subformat=fixed,force_size"]
    elif fmt == "vhd-dynamic":
        opts = ["-o", "subformat=dynamic,force_size"]
    run(["qemu-img", "convert", "-q", "-f", src_format, "-O", out_fmt, *opts, src, dst], capture=True)


def file_usage(path: Path) -> int:
    """Bytes of disk the file occupies (allocated blocks)."""
    return os.stat(path).st_blocks * 512
