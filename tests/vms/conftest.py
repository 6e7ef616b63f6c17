"""Fixtures for `kiln vm`: a state home per test, a HOME without ~/.ssh, the real CLI, and cleanup
that stops every VM a test left (VMs outlive the kiln processes that start them, by design).

`cloud_image` builds, once per session, an image people can log into: Debian 12 with cloud-init,
growpart and OpenSSH, installed by a Shell customizer with a NoCloud datasource config. Once the
platform image carries cloud-init itself (issue 10, part 1), the customizer can go.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from envcheck import unavailable
from store_helpers import REPO

SUB = "00000000-0000-0000-0000-0000000000cc"
RG = "vm-tests"
CLOUD_IMAGE = f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.Compute/images/debian12-cloud"
TEST_CACHE = Path(os.environ.get("KILN_TEST_CACHE", "/var/tmp/kiln-test-cache"))

# What the template's one Shell step does (kept small, so it is easy to drop later).
CLOUD_INIT_STEP = [
    "export DEBIAN_FRONTEND=noninteractive",
    "apt-get update",
    "apt-get install -y --no-install-recommends cloud-init cloud-guest-utils openssh-server",
    "printf 'datasource_list: [ NoCloud, None ]\\n' > /etc/cloud/cloud.cfg.d/90-kiln-datasources.cfg",
    # C.UTF-8 is always there: cloud-init's default en_US.UTF-8 is not generated in this image, and its
    # locale module's failure makes `cloud-init status` an error, which the SSH-login boot test fails.
    "printf 'locale: C.UTF-8\\n' > /etc/cloud/cloud.cfg.d/91-kiln-locale.cfg",
]


def image_id(name: str) -> str:
    return f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.Compute/images/{name}"


@dataclass
class Kiln:
    """The real `kiln` command line against one state home, with HOME set to a folder of the test's."""

    home: Path
    user_home: Path

    def __call__(self, *args: str, timeout: float = 1800, input: str | None = None) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "KILN_HOME": str(self.home), "HOME": str(self.user_home),
               "PYTHONPATH": str(REPO / "src")}
        return subprocess.run([sys.executable, "-m", "kiln", *args], env=env, text=True, capture_output=True,
                              timeout=timeout, input=input, stdin=None if input is not None else subprocess.DEVNULL)

    def ok(self, *args: str, timeout: float = 1800) -> subprocess.CompletedProcess[str]:
        proc = self(*args, timeout=timeout)
        assert proc.returncode == 0, f"kiln {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        return proc

    def json(self, *args: str) -> object:
        return json.loads(self.ok(*args, "--json").stdout)

    def delete_all_vms(self) -> None:
        for vm in json.loads(self.ok("vm", "list", "--json").stdout):
            self("vm", "delete", vm["id"], "--grace", "5")


def _needs_qemu() -> None:
    for tool in ("qemu-system-x86_64", "qemu-img", "xorriso", "ssh", "ssh-keygen", "bwrap"):
        if shutil.which(tool) is None:
            unavailable(f"{tool} is not installed (run scripts/setup)")


@pytest.fixture
def kiln(tmp_path: Path) -> Iterator[Kiln]:
    _needs_qemu()
    home, user = tmp_path / "kh", tmp_path / "user"
    home.mkdir()
    user.mkdir()
    k = Kiln(home, user)
    yield k
    k.delete_all_vms()


@pytest.fixture(scope="session")
def cloud_kiln(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kiln]:
    """One state home for the session's real boots, holding `CLOUD_IMAGE` (built once)."""
    _needs_qemu()
    if os.geteuid() != 0:
        unavailable("building an image needs root (mmdebstrap, namespaces)")
    base = tmp_path_factory.mktemp("vmboot")
    home, user = base / "kh", base / "user"
    home.mkdir()
    user.mkdir()
    # The platform root cache is shared with the other tests' (tests/debian_root.py): no second bootstrap.
    shared = TEST_CACHE / "kiln-home" / "cache"
    shared.mkdir(parents=True, exist_ok=True)
    (home / "cache").symlink_to(shared)
    k = Kiln(home, user)
    template = {
        "type": "Microsoft.VirtualMachineImages/imageTemplates", "apiVersion": "2022-07-01", "location": "westus2",
        "properties": {
            "source": {"type": "PlatformImage", "publisher": "Debian", "offer": "debian-12", "sku": "12-gen2",
                       "version": "latest"},
            "customize": [{"type": "Shell", "name": "cloud-init", "inline": CLOUD_INIT_STEP}],
            "distribute": [{"type": "ManagedImage", "imageId": CLOUD_IMAGE, "location": "westus2",
                            "runOutputName": "cloud"}],
        },
    }
    path = base / "cloud.json"
    path.write_text(json.dumps(template))
    built = k("build", str(path), "--no-validate", timeout=3600)
    if built.returncode != 0 and "mirror" in built.stderr.lower():
        unavailable(f"the image build needs a Debian mirror: {built.stderr[-300:]}")
    assert built.returncode == 0, built.stderr
    yield k
    k.delete_all_vms()
