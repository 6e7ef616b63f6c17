"""Fixtures for the disk tests: one real Debian 12 root, bootstrapped once and shared.

The root is made with mmdebstrap straight from the host's configured Debian mirror (the same
package set the sources part ships) and cached as a tar.zst under /var/tmp/kiln-test-cache, keyed
by mirror, suite and package set, so repeated runs while developing unpack it in seconds; CI
starts clean and bootstraps once per session. Built disks are session-scoped too: every test that
needs a disk or a booted guest shares them, because a TCG boot costs ~40 s.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest

from kiln.config import load_config
from kiln.run import run

CACHE_DIR = Path(os.environ.get("KILN_TEST_CACHE", "/var/tmp/kiln-test-cache"))
SUITE = "bookworm"
PACKAGES = (
    "linux-image-cloud-amd64", "systemd", "systemd-sysv", "udev", "dbus", "sudo", "openssh-server",
    "ca-certificates", "curl", "initramfs-tools", "iproute2",
)


def _missing_tools() -> str:
    if os.geteuid() != 0:
        return "needs root (mmdebstrap, mkfs with owners, loop mounts)"
    for tool in ("mmdebstrap", "mkfs.ext4", "sgdisk", "mcopy", "qemu-system-x86_64", "zstd"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (run scripts/setup)"
    return ""


def cached_root_tarball() -> Path:
    """The Debian 12 root as a tar.zst, bootstrapping it first if no cached copy exists."""
    mirror = load_config().debian_mirror
    if not mirror:
        pytest.skip("the host has no Debian mirror in its apt sources")
    key = hashlib.sha256("\n".join([mirror, SUITE, "minbase", *PACKAGES]).encode()).hexdigest()[:16]
    tarball = CACHE_DIR / f"debian12-{key}.tar.zst"
    if tarball.is_file():
        return tarball
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    staging = CACHE_DIR / f".staging-{key}-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        run(["mmdebstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}", "--mode=root",
             SUITE, str(staging), mirror], capture=True)
        partial = tarball.with_name(tarball.name + ".partial")
        run(["tar", "--zstd", "--xattrs", "--xattrs-include=*", "--acls", "--numeric-owner",
             "-C", str(staging), "-cpf", str(partial), "."])
        partial.rename(tarball)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return tarball


def unpack_root(tarball: Path, dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    run(["tar", "--zstd", "--xattrs", "--xattrs-include=*", "--acls", "--numeric-owner",
         "-C", str(dest), "-xpf", str(tarball)])
    return dest


@pytest.fixture(scope="session")
def debian12_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh, unpacked Debian 12 root tree (shared: tests must not modify it)."""
    if why := _missing_tools():
        pytest.skip(why)
    return unpack_root(cached_root_tarball(), tmp_path_factory.mktemp("debian12") / "root")
