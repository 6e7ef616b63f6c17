"""Commands for VMs made from stored images (kiln.vms).

    kiln vm create NAME --image ID [--ssh-key FILE] [--admin-username U] [--cpus N] [--memory MiB]
                   [--os-disk-size-gb N] [--ssh-port P] [--no-wait] [--json]
    kiln vm list | show NAME | ssh NAME [-- CMD...] | console NAME [--log] | stop | start | restart | delete NAME
    kiln vm capture NAME --id TARGET --generalized|--specialized [--no-validate]
    kiln lab vm create LAB NAME --image LAB_IMAGE [...] | list LAB | delete LAB NAME
    kiln factory save-vm VM --image-path PATH --generalized|--specialized [--factory-lab LAB]

NAME is a VM's name (when one VM has it) or its full id. Bad input exits 2 before anything is
started or stored.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from kiln.cli import App, pass_app
from kiln.cli.common import Rows, emit, json_option, make_monitor, open_store, print_json
from kiln.errors import BuildFailed, InvalidInput

if TYPE_CHECKING:
    from kiln.store.vms import VirtualMachine
    from kiln.vms.lifecycle import CreateRequest

WAIT_S = 900.0
SSH_CONNECT_TIMEOUT_S = 60


def _rows(vms: list[VirtualMachine]) -> Rows:
    return (("NAME", "POWER STATE", "SSH", "IMAGE", "ID"),
            [(v.name, v.power_state, f"127.0.0.1:{v.ssh_port}", v.image_id, str(v.id)) for v in vms])


def _show_rows(v: VirtualMachine) -> Rows:
    return (("FIELD", "VALUE"), [
        ("id", v.id), ("powerState", v.power_state), ("image", v.image_id), ("osType", v.os_type),
        ("hyperVGeneration", f"{v.hyper_v_generation} ({v.firmware.upper()})"), ("adminUsername", v.admin_username),
        ("ssh", f"kiln vm ssh {v.name}  (ssh -p {v.ssh_port} -i {v.key_path} {v.admin_username}@127.0.0.1)"),
        ("size", f"{v.cpus} vCPU, {v.memory_mib} MiB, {v.disk_size >> 30} GiB disk"),
        ("disk", v.overlay), ("serialLog", v.serial_log), ("qemuLog", v.qemu_log)])


def _create(app: App, request: CreateRequest, no_wait: bool, wait_timeout: float, as_json: bool) -> None:
    from kiln.vms import lifecycle

    monitor = make_monitor(app)
    with open_store(app) as store:
        created = lifecycle.create(store, request, monitor)
    vm = created.vm
    for note in created.notes:
        click.echo(note, err=True)
    if not as_json:
        click.echo(f"created VM {vm.name} ({vm.id}) from {vm.image_id}, {vm.power_state}")
        click.echo(f"  connect:  kiln vm ssh {vm.name}    (ssh -p {vm.ssh_port} -i {vm.key_path} "
                   f"{vm.admin_username}@127.0.0.1)")
        click.echo(f"  console:  kiln vm console {vm.name}    (log: {vm.serial_log})")
    waited = None if no_wait else _wait(app, vm, wait_timeout)
    if as_json:
        data = vm.to_json()
        data["kiln"]["sshReadySeconds"] = waited
        print_json(data)


def _wait(app: App, vm: VirtualMachine, timeout: float) -> float:
    from kiln.vms import lifecycle

    if app.progress == "text":
        click.echo(f"waiting for the SSH login of {vm.admin_username} (first boot provisions it)...", err=True)
    seconds = lifecycle.wait_for_ssh(vm, timeout)
    if seconds is None:
        raise BuildFailed(f"VM {vm.name} is {'running' if vm.running else 'stopped'}, but SSH login did not work "
                          f"within {timeout:.0f} s", hint=f"its serial console log: {vm.serial_log}; "
                          f"QEMU's: {vm.qemu_log}; kiln vm delete {vm.name} removes it")
    if app.progress == "text":
        click.echo(f"SSH login works ({seconds:.0f} s)", err=True)
    return seconds


def _create_options(f: Any) -> Any:
    for option in reversed((
        click.option("--ssh-key", type=click.Path(path_type=Path), default=None,
                     help="OpenSSH public key for the admin user (default: ~/.ssh/id_*.pub, else one kiln makes)."),
        click.option("--admin-username", default="azureuser", show_default=True, help="The admin user to provision."),
        click.option("--cpus", type=click.IntRange(min=1), default=None, help="vCPUs (default: 1 under TCG, 2 with KVM)."),
        click.option("--memory", "memory_mib", type=click.IntRange(min=256), default=2048, show_default=True,
                     help="Memory in MiB."),
        click.option("--os-disk-size-gb", type=click.IntRange(min=1), default=None,
                     help="OS disk size (default: the image's); the guest grows its root into it."),
        click.option("--ssh-port", type=int, default=None, help="Host port on 127.0.0.1 for SSH (default: a free one)."),
        click.option("--no-wait", is_flag=True, help="Return once QEMU runs, without waiting for the SSH login."),
        click.option("--wait-timeout", type=float, default=WAIT_S, show_default=True,
                     help="Seconds to wait for the SSH login."),
        json_option,
    )):
        f = option(f)
    return f


def _get(app: App, name: str) -> VirtualMachine:
    with open_store(app) as store:
        return store.vms.get(name)


def register_vm(cli: click.Group) -> None:
    @cli.group("vm")
    def vm() -> None:
        """VMs from stored images: create, log in, stop, start, capture as images."""

    @vm.command("create")
    @click.argument("name")
    @click.option("--image", "image", required=True,
                  help="Managed image, gallery image version (.../versions/latest too) or lab custom image id.")
    @_create_options
    @pass_app
    def create(app: App, name: str, image: str, ssh_key: Path | None, admin_username: str, cpus: int | None,
               memory_mib: int, os_disk_size_gb: int | None, ssh_port: int | None, no_wait: bool, wait_timeout: float,
               as_json: bool) -> None:
        """Create VM NAME (or a full .../virtualMachines/NAME id) from an image and start it."""
        from kiln.store.vms import vm_id
        from kiln.vms.lifecycle import CreateRequest

        request = CreateRequest(id=vm_id(name), image=image, ssh_key=ssh_key, admin_username=admin_username,
                                cpus=cpus, memory_mib=memory_mib, os_disk_size_gb=os_disk_size_gb, ssh_port=ssh_port)
        _create(app, request, no_wait, wait_timeout, as_json)

    @vm.command("list")
    @json_option
    @pass_app
    def list_(app: App, as_json: bool) -> None:
        """List VMs (lab VMs too) with their power state."""
        with open_store(app) as store:
            vms = store.vms.list()
        emit(as_json, [v.to_json() for v in vms], lambda: _rows(vms), whole=("ID", "IMAGE"))

    @vm.command("show")
    @click.argument("name")
    @json_option
    @pass_app
    def show(app: App, name: str, as_json: bool) -> None:
        """Show one VM: power state, how to connect, where its disk and logs are."""
        v = _get(app, name)
        emit(as_json, v.to_json(), lambda: _show_rows(v), whole=("FIELD", "VALUE"))

    @vm.command("ssh", context_settings={"ignore_unknown_options": True})
    @click.argument("name")
    @click.argument("command", nargs=-1, type=click.UNPROCESSED)
    @pass_app
    def ssh_(app: App, name: str, command: tuple[str, ...]) -> None:
        """Log in to VM NAME as its admin user with OpenSSH (or run COMMAND there)."""
        from kiln.access.ssh import ssh_argv
        from kiln.vms.lifecycle import target

        v = _get(app, name)
        if not v.running:
            raise InvalidInput(f"VM {v.name} is not running", hint=f"kiln vm start {v.name}")
        # kiln.access.ssh.interactive's command line, with a patient connect timeout: a TCG guest
        # on a busy host can take longer than 10 s to send its SSH banner.
        argv = ssh_argv(target(v), *command, tty=not command, batch=False, connect_timeout=SSH_CONNECT_TIMEOUT_S)
        try:
            os.execvp("ssh", ["ssh", *argv[1:]])  # ssh_argv's command line (its argv[0] is "ssh", kiln.access.ssh.SSH)
        except FileNotFoundError:
            from kiln.tools import ToolMissing

            raise ToolMissing(argv[0]) from None

    @vm.command("console")
    @click.argument("name")
    @click.option("--log", "show_log", is_flag=True, help="Print the serial console's log instead of attaching.")
    @pass_app
    def console(app: App, name: str, show_log: bool) -> None:
        """Attach to VM NAME's serial console (Ctrl-] detaches), or print its log (--log)."""
        from kiln.vms.console import attach

        v = _get(app, name)
        if show_log:
            click.echo(v.serial_log.read_text(errors="replace") if v.serial_log.exists() else "", nl=False)
            return
        attach(v)

    @vm.command("stop")
    @click.argument("name")
    @click.option("--grace", type=float, default=60.0, show_default=True,
                  help="Seconds the guest gets to shut down after the power button before QEMU is killed.")
    @pass_app
    def stop(app: App, name: str, grace: float) -> None:
        """Power VM NAME off gracefully (ACPI power button, then kill after --grace)."""
        from kiln.vms import lifecycle

        with open_store(app) as store:
            v = store.vms.get(name)
            how = lifecycle.stop(store, v, grace=grace)
        click.echo(f"{v.name}: {how}; Stopped")

    @vm.command("start")
    @click.argument("name")
    @click.option("--wait", "wait", is_flag=True, help="Wait until the SSH login works.")
    @pass_app
    def start(app: App, name: str, wait: bool) -> None:
        """Start a stopped VM NAME."""
        from kiln.vms import lifecycle

        with open_store(app) as store:
            v = lifecycle.start(store, store.vms.get(name))
        click.echo(f"{v.name}: Running, SSH on 127.0.0.1:{v.ssh_port} (kiln vm ssh {v.name})")
        if wait:
            _wait(app, v, WAIT_S)

    @vm.command("restart")
    @click.argument("name")
    @click.option("--grace", type=float, default=60.0, show_default=True)
    @pass_app
    def restart(app: App, name: str, grace: float) -> None:
        """Stop VM NAME gracefully and start it again."""
        from kiln.vms import lifecycle

        with open_store(app) as store:
            v = store.vms.get(name)
            lifecycle.stop(store, v, grace=grace)
            v = lifecycle.start(store, store.vms.get(v.id))
        click.echo(f"{v.name}: restarted, SSH on 127.0.0.1:{v.ssh_port}")

    @vm.command("delete")
    @click.argument("name")
    @click.option("--grace", type=float, default=10.0, show_default=True,
                  help="Seconds the guest gets to shut down before QEMU is killed.")
    @pass_app
    def delete(app: App, name: str, grace: float) -> None:
        """Stop VM NAME and delete it with its disk overlay (its image stays)."""
        from kiln.vms import lifecycle

        with open_store(app) as store:
            v = store.vms.get(name)
            lifecycle.delete(store, v, grace=grace)
        click.echo(f"deleted {v.id}")

    @vm.command("capture")
    @click.argument("name")
    @click.option("--id", "target_id", required=True,
                  help="The image to make: managed image, gallery image version or lab custom image id.")
    @click.option("--generalized", "state", flag_value="Generalized", help="Deprovision the copy (a new machine per VM).")
    @click.option("--specialized", "state", flag_value="Specialized", help="An exact copy of the VM's disk.")
    @click.option("--no-validate", is_flag=True, help="Skip the boot test (the image is marked unverified).")
    @json_option
    @pass_app
    def capture(app: App, name: str, target_id: str, state: str | None, no_validate: bool, as_json: bool) -> None:
        """Save stopped VM NAME's disk as an image (the VM stays as it is)."""
        from kiln.vms.capture import capture as run_capture

        if state is None:
            raise InvalidInput("say --generalized or --specialized", hint="--generalized deprovisions the copy; "
                                                                         "--specialized keeps it exactly as the VM's disk")
        with open_store(app) as store:
            made = run_capture(store, store.vms.get(name), target_id, os_state=state, validate=not no_validate,
                               monitor=make_monitor(app))
        if as_json:
            print_json(made.to_json())
        else:
            click.echo(f"captured {name} as {made.id} ({state}, {'boot-tested' if made.boot_tested else 'not boot-tested'})")


