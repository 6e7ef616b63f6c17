"""Builds with the SSH-login boot test, through the real `kiln build`, shared by the session.

Until kiln's platform images carry cloud-init, the test templates add it with a Shell customizer
(`cloud_init_steps()`, the one place to shrink once they do), the way a user adds a package.
Each build boots once; every test that needs a booted, logged-into image reads the same run.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from debian_root import CachedRoot
from envcheck import unavailable
from kiln.run import run

SUB = "00000000-0000-0000-0000-00000000551c"
IMAGES = f"/subscriptions/{SUB}/resourceGroups/kiln-login/providers/Microsoft.Compute/images"


def cloud_init_steps(*extra_config: str) -> list[dict]:
    """Shell steps that give the platform image cloud-init (NoCloud first), growpart and sshd."""
    config = "\\n".join(("datasource_list: [ NoCloud, None ]", "locale: C.UTF-8", *extra_config))
    return [{"type": "Shell", "name": "add-cloud-init", "inline": [
        "export DEBIAN_FRONTEND=noninteractive",
        "apt-get update -qq",
        "apt-get install -y -qq --no-install-recommends cloud-init cloud-guest-utils openssh-server",
        f"printf '{config}\\n' > /etc/cloud/cloud.cfg.d/90-kiln-test.cfg",
    ]}]


def template(name: str, customize: list[dict], validations: list[dict]) -> dict:
    return {
        "type": "Microsoft.VirtualMachineImages/imageTemplates",
        "location": "westus2",
        "properties": {
            "buildTimeoutInMinutes": 60,
            "source": {"type": "PlatformImage", "publisher": "Debian", "offer": "debian-12", "sku": "12-gen2",
                       "version": "latest"},
            "customize": customize,
            "validate": {"inVMValidations": validations},
            "distribute": [{"type": "ManagedImage", "imageId": f"{IMAGES}/{name}", "location": "westus2",
                            "runOutputName": name}],
        },
    }


class Kiln:
    """The real `kiln` command line against one state home."""

    def __init__(self, home: Path) -> None:
        self.home = home

    def __call__(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([sys.executable, "-m", "kiln", *args], env={**os.environ, "KILN_HOME": str(self.home)},
                              text=True, capture_output=True, timeout=3600, stdin=subprocess.DEVNULL)
        if check and proc.returncode != 0:
            raise AssertionError(f"kiln {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
        return proc

    def json(self, *args: str) -> object:
        return json.loads(self(*args, "--json").stdout)


@dataclass(frozen=True)
class Build:
    proc: subprocess.CompletedProcess[str]
    image_id: str
    log: str  # the run's customization.log

    @property
    def run(self) -> dict:
        return json.loads(self.proc.stdout)


@pytest.fixture(scope="session")
def login_kiln(debian12: CachedRoot, tmp_path_factory: pytest.TempPathFactory) -> Kiln:
    """A state home whose root cache already holds the session's Debian 12 bootstrap."""
    for tool in ("qemu-system-x86_64", "ssh", "ssh-keygen", "xorriso", "debugfs"):
        if shutil.which(tool) is None:
            unavailable(f"{tool} is not installed (run scripts/setup)")
    home = tmp_path_factory.mktemp("login-home")
    roots = home / "cache" / "roots"
    roots.mkdir(parents=True)
    # Only this session's entry (others may be written meanwhile); cp -a: it holds device nodes
    entry = debian12.archive
    run(["cp", "-a", entry, entry.with_name(entry.name + ".json"), roots])
    return Kiln(home)


def run_build(kiln: Kiln, tmp: Path, name: str, data: dict) -> Build:
    path = tmp / f"{name}.json"
    path.write_text(json.dumps(data, indent=1))
    proc = kiln("build", str(path), "--json", "--boot-timeout", "900", check=False)  # TCG on a busy host
    logs = sorted((kiln.home / "runs").glob("*/customization.log"), key=lambda p: p.stat().st_mtime)
    return Build(proc, f"{IMAGES}/{name}", logs[-1].read_text(errors="replace") if logs else "")


# What the validation prints: who runs it, whose login it came through, what that user has.
WHO = [
    'echo "uid=$(id -u) sudo-user=$SUDO_USER"',
    'getent passwd "$SUDO_USER" | cut -d: -f1,6',
    'test -s "/home/$SUDO_USER/.ssh/authorized_keys" && echo key-installed',
    "cloud-init status",
]


@pytest.fixture(scope="session")
def login_build(login_kiln: Kiln, tmp_path_factory: pytest.TempPathFactory) -> Build:
    """An image with cloud-init, built and boot-tested over SSH with two passing validations."""
    data = template("login", cloud_init_steps(), [
        {"type": "Shell", "name": "who", "inline": WHO},
        {"type": "Shell", "name": "where-time-goes", "inline": [
            "systemd-analyze || true", "systemd-analyze blame | head -15",
        ]},
    ])
    return run_build(login_kiln, tmp_path_factory.mktemp("login-build"), "login", data)
