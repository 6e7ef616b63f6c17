"""Small real disks for the boot-test choice: a GPT with one x86-64 root partition holding an
ext4 made from a directory tree (mkfs.ext4 -d, no mount), as kiln's own disks lay it out."""

from __future__ import annotations

import os
from pathlib import Path

from kiln.disk.assemble import ROOT_X86_64_TYPE
from kiln.run import run

ROOT_OFFSET_MIB = 1
ROOT_SIZE_MIB = 16


def tree(root: Path, files: dict[str, str], links: dict[str, str] | None = None) -> Path:
    """`root` holding `files` (path: content) and `links` (path: symlink target)."""
    for path, content in files.items():
        p = root / path.lstrip("/")
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(content)
    for path, target in (links or {}).items():
        p = root / path.lstrip("/")
        p.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(target, p)
    return root


def disk_of(root: Path, out: Path) -> Path:
    """A raw GPT disk whose root partition is an ext4 of `root`."""
    size_mib = ROOT_OFFSET_MIB + ROOT_SIZE_MIB + 1
    with open(out, "wb") as f:
        f.truncate(size_mib * 1024 * 1024)
    first = ROOT_OFFSET_MIB * 2048
    run(["sgdisk", "--clear", f"--new=1:{first}:+{ROOT_SIZE_MIB}M", f"--typecode=1:{ROOT_X86_64_TYPE}", out],
        capture=True)
    run(["mkfs.ext4", "-q", "-F", "-d", root, "-E", f"offset={first * 512}", out, f"{ROOT_SIZE_MIB * 1024}k"],
        capture=True)
    return out