def register_lab_vm(cli: click.Group) -> None:
    lab = cli.commands.get("lab")
    if not isinstance(lab, click.Group):
        return

    @lab.group("vm")
    def vm() -> None:
        """A lab's VMs (made from its custom images)."""

    @vm.command("create")
    @click.argument("lab_id")
    @click.argument("name")
    @click.option("--image", "image", required=True, help="A custom image of the lab: its NAME or id.")
    @_create_options
    @pass_app
    def create(app: App, lab_id: str, name: str, image: str, ssh_key: Path | None, admin_username: str,
               cpus: int | None, memory_mib: int, os_disk_size_gb: int | None, ssh_port: int | None, no_wait: bool,
               wait_timeout: float, as_json: bool) -> None:
        """Create VM NAME in lab LAB_ID from one of the lab's custom images."""
        from kiln.store.vms import lab_vm_id
        from kiln.vms.lifecycle import CreateRequest

        with open_store(app) as store:
            found = store.labs.get(lab_id)
        request = CreateRequest(id=lab_vm_id(found.id, name), image=image, ssh_key=ssh_key,
                                admin_username=admin_username, cpus=cpus, memory_mib=memory_mib,
                                os_disk_size_gb=os_disk_size_gb, ssh_port=ssh_port, lab=found.id)
        _create(app, request, no_wait, wait_timeout, as_json)

    @vm.command("list")
    @click.argument("lab_id")
    @json_option
    @pass_app
    def list_(app: App, lab_id: str, as_json: bool) -> None:
        """List the VMs of lab LAB_ID."""
        with open_store(app) as store:
            vms = store.vms.list(store.labs.get(lab_id).id)
        emit(as_json, [v.to_json() for v in vms], lambda: _rows(vms), whole=("ID", "IMAGE"))

    @vm.command("delete")
    @click.argument("lab_id")
    @click.argument("name")
    @pass_app
    def delete(app: App, lab_id: str, name: str) -> None:
        """Stop and delete VM NAME of lab LAB_ID."""
        from kiln.store.vms import lab_vm_id
        from kiln.vms import lifecycle

        with open_store(app) as store:
            v = store.vms.get(lab_vm_id(store.labs.get(lab_id).id, name))
            lifecycle.delete(store, v, grace=10.0)
        click.echo(f"deleted {v.id}")


