"""`kiln serve` as a real subprocess on 127.0.0.1, driven by Azure's own SDK (azure-mgmt-imagebuilder).

Each server gets a state home of its own and a free port; tokens come from `kiln token create`.
A server started with `tls=True` serves HTTPS with kiln's own self-signed certificate, which its
clients trust as their only CA (`connection_verify`): the SDK's own bearer policy then works as
on Azure. Over plain http (`--insecure-http`) the SDK refuses bearer tokens, so the client is
given an authentication policy that sets the header (as a caller of a loopback server must);
everything else is the SDK's own pipeline: ARM polling, error parsing, models.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from azure.core.credentials import AccessToken
from azure.core.pipeline.policies import SansIOHTTPPolicy
from azure.mgmt.imagebuilder import ImageBuilderClient

SUB = "0b7c5a3e-1c2d-4e5f-8a9b-0c1d2e3f4a5b"
OTHER_SUB = "9f8e7d6c-5b4a-4392-8170-6f5e4d3c2b1a"
RG = "kiln-api-rg"
API_VERSION = "2025-10-01"
KILN = [sys.executable, "-m", "kiln"]



def kiln(home: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*KILN, "--home", str(home), *args], capture_output=True, text=True, check=check, timeout=120)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    home: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None
    tls: bool = False
    args: tuple[str, ...] = ()

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    @property
    def cert(self) -> Path:
        """kiln's self-signed certificate (made at the first TLS start): the clients' CA bundle."""
        return self.home / "tls" / "serve.crt"

    def start(self) -> Server:
        mode = () if self.tls else ("--insecure-http",)
        self.proc = subprocess.Popen([*KILN, "--home", str(self.home), "serve", *mode, "--port", str(self.port), *self.args],
                                     stdout=subprocess.DEVNULL, stderr=(self.home / "serve.log").open("ab"))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, (self.home / "serve.log").read_text()
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                time.sleep(0.2)
        raise AssertionError("kiln serve did not start listening")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(120)
        self.proc = None

    def token(self, name: str, *subs: str, read_only: bool = False) -> str:
        args = ["token", "create", name, *[a for s in subs for a in ("--subscription", s)]]
        out = kiln(self.home, *args, *(["--read-only"] if read_only else [])).stdout
        assert out.count("\n") == 1, "kiln token create prints the token and nothing else"
        return out.strip()

    def client(self, token: str, subscription: str = SUB, **kwargs) -> ImageBuilderClient:
        if self.tls:  # the SDK exactly as against Azure, trusting kiln's certificate
            return ImageBuilderClient(StaticToken(token), subscription, base_url=self.url,
                                      connection_verify=str(self.cert), **kwargs)
        return ImageBuilderClient(StaticToken(token), subscription, base_url=self.url,
                                  authentication_policy=LoopbackBearer(token), **kwargs)


class StaticToken:
    def __init__(self, token: str) -> None:
        self.token = token

    def get_token(self, *scopes: str, **kwargs) -> AccessToken:
        return AccessToken(self.token, int(time.time()) + 3600)


class LoopbackBearer(SansIOHTTPPolicy):
    """The bearer header over http to 127.0.0.1 (azure-core's own policy insists on https)."""

    def __init__(self, token: str) -> None:
        self.token = token

    def on_request(self, request) -> None:
        request.http_request.headers["Authorization"] = f"Bearer {self.token}"


def start_server(home: Path, *, tls: bool = False, args: tuple[str, ...] = ()) -> Server:
    home.mkdir(parents=True, exist_ok=True)
    return Server(home, tls=tls, args=args).start()


def processes_mentioning(text: str, exclude: set[int]) -> list[str]:
    """Command lines of live processes that name `text` (a state home, a run's scratch prefix)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in exclude or int(entry.name) == os.getpid():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmd:
            found.append(f"{entry.name}: {cmd}")
    return found
