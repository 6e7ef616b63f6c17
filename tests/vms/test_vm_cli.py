"""`kiln vm` without a guest OS: the lifecycle of a detached QEMU, the catalog, and mistakes.

The disks here are small GPT disks with no OS (tests/store_helpers.py): the firmware runs and finds
nothing to boot, which is all these tests need of a VM. QEMU really runs, detached from the kiln
process that started it; the tests look at it from outside (its pid, its files, the catalog).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
from pathlib import Path

import pytest

from processes import alive, eventually
from store_helpers import snapshot

from .conftest import Kiln, image_id

SUB = "00000000-0000-0000-0000-0000000000cc"
GALLERY = f"/subscriptions/{SUB}/resourceGroups/vm-tests/providers/Microsoft.Compute/galleries/g"
LAB = f"/subscriptions/{SUB}/resourceGroups/vm-tests/providers/Microsoft.DevTestLab/labs/TeamLab"


def qemus_of(home: Path) -> list[int]:
    """Pids of processes whose command line names a folder of this state home's VMs."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes()
            except OSError:
                continue
            if str(home / "vms").encode() in cmdline and b"qemu-system" in cmdline and alive(int(proc.name)):
                found.append(int(proc.name))
    return found


def vm_rows(home: Path) -> list[str]:
    conn = sqlite3.connect(home / "catalog.sqlite")
    try:
        return [r[0] for r in conn.execute("SELECT id FROM vms")]
    finally:
        conn.close()


def import_image(kiln: Kiln, disk: Path, name: str, *extra: str) -> str:
    rid = image_id(name)
    kiln.ok("image", "import", str(disk), "--id", rid, *extra)
    return rid


def test_a_vm_runs_detached_stops_starts_and_is_found_stopped_when_its_process_is_gone(kiln: Kiln, raw_disk: Path) -> None:
    image = import_image(kiln, raw_disk, "noos")
    made = kiln.json("vm", "create", "web1", "--image", image, "--no-wait", "--os-disk-size-gb", "1", "--memory", "256")
    assert made["properties"]["provisioningState"] == "Succeeded"
    assert made["id"].endswith("/providers/Microsoft.Compute/virtualMachines/web1")
    assert made["kiln"]["powerState"] == "Running"
    pid = made["kiln"]["pid"]
    # The kiln process that started it has exited; QEMU runs on.
    assert alive(pid) and qemus_of(kiln.home)
    # No SSH key in ~/.ssh: kiln made one in the state home and said where.
    key = kiln.home / "vms" / "ssh" / "id_ed25519"
    assert key.is_file() and made["kiln"]["keyPath"] == str(key)
    assert made["properties"]["osProfile"]["linuxConfiguration"]["ssh"]["publicKeys"][0]["keyData"] == \
        (key.parent / "id_ed25519.pub").read_text().strip()
    # The disk is an overlay on the stored blob, resized; nothing was copied.
    disk = Path(made["kiln"]["disk"])
    info = json.loads(kiln_img_info(disk))
    assert info["format"] == "qcow2" and info["virtual-size"] == 1 << 30
    assert info["full-backing-filename"].startswith(str(kiln.home / "blobs"))
    assert disk.stat().st_blocks * 512 < 1 << 20
    # The serial console is logged (the firmware's output) and QEMU keeps a log of its own.
    assert eventually(lambda: Path(made["kiln"]["serialLog"]).stat().st_size > 0, timeout=120)
    assert "start:" in Path(made["kiln"]["qemuLog"]).read_text()

    listed = kiln.json("vm", "list")
    assert [(v["name"], v["kiln"]["powerState"]) for v in listed] == [("web1", "Running")]
    table = kiln.ok("vm", "list").stdout
    assert "web1" in table and "Running" in table

    # The firmware has no OS to shut down: the power button does nothing, so stop kills it after the grace.
    stopped = kiln.ok("vm", "stop", "web1", "--grace", "2")
    assert "Stopped" in stopped.stdout
    assert not alive(pid) and not qemus_of(kiln.home)
    assert kiln.json("vm", "show", "web1")["kiln"]["powerState"] == "Stopped"

    kiln.ok("vm", "start", "web1")
    again = kiln.json("vm", "show", "web1")
    assert again["kiln"]["powerState"] == "Running" and again["kiln"]["pid"] != pid
    # A host reboot: the process is gone (here killed), and the VM is Stopped, not a stale Running.
    os.killpg(again["kiln"]["pid"], signal.SIGKILL)
    assert eventually(lambda: kiln.json("vm", "show", "web1")["kiln"]["powerState"] == "Stopped", timeout=30)

    kiln.ok("vm", "restart", "web1", "--grace", "2")
    after = kiln.json("vm", "show", "web1")
    assert after["kiln"]["powerState"] == "Running"
    # A pid that now belongs to some other process (after a reboot) does not make the VM Running.
    conn = sqlite3.connect(kiln.home / "catalog.sqlite")
    other = os.getpid()
    real = conn.execute("SELECT pid, pid_start FROM vms").fetchone()
    conn.execute("UPDATE vms SET pid = ?", (other,))
    conn.commit()
    assert kiln.json("vm", "show", "web1")["kiln"]["powerState"] == "Stopped"
    assert kiln("vm", "stop", "web1").returncode == 0 and alive(other)  # the stranger is left alone
    conn.execute("UPDATE vms SET pid = ?, pid_start = ?", real)
    conn.commit()
    conn.close()

    deleted = kiln.ok("vm", "delete", "web1", "--grace", "2")
    assert "deleted" in deleted.stdout
    assert not qemus_of(kiln.home) and not disk.parent.exists() and vm_rows(kiln.home) == []


