"""Virtual machines: catalog resources with Azure's ids, whose disks are overlays on stored blobs.

    /subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.Compute/virtualMachines/{name}
    /subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.DevTestLab/labs/{lab}/virtualmachines/{name}

A row says what the VM is (its image and that image's blob digest, admin user and key, SSH port,
size) and where its files are (`dir`: overlay, seed, firmware variables, logs, sockets). Whether it
runs is not stored as a state, which a crash or a host reboot would leave wrong: the row keeps the
pid of its QEMU and that process's start time, and the VM is Running exactly while a process with
that pid and that start time exists (after a reboot the pid is gone or someone else's: Stopped).

The blob a VM's overlay reads is referenced by the row's `digest`, so gc keeps it for as long as
the VM exists, whatever happens to the image the VM was made from (kiln.store.maintenance).
"""

from __future__ import annotations

import builtins
import datetime
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kiln import ids
from kiln.errors import InvalidInput, NotFound
from kiln.ids import ResourceId
from kiln.store.blobs import pid_alive
from kiln.store.db import Catalog, Db, Row, now

VM = "Microsoft.Compute/virtualMachines"
LAB_VM = "Microsoft.DevTestLab/labs/virtualmachines"
# The resource group of a VM created by name only (the subscription is Azure's all-zero one).
DEFAULT_RESOURCE_GROUP = "kiln-vms"
_EXAMPLE = f"/subscriptions/SUB/resourceGroups/RG/providers/{VM}/NAME"
# Azure's rule for Linux VM names (1-64 characters: letters, digits, '-', '.'; no '.' or '-' at the end).
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.-]{0,62}[A-Za-z0-9]$|^[A-Za-z0-9]$")


