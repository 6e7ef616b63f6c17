"""Which boot test a disk gets: an SSH login provisioned by cloud-init, or the serial-console check.

A user can log in to an image only through what the image itself runs at first boot: cloud-init
(with NoCloud allowed, so kiln's seed is read) creating the user, and an enabled OpenSSH server.
When both are there the boot test proves the login (`ssh-login`); otherwise (a user's imported
disk, an ISO source, a template that removed or disabled cloud-init) it keeps the inert hook's
serial-console check (`serial`), and says why.

The disk is read before the boot, without mounting anything: debugfs reads the root filesystem
at its offset inside the disk file (raw, or a fixed VHD whose data sits at the same offsets).
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from kiln.disk.extract import find_root_partition
from kiln.errors import KilnError
from kiln.run import run

DEBUGFS = "debugfs"
SSH_LOGIN = "ssh-login"
SERIAL = "serial"
CHECKS = (SSH_LOGIN, SERIAL)

CLOUD_INIT = "/usr/bin/cloud-init"
CLOUD_INIT_DISABLED = "/etc/cloud/cloud-init.disabled"
SSHD = "/usr/sbin/sshd"
# Where `systemctl enable` (deb-systemd-helper at package install) links the units. cloud-init
# 22.x hangs its stages on cloud-init.target (pulled in by its generator), 20.x on
# multi-user.target; 24.3+ renamed cloud-init.service to cloud-init-network.service.
CLOUD_INIT_WANTS = ("/etc/systemd/system/cloud-init.target.wants", "/etc/systemd/system/multi-user.target.wants")
CLOUD_INIT_UNITS = ("cloud-init.service", "cloud-init-network.service")
SSH_WANTS = (("/etc/systemd/system/multi-user.target.wants", ("ssh.service", "sshd.service")),
             ("/etc/systemd/system/sockets.target.wants", ("ssh.socket",)))
CLOUD_CFG = "/etc/cloud/cloud.cfg"
CLOUD_CFG_D = "/etc/cloud/cloud.cfg.d"


@dataclass(frozen=True)
class CheckChoice:
    kind: str  # ssh-login | serial
    reason: str  # what in the image decided it, for the run's log


class RootFiles:
    """Read-only access to the root filesystem of a disk, through debugfs (no mount)."""

    def __init__(self, disk: Path, fmt: str) -> None:
        part = find_root_partition(disk, fmt)
        # e2fsprogs' unix I/O manager takes "?offset=" after the file name
        self.device = f"{Path(disk).absolute()}?offset={part.offset}"

    def _debugfs(self, request: str) -> str:
        # -c: catastrophic mode (no bitmaps read): faster, and enough for reading files
        return run([DEBUGFS, "-c", "-R", request, self.device], check=False, capture=True,
                   stderr=subprocess.DEVNULL, timeout=60).stdout or ""  # stderr: its banner, "not found"

    def names(self, directory: str) -> set[str]:
        """Entry names in `directory` (empty if it does not exist)."""
        out = set()
        for line in self._debugfs(f"ls -p {directory}").splitlines():
            fields = line.split("/")  # /inode/mode/uid/gid/name/size/
            if len(fields) >= 7 and fields[5] not in (".", ".."):
                out.add(fields[5])
        return out

    def exists(self, path: str) -> bool:
        p = PurePosixPath(path)
        return p.name in self.names(str(p.parent))

    def read_text(self, path: str) -> str:
        return self._debugfs(f"cat {path}")


def choose_check(disk: Path, fmt: str) -> CheckChoice:
    """The boot test `disk` can have; `serial` (with the reason) when the disk cannot be read."""
    try:
        files = RootFiles(disk, fmt)
    except KilnError as e:
        return CheckChoice(SERIAL, f"its root filesystem could not be read ({e.message})")
    return choose_for(files)


def choose_for(files: RootFiles) -> CheckChoice:
    if not files.exists(CLOUD_INIT):
        return CheckChoice(SERIAL, f"the image has no cloud-init ({CLOUD_INIT})")
    if files.exists(CLOUD_INIT_DISABLED):
        return CheckChoice(SERIAL, f"cloud-init is disabled ({CLOUD_INIT_DISABLED})")
    if not any(unit in files.names(d) for d in CLOUD_INIT_WANTS for unit in CLOUD_INIT_UNITS):
        return CheckChoice(SERIAL, "cloud-init's services are not enabled")
    if (sources := datasource_list(files)) is not None and "nocloud" not in [s.lower() for s in sources]:
        return CheckChoice(SERIAL, f"cloud-init's datasource_list ({', '.join(sources)}) leaves out NoCloud")
    if not files.exists(SSHD):
        return CheckChoice(SERIAL, f"the image has no OpenSSH server ({SSHD})")
    if not any(unit in files.names(d) for d, units in SSH_WANTS for unit in units):
        return CheckChoice(SERIAL, "the OpenSSH server is not enabled")
    return CheckChoice(SSH_LOGIN, "cloud-init and the OpenSSH server are enabled")


_DATASOURCE_LIST = re.compile(r"^datasource_list\s*:(.*(?:\n[ \t-].*)*)", re.MULTILINE)


def datasource_list(files: RootFiles) -> list[str] | None:
    """The datasource_list cloud-init will use (the last file to set it wins), or None if unset.

    Only the top-level key is read, in either YAML list form; a full YAML parse would buy nothing
    for a list of names.
    """
    configs = [CLOUD_CFG] + [f"{CLOUD_CFG_D}/{n}" for n in sorted(files.names(CLOUD_CFG_D)) if n.endswith(".cfg")]
    found = None
    for path in configs:
        for m in _DATASOURCE_LIST.finditer(files.read_text(path)):
            body = re.sub(r"#.*", "", m.group(1))
            found = [name for name in re.split(r"[\s,\[\]'\"-]+", body) if name]
    return found
