"""Creating, starting, stopping and deleting VMs.

`create` checks everything first (the id is free, the image exists and suits the firmware, the key
is an OpenSSH public key, the port is free, the size holds the image), then writes the catalog row
(which takes the name and the port under the write lock), then makes the VM's folder and starts
QEMU. If anything fails after the row, the row, the folder and any QEMU go again: a failed create
leaves nothing behind, running or stored.

The VM's folder (`<state home>/vms/<16 hex>/`, short so its sockets' paths fit) holds:
`os-disk.qcow2` (the overlay on the image's blob), `seed.iso` (NoCloud: admin user and key; kept
and attached at every start with the same instance id, so cloud-init provisions once),
`OVMF_VARS.qcow2` (UEFI variables), `serial.log` (everything the serial console printed),
`qemu.log` (QEMU's own messages, one section per start), and the `console.sock`/`qmp.sock`
sockets while it runs.
"""

from __future__ import annotations

import hashlib
import re
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from kiln.access import keys, ssh
from kiln.access.seed import Seed
from kiln.errors import InvalidInput
from kiln.events import Monitor, NullMonitor
from kiln.ids import ResourceId
from kiln.sandbox.vm import detect_accel
from kiln.store.common import new_holder
from kiln.store.db import now
from kiln.store.vms import VirtualMachine
from kiln.vms import images, qemu

if TYPE_CHECKING:
    from kiln.store import Store

DEFAULT_ADMIN = "azureuser"  # Azure's default admin user name (az vm create, the portal)
DEFAULT_MEMORY_MIB = 2048
STOP_GRACE_S = 60.0  # for the guest to shut down after the power button, before QEMU is killed
PORT_ATTEMPTS = 3  # QEMU starts with a port kiln picked, before it gives up
KEY_NAME = "id_ed25519"  # the key kiln makes when the user has none, in <state home>/vms/ssh/
_USER = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
_RESERVED_USERS = {"root", "daemon", "bin", "sys", "sync", "games", "man", "lp", "mail", "news", "uucp", "proxy",
                   "www-data", "backup", "list", "irc", "nobody", "systemd-network", "messagebus", "sshd", "admin"}


@dataclass(frozen=True)
class CreateRequest:
    id: ResourceId
    image: str
    ssh_key: Path | None = None
    admin_username: str = DEFAULT_ADMIN
    cpus: int | None = None  # None: 1 under TCG (a second vCPU only slows it), 2 with KVM
    memory_mib: int = DEFAULT_MEMORY_MIB
    os_disk_size_gb: int | None = None  # None: the image's size
    ssh_port: int | None = None  # None: a free one
    lab: ResourceId | None = None


@dataclass(frozen=True)
class Created:
    vm: VirtualMachine
    notes: tuple[str, ...]  # what the user should know (a key kiln made, and where)


def default_cpus() -> int:
    return 1 if detect_accel() == "tcg" else 2


def vm_dir(home: Path, rid: ResourceId) -> Path:
    return home / "vms" / hashlib.sha256(rid.key.encode()).hexdigest()[:16]


def check_admin(name: str) -> str:
    if not _USER.match(name) or name in _RESERVED_USERS:
        raise InvalidInput(f"admin user name {name!r} is not valid",
                           hint="lower-case letters, digits, '_' or '-', at most 32, not a system user such as root")
    return name


def choose_key(home: Path, given: Path | None) -> tuple[str, Path, str]:
    """(public key line, what ssh -i gets, a note for the user) for the VM's admin user."""
    if given is not None:
        given = given.expanduser().absolute()
        if not given.exists():
            raise InvalidInput(f"--ssh-key {given} does not exist", hint="give an OpenSSH public key file (.pub)")
        public = keys.read_public_key(given)
        private = given.with_suffix("") if given.suffix == ".pub" else given
        # Without the private half next to it, ssh -i FILE.pub picks that key from the agent.
        return public, private if private.is_file() and private != given else given, ""
    found = keys.user_public_key(Path.home())
    if found is not None:
        private = found.with_suffix("")
        return keys.read_public_key(found), private if private.is_file() else found, ""
    path = home / "vms" / "ssh" / KEY_NAME
    if path.is_file() and path.with_name(KEY_NAME + ".pub").is_file():
        return keys.read_public_key(path.with_name(KEY_NAME + ".pub")), path, f"logging in with kiln's VM key {path}"
    made = keys.make_key(path, comment="kiln-vms")
    return made.public, made.private, f"no ~/.ssh/id_*.pub found: made an SSH key for kiln's VMs at {made.private}"


def hostname(name: str) -> str:
    return re.sub(r"[^a-z0-9-]", "-", name.lower())[:63].strip("-") or "vm"


