"""Generalizing a real, customized Debian 12 root: what a user would check afterwards."""

from __future__ import annotations

from pathlib import Path

import pytest

from kiln.errors import BuildFailed
from kiln.events import NullMonitor
from kiln.generalize.deprovision import SSH_KEYGEN_UNIT, generalize
from kiln.sandbox.isolated import IsolatedRoot

pytestmark = pytest.mark.integration


def in_root(root: Path, script: str) -> str:
    with IsolatedRoot(root) as sandbox:
        done = sandbox.run(["sh", "-ec", script])
    assert done.ok, done.tail
    return done.tail


def test_generalize_removes_machine_identity(fresh_root: Path) -> None:
    in_root(fresh_root, """
        useradd -m -s /bin/sh builder && echo 'builder:secret' | chpasswd
        echo 0123456789abcdef0123456789abcdef > /etc/machine-id
        ssh-keygen -A >/dev/null
        echo 'ls -la' > /root/.bash_history; echo 'make' > /home/builder/.bash_history
        mkdir -p /var/lib/dhcp && echo lease > /var/lib/dhcp/dhclient.eth0.leases
        echo log-line > /var/log/custom.log; mkdir -p /var/log/app; echo x > /var/log/app/app.log
        apt-get update -qq
        touch /tmp/leftover /var/tmp/leftover; mkdir /tmp/dir
        echo 'root:$6$abc$def' | chpasswd -e
    """)
    assert list((fresh_root / "etc/ssh").glob("ssh_host_*_key"))
    assert list((fresh_root / "var/lib/apt/lists").glob("*_Packages*"))
    generalize(fresh_root, NullMonitor())

    mid = fresh_root / "etc/machine-id"
    assert mid.is_file() and mid.read_bytes() == b""  # emptied, not removed
    assert not list((fresh_root / "etc/ssh").glob("ssh_host_*"))
    assert not (fresh_root / "var/lib/dhcp/dhclient.eth0.leases").exists()
    assert not (fresh_root / "root/.bash_history").exists() and not (fresh_root / "home/builder/.bash_history").exists()
    assert [p for p in (fresh_root / "var/log").rglob("*") if p.is_file()] == []
    assert (fresh_root / "var/log/app").is_dir() and (fresh_root / "var/log/apt").is_dir()
    assert not list((fresh_root / "var/lib/apt/lists").glob("*_Packages*"))
    assert not list((fresh_root / "var/cache/apt").glob("*.bin"))
    assert list((fresh_root / "tmp").iterdir()) == [] and list((fresh_root / "var/tmp").iterdir()) == []
    assert (fresh_root / "tmp").stat().st_mode & 0o7777 == 0o1777
    shadow = {line.split(":")[0]: line.split(":")[1] for line in (fresh_root / "etc/shadow").read_text().splitlines()}
    assert shadow["root"] == "*"
    assert shadow["builder"].startswith("$")  # users added by customizers are kept, password too (as waagent)
    assert (fresh_root / "etc/resolv.conf").is_symlink()  # resolved's stub link is kept

    unit = (fresh_root / f"etc/systemd/system/{SSH_KEYGEN_UNIT}").read_text()
    assert "ConditionPathExistsGlob=!/etc/ssh/ssh_host_*_key" in unit and "Before=ssh.service" in unit
    assert (fresh_root / f"etc/systemd/system/multi-user.target.wants/{SSH_KEYGEN_UNIT}").is_symlink()
    # What the unit runs at first boot really makes keys in this image.
    exec_start = next(line.split("=", 1)[1] for line in unit.splitlines() if line.startswith("ExecStart="))
    in_root(fresh_root, exec_start)
    assert list((fresh_root / "etc/ssh").glob("ssh_host_ed25519_key"))


def test_deprovisioning_script_runs_instead(fresh_root: Path) -> None:
    in_root(fresh_root, "ssh-keygen -A >/dev/null")
    (fresh_root / "tmp/DeprovisioningScript.sh").write_text(
        'echo "custom deprovisioning in $(hostname)" > /deprovisioned\nrm -f /tmp/DeprovisioningScript.sh\n')
    generalize(fresh_root, NullMonitor())
    assert (fresh_root / "deprovisioned").read_text() == "custom deprovisioning in debian\n"
    assert list((fresh_root / "etc/ssh").glob("ssh_host_*_key"))  # kiln's own deprovisioning did not run
    assert not (fresh_root / "usr/sbin/policy-rc.d").exists()


