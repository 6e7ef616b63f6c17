"""Make a root tree bootable in place: the filesystem ids its disk will carry, the console, and
the contents of its EFI system partition.

The root tree names its own filesystems, so this runs before the disk is written: it chooses the
UUIDs and writes them where the booted system reads them (`/etc/fstab`, `/etc/kernel/cmdline`),
enables a getty on the serial console and installs kiln's inert boot-test hook. The `BootConfig`
it returns is passed explicitly to `kiln.disk.assemble.assemble_disk`, which makes the filesystems
carry those ids.

The ESP is the guest's own: its content is made in the tree's /boot/efi (where the guest mounts
its ESP, by fstab) and `assemble_disk` writes that folder into the FAT partition. When the image
carries systemd-boot (Debian 12's `systemd-boot` package: bootctl, and kernel/postinst.d and
postrm.d hooks that call kernel-install), the guest's own `bootctl install` and `kernel-install
add` fill it, inside the isolated root, for every kernel in /boot: the boot entries are exactly
what the guest will write itself when a kernel is installed or removed in a VM (Boot Loader
Specification type 1 entries, `layout=bls` in /etc/kernel/install.conf, entry token = the
os-release ID in /etc/kernel/entry-token, so entries do not depend on the machine-id that
generalizing empties). systemd-boot, with no `default` configured, boots the entry with the
highest version: the newest kernel. An image without systemd-boot (an older release, a user's
imported disk) gets the host's systemd-boot and one entry for its newest kernel, as before; a
kernel update inside such a VM does not change what boots.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import uuid
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from kiln.errors import BuildFailed, InvalidInput
from kiln.events import Monitor, NullMonitor

CONSOLE_ARGS = ("console=tty1", "console=ttyS0,115200n8")  # as Azure's images: the serial port last,
# so it is /dev/console and gets systemd's status lines and the emergency shell.

ESP_MOUNT = "boot/efi"  # where the guest mounts its ESP; the tree's folder there becomes the ESP
SYSTEMD_BOOT_EFI = Path("/usr/lib/systemd/boot/efi/systemd-bootx64.efi")  # the host's, for images without one
# What the guest needs to keep its own boot entries (Debian 12's systemd-boot package and systemd).
GUEST_BOOT_TOOLS = ("usr/bin/bootctl", "usr/bin/kernel-install", "usr/lib/systemd/boot/efi/systemd-bootx64.efi",
                    "etc/kernel/postinst.d/zz-systemd-boot")
# timeout 0: straight to the default entry (a key press still shows the menu); no `default`:
# systemd-boot boots the entry that sorts first, the highest kernel version.
LOADER_CONF = "timeout 0\neditor no\n"
ESP_FILL_TIMEOUT_S = 600
_STAGED_ESP = ".kiln-esp"  # in the tree's /boot while the guest's tools fill the ESP
# Run in the image root with a tmpfs at the ESP's mount point (a mount of its own, as the ESP is
# in a VM: kernel-install writes entry paths relative to it): what systemd-boot's postinst does
# on a machine with an ESP, then its kernel hook (kernel-install add) for each kernel, then a
# copy into the tree. SYSTEMD_RELAX_ESP_CHECKS: that tmpfs is not a vfat ESP. The random seed is
# per machine: none goes into an image (systemd makes one in each VM).
# $1: entry token, $2: the ESP's mount point, $3: where in the tree the result goes.
_FILL_ESP = r"""set -eu
export SYSTEMD_RELAX_ESP_CHECKS=1
bootctl install --esp-path="$2" --no-variables --entry-token="literal:$1" --make-entry-directory=yes
found=
for k in /boot/vmlinuz-*; do
  [ -f "$k" ] || continue
  v=${k#/boot/vmlinuz-}
  [ -f "/boot/initrd.img-$v" ] || continue
  kernel-install add "$v" "$k"
  found=1
done
rm -f "$2/loader/random-seed"
[ -n "$found" ] || echo "kiln: no kernel with an initrd in /boot" >&2
mkdir -m 0700 "$3"
cp -a "$2/." "$3/"
"""

HOOK_UNIT = "kiln-guest-check.service"
HOOK_DEVICE_UNIT = r"dev-disk-by\x2did-virtio\x2dkiln\x2dcheck.device"


@dataclass(frozen=True)
class BootConfig:
    """What the root tree says about its own disk: filesystem ids and the kernel command line."""

    root_fs_uuid: str  # ext4 UUID, as in root=UUID=…
    esp_volume_id: str  # FAT volume id, XXXX-XXXX, as in fstab's UUID=…
    cmdline: str



def prepare_boot(root: Path, *, extra_cmdline: tuple[str, ...] = (), monitor: Monitor | None = None) -> BootConfig:
    """Make the root tree bootable in place; return the ids the disk's filesystems must carry.

    Writes /etc/fstab (root and /boot/efi by UUID; other lines are kept), /etc/kernel/cmdline,
    enables a getty on ttyS0, installs the kiln guest hook (inert outside kiln's boot test) and
    fills /boot/efi with the ESP's content (see the module docstring).
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
    _enable_serial_getty(root)
    install_guest_hook(root)
    fill_esp(root, boot, monitor or NullMonitor())
    return boot


def guest_keeps_boot_entries(root: Path) -> bool:
    """Does the image carry systemd-boot and the kernel hooks that keep its ESP's entries current?"""
    return all((Path(root) / p).exists() for p in GUEST_BOOT_TOOLS)


def entry_token(root: Path) -> str:
    """The os-release ID (`bootctl --entry-token=os-id`), or "linux"."""
    from kiln.sources.roottree import read_os_release

    token = read_os_release(Path(root)).get("ID", "")
    return token if re.fullmatch(r"[a-z0-9._-]+", token) else "linux"


def esp_dir(root: Path) -> Path:
    """The tree's /boot/efi on the host. The tree is a template's work: a /boot that is a symlink
    could point anywhere on the host, so it is refused (a /boot/efi symlink is replaced)."""
    boot = Path(root) / "boot"
    if boot.is_symlink() or (boot.exists() and not boot.is_dir()):
        raise BuildFailed(f"the image's /boot is not a folder ({boot})",
                          hint="a customizer replaced /boot; kernels and the ESP's mount point live there")
    return Path(root) / ESP_MOUNT


def fill_esp(root: Path, boot: BootConfig, monitor: Monitor) -> None:
    """Make /boot/efi in the tree what the ESP must hold: the guest's own systemd-boot and boot
    entries when it has them, else the host's systemd-boot and one kiln entry (newest kernel)."""
    esp = esp_dir(root)
    _remove_tree(esp)  # an ESP is made from the tree's kernels every time, never carried over
    esp.mkdir(parents=True, mode=0o700)
    if guest_keeps_boot_entries(root):
        _guest_entries(Path(root), esp, monitor)
    else:
        _host_entry(Path(root), esp, boot)
    (esp / "loader").mkdir(exist_ok=True)
    (esp / "loader/loader.conf").write_text(LOADER_CONF)


def _guest_entries(root: Path, esp: Path, monitor: Monitor) -> None:
    from kiln.sandbox.isolated import IsolatedRoot

    token = entry_token(root)
    kernel_dir = root / "etc/kernel"
    (kernel_dir / "entry-token").write_text(token + "\n")
    (kernel_dir / "install.conf").write_text(
        "# kiln: Boot Loader Specification entries on the ESP (/boot/efi), written by kernel-install\n"
        "layout=bls\n")
    host_staged = root / "boot" / _STAGED_ESP
    _remove_tree(host_staged)
    try:
        with IsolatedRoot(root, monitor) as sandbox:
            done = sandbox.run(["/bin/sh", "-c", _FILL_ESP, "kiln-fill-esp", token, f"/{ESP_MOUNT}",
                                f"/boot/{_STAGED_ESP}"], tmpfs=[f"/{ESP_MOUNT}"], timeout=ESP_FILL_TIMEOUT_S,
                               name="boot")
        if not done.ok:
            tail = "\n".join(done.tail.strip().splitlines()[-15:])
            raise BuildFailed(f"the image's bootctl/kernel-install could not fill its ESP (exit code {done.returncode})"
                              + (f"\n{tail}" if tail else ""),
                              hint="a customizer may have broken systemd-boot or /etc/kernel; the run log has the output")
        esp.rmdir()
        host_staged.rename(esp)
    finally:
        _remove_tree(host_staged)


def _remove_tree(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)


def _host_entry(root: Path, esp: Path, boot: BootConfig) -> None:
    try:
        kernel, initrd, version = find_kernel(root)
    except BuildFailed:
        return  # assemble_disk says so, before it writes anything
    if not SYSTEMD_BOOT_EFI.is_file():
        raise BuildFailed(f"{SYSTEMD_BOOT_EFI} is missing", hint="install systemd-boot-efi (scripts/setup does)")
    for d in ("EFI/BOOT", "EFI/systemd", "loader/entries", f"kiln/{version}"):
        (esp / d).mkdir(parents=True, exist_ok=True)
    shutil.copyfile(SYSTEMD_BOOT_EFI, esp / "EFI/BOOT/BOOTX64.EFI")
    shutil.copyfile(SYSTEMD_BOOT_EFI, esp / "EFI/systemd/systemd-bootx64.efi")
    shutil.copyfile(kernel, esp / f"kiln/{version}/linux")
    shutil.copyfile(initrd, esp / f"kiln/{version}/initrd")
    (esp / f"loader/entries/kiln-{version}.conf").write_text(
        f"title Linux {version}\nversion {version}\n"
        f"linux /kiln/{version}/linux\ninitrd /kiln/{version}/initrd\noptions {boot.cmdline}\n")


def find_kernel(root: Path) -> tuple[Path, Path, str]:
    """The newest kernel in the tree's /boot with its initrd: (vmlinuz, initrd, version)."""
    bootdir = Path(root) / "boot"
    found = []
    for vmlinuz in bootdir.glob("vmlinuz-*"):
        version = vmlinuz.name[len("vmlinuz-"):]
        initrd = bootdir / f"initrd.img-{version}"
        if vmlinuz.is_file() and initrd.is_file():
            found.append((version_key(version), vmlinuz, initrd, version))
    if not found:
        raise BuildFailed(
            f"the image has no kernel with an initrd in /boot ({root})",
            hint="install a kernel package (linux-image-amd64) and initramfs-tools in the image",
        )
    _, vmlinuz, initrd, version = max(found)
    return vmlinuz, initrd, version


def version_key(version: str) -> tuple[tuple[int, int | str], ...]:
    """Orders kernel versions as systemd-boot does (numbers numerically, words alphabetically)."""
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in re.split(r"[.\-+~]", version))


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


