"""The Debian 12 platform image, bootstrapped for real through kiln, and its content-addressed cache."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from debian_root import DEBIAN12, CachedRoot, shared_test_config
from kiln.config import load_config
from kiln.errors import InvalidInput
from kiln.sources import resolve_source
from kiln.sources.bootstrap import roots_cache
from kiln.sources.mirror import fetch_release
from kiln.sources.platform import recipe_for
from kiln.template.model import PlatformImageSource
from monitors import Lines

pytestmark = pytest.mark.integration


def test_platform_root_has_the_agreed_base(debian12: CachedRoot) -> None:
    root = debian12.tree.path
    assert debian12.tree.os_release["ID"] == "debian" and debian12.tree.os_release["VERSION_ID"] == "12"
    status = (root / "var/lib/dpkg/status").read_text()
    installed = {block.split("\n", 1)[0].removeprefix("Package: ") for block in status.split("\n\n")
                 if "Status: install ok installed" in block}
    recipe = recipe_for(DEBIAN12, debian12.config)
    assert set(recipe.packages) <= installed
    assert list((root / "boot").glob("vmlinuz-*-amd64")) and list((root / "boot").glob("initrd.img-*"))
    assert (root / "etc/hostname").read_text() == "debian\n"
    assert "DHCP=yes" in (root / "etc/systemd/network/80-kiln-dhcp.network").read_text()
    assert (root / "etc/systemd/system/multi-user.target.wants/systemd-networkd.service").is_symlink()
    assert os.readlink(root / "etc/resolv.conf") == "../run/systemd/resolve/stub-resolv.conf"
    root_pw = next(line for line in (root / "etc/shadow").read_text().splitlines() if line.startswith("root:"))
    assert root_pw.split(":")[1] == "*"  # no root password
    assert "force-unsafe-io" not in (root / "etc/dpkg/dpkg.cfg.d/99mmdebstrap").read_text()
    # first boot: cloud-init with the datasources of here and Azure, growpart, the guest's own systemd-boot
    cfg = (root / "etc/cloud/cloud.cfg.d/90-kiln.cfg").read_text()
    assert "datasource_list: [NoCloud, ConfigDrive, Azure, None]" in cfg and "config: disabled" in cfg
    assert (root / "usr/bin/growpart").is_file() and (root / "usr/bin/bootctl").is_file()
    assert (root / "etc/kernel/postinst.d/zz-systemd-boot").is_file()
    modules = next((root / "lib/modules").iterdir())
    for module in ("ahci", "sr_mod", "cdrom", "isofs"):  # a seed on a q35 CD-ROM (AHCI)
        assert list(modules.rglob(f"{module}.ko*")), module
    assert "LANG=C.UTF-8" in (root / "etc/default/locale").read_text()


def test_latest_resolves_to_the_mirrors_exact_version(debian12: CachedRoot) -> None:
    release = fetch_release(debian12.config.debian_mirror or "", "bookworm")
    assert debian12.tree.exact_version == release.exact_version
    assert debian12.tree.exact_version.startswith(release.version + ".")


def test_second_build_does_not_bootstrap(debian12: CachedRoot, tmp_path: Path) -> None:
    before = debian12.archive.stat()
    mon = Lines()
    tree = resolve_source(DEBIAN12, config=debian12.config, work=tmp_path, monitor=mon)
    assert tree.cache_key == debian12.tree.cache_key and tree.exact_version == debian12.tree.exact_version
    assert any("cached root" in line for line in mon.lines)
    assert not any(line.startswith("I: ") for line in mon.lines)  # mmdebstrap's own output: it never ran
    after = debian12.archive.stat()
    assert (after.st_mtime_ns, after.st_ino) == (before.st_mtime_ns, before.st_ino)
    assert (tree.path / "usr/sbin/sshd").is_file()


def test_pinned_version_not_on_the_mirror(debian12: CachedRoot, tmp_path: Path) -> None:
    pinned = PlatformImageSource(publisher="Debian", offer="debian-12", sku="12", version="12.0.20230610")
    with pytest.raises(InvalidInput) as e:
        resolve_source(pinned, config=debian12.config, work=tmp_path, monitor=Lines())
    assert e.value.path == ".properties.source.version" and debian12.tree.exact_version in e.value.hint
    assert not (tmp_path / "root").exists()


_CHILD = """
import sys
from pathlib import Path
from kiln.config import load_config
from kiln.events import LogFile
from kiln.sources.bootstrap import platform_root
from kiln.template.model import PlatformImageSource
home, dest = Path(sys.argv[1]), Path(sys.argv[2])
platform_root(PlatformImageSource(publisher="Debian", offer="debian-12", sku="12"), config=load_config(home),
              dest=dest, monitor=LogFile(home / "bootstrap.log"))
"""


def test_killed_bootstrap_leaves_no_cache_entry_process_or_mount(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "config.toml").write_text(f'[mirrors]\ndebian = "{shared_test_config().debian_mirror}"\n')
    dest = tmp_path / "work" / "root"
    child = subprocess.Popen([sys.executable, "-c", _CHILD, str(home), str(dest)])
    try:
        log = home / "bootstrap.log"
        end = time.monotonic() + 300
        while time.monotonic() < end and not (log.exists() and "extracting archives" in log.read_text()):
            time.sleep(0.2)
        assert "extracting archives" in log.read_text(), "mmdebstrap never got going"
        child.send_signal(signal.SIGKILL)
        child.wait()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    cache = roots_cache(load_config(home))
    # nothing that looks like a valid entry (complete entries are directories named by their key)
    assert not [p for p in cache.iterdir() if p.is_dir() and not p.name.startswith(".")]

    def leftovers() -> list[str]:
        found = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                if str(dest) in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"):
                    found.append(pid)
            except OSError:
                pass
        return found

    end = time.monotonic() + 60
    while leftovers() and time.monotonic() < end:
        time.sleep(0.2)
    assert leftovers() == []
    assert not [line for line in Path("/proc/self/mountinfo").read_text().splitlines() if str(tmp_path) in line]
