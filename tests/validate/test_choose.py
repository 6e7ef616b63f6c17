"""Which boot test a disk gets, read from real disks (GPT + ext4 made from a tree, no mount):
ssh-login only where cloud-init (with NoCloud) and an OpenSSH server are installed and enabled."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from envcheck import unavailable
from kiln.run import run
from kiln.validate.choose import SERIAL, SSH_LOGIN, choose_check

from .rootdisk import disk_of, tree

UNIT = "/lib/systemd/system/"
# What Debian 12's cloud-init and openssh-server packages leave behind (the part that decides).
CLOUD_INIT_FILES = {
    "/usr/bin/cloud-init": "#!/usr/bin/python3\n",
    "/usr/sbin/sshd": "",
    "/etc/cloud/cloud.cfg": "users:\n  - default\ndisable_root: true\n",
}
CLOUD_INIT_LINKS = {
    "/etc/systemd/system/cloud-init.target.wants/cloud-init.service": UNIT + "cloud-init.service",
    "/etc/systemd/system/cloud-init.target.wants/cloud-final.service": UNIT + "cloud-final.service",
    "/etc/systemd/system/multi-user.target.wants/ssh.service": UNIT + "ssh.service",
}


@pytest.fixture(autouse=True)
def _tools() -> None:
    for tool in ("sgdisk", "mkfs.ext4", "debugfs"):
        if shutil.which(tool) is None:
            unavailable(f"{tool} is not installed (run scripts/setup)")


def choice_for(tmp_path: Path, files: dict[str, str], links: dict[str, str] | None = None,
               drop: tuple[str, ...] = ()) -> tuple[str, str]:
    files = {k: v for k, v in files.items() if k not in drop}
    links = {k: v for k, v in (links or {}).items() if k not in drop}
    disk = disk_of(tree(tmp_path / "root", files, links), tmp_path / "disk.raw")
    c = choose_check(disk, "raw")
    return c.kind, c.reason


def test_cloud_init_and_sshd_enabled_get_the_login_check(tmp_path: Path) -> None:
    assert choice_for(tmp_path, CLOUD_INIT_FILES, CLOUD_INIT_LINKS)[0] == SSH_LOGIN


def test_no_cloud_init_keeps_the_serial_check(tmp_path: Path) -> None:
    kind, reason = choice_for(tmp_path, CLOUD_INIT_FILES, CLOUD_INIT_LINKS, drop=("/usr/bin/cloud-init",))
    assert (kind, reason) == (SERIAL, "the image has no cloud-init (/usr/bin/cloud-init)")


def test_cloud_init_disabled_by_its_marker_file(tmp_path: Path) -> None:
    files = {**CLOUD_INIT_FILES, "/etc/cloud/cloud-init.disabled": ""}
    assert choice_for(tmp_path, files, CLOUD_INIT_LINKS) == (SERIAL, "cloud-init is disabled (/etc/cloud/cloud-init.disabled)")


def test_cloud_init_services_not_enabled(tmp_path: Path) -> None:
    kind, reason = choice_for(tmp_path, CLOUD_INIT_FILES, CLOUD_INIT_LINKS,
                              drop=("/etc/systemd/system/cloud-init.target.wants/cloud-init.service",))
    assert (kind, reason) == (SERIAL, "cloud-init's services are not enabled")


def test_cloud_init_24_unit_names_and_multi_user_wants(tmp_path: Path) -> None:
    links = {"/etc/systemd/system/multi-user.target.wants/cloud-init-network.service": UNIT + "cloud-init-network.service",
             "/etc/systemd/system/sockets.target.wants/ssh.socket": UNIT + "ssh.socket"}
    assert choice_for(tmp_path, CLOUD_INIT_FILES, links)[0] == SSH_LOGIN


@pytest.mark.parametrize(("config", "kind"), [
    ("datasource_list: [ Azure ]\n", SERIAL),
    ("datasource_list: [ NoCloud, ConfigDrive, Azure, None ]\n", SSH_LOGIN),
    ("# written by the template\ndatasource_list:\n  - ConfigDrive\n  - NoCloud\nother: 1\n", SSH_LOGIN),
    ("datasource_list:\n  - 'Azure'\n# - NoCloud\nreporting: {}\n", SERIAL),
])
def test_datasource_list_must_allow_nocloud(tmp_path: Path, config: str, kind: str) -> None:
    files = {**CLOUD_INIT_FILES, "/etc/cloud/cloud.cfg": "datasource_list: [ NoCloud, None ]\n",
             "/etc/cloud/cloud.cfg.d/90-template.cfg": config}  # the last file to set it wins
    got, reason = choice_for(tmp_path, files, CLOUD_INIT_LINKS)
    assert got == kind, reason
    if kind == SERIAL:
        assert reason == "cloud-init's datasource_list (Azure) leaves out NoCloud"


def test_no_sshd_or_sshd_disabled_keeps_the_serial_check(tmp_path: Path) -> None:
    assert choice_for(tmp_path / "a", CLOUD_INIT_FILES, CLOUD_INIT_LINKS, drop=("/usr/sbin/sshd",)) == (
        SERIAL, "the image has no OpenSSH server (/usr/sbin/sshd)")
    assert choice_for(tmp_path / "b", CLOUD_INIT_FILES, CLOUD_INIT_LINKS,
                      drop=("/etc/systemd/system/multi-user.target.wants/ssh.service",)) == (
        SERIAL, "the OpenSSH server is not enabled")


def test_a_disk_without_a_readable_root_keeps_the_serial_check(tmp_path: Path) -> None:
    disk = tmp_path / "blank.raw"
    with open(disk, "wb") as f:
        f.truncate(8 * 1024 * 1024)
    run(["sgdisk", "--clear", disk], capture=True)
    c = choose_check(disk, "raw")
    assert c.kind == SERIAL and "could not be read" in c.reason and "no ext4 root partition" in c.reason


def test_a_fixed_vhd_is_read_at_the_same_offsets(tmp_path: Path) -> None:
    raw = disk_of(tree(tmp_path / "root", CLOUD_INIT_FILES, CLOUD_INIT_LINKS), tmp_path / "disk.raw")
    vhd = tmp_path / "disk.vhd"
    run(["qemu-img", "convert", "-f", "raw", "-O", "vpc", "-o", "subformat=fixed,force_size", raw, vhd])
    assert choose_check(vhd, "vpc").kind == SSH_LOGIN
    os.unlink(raw)
