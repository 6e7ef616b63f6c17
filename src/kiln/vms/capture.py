"""Saving a VM as an image: DevTest Labs' "generalized vs specialized custom images".

Both need the VM stopped (exit 2 otherwise). A running guest's disk changes under any copy, and a
crash-consistent snapshot of it is a disk whose filesystem needs a journal replay; stopping first
gives an exact, clean copy and is what Azure asks before a capture too.

- **Specialized**: the overlay chain (the VM's writes over its image's blob) flattened into one raw
  disk with `qemu-img convert`: an exact copy, same machine-id, same host keys, same users.
- **Generalized**: the same copy's root tree is taken out (kiln.disk.extract), deprovisioned by
  the pipeline's own generalize step (`kiln.generalize.deprovision.generalize`: machine-id, SSH
  host keys, cloud-init instance state, logs...), and assembled into a new disk (kiln.disk), as a
  build with a ManagedImage source does. VMs made from it are new machines that cloud-init
  provisions again.

Unlike Azure, where generalizing (waagent -deprovision, then "generalize") makes the VM itself
unusable, kiln deprovisions a copy offline: the VM is untouched and can be started again.

The result is boot-tested like any build's disk (kiln.validate.boottest) unless `validate=False`,
and only then published: into a managed image, a gallery image version or a lab custom image,
through the same distribute code builds use. Everything the target needs (it does not exist yet,
its definition's osState matches, its lab exists) is checked before the copy is made. The work
happens in a locked work directory (kiln.store.worklock), so a killed capture's leftovers are
what `kiln gc` removes.
"""

from __future__ import annotations

import os
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kiln import ids
from kiln.disk import bios
from kiln.errors import BuildFailed, InvalidInput
from kiln.events import Monitor, NullMonitor
from kiln.run import run
from kiln.store import worklock
from kiln.store.common import new_holder

if TYPE_CHECKING:
    from kiln.ids import ResourceId
    from kiln.store import Store
    from kiln.store.blobs import Blob
    from kiln.store.vms import VirtualMachine

TARGETS = (ids.IMAGE, ids.GALLERY_IMAGE_VERSION, ids.LAB_CUSTOM_IMAGE)
BOOT_TIMEOUT_S = 900.0


@dataclass(frozen=True)
class Captured:
    id: str
    os_state: str
    hyper_v_generation: str
    boot_tested: bool
    resource: dict[str, Any]  # the published resource, as its own `show --json` prints it

    def to_json(self) -> dict[str, Any]:
        return self.resource


def _target(store: Store, text: str, os_state: str) -> ResourceId:
    """The target id, checked to be publishable (and not taken) before any work."""
    rid = ids.try_parse(text)
    kind = rid.kind.lower() if rid else ""
    if rid is None or kind not in (k.lower() for k in TARGETS):
        raise InvalidInput(f"--id {text!r} is not an image id" + (f" ({rid.kind})" if rid else ""),
                           hint=f"give a managed image ({ids.example(ids.IMAGE)}), a gallery image version "
                                f"({ids.example(ids.GALLERY_IMAGE_VERSION)}) or a lab custom image "
                                f"({ids.example(ids.LAB_CUSTOM_IMAGE)})")
    if kind == ids.IMAGE.lower():
        if store.images.find(rid) is not None:
            raise InvalidInput(f"image {rid} already exists", hint="delete it first or capture under another name")
    elif kind == ids.GALLERY_IMAGE_VERSION.lower():
        from kiln.store.galleries import parse_version

        parse_version(rid.name, path="--id")
        definition = store.galleries.get_definition(rid.parent())
        if definition.os_state != os_state:
            raise InvalidInput(f"gallery image definition {definition.id} holds {definition.os_state} images; "
                               f"this capture is {os_state}",
                               hint=f"capture with --{definition.os_state.lower()}, or into a definition with "
                                    f"osState {os_state}")
        if any(v.id == rid for v in store.galleries.list_versions(definition.id)):
            raise InvalidInput(f"gallery image version {rid} already exists",
                               hint="a version cannot be overwritten: capture as another version number")
    else:
        from kiln.store.labs import check_image_name

        store.labs.get(rid.parent())
        check_image_name(rid.name, path="--id")
        if store.labs.find_image(rid) is not None:
            raise InvalidInput(f"lab custom image {rid} already exists", hint="capture under another name")
    return rid


