"""One built, generalized Debian 12 image and the VM that boots it, shared by the first-boot tests.

A TCG boot costs minutes with cloud-init, so the session boots the image twice, as a user would:

1. `first_boot`: the image on a disk 2 GiB larger than it was built, the NoCloud seed on a q35
   CD-ROM (AHCI). From outside, over SSH as the seed's admin user: cloud-init's status, the
   root's size, what the boot spent its time on; then, in the VM, `apt-get install` a second
   kernel flavour from the host's mirror, and reboot (QEMU runs with -no-reboot, so the reboot
   ends it).
2. `second_boot`: the same disk again (a new QEMU on it, as a reboot would), with a second seed
   (a new instance id and user) on a virtio disk: which kernel booted, whether cloud-init
   provisioned the new user, and removing the first kernel.

Then `captured`: the VM's disk taken back (disk/extract.py), generalized and assembled again, as
`kiln vm capture --generalized` does.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from debian_root import CachedRoot, fresh_copy
from envcheck import unavailable
from kiln.access.keys import KeyPair, make_key
from kiln.access.seed import Seed, write_seed
from kiln.access.ssh import SshTarget, free_port, ssh_run, wait_for_login
from kiln.disk.assemble import DiskLayout, assemble_disk
from kiln.disk.boot import prepare_boot
from kiln.events import NullMonitor
from kiln.generalize.deprovision import generalize
from kiln.run import run
from kiln.sandbox.isolated import IsolatedRoot
from kiln.sandbox.vm import DataDisk, VirtualMachine

GiB = 1024**3
GROWN_BY = 2 * GiB
ADMIN = "kiln-admin"
SECOND_ADMIN = "second-admin"
APP_USER = "appuser"  # what a template's customizer adds: the image keeps it
SECOND_FLAVOUR = "linux-image-cloud-amd64"  # the image has linux-image-amd64 (generic)
LOGIN_TIMEOUT_S = 1500  # TCG with cloud-init on a host shared with other test runs
APT_TIMEOUT_S = 2400


@dataclass(frozen=True)
class BuiltImage:
    disk: Path
    layout: DiskLayout
    tree: Path  # the generalized, boot-prepared root it was made from


@dataclass
class Boot:
    """What was seen in one boot, from outside: command -> (exit code, output)."""

    login_seconds: float | None
    serial: str = ""
    out: dict[str, tuple[int, str]] = field(default_factory=dict)

    def ok(self, name: str) -> str:
        code, text = self.out[name]
        assert code == 0, f"{name} exited {code}:\n{text[-3000:]}\n--- serial tail ---\n{self.serial[-3000:]}"
        return text


def _missing() -> str:
    if os.geteuid() != 0:
        return "needs root (mmdebstrap, namespaces, mkfs with owners)"
    for tool in ("qemu-system-x86_64", "xorriso", "ssh", "mcopy", "debugfs", "bwrap"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (run scripts/setup)"
    return ""


def in_root(root: Path, script: str) -> None:
    with IsolatedRoot(root) as sandbox:
        done = sandbox.run(["sh", "-ec", script])
    assert done.ok, done.tail


@pytest.fixture(scope="session")
def built_image(debian12: CachedRoot, tmp_path_factory: pytest.TempPathFactory) -> BuiltImage:
    """The Debian 12 platform image as a build makes it: a customizer adds a user, the build
    leaves traces a VM must not inherit, kiln generalizes, prepares the boot and assembles."""
    if why := _missing():
        unavailable(why)
    work = tmp_path_factory.mktemp("built")
    root = fresh_copy(debian12, work / "root")
    in_root(root, f"""
        useradd -m -s /bin/bash {APP_USER}
        echo 0123456789abcdef0123456789abcdef > /etc/machine-id
        ssh-keygen -A >/dev/null
        mkdir -p /var/lib/cloud/instances/build-1 /var/lib/cloud/seed/nocloud
        echo build > /var/lib/cloud/instances/build-1/user-data.txt
        ln -sfn /var/lib/cloud/instances/build-1 /var/lib/cloud/instance
        echo build-log > /var/log/cloud-init.log
    """)
    generalize(root, NullMonitor())
    boot = prepare_boot(root)
    disk = work / "disk.raw"
    layout = assemble_disk(root, disk, boot, monitor=NullMonitor())
    return BuiltImage(disk, layout, root)


@pytest.fixture(scope="session")
def vm_work(built_image: BuiltImage, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with the VM's own disk: a sparse copy of the image, 2 GiB larger (a bigger OS disk)."""
    work = tmp_path_factory.mktemp("vm")
    run(["cp", "--sparse=always", built_image.disk, work / "os.raw"])
    os.truncate(work / "os.raw", built_image.layout.size_bytes + GROWN_BY)
    return work


def _seed(work: Path, name: str, instance: str, user: str) -> tuple[Path, KeyPair]:
    key = make_key(work / f"{name}-key")
    iso = write_seed(Seed(instance, "kiln-firstboot", user, (key.public,)), work / f"{name}.iso")
    return iso, key


def _boot(vm: VirtualMachine, target: SshTarget, commands: dict[str, tuple[str, float]], boot: Boot) -> None:
    for name, (command, timeout) in commands.items():
        result = ssh_run(target, command, timeout=timeout)
        boot.out[name] = (result.exit_code, result.output)
        print(f"\n[firstboot] $ {command}\n{result.output.rstrip()}\n[exit {result.exit_code}]")