def kiln_img_info(path: Path) -> str:
    import subprocess

    return subprocess.run(["qemu-img", "info", "-U", "--output=json", str(path)], capture_output=True, text=True,
                          check=True).stdout


def test_an_image_a_vm_uses_keeps_its_blob(kiln: Kiln, raw_disk: Path, other_disk: Path) -> None:
    image = import_image(kiln, raw_disk, "base")
    kiln.ok("vm", "create", "app", "--image", image, "--no-wait", "--memory", "256")
    refused = kiln("image", "delete", image)
    assert refused.returncode == 2, refused.stderr
    assert "virtualMachines/app" in refused.stderr and "kiln vm delete" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert kiln.json("image", "show", image)["id"] == image  # still there

    # A gallery version can go; its blob stays while a VM's overlay reads it.
    kiln.ok("gallery", "create", GALLERY)
    definition = f"{GALLERY}/images/d"
    kiln.ok("gallery", "image-definition", "create", definition, "--publisher", "p", "--offer", "o", "--sku", "s")
    kiln.ok("gallery", "image-version", "create", f"{definition}/versions/1.0.0", "--disk", str(other_disk))
    vm = kiln.json("vm", "create", "fromgallery", "--image", f"{definition}/versions/latest", "--no-wait",
                   "--memory", "256")
    assert vm["properties"]["storageProfile"]["imageReference"]["id"].endswith("/versions/1.0.0")
    digest = vm["kiln"]["digest"]
    kiln.ok("gallery", "image-version", "delete", f"{definition}/versions/1.0.0")
    kiln.ok("vm", "stop", "fromgallery", "--grace", "1")
    kiln.ok("gc")
    blob = kiln.home / "blobs" / digest[:2] / f"{digest}.vhd"
    assert blob.is_file()
    assert kiln.ok("store", "check").returncode == 0
    kiln.ok("vm", "start", "fromgallery")  # its disk still has what it reads
    assert kiln.json("vm", "show", "fromgallery")["kiln"]["powerState"] == "Running"
    # Once the VM is gone, gc frees the blob.
    kiln.ok("vm", "delete", "fromgallery", "--grace", "1")
    kiln.ok("gc")
    assert not blob.exists()


