"""A guest's network reaches the world, never the host: QEMU runs in a pasta network namespace of
its own, so the guest's gateway (10.0.2.2, which QEMU's user networking maps onto the loopback of
the namespace QEMU runs in) and the host's own addresses lead nowhere. One real boot of the shared
disk, a script in the guest trying each way out, and listeners on the host counting who arrives."""

from __future__ import annotations

import ipaddress
import json
import socket
import subprocess
import threading
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest

from kiln.config import host_debian_mirror
from kiln.validate.boottest import run_in_vm

from .conftest import BuiltDisk

pytestmark = pytest.mark.integration


class Listener:
    """A TCP listener on the host that counts the connections it accepts."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((address, 0))
        self.sock.listen()
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            conn.close()


@pytest.fixture
def listeners() -> Iterator[tuple[Listener, Listener]]:
    loopback, anywhere = Listener("127.0.0.1"), Listener("0.0.0.0")
    yield loopback, anywhere
    loopback.sock.close()
    anywhere.sock.close()


def host_address() -> str:
    for link in json.loads(subprocess.run(["ip", "-j", "-4", "addr", "show"], capture_output=True, text=True,
                                          check=True).stdout):
        for info in link.get("addr_info", []):
            if not ipaddress.ip_address(info["local"]).is_loopback:
                return str(info["local"])
    pytest.skip("this host has no IPv4 address besides loopback")


def test_a_guest_reaches_the_mirror_but_not_the_host(built_disk: BuiltDisk, listeners: tuple[Listener, Listener],
                                                    tmp_path: Path) -> None:
    loopback, anywhere = listeners
    mirror = urllib.parse.urlsplit(host_debian_mirror() or "")
    if not mirror.hostname:
        pytest.skip("the host's apt sources name no Debian mirror")
    mirror_port = mirror.port or (443 if mirror.scheme == "https" else 80)
    tries = {
        "gateway-to-host-loopback": f"10.0.2.2/{loopback.port}",
        "host-address": f"{host_address()}/{anywhere.port}",
        "gateway-to-host-any": f"10.0.2.2/{anywhere.port}",
        "mirror": f"{mirror.hostname}/{mirror_port}",
    }
    script = "\n".join(
        f"if timeout 8 bash -c 'exec 3<>/dev/tcp/{where}' 2>/dev/null; then echo '{name}: open'; "
        f"else echo '{name}: shut'; fi" for name, where in tries.items())
    result = run_in_vm(built_disk.layout.path, "raw", script, timeout_s=900, work_dir=tmp_path / "work")
    seen = dict(line.split(": ", 1) for line in result.output_tail.splitlines() if ": " in line)
    assert seen == {"gateway-to-host-loopback": "shut", "host-address": "shut", "gateway-to-host-any": "shut",
                    "mirror": "open"}, result.output_tail
    assert loopback.accepted == 0 and anywhere.accepted == 0
