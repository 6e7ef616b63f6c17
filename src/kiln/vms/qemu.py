"""A VM's QEMU: started detached (it outlives kiln), confined, and driven over QMP.

The command line is `kiln.sandbox.vm.qemu_command`'s (q35, OVMF or SeaBIOS, virtio disk, the
127.0.0.1 SSH forward, seccomp), with what a long-lived VM needs instead of a test boot's:

- the serial console is a unix socket (`console.sock`) that `kiln vm console` attaches to, and
  everything the guest writes there is also appended to `serial.log` (QEMU's chardev `logfile`),
  attached or not;
- a QMP socket (`qmp.sock`): `system_powerdown` (the ACPI power button) for a graceful stop;
- no `-no-reboot`: a guest that reboots comes back, as on any hypervisor.

Unlike the boot test's VM it has no death signal and no reaper: it runs in its own session (a
Ctrl-C in the terminal that started it does not reach it), its bubblewrap namespace is not tied
to kiln's life, and kiln keeps its pid and start time in the catalog to find it again. The whole
process group (bwrap, QEMU) is signalled at once, so nothing of it is left behind.

QEMU's own messages go to `qemu.log` in the VM's folder.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from kiln.access.seed import Seed, write_seed
from kiln.errors import HostFailed, InvalidInput
from kiln.run import minimal_env, run, spawn
from kiln.sandbox.network import own_network
from kiln.sandbox.vm import (
    BWRAP,
    QEMU,
    confined,
    confinement_enabled,
    detect_accel,
    ovmf_firmware,
    qemu_command,
)
from kiln.store.blobs import alive_here, process_start
from kiln.store.vms import VirtualMachine
from kiln.tools import ToolMissing

SOCKET_PATH_MAX = 107  # sun_path holds 108 bytes with the terminating NUL
SEED_SERIAL = "cidata"
# What QEMU (its hostfwd) or pasta (which carries the port into QEMU's namespace) says of a taken port.
PORT_TAKEN = ("Could not set up host forwarding rule", "Failed to bind any port")


class PortTaken(InvalidInput):
    """QEMU could not listen on the VM's SSH port: another program took it after kiln looked."""


def check_socket_paths(vm: VirtualMachine) -> None:
    for sock in (vm.qmp_socket, vm.console_socket):
        if len(os.fsencode(sock)) > SOCKET_PATH_MAX:
            raise InvalidInput(f"the state home's path is too long for the VM's control socket {sock}",
                               hint="use a state home with a shorter path (--home or KILN_HOME)")


def argv(vm: VirtualMachine, backing: Path) -> list[str]:
    accel = detect_accel()
    if vm.firmware == "uefi":
        code, _ = ovmf_firmware()
    else:
        code = Path("/dev/null")  # SeaBIOS is QEMU's default
    cmd = qemu_command(
        vm.overlay, "qcow2", firmware_code=code, firmware_vars=vm.firmware_vars, accel=accel, cpus=vm.cpus,
        memory_mib=vm.memory_mib, serial_log=vm.serial_log, cache="writeback", network=True,
        data_disks=[(vm.seed, SEED_SERIAL)], firmware=vm.firmware, ssh_port=vm.ssh_port, name=f"kiln-vm-{vm.name}")
    file_chardev = f"file,id=serial0,path={vm.serial_log}"
    cmd[cmd.index(file_chardev)] = (f"socket,id=serial0,path={vm.console_socket},server=on,wait=off,"
                                    f"logfile={vm.serial_log},logappend=on")
    cmd.remove("-no-reboot")
    if vm.firmware == "uefi":  # the variable store is a compressed qcow2 (see prepare_disk)
        raw_vars = f"if=pflash,format=raw,unit=1,file={vm.firmware_vars}"
        cmd[cmd.index(raw_vars)] = raw_vars.replace("format=raw", "format=qcow2")
    cmd += ["-qmp", f"unix:{vm.qmp_socket},server=on,wait=off"]
    assert cmd[0] == QEMU
    if not confinement_enabled():
        # Spelled out (it is kiln.sandbox.vm.QEMU) so tests/toolscan.py sees which program this runs.
        return ["qemu-system-x86_64", *cmd[1:]]
    # It sees its own folder (overlay, variable store, seed, logs, sockets) and the blob under the overlay.
    wrapped = confined(cmd, read_only=[backing], writable=[vm.dir], network=True,
                       devices=["/dev/kvm"] if accel == "kvm" else [])
    wrapped.remove("--die-with-parent")  # the VM outlives the kiln process that started it
    # A network namespace of its own, as the boot test's VM (kiln.sandbox.network.own_network): the
    # guest reaches the outside world but no service of the host; pasta carries the SSH port in.
    return own_network(wrapped, forward_port=vm.ssh_port)