def test_lab_vms_have_lab_ids(kiln: Kiln, raw_disk: Path) -> None:
    image = import_image(kiln, raw_disk, "labsrc")
    kiln.ok("lab", "create", LAB)
    custom = f"{LAB}/customimages/golden"
    # A lab custom image from the managed image's blob, through the factory's save path.
    kiln.ok("vm", "create", "tmp", "--image", image, "--no-wait", "--memory", "256")
    kiln.ok("vm", "stop", "tmp", "--grace", "1")
    kiln.ok("vm", "capture", "tmp", "--id", custom, "--specialized", "--no-validate")
    assert json.loads(kiln.ok("lab", "image", "show", custom).stdout)["properties"]["osState"] == "Specialized"
    made = kiln.json("lab", "vm", "create", LAB, "dev", "--image", "golden", "--no-wait", "--memory", "256")
    assert made["id"] == f"{LAB}/virtualmachines/dev" and made["type"] == "Microsoft.DevTestLab/labs/virtualmachines"
    assert [v["name"] for v in kiln.json("lab", "vm", "list", LAB)] == ["dev"]
    # A lab VM is made from its own lab's images only.
    wrong = kiln("lab", "vm", "create", LAB, "dev2", "--image", image, "--no-wait")
    assert wrong.returncode == 2 and "not a custom image of lab" in wrong.stderr
    # A lab with VMs is not deleted (with or without its images): its VMs would be left unlisted.
    before = snapshot(kiln.home)[0]  # the catalog (the running VM writes its files meanwhile)
    for extra in ((), ("--with-images",)):
        kept = kiln("lab", "delete", LAB, *extra)
        assert kept.returncode == 2 and "still has 1 VM(s): dev" in kept.stderr and "Traceback" not in kept.stderr
    assert snapshot(kiln.home)[0] == before
    kiln.ok("lab", "vm", "delete", LAB, "dev")
    assert kiln.json("lab", "vm", "list", LAB) == []


@pytest.mark.parametrize("case", ["unknown image", "not an image id", "key missing", "not a public key",
                                  "port in use", "disk too small", "bad user", "v1 on a uefi-only disk"])
def test_bad_input_exits_2_and_leaves_nothing(kiln: Kiln, raw_disk: Path, tmp_path: Path, case: str) -> None:
    image = import_image(kiln, raw_disk, "base")
    if case.startswith("v1"):
        # kiln image import refuses V1 for this disk (kiln.disk.bios); a row from before kiln read
        # generations off disks can still say V1, and a VM from it must not hang in SeaBIOS.
        conn = sqlite3.connect(kiln.home / "catalog.sqlite")
        conn.execute("UPDATE images SET hyper_v_generation = 'V1', boot_generations = ''")
        conn.commit()
        conn.close()
    private = tmp_path / "id_test"
    private.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nxx\n-----END OPENSSH PRIVATE KEY-----\n")
    args = ["vm", "create", "vm1", "--image", image, "--no-wait", "--memory", "256"]
    held = socket.socket()
    held.bind(("127.0.0.1", 0))
    held.listen()
    expected = {
        "unknown image": (["--image", image_id("nope")], "does not exist"),
        "not an image id": (["--image", "/subscriptions/s/resourceGroups/r/providers/Microsoft.Network/x/y"],
                            "not an image id"),
        "key missing": (["--ssh-key", str(tmp_path / "absent.pub")], "does not exist"),
        "not a public key": (["--ssh-key", str(private)], "not an OpenSSH public key"),
        "port in use": (["--ssh-port", str(held.getsockname()[1])], "already in use"),
        "disk too small": (["--os-disk-size-gb", "0"], "--os-disk-size-gb"),
        "bad user": (["--admin-username", "root"], "not valid"),
        "v1 on a uefi-only disk": ([], "cannot boot with BIOS"),
    }[case]
    try:
        proc = kiln(*args, *expected[0])
    finally:
        held.close()
    assert proc.returncode == 2, proc.stderr
    assert expected[1] in proc.stderr and "Traceback" not in proc.stderr
    assert vm_rows(kiln.home) == [] and not qemus_of(kiln.home)
    assert not any((kiln.home / "vms").glob("*/os-disk.qcow2"))


