"""NoCloud seeds: a `cidata` ISO 9660 image with meta-data and user-data, made without mounting.

cloud-init's NoCloud datasource finds a filesystem labelled `cidata` on any block device (virtio
disk or CD-ROM) and reads `meta-data` (instance id, host name) and `user-data` (#cloud-config)
from it. A new instance id is what makes cloud-init treat a boot as a first boot.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from kiln.run import run

XORRISO = "xorriso"
LABEL = "cidata"


@dataclass(frozen=True)
class Seed:
    instance_id: str
    hostname: str
    user: str
    public_keys: tuple[str, ...]
    # Extra #cloud-config keys, merged over the defaults (e.g. {"runcmd": [...]})
    extra: dict[str, object] = field(default_factory=dict)

    def meta_data(self) -> str:
        return json.dumps({"instance-id": self.instance_id, "local-hostname": self.hostname}) + "\n"

    def user_data(self) -> str:
        config: dict[str, object] = {
            "hostname": self.hostname,
            "users": [{
                "name": self.user,
                "groups": ["sudo"],
                "sudo": "ALL=(ALL) NOPASSWD:ALL",
                "shell": "/bin/bash",
                "lock_passwd": True,
                "ssh_authorized_keys": list(self.public_keys),
            }],
            "ssh_pwauth": False,
            "disable_root": True,
            **self.extra,
        }
        # JSON is YAML: no YAML library needed, and no quoting surprises in keys or names.
        return "#cloud-config\n" + json.dumps(config, indent=1) + "\n"


def write_seed(seed: Seed, iso: Path) -> Path:
    """Write `seed` as a NoCloud ISO at `iso` (a few hundred KiB) and return its path."""
    with tempfile.TemporaryDirectory(prefix="kiln-seed-") as tmp:
        root = Path(tmp)
        (root / "meta-data").write_text(seed.meta_data())
        (root / "user-data").write_text(seed.user_data())
        run([XORRISO, "-as", "mkisofs", "-quiet", "-volid", LABEL, "-joliet", "-rock", "-o", iso,
             root / "meta-data", root / "user-data"], capture=True)
    return iso


def seed_files(seed: Seed) -> Sequence[tuple[str, str]]:
    return (("meta-data", seed.meta_data()), ("user-data", seed.user_data()))