def start(vm: VirtualMachine, backing: Path) -> tuple[int, str]:
    """Start the VM's QEMU detached; (pid, start time) of its process group's leader, once QEMU is up
    (its QMP socket answers). A QEMU that exits first raises: a taken SSH port is the user's."""
    if shutil.which(QEMU, path=minimal_env()["PATH"]) is None:
        raise ToolMissing(QEMU)
    if confinement_enabled() and shutil.which(BWRAP, path=minimal_env()["PATH"]) is None:
        raise ToolMissing(BWRAP)
    check_socket_paths(vm)
    for sock in (vm.qmp_socket, vm.console_socket):
        sock.unlink(missing_ok=True)
    cmd = argv(vm, backing)
    with open(vm.qemu_log, "ab") as log:
        log.write(f"--- {time.strftime('%Y-%m-%dT%H:%M:%S%z')} start: {' '.join(cmd)}\n".encode())
        log.flush()
        proc = spawn(cmd, stdout=log, stderr=subprocess.STDOUT, session=True)
    pid = proc.pid
    started = process_start(pid)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        try:
            qmp(vm, "query-status", timeout=2)
            return pid, started
        except OSError:
            time.sleep(0.1)
    kill_group(pid, started)
    proc.wait(5)
    tail = "\n".join(vm.qemu_log.read_text(errors="replace").strip().splitlines()[-10:])
    if any(words in tail for words in PORT_TAKEN):
        raise PortTaken(f"SSH port {vm.ssh_port} on 127.0.0.1 is already in use; QEMU said:\n{tail}",
                        hint="pick another --ssh-port, or leave it out to get a free one")
    raise HostFailed(f"QEMU did not start for VM {vm.name}:\n{tail}", hint=f"its log: {vm.qemu_log}")


def qmp(vm: VirtualMachine, command: str, *, timeout: float = 5.0) -> dict[str, object]:
    """Run one QMP command (after the capabilities handshake); its `return` value."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(vm.qmp_socket))
        stream = s.makefile("rwb")
        json.loads(stream.readline())  # the greeting
        for cmd in ("qmp_capabilities", command):
            stream.write(json.dumps({"execute": cmd}).encode() + b"\n")
            stream.flush()
            while True:
                line = stream.readline()
                if not line:
                    raise ConnectionError("QMP closed the connection")
                reply = json.loads(line)
                if "return" in reply or "error" in reply:
                    break  # events ("event": ...) in between are skipped
            if "error" in reply:
                raise ConnectionError(f"QMP {cmd}: {reply['error']}")
        result: dict[str, object] = reply["return"]
        return result


def alive(pid: int | None, started: str) -> bool:
    """The process kiln started (same pid, same start time) still runs; an exited child of this
    very process (a zombie until reaped) counts as gone."""
    return pid is not None and alive_here(pid, started) and not _zombie(pid)


def kill_group(pid: int, started: str, sig: int = signal.SIGKILL) -> None:
    """Signal the VM's process group, if its leader is still the process kiln started."""
    if alive(pid, started):
        try:
            os.killpg(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def wait_gone(pid: int, started: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive(pid, started):
            _reap(pid)
            return True
        time.sleep(0.1)
    return False


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def _reap(pid: int) -> None:
    """Collect the exit status if this process is QEMU's parent (it started the VM), else nothing."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def stop(vm: VirtualMachine, *, grace: float) -> str:
    """Power the VM off: the ACPI power button over QMP, up to `grace` seconds for the guest to shut
    down, then SIGTERM and SIGKILL. Says which it took."""
    pid, started = vm.pid, vm.pid_start
    if pid is None or not alive(pid, started):
        return "not running"
    try:
        qmp(vm, "system_powerdown")
        if wait_gone(pid, started, grace):
            return "shut down"
    except (OSError, ValueError):
        pass  # no QMP: QEMU is wedged or not ours; signals still work
    kill_group(pid, started, signal.SIGTERM)
    if wait_gone(pid, started, 10):
        return "terminated (the guest did not shut down in time)"
    kill_group(pid, started)
    wait_gone(pid, started, 10)
    return "killed (the guest did not shut down in time)"


def prepare_disk(vm: VirtualMachine, backing: Path) -> None:
    """The overlay (qcow2 on the image's blob: nothing copied) at the VM's size, and a variable store."""
    run(["qemu-img", "create", "-q", "-f", "qcow2", "-o", "lazy_refcounts=on", "-b", backing, "-F", "vpc",
         vm.overlay, str(vm.disk_size)], capture=True)
    if vm.firmware == "uefi":
        # A copy of the template as a compressed qcow2 with small clusters: 24 KiB instead of the
        # template's 528 KiB of 0xff (erased flash), and no backing file an OVMF upgrade could change.
        _, template = ovmf_firmware()
        run(["qemu-img", "convert", "-q", "-c", "-f", "raw", "-O", "qcow2", "-o", "cluster_size=4096", template,
             vm.firmware_vars], capture=True)


def write_seed_file(seed: Seed, dest: Path) -> None:
    """The NoCloud seed ISO at `dest`, its zero blocks left as holes (most of an ISO is padding)."""
    with tempfile.TemporaryDirectory(prefix="kiln-seed-") as tmp:
        iso = write_seed(seed, Path(tmp) / "seed.iso")
        _sparse_copy(iso, dest)


def _sparse_copy(src: Path, dst: Path, block: int = 4096) -> None:
    """Copy `src` leaving its zero blocks as holes: the OVMF variable template is mostly zeros, and
    ten VMs should cost next to nothing on disk."""
    zero = bytes(block)
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        while chunk := fin.read(block):
            if chunk == zero[:len(chunk)]:
                fout.seek(len(chunk), os.SEEK_CUR)
            else:
                fout.write(chunk)
        fout.truncate()