def _shutdown(vm: VirtualMachine, target: SshTarget, how: str) -> tuple[int, str]:
    """(0, ...) once QEMU has exited after the guest's `systemctl reboot|poweroff`."""
    ssh_run(target, f"sudo systemctl {how} --no-block", timeout=60)
    code = vm.wait(300)
    return (0 if code is not None else 1), f"QEMU exit code {code}"


def _serial(vm: VirtualMachine) -> str:
    return vm.serial_log.read_text(errors="replace") if vm.serial_log and vm.serial_log.exists() else ""


def _session(vm_work: Path, n: int, user: str, commands: dict[str, tuple[str, float]], end: str,
             on_cdrom: bool) -> Boot:
    """Boot the VM's disk with seed `n` (a new instance id and user), log in, run `commands` over SSH,
    then `systemctl {end}` the guest and wait for QEMU to exit."""
    iso, key = _seed(vm_work, f"seed{n}", f"kiln-firstboot-{n}", user)
    target = SshTarget(user, free_port(), key.private)
    started = time.monotonic()
    with VirtualMachine(vm_work / "os.raw", "raw", overlay=False, ssh_port=target.port,
                        serial_log=vm_work / f"serial{n}.log", work_dir=vm_work / "qemu",
                        cdrom=iso if on_cdrom else None,
                        data_disks=[] if on_cdrom else [DataDisk("kiln-seed", iso.read_bytes())]) as vm:
        login = wait_for_login(target, timeout_s=LOGIN_TIMEOUT_S, alive=lambda: vm.poll() is None)
        boot = Boot(login)
        print(f"\n[measure] boot {n} (TCG, seed on {'a q35 CD-ROM' if on_cdrom else 'virtio'}): SSH login after {login} s")
        if login is not None:
            _boot(vm, target, commands, boot)
            boot.out[end] = _shutdown(vm, target, end)
        boot.serial = _serial(vm)
    print(f"[measure] boot {n} session: {time.monotonic() - started:.0f} s")
    return boot


@pytest.fixture(scope="session")
def first_boot(vm_work: Path) -> Boot:
    return _session(vm_work, 1, ADMIN, {
        "status": ("cloud-init status --wait --long", 900),
        "whoami": ("id -un; sudo -n true && echo sudo-ok", 60),
        "df": ("df -B1 --output=size / | tail -1", 60),
        "seed": ("lsblk -no NAME,TYPE,LABEL,TRAN; findmnt -n -o FSTYPE /boot/efi", 60),
        "analyze": ("systemd-analyze; systemd-analyze blame | head -30; systemd-analyze critical-chain", 120),
        "cloud-analyze": ("sudo cloud-init analyze blame 2>/dev/null | head -40", 300),
        "errors": ("sudo grep -E 'WARNING|ERROR|Traceback' /var/log/cloud-init.log | head -40; "
                   "systemctl --failed --no-legend", 120),
        # MODULES=dep: the new kernel's initramfs holds only what this VM uses, which update-initramfs
        # writes in a fraction of the time of the image's `most` under TCG (the boot it must reach
        # is this VM's, on the same virtual hardware)
        "install": ("echo MODULES=dep | sudo tee /etc/initramfs-tools/conf.d/kiln-test.conf >/dev/null && "
                    f"sudo apt-get -q update && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -q "
                    f"--no-install-recommends {SECOND_FLAVOUR}", APT_TIMEOUT_S),
        "entries": ("sudo ls /boot/efi/loader/entries; sudo bootctl list --no-pager", 120),
    }, end="reboot", on_cdrom=True)


@pytest.fixture(scope="session")
def second_boot(first_boot: Boot, vm_work: Path) -> Boot:
    if first_boot.login_seconds is None or "install" not in first_boot.out:
        pytest.fail("the first boot did not get as far as installing a kernel")
    return _session(vm_work, 2, SECOND_ADMIN, {
        "status": ("cloud-init status --wait --long", 900),
        "uname": ("uname -r", 60),
        "users": ("getent passwd | cut -d: -f1", 60),
        # the first kernel (generic flavour) and its metapackage; the running one stays
        "remove": ("old=$(dpkg-query -W -f '${Package}\\n' 'linux-image-[0-9]*-amd64' | grep -v -- -cloud-); "
                   "sudo DEBIAN_FRONTEND=noninteractive apt-get purge -y -q linux-image-amd64 $old", APT_TIMEOUT_S),
        "entries": ("sudo ls /boot/efi/loader/entries /boot/efi/debian", 120),
    }, end="poweroff", on_cdrom=False)


@pytest.fixture(scope="session")
def captured(second_boot: Boot, vm_work: Path) -> BuiltImage:
    """The VM's disk saved as a generalized image: extracted, generalized, assembled again."""
    from kiln.disk.extract import extract_root

    assert second_boot.login_seconds is not None, "the second boot never logged in"
    root = extract_root(vm_work / "os.raw", "raw", vm_work / "captured-root")
    generalize(root, NullMonitor())
    boot = prepare_boot(root)
    disk = vm_work / "captured.raw"
    return BuiltImage(disk, assemble_disk(root, disk, boot, monitor=NullMonitor()), root)