def create(store: Store, request: CreateRequest, monitor: Monitor | None = None) -> Created:
    monitor = monitor or NullMonitor()
    config = store.config
    rid = request.id
    if store.vms.find(rid) is not None:
        raise InvalidInput(f"VM {rid} already exists", hint="delete it first (kiln vm delete) or pick another name")
    admin = check_admin(request.admin_username)
    source = images.resolve(store, request.image, lab=request.lab)
    if source.os_type != "Linux":
        raise InvalidInput(f"image {source.id} is {source.os_type}; kiln runs Linux VMs only",
                           hint="Windows guests need media and licences this host does not have")
    images.check_generation(source)
    size = source.virtual_size if request.os_disk_size_gb is None else request.os_disk_size_gb << 30
    if size < source.virtual_size:
        raise InvalidInput(f"--os-disk-size-gb {request.os_disk_size_gb} is smaller than the image "
                           f"({-(-source.virtual_size // (1 << 30))} GiB)", hint="give at least the image's size, or leave it out")
    if request.cpus is not None and request.cpus < 1 or request.memory_mib < 256:
        raise InvalidInput("a VM needs at least 1 vCPU and 256 MiB of memory", hint="e.g. --cpus 2 --memory 2048")
    if request.ssh_port is not None:
        if not 1024 <= request.ssh_port <= 65535:
            raise InvalidInput(f"--ssh-port {request.ssh_port} is not a port kiln can forward",
                               hint="give a port from 1024 to 65535, or leave it out")
        if ssh.port_in_use(request.ssh_port):
            raise InvalidInput(f"SSH port {request.ssh_port} on 127.0.0.1 is already in use",
                               hint="pick another --ssh-port, or leave it out to get a free one")
        port = request.ssh_port
    else:
        port = _free_port(store)
    public, key_path, note = choose_key(config.home, request.ssh_key)
    vm = VirtualMachine(
        id=rid, image_id=source.id, digest=source.digest, os_type=source.os_type,
        hyper_v_generation=source.hyper_v_generation, admin_username=admin, public_key=public, key_path=key_path,
        ssh_port=port, cpus=request.cpus or default_cpus(), memory_mib=request.memory_mib, disk_size=size,
        dir=vm_dir(config.home, rid), created=now())
    holder = new_holder("vm")
    store.blobs.take_lease(source.digest, holder)  # gc keeps the blob until the row references it
    try:
        if not source.disk.is_file():
            raise InvalidInput(f"the disk of image {source.id} is missing ({source.disk})", hint="run kiln store check")
        vm = store.vms.add(vm)
    finally:
        store.blobs.release_holder(holder)
    try:
        shutil.rmtree(vm.dir, ignore_errors=True)  # a folder no row claims: a killed create's
        vm.dir.mkdir(parents=True)
        qemu.prepare_disk(vm, source.disk)
        qemu.write_seed_file(Seed(instance_id=f"kiln-{vm.dir.name}-{int(vm.created)}", hostname=hostname(vm.name),
                                  user=admin, public_keys=(public,)), vm.seed)
        monitor.log(f"vm {vm.name}: {source.id} ({vm.firmware.upper()}, {vm.cpus} vCPU, {vm.memory_mib} MiB, "
                    f"{size >> 30} GiB disk), SSH on 127.0.0.1:{port}", name="vm")
        vm = start(store, vm, port_fixed=request.ssh_port is not None)
    except BaseException:
        if vm.pid is not None:
            qemu.kill_group(vm.pid, vm.pid_start)
        shutil.rmtree(vm.dir, ignore_errors=True)
        store.vms.remove(vm.id)
        raise
    return Created(vm, (note,) if note else ())


def _free_port(store: Store) -> int:
    taken = store.vms.ports()
    for _ in range(100):
        port = ssh.free_port()
        if port not in taken:
            return port
    raise RuntimeError("no free port found in 100 tries")


def start(store: Store, vm: VirtualMachine, *, port_fixed: bool = False) -> VirtualMachine:
    """Start a stopped VM (a running one is returned as it is). Its SSH port moves if another
    program took it meanwhile (the new one is in the catalog: `kiln vm ssh` follows it), unless
    the user chose it (`port_fixed`: then a taken port is their error, exit 2)."""
    if vm.running:
        return vm
    backing = store.blobs.path_for(vm.digest)
    for attempt in range(PORT_ATTEMPTS):
        if ssh.port_in_use(vm.ssh_port) and not port_fixed:
            vm = _move_port(store, vm)
        try:
            pid, started = qemu.start(vm, backing)
            break
        except qemu.PortTaken:
            # Taken between kiln's look and QEMU's bind: a port kiln picked is picked again.
            if port_fixed or attempt == PORT_ATTEMPTS - 1:
                raise
            vm = _move_port(store, vm)
    store.vms.set_process(vm.id, pid, started)
    return replace(vm, pid=pid, pid_start=started)


def _move_port(store: Store, vm: VirtualMachine) -> VirtualMachine:
    port = _free_port(store)
    store.vms.set_port(vm.id, port)
    return replace(vm, ssh_port=port)


def stop(store: Store, vm: VirtualMachine, *, grace: float = STOP_GRACE_S) -> str:
    how = qemu.stop(vm, grace=grace)
    store.vms.set_process(vm.id, None)
    for sock in (vm.qmp_socket, vm.console_socket):
        sock.unlink(missing_ok=True)
    return how


def delete(store: Store, vm: VirtualMachine, *, grace: float = STOP_GRACE_S) -> str:
    """Stop QEMU, then forget the VM and remove its folder (overlay, seed, logs)."""
    how = qemu.stop(vm, grace=grace)
    store.vms.remove(vm.id)
    shutil.rmtree(vm.dir, ignore_errors=True)
    return how


def target(vm: VirtualMachine) -> ssh.SshTarget:
    return ssh.SshTarget(vm.admin_username, vm.ssh_port, vm.key_path)


def wait_for_ssh(vm: VirtualMachine, timeout_s: float) -> float | None:
    """Seconds until the admin user's SSH login worked, or None (timed out, or QEMU went away)."""
    return ssh.wait_for_login(target(vm), timeout_s=timeout_s, alive=lambda: qemu.alive(vm.pid, vm.pid_start),
                              poll_s=1.0)
