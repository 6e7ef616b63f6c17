"""Real VMs from a built image people can log into, and VMs saved as images again.

One VM (module-scoped, from the session's cloud-init image) carries the whole story: created with
a larger disk, logged into over SSH with the user's own ~/.ssh key, a file written, refused a
generalized capture while running, stopped, captured specialized (boot-tested) and generalized.
Then one VM from each capture: the specialized one has the file and the same machine-id; the
generalized one is a new machine (new machine-id, new SSH host keys) that provisioned a new user.
Every boot is a TCG boot (1-4 minutes on a busy host), so the tests share them.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import CLOUD_IMAGE, Kiln, image_id

pytestmark = pytest.mark.integration

FILE = "/home/azureuser/notes.txt"


def ssh(kiln: Kiln, vm: str, command: str) -> str:
    proc = kiln("vm", "ssh", vm, "--", command, timeout=120)
    assert proc.returncode == 0, f"{command}: {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout.strip()


@pytest.fixture(scope="module")
def vm1(cloud_kiln: Kiln) -> Iterator[dict]:
    ssh_dir = cloud_kiln.user_home / ".ssh"
    ssh_dir.mkdir(exist_ok=True)
    if not (ssh_dir / "id_ed25519").exists():
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(ssh_dir / "id_ed25519")], check=True)
    made = cloud_kiln.json("vm", "create", "vm1", "--image", CLOUD_IMAGE, "--os-disk-size-gb", "6")
    yield made
    cloud_kiln("vm", "delete", "vm1", "--grace", "5")


def test_create_logs_in_with_the_users_key_on_a_grown_disk(cloud_kiln: Kiln, vm1: dict) -> None:
    assert vm1["kiln"]["powerState"] == "Running" and vm1["kiln"]["sshReadySeconds"] is not None
    key = cloud_kiln.user_home / ".ssh" / "id_ed25519"
    assert vm1["kiln"]["keyPath"] == str(key)
    # Plain OpenSSH with the user's key, on 127.0.0.1 only, as `kiln vm create` printed.
    port = vm1["kiln"]["sshPort"]
    direct = subprocess.run(["ssh", "-p", str(port), "-i", str(key), "-o", "StrictHostKeyChecking=no",
                             "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes", "azureuser@127.0.0.1",
                             "id -un"], capture_output=True, text=True, timeout=120)
    assert direct.stdout.strip() == "azureuser", direct.stderr
    # The root filesystem grew into the 6 GiB disk (the image's is ~2 GiB).
    size = int(ssh(cloud_kiln, "vm1", "df -B1 --output=size / | tail -1"))
    assert size > 5 << 30
    assert ssh(cloud_kiln, "vm1", "sudo -n true && echo sudo-ok") == "sudo-ok"
    # The serial console: attached (a newline typed, the login prompt answers), and its log.
    console = cloud_kiln("vm", "console", "vm1", input="\n", timeout=120)
    assert console.returncode == 0 and "login:" in console.stdout, console.stderr
    assert "login:" in cloud_kiln.ok("vm", "console", "vm1", "--log").stdout


def test_generalized_capture_of_a_running_vm_exits_2(cloud_kiln: Kiln, vm1: dict) -> None:
    proc = cloud_kiln("vm", "capture", "vm1", "--id", image_id("never"), "--generalized")
    assert proc.returncode == 2 and "stop it first" in proc.stderr and "Traceback" not in proc.stderr
    assert cloud_kiln("image", "show", image_id("never")).returncode == 2
    assert cloud_kiln.json("vm", "show", "vm1")["kiln"]["powerState"] == "Running"


@pytest.fixture(scope="module")
def captured(cloud_kiln: Kiln, vm1: dict) -> dict:
    """vm1 with a file written, stopped and captured both ways; what vm1 was, for comparison."""
    ssh(cloud_kiln, "vm1", f"echo written-in-vm1 > {FILE} && sync")
    before = {"machine_id": ssh(cloud_kiln, "vm1", "cat /etc/machine-id"),
              "host_key": ssh(cloud_kiln, "vm1", "cat /etc/ssh/ssh_host_ed25519_key.pub").split()[1]}
    assert "Stopped" in cloud_kiln.ok("vm", "stop", "vm1").stdout
    special = cloud_kiln.json("vm", "capture", "vm1", "--id", image_id("vm1-special"), "--specialized")
    general = cloud_kiln.json("vm", "capture", "vm1", "--id", image_id("vm1-general"), "--generalized",
                              "--no-validate")
    return {"before": before, "special": special, "general": general}


def test_specialized_capture_is_an_exact_copy(cloud_kiln: Kiln, captured: dict, tmp_path: Path) -> None:
    special = captured["special"]
    assert special["properties"]["storageProfile"]["osDisk"]["osState"] == "Specialized"
    assert special["kiln"]["bootTested"] is True
    assert special["properties"]["sourceVirtualMachine"]["id"].endswith("/virtualMachines/vm1")
    cloud_kiln.ok("vm", "create", "vm2", "--image", image_id("vm1-special"))
    try:
        assert ssh(cloud_kiln, "vm2", f"cat {FILE}") == "written-in-vm1"
        assert ssh(cloud_kiln, "vm2", "cat /etc/machine-id") == captured["before"]["machine_id"]
    finally:
        cloud_kiln("vm", "delete", "vm2", "--grace", "5")


def test_generalized_capture_makes_new_machines_that_provision_again(cloud_kiln: Kiln, captured: dict,
                                                                    tmp_path: Path) -> None:
    general = captured["general"]
    assert general["properties"]["storageProfile"]["osDisk"]["osState"] == "Generalized"
    assert general["kiln"]["bootTested"] is False  # --no-validate
    key = tmp_path / "other"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    made = cloud_kiln.json("vm", "create", "vm3", "--image", image_id("vm1-general"), "--admin-username", "alice",
                           "--ssh-key", f"{key}.pub")
    try:
        assert made["kiln"]["keyPath"] == str(key)
        assert ssh(cloud_kiln, "vm3", "id -un") == "alice"
        assert ssh(cloud_kiln, "vm3", "cat /etc/machine-id") != captured["before"]["machine_id"]
        host_key = ssh(cloud_kiln, "vm3", "cat /etc/ssh/ssh_host_ed25519_key.pub").split()[1]
        assert host_key != captured["before"]["host_key"]
    finally:
        cloud_kiln("vm", "delete", "vm3", "--grace", "5")
    # vm1 itself is untouched by the generalized capture: it starts again, its file still there.
    cloud_kiln.ok("vm", "start", "vm1", "--wait")
    assert ssh(cloud_kiln, "vm1", f"cat {FILE}") == "written-in-vm1"
    assert json.loads(cloud_kiln.ok("vm", "show", "vm1", "--json").stdout)["kiln"]["powerState"] == "Running"
