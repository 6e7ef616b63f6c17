"""prepare_boot on trees a template could leave behind: it never writes outside the tree."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from envcheck import unavailable
from kiln.disk.boot import prepare_boot
from kiln.errors import BuildFailed


@pytest.fixture(autouse=True)
def _as_root() -> None:
    if os.geteuid() != 0:
        unavailable("prepare_boot gives the tree's / to root (needs root)")


def test_a_boot_symlink_out_of_the_tree_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "host-boot"
    (outside / "efi").mkdir(parents=True)
    (outside / "efi" / "keep").write_text("the host's\n")
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "boot").symlink_to(outside)
    with pytest.raises(BuildFailed, match="/boot is not a folder"):
        prepare_boot(root)
    assert (outside / "efi" / "keep").read_text() == "the host's\n"


def test_an_esp_symlink_is_replaced_not_followed(tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "keep").write_text("x\n")
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "boot").mkdir()
    (root / "boot/efi").symlink_to(outside)
    prepare_boot(root)  # no kernel: the ESP stays empty but for loader.conf (assemble_disk refuses it)
    assert (root / "boot/efi").is_dir() and not (root / "boot/efi").is_symlink()
    assert (outside / "keep").read_text() == "x\n"
