"""Fixtures for the disk tests: one real Debian 12 root, bootstrapped once and shared.

The root is the Debian 12 platform image as kiln's own sources part bootstraps and caches it
(tests/debian_root.py, under KILN_TEST_CACHE, default /var/tmp/kiln-test-cache), so repeated runs
while developing unpack it in seconds; CI starts clean and bootstraps once per session for every
test folder that needs it. Built disks are session-scoped too: every test that
needs a disk or a booted guest shares them, because a TCG boot costs ~40 s.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from debian_root import bootstrap_debian12
from envcheck import unavailable
from kiln.disk.assemble import DiskLayout
from kiln.events import NullMonitor
from kiln.run import run
from kiln.sources.bootstrap import unpack_root
from kiln.validate.boottest import BootReport


def _missing_tools() -> str:
    if os.geteuid() != 0:
        return "needs root (mmdebstrap, mkfs with owners, loop mounts)"
    for tool in ("mmdebstrap", "mkfs.ext4", "sgdisk", "mcopy", "qemu-system-x86_64", "zstd"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (run scripts/setup)"
    return ""


def cached_root_tarball(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The Debian 12 platform root as kiln's own sources bootstrap and cache it (shared with the
    sources, sandbox and customizers tests, so a session bootstraps it once)."""
    return bootstrap_debian12(tmp_path_factory.mktemp("debian12-bootstrap")).archive


@pytest.fixture(scope="session")
def debian12_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh, unpacked Debian 12 root tree (shared: tests must not modify it)."""
    if why := _missing_tools():
        unavailable(why)
    dest = tmp_path_factory.mktemp("debian12") / "root"
    unpack_root(cached_root_tarball(tmp_path_factory), dest)
    return dest


# Files the tests add to the root so extraction has something to prove: an odd owner, a setuid
# mode, a hardlink pair, a device node, a file capability and a user xattr.
ODD_FILE = "srv/kiln-test/owned"
HARDLINKS = ("srv/kiln-test/a", "srv/kiln-test/b")
DEVICE = "srv/kiln-test/null"
XATTR_FILE = "srv/kiln-test/xattr"
CAP_FILE = "srv/kiln-test/cap"
# security.capability v2 for cap_net_raw (bit 13) permitted, effective: what `setcap cap_net_raw+ep` writes.
CAP_NET_RAW_EP = bytes.fromhex("01000002" "00200000" "00000000" "00000000" "00000000")


def _add_test_files(root: Path) -> None:
    d = root / "srv/kiln-test"
    d.mkdir(parents=True)
    (root / ODD_FILE).write_text("owned by 1234:5678\n")
    os.chown(root / ODD_FILE, 1234, 5678)
    os.chmod(root / ODD_FILE, 0o4750)
    (root / HARDLINKS[0]).write_text("one inode, two names\n")
    os.link(root / HARDLINKS[0], root / HARDLINKS[1])
    os.mknod(root / DEVICE, 0o666 | 0o020000, os.makedev(1, 3))
    (root / XATTR_FILE).write_text("x\n")
    os.setxattr(root / XATTR_FILE, "user.kiln", b"kept")
    (root / CAP_FILE).write_text("#!/bin/sh\n")
    os.setxattr(root / CAP_FILE, "security.capability", CAP_NET_RAW_EP)


@pytest.fixture(scope="session")
def prepared_root(debian12_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private copy of the Debian 12 root with the test files, made bootable by prepare_boot."""
    from kiln.disk.boot import prepare_boot

    root = tmp_path_factory.mktemp("prepared") / "root"
    run(["cp", "-a", str(debian12_root), str(root)])
    _add_test_files(root)
    prepare_boot(root)
    return root


@dataclass(frozen=True)
class BuiltDisk:
    layout: DiskLayout
    seconds: float
    sha256: str


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(4 * 1024 * 1024):
            h.update(chunk)
    return h.hexdigest()


@pytest.fixture(scope="session")
def built_disk(prepared_root: Path, tmp_path_factory: pytest.TempPathFactory) -> BuiltDisk:
    """The root assembled into a raw GPT/UEFI disk (content-sized), timed."""
    from kiln.disk.assemble import assemble_disk
    from kiln.disk.boot import read_boot_config

    out = tmp_path_factory.mktemp("disk") / "disk.raw"
    t0 = time.monotonic()
    layout = assemble_disk(prepared_root, out, read_boot_config(prepared_root), size_bytes=None, monitor=NullMonitor())
    seconds = time.monotonic() - t0
    print(f"\n[measure] assemble_disk: {seconds:.1f} s for a {layout.size_bytes / 2**30:.2f} GiB disk")
    return BuiltDisk(layout, seconds, sha256_of(out))


@dataclass(frozen=True)
class Booted:
    report: BootReport
    serial_log: Path
    disk_sha256_after: str


@pytest.fixture(scope="session")
def booted(built_disk: BuiltDisk, tmp_path_factory: pytest.TempPathFactory) -> Booted:
    """One boot test of the built disk with two validations: one passes, one fails with exit 7."""
    from kiln.validate.boottest import GuestScript, boot_test

    logs = tmp_path_factory.mktemp("boot")
    serial = logs / "serial.log"
    scripts = [
        GuestScript("passes", b"#!/bin/sh\necho guest-says-hello\nfindmnt -n -o SOURCE,FSTYPE /\ncat /proc/cmdline\n"),
        GuestScript("fails", b"echo about to fail >&2\nexit 7\n"),
    ]
    report = boot_test(built_disk.layout.path, "raw", scripts=scripts, timeout_s=300, monitor=NullMonitor(),
                       serial_log=serial, work_dir=logs / "work")
    print(f"\n[measure] boot to readiness marker: {report.ready_seconds} s; whole boot test {report.seconds:.1f} s "
          f"(accel {report.accel})")
    return Booted(report, serial, sha256_of(built_disk.layout.path))
