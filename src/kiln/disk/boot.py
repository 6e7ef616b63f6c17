"""Make a root tree bootable in place: the filesystem ids its disk will carry, and the console.

The root tree names its own filesystems, so this runs before the disk is written: it chooses the
UUIDs and writes them where the booted system reads them (`/etc/fstab`, `/etc/kernel/cmdline`),
enables a getty on the serial console and installs kiln's inert boot-test hook. The `BootConfig`
it returns is passed explicitly to `kiln.disk.assemble.assemble_disk`, which makes the filesystems
carry those ids.
"""

from __future__ import annotations

import os
import secrets
import uuid
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from kiln.errors import InvalidInput

CONSOLE_ARGS = ("console=tty1", "console=ttyS0,115200n8")  # as Azure's images: the serial port last,
# so it is /dev/console and gets systemd's status lines and the emergency shell.

HOOK_UNIT = "kiln-guest-check.service"
HOOK_DEVICE_UNIT = r"dev-disk-by\x2did-virtio\x2dkiln\x2dcheck.device"


@dataclass(frozen=True)
class BootConfig:
    """What the root tree says about its own disk: filesystem ids and the kernel command line."""

    root_fs_uuid: str  # ext4 UUID, as in root=UUID=…
    esp_volume_id: str  # FAT volume id, XXXX-XXXX, as in fstab's UUID=…
    cmdline: str



def prepare_boot(root: Path, *, extra_cmdline: tuple[str, ...] = ()) -> BootConfig:
    """Make the root tree bootable in place; return the ids the disk's filesystems must carry.

    Writes /etc/fstab (root and /boot/efi by UUID; other lines are kept), /etc/kernel/cmdline,
    enables a getty on ttyS0 and installs the kiln guest hook (inert outside kiln's boot test).
    Fresh UUIDs every call: every disk kiln makes is distinct, as Azure's are.
    """
    root = Path(root)
    if not (root / "etc").is_dir():
        raise InvalidInput(f"{root} is not a root tree (no /etc)", hint="prepare_boot needs an unpacked OS tree")
    # A tree made under mkdtemp() is 0700; as the filesystem's / it would lock every user out.
    os.chown(root, 0, 0)
    os.chmod(root, 0o755)
    boot = BootConfig(
        root_fs_uuid=str(uuid.uuid4()),
        esp_volume_id=_fat_volume_id(),
        cmdline="",
    )
    cmdline = " ".join((f"root=UUID={boot.root_fs_uuid}", "ro", *CONSOLE_ARGS, *extra_cmdline))
    boot = BootConfig(boot.root_fs_uuid, boot.esp_volume_id, cmdline)
    _write_fstab(root, boot)
    (root / "etc/kernel").mkdir(parents=True, exist_ok=True)
    (root / "etc/kernel/cmdline").write_text(cmdline + "\n")
    (root / "boot/efi").mkdir(parents=True, exist_ok=True)
    _enable_serial_getty(root)
    install_guest_hook(root)
    return boot


def read_boot_config(root: Path) -> BootConfig | None:
    """The ids `prepare_boot` wrote into the tree, or None if it has not run on it."""
    fstab = Path(root) / "etc/fstab"
    cmdline_file = Path(root) / "etc/kernel/cmdline"
    if not fstab.is_file() or not cmdline_file.is_file():
        return None
    root_uuid = esp_id = None
    for line in fstab.read_text(errors="replace").splitlines():
        words = line.split("#", 1)[0].split()
        if len(words) >= 2 and words[0].startswith("UUID="):
            if words[1] == "/":
                root_uuid = words[0][5:]
            elif words[1] == "/boot/efi":
                esp_id = words[0][5:].replace("-", "").upper()
    cmdline = cmdline_file.read_text().strip()
    if not root_uuid or not esp_id or f"root=UUID={root_uuid}" not in cmdline:
        return None
    return BootConfig(root_uuid, esp_id, cmdline)


def install_guest_hook(root: Path) -> None:
    """Ship kiln's boot-test hook: a unit wanted only by the kiln check disk's device."""
    here = resources.files("kiln.validate")
    script = root / "usr/lib/kiln/kiln-guest-check"
    script.parent.mkdir(parents=True, exist_ok=True)
    script.write_bytes(here.joinpath("kiln-guest-check.sh").read_bytes())
    script.chmod(0o755)
    unit = root / "usr/lib/systemd/system" / HOOK_UNIT
    unit.parent.mkdir(parents=True, exist_ok=True)
    unit.write_bytes(here.joinpath(HOOK_UNIT).read_bytes())
    unit.chmod(0o644)
    # Wanted by the device unit, so the service exists in the boot transaction only when that disk does.
    wants = root / "etc/systemd/system" / f"{HOOK_DEVICE_UNIT}.wants"
    wants.mkdir(parents=True, exist_ok=True)
    link = wants / HOOK_UNIT
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(f"/usr/lib/systemd/system/{HOOK_UNIT}")


def _fat_volume_id() -> str:
    return secrets.token_hex(4).upper()


def fat_uuid(volume_id: str) -> str:
    return f"{volume_id[:4]}-{volume_id[4:]}"


def _write_fstab(root: Path, boot: BootConfig) -> None:
    fstab = root / "etc/fstab"
    kept = []
    if fstab.is_file():
        for line in fstab.read_text(errors="replace").splitlines():
            words = line.split("#", 1)[0].split()
            if len(words) >= 2 and words[1] in ("/", "/boot/efi"):
                continue
            if line.strip() == "# UNCONFIGURED FSTAB FOR BASE SYSTEM":
                continue
            kept.append(line)
    lines = [
        "# <file system> <mount point> <type> <options> <dump> <pass>  (root and ESP written by kiln)",
        f"UUID={boot.root_fs_uuid} / ext4 defaults,discard,errors=remount-ro 0 1",
        # nofail: a missing or unreadable ESP must not stop the boot; only kernel updates need it.
        f"UUID={fat_uuid(boot.esp_volume_id)} /boot/efi vfat umask=0077,nofail 0 2",
        *[line for line in kept if line.strip()],
    ]
    fstab.write_text("\n".join(lines) + "\n")


def _enable_serial_getty(root: Path) -> None:
    # systemd's getty generator adds it for the console= on the command line too; enabling it
    # explicitly keeps the login prompt on ttyS0 even if someone edits the command line.
    wants = root / "etc/systemd/system/getty.target.wants"
    wants.mkdir(parents=True, exist_ok=True)
    link = wants / "serial-getty@ttyS0.service"
    if not (link.is_symlink() or link.exists()):
        link.symlink_to("/lib/systemd/system/serial-getty@.service")


