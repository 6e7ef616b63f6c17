"""Can a build run on this host? The checks behind `kiln doctor` (and any API that wants them).

Each check says what it found and, when something is wrong, a hint to fix it. A `required`
check that fails means a build cannot run (the README's build would stop on it); the others are
information (TCG instead of KVM: boots are slower) or optional parts (Azurite, for the tests and a
local azureblob region). Everything is read from the host as kiln would use it: tools on kiln's
PATH (`kiln.run.minimal_env`), acceleration as the boot test detects it, the firmware the VM runner
boots, the state home and scratch space of this configuration, the configured Debian mirror.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path
from typing import Any

import kiln
from kiln.config import Config
from kiln.errors import KilnError
from kiln.run import minimal_env
from kiln.tools import host_tools

GiB = 1024**3
# Room a Debian 12 build needs: its root tree in scratch (~1 GiB) and the disk image, its VHD and
# the published blob in the state home (sparse, but a few GiB written at most).
MIN_STATE_FREE = 4 * GiB
MIN_SCRATCH_FREE = 2 * GiB
# The suite whose Release file proves the mirror serves what the examples build (Debian 12).
PROBE_SUITE = "bookworm"
DPKG_STATUS = Path("/var/lib/dpkg/status")


@dataclass(frozen=True)
class Check:
    kind: str  # tool | host | accel | firmware | space | mirror | optional
    name: str
    ok: bool
    detail: str
    hint: str = ""
    required: bool = True  # False: a failure does not stop a build

    @property
    def problem(self) -> bool:
        return self.required and not self.ok

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Report:
    checks: tuple[Check, ...]

    @property
    def ready(self) -> bool:
        """A build can run: no required check failed."""
        return not any(c.problem for c in self.checks)

    @property
    def problems(self) -> tuple[Check, ...]:
        return tuple(c for c in self.checks if c.problem)

    def to_json(self) -> dict[str, Any]:
        return {"ready": self.ready, "problems": len(self.problems), "checks": [c.to_json() for c in self.checks]}


def diagnose(config: Config, *, mirror: bool = True) -> Report:
    """Every check, in the order a user reads them."""
    checks = [*tool_checks(), root_check(), accel_check(), *firmware_checks(), *space_checks(config)]
    if mirror:
        checks.append(mirror_check(config))
    checks.append(azurite_check())
    return Report(tuple(checks))


# ------------------------------------------------------------------ the checks


def tool_checks() -> list[Check]:
    path = minimal_env()["PATH"]
    versions = package_versions()
    out = []
    for t in host_tools():
        found = shutil.which(t.program, path=path)
        version = versions.get(t.package, "")
        detail = f"{found} ({t.package} {version})" if found and version else found or "not found"
        hint = "" if found else f"install it: apt-get install {t.package} (scripts/setup installs every tool kiln needs)"
        what = "" if t.required else " (optional)"
        out.append(Check("tool", t.program, bool(found), f"{detail}: {t.purpose}{what}" if not found else detail,
                         hint, t.required))
    return out


def root_check() -> Check:
    root = os.geteuid() == 0
    return Check("host", "root", root, "running as root" if root else f"running as uid {os.geteuid()}",
                 "" if root else "kiln builds run as root (mmdebstrap --mode=root, mount namespaces): use sudo")


def accel_check() -> Check:
    from kiln.sandbox.vm import detect_accel

    try:
        accel = detect_accel()
    except KilnError as e:  # QEMU missing: the tool check says so
        return Check("accel", "acceleration", False, f"cannot probe KVM: {e.message}", required=False)
    if accel == "kvm":
        return Check("accel", "acceleration", True, "KVM usable", required=False)
    return Check("accel", "acceleration", True, "TCG only (no usable KVM): boot tests work, slowly (about a minute a boot)",
                 "for faster boots: a host with kvm_intel or kvm_amd loaded and /dev/kvm accessible", required=False)


def firmware_checks() -> list[Check]:
    from kiln.disk.assemble import SYSTEMD_BOOT_EFI
    from kiln.sandbox.vm import ovmf_firmware

    try:
        code, vars_ = ovmf_firmware()
        ovmf = Check("firmware", "OVMF", True, f"{code}, {vars_}")
    except KilnError:
        ovmf = Check("firmware", "OVMF", False, "no OVMF UEFI firmware under /usr/share/OVMF (the boot test needs it)",
                     "apt-get install ovmf (scripts/setup does)")
    boot = SYSTEMD_BOOT_EFI.is_file()
    loader = Check("firmware", "systemd-boot", boot,
                   str(SYSTEMD_BOOT_EFI) if boot else f"{SYSTEMD_BOOT_EFI} is missing (every disk's boot loader)",
                   "" if boot else "apt-get install systemd-boot-efi (scripts/setup does)")
    return [ovmf, loader]


def space_checks(config: Config) -> list[Check]:
    from kiln.scratch import is_tmpfs, scratch_parent

    home = config.home
    scratch = scratch_parent(config.work_dir)
    in_ram = " (RAM, tmpfs)" if is_tmpfs(scratch) else ""
    return [
        _space("state home", home, MIN_STATE_FREE, "", f"free space where {home} is, or choose another state home "
               "(KILN_HOME or --home)"),
        _space("scratch", scratch, MIN_SCRATCH_FREE, in_ram,
               "free space there, or point KILN_SCRATCH at a folder with room (or `state` for the state home)"),
    ]


def _space(name: str, path: Path, minimum: int, note: str, hint: str) -> Check:
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent  # the state home may not exist yet: its filesystem is what counts
    try:
        free = shutil.disk_usage(existing).free
    except OSError as e:
        return Check("space", name, False, f"{path}: {e.strerror}", hint)
    ok = free >= minimum
    detail = f"{path}{note}: {free / GiB:.1f} GiB free" + ("" if ok else f", a build needs {minimum / GiB:.0f} GiB")
    return Check("space", name, ok, detail, "" if ok else hint)


def mirror_check(config: Config) -> Check:
    from kiln.sources.mirror import fetch_release

    where = config.home / "config.toml"
    if not config.debian_mirror:
        return Check("mirror", "Debian mirror", False, "no Debian mirror: none in config.toml, none in the host's apt sources",
                     f'set one in {where}: [mirrors] debian = "http://..."')
    try:
        release = fetch_release(config.debian_mirror, PROBE_SUITE)
    except KilnError as e:
        return Check("mirror", "Debian mirror", False, e.message,
                     f"check [mirrors] debian in {where} (or the host's apt sources) and that the mirror is reachable")
    return Check("mirror", "Debian mirror", True,
                 f"{config.debian_mirror} ({release.codename} {release.version or release.exact_version})")


def azurite_check() -> Check:
    found = shutil.which("azurite-blob", path=minimal_env()["PATH"])
    checkout = Path(kiln.__file__).resolve().parents[2]
    local = checkout / ".tools" / "node_modules" / ".bin" / "azurite-blob"
    if found is None and local.exists():
        found = str(local)
    return Check("optional", "Azurite", found is not None,
                 found or "not installed (the Azure Blob Storage emulator: the blob-region tests and a local azureblob region)",
                 "" if found else "scripts/setup installs it into .tools/ (with npm)", required=False)


@cache
def package_versions() -> dict[str, str]:
    """Installed Debian packages and their versions, from dpkg's status file (no subprocess)."""
    try:
        text = DPKG_STATUS.read_text(errors="replace")
    except OSError:
        return {}
    out: dict[str, str] = {}
    for stanza in text.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in stanza.splitlines() if ": " in line and not line[0].isspace())
        if fields.get("Status", "").endswith(" installed") and "Package" in fields:
            out[fields["Package"]] = fields.get("Version", "")
    return out