def test_failing_deprovisioning_script_is_a_clear_error(fresh_root: Path) -> None:
    (fresh_root / "tmp/DeprovisioningScript.sh").write_text("echo cannot-deprovision\nexit 5\n")
    with pytest.raises(BuildFailed) as e:
        generalize(fresh_root, NullMonitor())
    assert "DeprovisioningScript.sh" in e.value.message and "exit code 5" in e.value.message
    assert "cannot-deprovision" in e.value.message


def test_generalize_is_cloud_init_clean_and_deprovision_plus_user(fresh_root: Path) -> None:
    # A VM's root after cloud-init provisioned it (what `kiln vm capture --generalized` deprovisions):
    # users from a JSON seed, a YAML seed and waagent's ovf-env, plus one a customizer added.
    in_root(fresh_root, """
        for u in azureuser yamluser ovfuser appuser; do useradd -m -s /bin/bash $u; done
        mkdir -p /etc/sudoers.d /var/lib/cloud/instances/i-1 /var/lib/cloud/instances/i-2 /var/lib/cloud/seed/nocloud \
                 /var/lib/cloud/sem /var/lib/waagent
        printf '\\n# User rules for azureuser\\nazureuser ALL=(ALL) NOPASSWD:ALL\\n' > /etc/sudoers.d/90-cloud-init-users
        printf '#cloud-config\\n{"users": ["default", {"name": "azureuser"}]}\\n' > /var/lib/cloud/instances/i-1/user-data.txt
        printf '#cloud-config\\nusers:\\n  - default\\n  - name: yamluser\\n    groups: sudo\\nssh_pwauth: false\\n' \
            > /var/lib/cloud/instances/i-2/user-data.txt
        ln -s /var/lib/cloud/instances/i-2 /var/lib/cloud/instance
        echo x > /var/lib/cloud/seed/nocloud/user-data; touch /var/lib/cloud/sem/config_users_groups
        echo '<ns1:UserName>ovfuser</ns1:UserName>' > /var/lib/waagent/ovf-env.xml
        echo log > /var/log/cloud-init.log; echo out > /var/log/cloud-init-output.log
        echo 0123456789abcdef0123456789abcdef > /etc/machine-id
        mkdir -p /var/lib/dbus && ln -sfn /etc/machine-id /var/lib/dbus/machine-id  # as systemd-tmpfiles makes it
    """)
    generalize(fresh_root, NullMonitor())
    assert list((fresh_root / "var/lib/cloud").iterdir()) == []  # instances, the link, seed, semaphores
    assert list((fresh_root / "var/lib/waagent").iterdir()) == []
    assert not (fresh_root / "var/log/cloud-init.log").exists() and not (fresh_root / "var/log/cloud-init-output.log").exists()
    assert (fresh_root / "etc/machine-id").read_bytes() == b""  # the dbus link went, not what it points at
    assert not (fresh_root / "var/lib/dbus/machine-id").is_symlink()
    users = {line.split(":")[0] for line in (fresh_root / "etc/passwd").read_text().splitlines()}
    assert {"azureuser", "yamluser", "ovfuser"}.isdisjoint(users)  # provisioned: deleted, as waagent's +user
    assert {"appuser", "root", "_apt"} <= users  # a customizer's user and system users stay
    assert not (fresh_root / "home/azureuser").exists() and (fresh_root / "home/appuser").is_dir()
    assert "azureuser" not in (fresh_root / "etc/group").read_text()
    assert not (fresh_root / "etc/sudoers.d/90-cloud-init-users").exists()
    unit = (fresh_root / f"etc/systemd/system/{SSH_KEYGEN_UNIT}").read_text()
    assert "After=cloud-init.service" in unit  # cloud-init makes the keys when it provisions; this is the fallback
