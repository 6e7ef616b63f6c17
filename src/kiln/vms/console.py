"""`kiln vm console`: the VM's serial console on the terminal, as `virsh console` gives it.

QEMU serves the first serial port on the VM's `console.sock` (one client at a time) and appends all
of it to `serial.log` whether anyone is attached or not. Attaching puts the terminal in raw mode
and relays bytes both ways until Ctrl-] (as virsh and telnet), or until the VM stops. Without a
terminal (a pipe) stdin is relayed as it is, which lets a script type at the login prompt; at
the end of its input the console detaches once it has been quiet for a few seconds.
"""

from __future__ import annotations

import os
import select
import socket
import sys
import termios
import tty

from kiln.errors import InvalidInput
from kiln.store.vms import VirtualMachine

ESCAPE = b"\x1d"  # Ctrl-]
DRAIN_S = 3.0  # after piped input ends: detach once the console printed nothing for this long


def attach(vm: VirtualMachine) -> None:
    if not vm.running:
        raise InvalidInput(f"VM {vm.name} is not running", hint=f"kiln vm start {vm.name}; its last boot's console "
                                                               f"output is in {vm.serial_log}")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(str(vm.console_socket))
    except OSError as e:
        sock.close()
        raise InvalidInput(f"cannot attach to the console of {vm.name}: {e.strerror}",
                           hint="another `kiln vm console` may be attached (one at a time)") from None
    stdin = sys.stdin.fileno()
    interactive = os.isatty(stdin)
    saved = termios.tcgetattr(stdin) if interactive else None
    sys.stderr.write(f"connected to the serial console of {vm.name} (Ctrl-] to detach; press Enter for a prompt)\r\n")
    sys.stderr.flush()
    try:
        if interactive:
            tty.setraw(stdin)
        _relay(sock, stdin, interactive)
    finally:
        if saved is not None:
            termios.tcsetattr(stdin, termios.TCSADRAIN, saved)
        sock.close()
    sys.stderr.write("\ndetached\n")


def _relay(sock: socket.socket, stdin: int, interactive: bool) -> None:
    out = sys.stdout.buffer
    reading_stdin = True
    while True:
        watched: list[int] = [sock.fileno(), stdin] if reading_stdin else [sock.fileno()]
        ready, _, _ = select.select(watched, [], [], None if reading_stdin else DRAIN_S)
        if not ready:
            return  # piped input ended and the console has been quiet since
        if sock.fileno() in ready:
            data = sock.recv(65536)
            if not data:
                return  # QEMU went away: the VM stopped
            out.write(data)
            out.flush()
        if stdin in ready:
            data = os.read(stdin, 4096)
            if not data:
                reading_stdin = False  # end of piped input: show the answer, then detach once it is quiet
                continue
            if interactive and ESCAPE in data:
                sock.sendall(data.split(ESCAPE, 1)[0])
                return
            sock.sendall(data)
