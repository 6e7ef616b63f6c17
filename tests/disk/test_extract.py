"""extract_root: the root tree back out of a built disk (raw and fixed VHD), everything kept."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from kiln.disk.extract import extract_root, find_root_partition, read_gpt
from kiln.errors import InvalidInput
from kiln.run import run

from .conftest import CAP_FILE, CAP_NET_RAW_EP, DEVICE, HARDLINKS, ODD_FILE, XATTR_FILE, BuiltDisk

pytestmark = pytest.mark.integration


def _tree(root: Path) -> set[tuple]:
    """Every path with its type, mode, owner and link count (what a root tree is made of)."""
    out = run(["find", ".", "-printf", r"%p %y %m %U %G %n %l\n"], cwd=root, capture=True).stdout
    return {tuple(line.split(" ")) for line in out.splitlines() if line and not line.startswith("./lost+found")}


@pytest.fixture(scope="module")
def extracted(built_disk: BuiltDisk, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return extract_root(built_disk.layout.path, "raw", tmp_path_factory.mktemp("extract") / "root")


def test_extracted_tree_equals_the_source_tree(extracted: Path, prepared_root: Path) -> None:
    # /boot/efi's files are the ESP's (prepare_boot made them there): the root has the empty mount point
    def outside_esp(tree: set[tuple]) -> set[tuple]:
        return {entry for entry in tree if not entry[0].startswith("./boot/efi")}

    assert outside_esp(_tree(extracted)) == outside_esp(_tree(prepared_root))
    assert list((extracted / "boot/efi").iterdir()) == [] and any((prepared_root / "boot/efi").iterdir())
    assert (extracted / "etc/os-release").read_bytes() == (prepared_root / "etc/os-release").read_bytes()


def test_owners_modes_links_devices_xattrs_survive(extracted: Path) -> None:
    st = os.lstat(extracted / ODD_FILE)
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1234, 5678, 0o4750)
    a, b = (os.lstat(extracted / p) for p in HARDLINKS)
    assert a.st_ino == b.st_ino and a.st_nlink == 2
    dev = os.lstat(extracted / DEVICE)
    assert stat.S_ISCHR(dev.st_mode) and (os.major(dev.st_rdev), os.minor(dev.st_rdev)) == (1, 3)
    assert os.getxattr(extracted / XATTR_FILE, "user.kiln") == b"kept"
    assert os.getxattr(extracted / CAP_FILE, "security.capability") == CAP_NET_RAW_EP
    assert os.readlink(extracted / "bin") == "usr/bin"


def test_no_mount_is_left_behind(extracted: Path) -> None:
    mounts = Path("/proc/self/mountinfo").read_text()
    assert ".kiln-mnt-" not in mounts
    assert not list(extracted.parent.glob(".kiln-mnt-*"))


def test_fixed_vhd_is_read_at_plain_offsets_and_dynamic_is_refused(built_disk: BuiltDisk, tmp_path: Path) -> None:
    fixed = tmp_path / "fixed.vhd"
    run(["qemu-img", "convert", "-f", "raw", "-O", "vpc", "-o", "subformat=fixed,force_size",
         built_disk.layout.path, fixed])
    assert fixed.stat().st_size == built_disk.layout.size_bytes + 512
    part = find_root_partition(fixed, "vpc")
    assert part.part_guid == built_disk.layout.root.part_guid
    root = extract_root(fixed, "vpc", tmp_path / "root")
    assert (root / ODD_FILE).read_text() == "owned by 1234:5678\n"
    fixed.unlink()

    dynamic = tmp_path / "dynamic.vhd"
    run(["qemu-img", "convert", "-f", "raw", "-O", "vpc", "-o", "subformat=dynamic,force_size",
         built_disk.layout.path, dynamic])
    with pytest.raises(InvalidInput, match="dynamic VHD") as e:
        extract_root(dynamic, "vpc", tmp_path / "nope")
    assert "qemu-img convert" in e.value.hint
    assert not (tmp_path / "nope").exists()


def test_gpt_reader_agrees_with_sgdisk(built_disk: BuiltDisk) -> None:
    parts = read_gpt(built_disk.layout.path)
    assert [(p.number, p.type_guid, p.offset, p.size) for p in parts] == [
        (q.number, q.type_guid, q.offset, q.size) for q in built_disk.layout.partitions
    ]


def test_not_a_gpt_disk_is_a_clear_error(tmp_path: Path) -> None:
    blank = tmp_path / "blank.raw"
    blank.write_bytes(b"\0" * 1024 * 1024)
    with pytest.raises(InvalidInput, match="no GPT"):
        extract_root(blank, "raw", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    with pytest.raises(InvalidInput, match="qcow2") as e:
        read_gpt(blank, "qcow2")
    assert "convert it to raw" in e.value.hint
