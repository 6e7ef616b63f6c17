"""Disk formats are recognised by content, not by name; anything else is refused with a hint."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from kiln.disk import formats
from kiln.errors import InvalidInput


def convert(src: Path, dst: Path, fmt: str, *opts: str) -> Path:
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", fmt, *opts, str(src), str(dst)], check=True, capture_output=True)
    return dst


def test_detects_each_format_whatever_the_name(raw_disk: Path, tmp_path: Path) -> None:
    size = raw_disk.stat().st_size
    assert formats.detect(raw_disk) == formats.DiskInfo("raw", "", size, size)
    q = convert(raw_disk, tmp_path / "disk.vhd", "qcow2")  # a qcow2 named .vhd
    assert (formats.detect(q).format, formats.detect(q).virtual_size) == ("qcow2", size)
    fixed = convert(raw_disk, tmp_path / "fixed.qcow2", "vpc", "-o", "subformat=fixed,force_size")
    info = formats.detect(fixed)
    assert (info.format, info.subformat, info.virtual_size, info.data_size) == ("vpc", "fixed", size, size)
    dyn = convert(raw_disk, tmp_path / "dyn.raw", "vpc", "-o", "subformat=dynamic,force_size")
    info = formats.detect(dyn)
    assert (info.format, info.subformat, info.virtual_size) == ("vpc", "dynamic", size)


@pytest.mark.parametrize("content,why", [
    (b"", "empty"),
    (b"hello world\n" * 100, "not a whole number"),
    (bytes(1 << 20), "no partition table"),
    (b"\x7fELF" + bytes(4092), "no partition table"),
])
def test_not_a_disk_is_a_clear_error(tmp_path: Path, content: bytes, why: str) -> None:
    f = tmp_path / "disk.raw"
    f.write_bytes(content)
    with pytest.raises(InvalidInput) as e:
        formats.detect(f)
    assert why in e.value.message and e.value.file == str(f) and e.value.hint


def test_other_qemu_formats_are_named(raw_disk: Path, tmp_path: Path) -> None:
    vmdk = convert(raw_disk, tmp_path / "x.img", "vmdk")
    with pytest.raises(InvalidInput, match="VMDK"):
        formats.detect(vmdk)


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="no such file"):
        formats.detect(tmp_path / "nope")
    with pytest.raises(InvalidInput, match="directory"):
        formats.detect(tmp_path)
