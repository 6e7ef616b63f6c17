"""The build's boot test logs in: real `kiln build`s of an image with cloud-init, booted under QEMU.

Boots in this file: three, one per build. `login_build` (shared, conftest.py) provisions a
throwaway user through NoCloud, logs in over SSH and runs two validations; the cloud-init error
build fails its boot test with cloud-init's own error; a template that removes cloud-init gets the
serial check. The published disk is read back with debugfs.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from kiln.disk.extract import find_root_partition
from kiln.validate.login import KEY_COMMENT, USER_PREFIX

from .conftest import WHO, Build, Kiln, cloud_init_steps, run_build, template

pytestmark = pytest.mark.integration


def read(disk: Path, fmt: str, request: str) -> str:
    """A debugfs request against the root filesystem of the published disk (no mount)."""
    part = find_root_partition(disk, fmt)
    return subprocess.run(["debugfs", "-c", "-R", request, f"{disk}?offset={part.offset}"], text=True,
                          capture_output=True, check=True).stdout


def login_user(build: Build) -> str:
    m = re.search(rf"SSH login as ({re.escape(USER_PREFIX)}[0-9a-f]+) worked after", build.log)
    assert m, build.log[-3000:]
    return m.group(1)


def test_the_boot_test_logs_in_over_ssh_and_validates_as_root(login_build: Build) -> None:
    assert login_build.proc.returncode == 0, login_build.proc.stderr[-3000:]
    assert login_build.run["lastRunStatus"]["runState"] == "Succeeded"
    log = login_build.log
    user = login_user(login_build)
    assert "boot test: ssh-login check (cloud-init and the OpenSSH server are enabled)" in log
    assert re.search(r"guest ready after [\d.]+ s: cloud-init done, system (running|degraded)", log)
    # the validation ran as root, through sudo, in the session of the provisioned user
    assert f"guest:   | uid=0 sudo-user={user}" in log
    assert f"guest:   | {user}:/home/{user}" in log
    assert "guest:   | key-installed" in log
    assert "guest:   | status: done" in log
    assert "guest: validation 'who' exited 0" in log
    assert "guest: validation 'where-time-goes' exited 0" in log
    assert re.search(r"validate ok=True .*ssh-login check: SSH at [\d.]+ s, cloud-init done at [\d.]+ s", log)


def test_run_output_and_image_show_say_which_check_ran(login_build: Build, login_kiln: Kiln) -> None:
    assert login_build.proc.returncode == 0, login_build.proc.stderr[-3000:]
    (output,) = login_build.run["runOutputs"]
    assert output["kiln"]["bootTest"] == "ssh-login"
    image = login_kiln.json("image", "show", login_build.image_id)
    assert image["kiln"]["bootTested"] is True and image["kiln"]["bootTest"] == "ssh-login"
    table = login_kiln("image", "show", login_build.image_id).stdout
    assert re.search(r"^bootTest\s+ssh-login\s*$", table, re.MULTILINE), table
    listed = login_kiln.json("run-output", "show", output["id"])
    assert listed["kiln"]["bootTest"] == "ssh-login"


def test_the_published_disk_holds_no_trace_of_the_login(login_build: Build, login_kiln: Kiln) -> None:
    assert login_build.proc.returncode == 0, login_build.proc.stderr[-3000:]
    user = login_user(login_build)  # the user existed in the booted guest (the validation saw it)...
    image = login_kiln.json("image", "show", login_build.image_id)
    disk, fmt = Path(image["kiln"]["path"]), image["kiln"]["format"]
    # ...and is nowhere in the published disk: no account, no home, no key, no sudo membership
    for accounts in ("/etc/passwd", "/etc/shadow", "/etc/group", "/etc/gshadow"):
        text = read(disk, fmt, f"cat {accounts}")
        assert "root:" in text  # the file was read
        assert user not in text and USER_PREFIX not in text
    home = read(disk, fmt, "ls -p /home")
    assert USER_PREFIX not in home
    assert KEY_COMMENT not in read(disk, fmt, "cat /root/.ssh/authorized_keys")
    # no cloud-init instance state: the next boot provisions again
    cloud = read(disk, fmt, "ls -p /var/lib/cloud")
    names = {line.split("/")[5] for line in cloud.splitlines() if line.count("/") >= 6}
    assert not names & {"instance", "instances", "seed", "data", "sem"}, cloud
    # the image still has what provisions a VM made from it
    assert "/cloud-init/" in read(disk, fmt, "ls -p /usr/bin")
    assert "90-kiln-test.cfg" in read(disk, fmt, "ls -p /etc/cloud/cloud.cfg.d")


def test_a_cloud_init_error_fails_the_boot_test_with_its_own_text(login_kiln: Kiln, tmp_path: Path) -> None:
    # A user's broken first-boot config: a runcmd that fails makes cloud-init's final stage an error.
    broken = cloud_init_steps("runcmd:", "  - [ sh, -c, \"echo kiln-runcmd-fails >&2; exit 3\" ]")
    build = run_build(login_kiln, tmp_path, "broken", template("broken", broken, [
        {"type": "Shell", "name": "who", "inline": WHO}]))
    assert build.proc.returncode == 1, build.proc.stdout[-2000:] + build.proc.stderr[-3000:]
    err = build.proc.stderr
    assert "validation failed: boot test failed: cloud-init reported status error:" in err
    # cloud-init's own words: the stage, the module, the runcmd failure
    assert re.search(r"error: modules-final: \('scripts[-_]user', RuntimeError\('Runparts: 1 failures \(runcmd\)", err), err[-3000:]
    assert "Traceback" not in err
    assert "validation 'who'" not in build.log  # the validations never ran on a failed first boot
    assert login_kiln("image", "show", build.image_id, check=False).returncode != 0  # nothing published
    runs = login_kiln.json("runs", "list")
    assert isinstance(runs, list) and runs[-1]["lastRunStatus"]["runState"] == "Failed"


def test_a_template_that_removes_cloud_init_gets_the_serial_check(login_kiln: Kiln, tmp_path: Path) -> None:
    removed = [*cloud_init_steps(), {"type": "Shell", "name": "remove-cloud-init", "inline": [
        "DEBIAN_FRONTEND=noninteractive apt-get purge -y -qq cloud-init"]}]
    build = run_build(login_kiln, tmp_path, "no-cloud-init", template("no-cloud-init", removed, [
        {"type": "Shell", "name": "as-root", "inline": ['echo "uid=$(id -u)"']}]))
    assert build.proc.returncode == 0, build.proc.stderr[-3000:]
    assert "boot test: serial check (the image has no cloud-init (/usr/bin/cloud-init))" in build.log
    assert "guest:   | uid=0" in build.log and "guest: validation 'as-root' exited 0" in build.log
    assert "SSH login as" not in build.log
    (output,) = build.run["runOutputs"]
    assert output["kiln"]["bootTest"] == "serial"
    table = login_kiln("image", "show", build.image_id).stdout
    assert re.search(r"^bootTest\s+serial\s*$", table, re.MULTILINE), table