def test_factory_saves_a_golden_vm_into_the_factory_lab(kiln: Kiln, raw_disk: Path) -> None:
    """The DevTest Labs flow: a golden VM in the factory lab, saved as a custom image the factory names
    and tags (ImagePath), which `kiln factory distribute` then hands to the labs that ask for it."""
    from kiln.factory import DEFAULT_FACTORY_LAB

    image = import_image(kiln, raw_disk, "golden-src")
    kiln.ok("lab", "create", DEFAULT_FACTORY_LAB)
    kiln.ok("lab", "image", "list", DEFAULT_FACTORY_LAB)
    custom = f"{DEFAULT_FACTORY_LAB}/customimages/seed"
    kiln.ok("vm", "create", "tmp", "--image", image, "--no-wait", "--memory", "256")
    kiln.ok("vm", "stop", "tmp", "--grace", "1")
    kiln.ok("vm", "capture", "tmp", "--id", custom, "--specialized", "--no-validate")
    kiln.ok("lab", "vm", "create", DEFAULT_FACTORY_LAB, "golden1", "--image", "seed", "--no-wait", "--memory", "256")
    running = kiln("factory", "save-vm", "golden1", "--image-path", "Linux/web.json", "--generalized")
    assert running.returncode == 2 and "stop it first" in running.stderr
    kiln.ok("vm", "stop", "golden1", "--grace", "1")
    saved = json.loads(kiln.ok("factory", "save-vm", "golden1", "--image-path", "Linux/web.json", "--specialized",
                               "--no-validate", "--json").stdout)
    assert saved["name"].startswith("Linux_web-") and saved["tags"]["ImagePath"] == "Linux/web.json"
    assert saved["properties"]["vm"]["linuxOsInfo"]["linuxOsState"] == "NonDeprovisioned"
    again = json.loads(kiln.ok("factory", "save-vm", "golden1", "--image-path", "Linux/web.json", "--specialized",
                               "--no-validate", "--json").stdout)
    assert again["name"] == saved["name"] + "-2"  # a second save the same day, as the factory names reruns


def test_a_port_taken_after_kiln_looked_is_refused_by_qemu_or_moved(kiln: Kiln, raw_disk: Path) -> None:
    """Another program can take a VM's port between kiln's look and QEMU's bind. QEMU's refusal
    (pasta's "Failed to bind any port", or QEMU's "Could not set up host forwarding rule") is then the user's error (exit 2) for a port they
    chose; a stopped VM whose port was taken meanwhile starts on a new one."""
    from kiln.config import load_config
    from kiln.errors import InvalidInput
    from kiln.store import Store
    from kiln.vms import qemu

    image = import_image(kiln, raw_disk, "base")
    made = kiln.json("vm", "create", "p1", "--image", image, "--no-wait", "--memory", "256")
    kiln.ok("vm", "stop", "p1", "--grace", "1")
    held = socket.socket()
    held.bind(("127.0.0.1", made["kiln"]["sshPort"]))
    held.listen()
    try:
        with Store.open(load_config(kiln.home)) as store:
            vm = store.vms.get("p1")
            with pytest.raises(InvalidInput, match="already in use") as refused:
                qemu.start(vm, store.blobs.path_for(vm.digest))  # past kiln's own check, as in the race
            said = str(refused.value)  # pasta, which carries the port into QEMU's namespace, or QEMU itself
            assert "Failed to bind any port" in said or "Could not set up host forwarding rule" in said
        assert not qemus_of(kiln.home)
        started = kiln.ok("vm", "start", "p1")
        moved = kiln.json("vm", "show", "p1")
        assert moved["kiln"]["powerState"] == "Running" and moved["kiln"]["sshPort"] != made["kiln"]["sshPort"]
        assert str(moved["kiln"]["sshPort"]) in started.stdout
    finally:
        held.close()