@dataclass(frozen=True)
class VirtualMachine:
    id: ResourceId
    image_id: str  # the image as resolved when the VM was made (a gallery `latest` is its exact version)
    digest: str  # the blob the overlay's backing file is
    os_type: str
    hyper_v_generation: str
    admin_username: str
    public_key: str
    key_path: Path  # what `kiln vm ssh` hands to ssh -i
    ssh_port: int
    cpus: int
    memory_mib: int
    disk_size: int  # bytes: the overlay's virtual size
    dir: Path
    pid: int | None = None
    pid_start: str = ""
    created: float = 0.0

    @property
    def name(self) -> str:
        return self.id.name

    @property
    def lab_id(self) -> ResourceId | None:
        return self.id.parent() if self.id.kind.lower() == LAB_VM.lower() else None

    @property
    def running(self) -> bool:
        return self.pid is not None and pid_alive(self.pid, self.pid_start)

    @property
    def power_state(self) -> str:
        return "Running" if self.running else "Stopped"

    @property
    def firmware(self) -> str:
        return "bios" if self.hyper_v_generation == "V1" else "uefi"

    # Files of the VM (in `dir`), named once here.
    @property
    def overlay(self) -> Path:
        return self.dir / "os-disk.qcow2"

    @property
    def serial_log(self) -> Path:
        return self.dir / "serial.log"

    @property
    def qemu_log(self) -> Path:
        return self.dir / "qemu.log"

    @property
    def qmp_socket(self) -> Path:
        return self.dir / "qmp.sock"

    @property
    def console_socket(self) -> Path:
        return self.dir / "console.sock"

    @property
    def seed(self) -> Path:
        return self.dir / "seed.iso"

    @property
    def firmware_vars(self) -> Path:
        return self.dir / "OVMF_VARS.qcow2"

    def to_json(self) -> dict[str, Any]:
        created = datetime.datetime.fromtimestamp(self.created, datetime.UTC).isoformat().replace("+00:00", "Z")
        state = self.power_state
        return {
            "id": str(self.id), "name": self.name, "type": LAB_VM if self.lab_id else VM,
            "properties": {
                "hardwareProfile": {"vCPUs": self.cpus, "memoryMiB": self.memory_mib},
                "storageProfile": {
                    "imageReference": {"id": self.image_id},
                    "osDisk": {"osType": self.os_type, "diskSizeGB": -(-self.disk_size // (1 << 30))},
                },
                "osProfile": {"adminUsername": self.admin_username, "linuxConfiguration": {
                    "disablePasswordAuthentication": True,
                    "ssh": {"publicKeys": [{"keyData": self.public_key}]}}},
                "hyperVGeneration": self.hyper_v_generation,
                "instanceView": {"statuses": [{"code": f"PowerState/{state.lower()}", "displayStatus": f"VM {state.lower()}"}]},
                "timeCreated": created,
                "provisioningState": "Succeeded",
            },
            "kiln": {
                "powerState": state, "ssh": f"ssh -p {self.ssh_port} -i {self.key_path} {self.admin_username}@127.0.0.1",
                "sshPort": self.ssh_port, "keyPath": str(self.key_path), "digest": self.digest,
                "firmware": self.firmware, "dir": str(self.dir), "disk": str(self.overlay),
                "serialLog": str(self.serial_log), "qemuLog": str(self.qemu_log),
                "pid": self.pid if self.running else None,
            },
        }


def vm_id(text: str) -> ResourceId:
    """A VM id from a full id or a bare NAME (then in the default subscription and resource group)."""
    if text.startswith("/"):
        rid = ids.try_parse(text)
        if rid is None or rid.kind.lower() not in (VM.lower(), LAB_VM.lower()):
            raise InvalidInput(f"VM id {text!r} is malformed", hint=f"expected a NAME or {_EXAMPLE}")
    else:
        rid = ResourceId(ids.NULL_SUBSCRIPTION, DEFAULT_RESOURCE_GROUP, "Microsoft.Compute", ("virtualMachines",), (text,))
    check_name(rid.name)
    return rid


def lab_vm_id(lab: ResourceId, name: str) -> ResourceId:
    return lab.child("virtualmachines", check_name(name))


def check_name(name: str) -> str:
    if not _NAME.match(name):
        raise InvalidInput(f"VM name {name!r} is not valid",
                           hint="1-64 letters, digits, '-' or '.', starting and ending with a letter or digit")
    return name


class Vms:
    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog

    def _row(self, r: Row) -> VirtualMachine:
        return VirtualMachine(
            id=ids.try_parse(r["id"]) or ids.parse(r["id"]), image_id=r["image_id"], digest=r["digest"],
            os_type=r["os_type"], hyper_v_generation=r["hyper_v_generation"], admin_username=r["admin_username"],
            public_key=r["public_key"], key_path=Path(r["key_path"]), ssh_port=r["ssh_port"], cpus=r["cpus"],
            memory_mib=r["memory_mib"], disk_size=r["disk_size"], dir=Path(r["dir"]), pid=r["pid"],
            pid_start=r["pid_start"], created=r["created"])

    def find(self, rid: ResourceId) -> VirtualMachine | None:
        row = self.catalog.one("SELECT * FROM vms WHERE key = ?", (rid.key,))
        return self._row(row) if row else None

    def get(self, text: str | ResourceId) -> VirtualMachine:
        """A VM by id, or by name when exactly one VM (lab VMs included) has that name."""
        if isinstance(text, ResourceId) or text.startswith("/"):
            rid = text if isinstance(text, ResourceId) else vm_id(text)
            found = self.find(rid)
            if found is None:
                raise NotFound(f"VM {rid} does not exist", hint="kiln vm list shows the VMs")
            return found
        rows = self.catalog.query("SELECT * FROM vms WHERE lower(name) = lower(?) ORDER BY key", (text,))
        if not rows:
            raise NotFound(f"no VM is named {text!r}", hint="kiln vm list shows the VMs; kiln vm create makes one")
        if len(rows) > 1:
            raise InvalidInput(f"{len(rows)} VMs are named {text!r}: " + ", ".join(r["id"] for r in rows),
                               hint="give the VM's full id")
        return self._row(rows[0])

    def list(self, lab: ResourceId | None = None) -> builtins.list[VirtualMachine]:
        if lab is None:
            return [self._row(r) for r in self.catalog.query("SELECT * FROM vms ORDER BY key")]
        return [self._row(r) for r in self.catalog.query("SELECT * FROM vms WHERE lab_key = ? ORDER BY key", (lab.key,))]

    def add(self, vm: VirtualMachine) -> VirtualMachine:
        """Insert the row (no process yet). A taken id or SSH port is refused (a serializable
        transaction: two adds of one port at once never both find it free)."""
        lab = vm.lab_id

        def add(db: Db) -> None:
            if db.execute("SELECT 1 FROM vms WHERE key = ?", (vm.id.key,)).fetchone():
                raise InvalidInput(f"VM {vm.id} already exists", hint="delete it first (kiln vm delete) or pick another name")
            other = db.execute("SELECT id FROM vms WHERE ssh_port = ?", (vm.ssh_port,)).fetchone()
            if other is not None:
                raise InvalidInput(f"SSH port {vm.ssh_port} belongs to VM {other['id']}", hint="pick another --ssh-port")
            db.execute(
                "INSERT INTO vms (key, id, name, lab_key, image_id, image_key, digest, os_type, hyper_v_generation,"
                " admin_username, public_key, key_path, ssh_port, cpus, memory_mib, disk_size, dir, pid, pid_start,"
                " created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, '', ?)",
                (vm.id.key, str(vm.id), vm.name, lab.key if lab else "", vm.image_id, vm.image_id.lower(), vm.digest,
                 vm.os_type, vm.hyper_v_generation, vm.admin_username, vm.public_key, str(vm.key_path), vm.ssh_port,
                 vm.cpus, vm.memory_mib, vm.disk_size, str(vm.dir), vm.created or now()))

        self.catalog.transact(add, parents=[("labs", lab.key)] if lab else [])  # lab: its delete counts its VMs
        found = self.find(vm.id)
        assert found is not None
        return found

    def set_process(self, rid: ResourceId, pid: int | None, pid_start: str = "") -> None:
        with self.catalog.write() as db:
            db.execute("UPDATE vms SET pid = ?, pid_start = ? WHERE key = ?", (pid, pid_start, rid.key))

    def set_port(self, rid: ResourceId, port: int) -> None:
        with self.catalog.write() as db:
            db.execute("UPDATE vms SET ssh_port = ? WHERE key = ?", (port, rid.key))

    def remove(self, rid: ResourceId) -> None:
        with self.catalog.write() as db:
            db.execute("DELETE FROM vms WHERE key = ?", (rid.key,))

    def using_image(self, image: ResourceId) -> builtins.list[VirtualMachine]:
        """The VMs made from `image` (their overlays read its blob)."""
        return [self._row(r) for r in self.catalog.query("SELECT * FROM vms WHERE image_key = ? ORDER BY key",
                                                         (image.key,))]

    def ports(self) -> set[int]:
        return {r["ssh_port"] for r in self.catalog.query("SELECT ssh_port FROM vms")}
