"""A built image as a user meets it: it provisions from a seed, grows into its disk, keeps booting
after kernel updates, and a generalized copy carries nobody's identity (read from its disk)."""

from __future__ import annotations

import re

import pytest

from kiln.disk.assemble import DiskLayout
from kiln.run import run

from .conftest import ADMIN, APP_USER, GROWN_BY, SECOND_ADMIN, Boot, BuiltImage

pytestmark = pytest.mark.integration


def debugfs(layout: DiskLayout, request: str) -> str:
    done = run(["debugfs", "-R", request, f"{layout.path}?offset={layout.root.offset}"], capture=True)
    out = done.stdout + (done.stderr or "")
    assert "not found" not in out, f"debugfs {request}: {out}"  # a missing path must not read as "empty"
    return done.stdout


def names_in(layout: DiskLayout, folder: str) -> set[str]:
    listing = debugfs(layout, f"ls -p {folder}")
    return {f.split("/")[5] for f in listing.splitlines() if f.count("/") >= 6} - {".", ".."}


def assert_no_identity(image: BuiltImage, *, gone_users: tuple[str, ...]) -> None:
    layout = image.layout
    assert names_in(layout, "/var/lib/cloud") == set()  # no instance state, no seed: the next boot provisions
    assert "Size: 0" in debugfs(layout, "stat /etc/machine-id")
    assert not {n for n in names_in(layout, "/etc/ssh") if n.startswith("ssh_host_")}
    assert not {n for n in names_in(layout, "/var/log") if n.startswith("cloud-init")}
    passwd = debugfs(layout, "cat /etc/passwd")
    users = {line.split(":")[0] for line in passwd.splitlines() if ":" in line}
    assert APP_USER in users  # a customizer's user is the template's to keep
    for user in gone_users:
        assert user not in users
        assert user not in debugfs(layout, "cat /etc/shadow") and user not in debugfs(layout, "cat /etc/group")
        assert user not in names_in(layout, "/home")


def test_built_image_is_generalized_on_its_disk(built_image: BuiltImage) -> None:
    assert_no_identity(built_image, gone_users=())
    cfg = debugfs(built_image.layout, "cat /etc/cloud/cloud.cfg.d/90-kiln.cfg")
    assert "datasource_list: [NoCloud, ConfigDrive, Azure, None]" in cfg
    # the guest mounts its ESP: an empty /boot/efi on the root, the FAT's id in fstab
    assert names_in(built_image.layout, "/boot/efi") == set()
    assert f"UUID={built_image.layout.esp.fs_uuid} /boot/efi vfat" in debugfs(built_image.layout, "cat /etc/fstab")


def test_seed_on_a_cdrom_provisions_the_first_boot(first_boot: Boot) -> None:
    assert first_boot.login_seconds is not None, f"no SSH login as {ADMIN}:\n{first_boot.serial[-4000:]}"
    assert first_boot.ok("whoami").split() == [ADMIN, "sudo-ok"]
    status = first_boot.ok("status")
    assert "status: done" in status, status
    assert re.search(r"sr0\s+rom\s+cidata\s+sata", first_boot.ok("seed")), first_boot.out["seed"]


def test_root_grows_into_the_larger_disk(first_boot: Boot, built_image: BuiltImage) -> None:
    size = int(first_boot.ok("df").split()[-1])
    assert size > built_image.layout.root.size + GROWN_BY * 0.9, (size, built_image.layout.root.size)


def test_a_second_kernel_installed_in_the_vm_is_what_boots_next(first_boot: Boot, second_boot: Boot,
                                                                built_image: BuiltImage) -> None:
    first_boot.ok("install")
    entries = first_boot.ok("entries")
    assert f"debian-{built_image.layout.kernel_version}.conf" in entries
    new = re.search(r"debian-(\S+-cloud-amd64)\.conf", entries)
    assert new, entries
    assert first_boot.ok("reboot") is not None
    assert second_boot.login_seconds is not None, f"no login after the reboot:\n{second_boot.serial[-4000:]}"
    assert second_boot.ok("uname").strip() == new.group(1)
    # removing the first kernel takes its entry and files off the ESP
    second_boot.ok("remove")
    after = second_boot.ok("entries")
    assert built_image.layout.kernel_version not in after and new.group(1) in after


def test_seed_on_a_virtio_disk_provisions_a_new_instance(second_boot: Boot) -> None:
    assert second_boot.login_seconds is not None, second_boot.serial[-4000:]
    assert "status: done" in second_boot.ok("status")
    assert {ADMIN, SECOND_ADMIN} <= set(second_boot.ok("users").split())


def test_a_vm_saved_as_generalized_image_carries_no_identity(captured: BuiltImage, second_boot: Boot) -> None:
    second_boot.ok("poweroff")
    assert_no_identity(captured, gone_users=(ADMIN, SECOND_ADMIN))
    # the captured image boots the kernel the VM was left with, from its own new ESP
    assert captured.layout.kernel_version.endswith("-cloud-amd64")