def capture(store: Store, vm: VirtualMachine, target: str, *, os_state: str, validate: bool = True,
            image_path: str = "", monitor: Monitor | None = None) -> Captured:
    """Publish a copy of stopped `vm`'s disk as `target` (see the module docstring). `image_path`
    is the factory's ImagePath tag of a lab custom image (`kiln factory save-vm`)."""
    monitor = monitor or NullMonitor()
    if os_state not in ("Generalized", "Specialized"):
        raise ValueError(os_state)
    rid = _target(store, target, os_state)
    if vm.running:
        raise InvalidInput(f"VM {vm.name} is running: a {os_state.lower()} capture is made of a stopped VM",
                           hint=f"stop it first (kiln vm stop {vm.name}), then capture; it can be started again after")
    work = store.config.work_dir / f"capture-{secrets.token_hex(6)}"
    lock = worklock.hold(work)
    holder = new_holder("capture")
    try:
        disk = work / "disk.raw"
        monitor.step("capture", f"{vm.name}: copy its disk ({vm.overlay} over its image)")
        run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", vm.overlay, disk], capture=True)
        monitor.result("capture")
        generation = vm.hyper_v_generation
        if os_state == "Generalized":
            disk = _generalize(disk, work, monitor)
        boots = bios.boot_generations(disk, "raw")  # a generalized copy is a new kiln disk (hybrid)
        if rid.kind.lower() == ids.GALLERY_IMAGE_VERSION.lower():
            generation = store.galleries.get_definition(rid.parent()).hyper_v_generation
            bios.require_generation(generation, boots, what=f"gallery image definition {rid.parent()}", path="--id",
                                    hint="capture into a definition of a generation the VM's disk boots")
        elif boots and generation not in boots:
            generation = boots[-1]
            monitor.log(f"the captured disk boots {' and '.join(boots)}: recorded as hyperVGeneration {generation}",
                        name="capture")
        check = ""  # which boot test proved it (kiln.validate: ssh-login or serial)
        if validate:
            check = _boot_test(disk, work, monitor, firmware="bios" if generation == "V1" else "uefi")
        else:
            monitor.log("boot test skipped (--no-validate): the image is marked unverified", name="capture")
        blob = store.blobs.ingest(disk, holder=holder, move=True, monitor=monitor)
        return _publish(store, rid, blob, vm, os_state=os_state, generation=generation, check=check,
                        boots=boots, image_path=image_path, monitor=monitor)
    finally:
        store.blobs.release_holder(holder)
        shutil.rmtree(work, ignore_errors=True)
        os.close(lock)


def _generalize(disk: Path, work: Path, monitor: Monitor) -> Path:
    """The pipeline's path for a stored source: root out of the disk, deprovision, a new disk."""
    from kiln.disk.assemble import assemble_disk
    from kiln.disk.boot import prepare_boot
    from kiln.disk.extract import extract_root
    from kiln.generalize.deprovision import generalize

    root = work / "root"
    monitor.step("generalize", "deprovision a copy of the VM's root (the VM itself is unchanged)")
    extract_root(disk, "raw", root, monitor=monitor)
    disk.unlink()
    generalize(root, monitor)
    _keep_machine_id_file(root)
    out = work / "generalized.raw"
    assemble_disk(root, out, prepare_boot(root), monitor=monitor)
    shutil.rmtree(root, ignore_errors=True)
    monitor.result("generalize")
    return out


def _keep_machine_id_file(root: Path) -> None:
    """An empty /etc/machine-id, as generalize means to leave it (systemd's first-boot signal).

    In a root that has booted, /var/lib/dbus/machine-id is a symlink to /etc/machine-id, and
    generalize's removal of that path (resolved inside the root) removes /etc/machine-id itself;
    without the file a VM's first boot cannot commit a machine-id and networkd gets no DHCP lease.
    Reported to generalize's owners; harmless once they fix it.
    """
    mid = root / "etc" / "machine-id"
    if mid.parent.is_dir() and not mid.exists() and not mid.is_symlink():
        mid.write_bytes(b"")
        mid.chmod(0o444)


def _boot_test(disk: Path, work: Path, monitor: Monitor, *, firmware: str) -> str:
    from kiln.validate.boottest import boot_test

    monitor.step("validate", f"boot the captured disk in QEMU ({firmware.upper()})")
    report = boot_test(disk, "raw", timeout_s=BOOT_TIMEOUT_S, monitor=monitor, serial_log=work / "serial.log",
                       work_dir=work, firmware=firmware)
    if not report.ok:
        monitor.result("validate", ok=False, message=report.message)
        raise BuildFailed(f"the captured disk failed its boot test: {report.message}",
                          hint="nothing was published; --no-validate publishes it unverified")
    monitor.result("validate", message=f"booted in {report.seconds:.1f} s ({report.check} check)")
    return report.check


def _publish(store: Store, rid: ResourceId, blob: Blob, vm: VirtualMachine, *, os_state: str, generation: str,
             check: str, boots: tuple[str, ...], image_path: str, monitor: Monitor) -> Captured:
    kind = rid.kind.lower()
    boot_tested = bool(check)
    source = str(vm.id)
    if kind == ids.IMAGE.lower():
        image = store.images.publish_blob(blob, rid, store.config.default_location, os_type=vm.os_type,
                                          os_state=os_state, hyper_v_generation=generation, source=source,
                                          boot_tested=boot_tested, replace=False, monitor=monitor,
                                          boot_generations=boots, boot_test=check)
        return Captured(str(image.id), os_state, generation, boot_tested, image.to_json())
    if kind == ids.GALLERY_IMAGE_VERSION.lower():
        from kiln.distribute.galleries import publish_gallery_version
        from kiln.store.galleries import RegionTarget, VersionRule

        gallery = store.galleries.get(rid.parent().parent())
        version = publish_gallery_version(store, rid.parent(), blob, rule=VersionRule("Explicit", rid.name),
                                          target_regions=[RegionTarget(gallery.location)], source=source,
                                          boot_tested=boot_tested, monitor=monitor, boot_generations=boots)
        return Captured(str(version.id), os_state, generation, boot_tested, version.to_json())
    from kiln.distribute.labs import publish_lab_image

    custom = publish_lab_image(store, rid.parent(), rid.name, blob, os_type=vm.os_type, os_state=os_state,
                               description=f"captured from VM {vm.id}", source=source, boot_tested=boot_tested,
                               image_path=image_path, monitor=monitor)
    return Captured(str(custom.id), os_state, generation, boot_tested, custom.to_json())