def register_factory_save_vm(cli: click.Group) -> None:
    factory = cli.commands.get("factory")
    if not isinstance(factory, click.Group):
        return

    @factory.command("save-vm")
    @click.argument("name")
    @click.option("--image-path", required=True, help="The golden image's path (its ImagePath tag), e.g. Linux/web.json.")
    @click.option("--generalized", "state", flag_value="Generalized", help="Deprovision the copy (a new machine per VM).")
    @click.option("--specialized", "state", flag_value="Specialized", help="An exact copy of the VM's disk.")
    @click.option("--no-validate", is_flag=True, help="Skip the boot test (the image is marked unverified).")
    @click.option("--factory-lab", default=None, help="The factory lab (default: kiln's ImageFactory lab).")
    @click.option("--location", default=None, help="Region of the factory lab if it is created (default: the first).")
    @json_option
    @pass_app
    def save_vm(app: App, name: str, image_path: str, state: str | None, no_validate: bool, factory_lab: str | None,
                location: str | None, as_json: bool) -> None:
        """Save stopped VM NAME (a golden VM, usually made in the factory lab) into the factory lab as a custom
        image named and tagged as the factory names its builds, ready for `kiln factory distribute`."""
        from kiln.factory import DEFAULT_FACTORY_LAB
        from kiln.factory.build import ensure_lab
        from kiln.factory.config import normalize_path
        from kiln.factory.names import dated_name, unique_name
        from kiln.store.db import now
        from kiln.vms.capture import capture as run_capture

        if state is None:
            raise InvalidInput("say --generalized or --specialized", hint="as the DevTest Labs factory saves VMs")
        path = normalize_path(image_path)
        with open_store(app) as store:
            v = store.vms.get(name)
            lab = ensure_lab(store, factory_lab or DEFAULT_FACTORY_LAB, location or app.config.default_location)
            taken = {i.name.lower() for i in store.labs.images(lab.id)}
            target = lab.id.child("customimages", unique_name(dated_name(path, now()), taken))
            made = run_capture(store, v, str(target), os_state=state, validate=not no_validate, image_path=path,
                               monitor=make_monitor(app))
        if as_json:
            print_json(made.to_json())
        else:
            click.echo(f"saved {v.name} as {made.id} ({path}, {state}, "
                       f"{'boot-tested' if made.boot_tested else 'not boot-tested'})")


def register(cli: click.Group) -> None:
    register_vm(cli)
    register_lab_vm(cli)
    register_factory_save_vm(cli)
