"""kiln's VHD footer: the bytes, the geometry, and what qemu-img makes of the files kiln writes."""

from __future__ import annotations

import json
import struct
import subprocess
from pathlib import Path

import pytest

from kiln.disk import vhd


def qemu_info(path: Path) -> dict:
    out = subprocess.run(["qemu-img", "info", "--output=json", "-f", "vpc", str(path)], check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout)


def qemu_check_accepts(path: Path) -> None:
    """qemu-img check: 0 = clean; the vpc driver has no checker and says so (exit 63), which is not a complaint."""
    p = subprocess.run(["qemu-img", "check", "-f", "vpc", str(path)], capture_output=True, text=True)
    assert p.returncode == 0 or (p.returncode == 63 and "does not support checks" in p.stderr), p.stderr


def test_footer_fields_are_big_endian_with_ones_complement_checksum() -> None:
    raw = vhd.make_footer(64 << 20, bytes(range(16)))
    assert len(raw) == 512
    assert raw[:8] == b"conectix"
    assert struct.unpack(">I", raw[8:12])[0] == 2  # features
    assert struct.unpack(">I", raw[12:16])[0] == 0x00010000
    assert raw[16:24] == b"\xff" * 8  # fixed disk: no dynamic header
    assert struct.unpack(">Q", raw[40:48])[0] == 64 << 20  # original size
    assert struct.unpack(">Q", raw[48:56])[0] == 64 << 20  # current size
    assert struct.unpack(">I", raw[60:64])[0] == 2  # fixed
    assert raw[68:84] == bytes(range(16))
    assert raw[85:] == bytes(427)
    checksum = struct.unpack(">I", raw[64:68])[0]
    assert checksum == (~(sum(raw[:64]) + sum(raw[68:])) & 0xFFFFFFFF)
    assert vhd.parse_footer(raw).checksum_ok
    broken = raw[:100] + b"\x01" + raw[101:]
    assert not vhd.parse_footer(broken).checksum_ok


@pytest.mark.parametrize("size_mib", [1, 10, 127, 1024, 2049, 40000])
def test_geometry_matches_qemu(tmp_path: Path, size_mib: int) -> None:
    """The VHD spec's CHS algorithm, compared with the geometry qemu-img writes (without force_size)."""
    raw = tmp_path / "a.raw"
    raw.write_bytes(b"")
    subprocess.run(["truncate", "-s", f"{size_mib}M", str(raw)], check=True)
    ref = tmp_path / "ref.vhd"
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "vpc", "-o", "subformat=fixed", str(raw), str(ref)],
                   check=True, capture_output=True)
    with ref.open("rb") as f:
        f.seek(-512, 2)
        theirs = vhd.parse_footer(f.read())
    cyl, heads, spt = vhd.chs_geometry(theirs.current_size)
    assert (cyl, heads, spt) == (theirs.cylinders, theirs.heads, theirs.sectors_per_track)


def test_append_footer_rounds_up_sparsely_and_qemu_reads_it(tmp_path: Path) -> None:
    disk = tmp_path / "d.img"
    with disk.open("wb") as f:
        f.write(b"\xab" * 4096)
        f.truncate(5 * (1 << 20) + 123 * 512)  # not a whole MiB
    before = disk.stat().st_blocks
    size = vhd.append_fixed_footer(disk, b"kiln-test-uid-16")
    assert size == 6 << 20 and size % (1 << 20) == 0
    assert disk.stat().st_size == size + 512
    assert disk.stat().st_blocks - before <= 16  # the extension is a hole: only the footer's block is new
    info = qemu_info(disk)
    assert info["virtual-size"] == size
    qemu_check_accepts(disk)
    footer = vhd.read_trailing_footer(disk)
    assert footer is not None and footer.is_fixed and footer.current_size == size
    assert footer.creator_app == b"win "  # Hyper-V's: qemu then trusts current_size over CHS
    # The data is where it was: a partition at a plain offset reads the same.
    assert disk.read_bytes()[:4096] == b"\xab" * 4096


def test_replacing_a_footer_zeroes_the_old_one(tmp_path: Path) -> None:
    disk = tmp_path / "d.img"
    disk.write_bytes(b"\x01" * (3 << 20))
    vhd.append_fixed_footer(disk)
    # Pretend the data was 2.5 MiB and re-footer: bytes past 2.5 MiB must read as zeros now.
    vhd.append_fixed_footer(disk, data_size=(5 << 20) // 2)
    data = disk.read_bytes()
    assert len(data) == (3 << 20) + 512
    assert data[(5 << 20) // 2: 3 << 20] == bytes((3 << 20) - ((5 << 20) // 2))
    assert qemu_info(disk)["virtual-size"] == 3 << 20
