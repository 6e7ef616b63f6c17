"""Fixtures for building real images: one state home for the session (so the Debian bootstrap is
cached once and shared by every build), a local web server standing in for the samples' script
host, and a `kiln` runner that drives the real command line."""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from corpus import conformance

HERE = Path(__file__).resolve().parent
WEB_ROOT = HERE / "samples-web"
SAMPLES_URL_PREFIX = "https://raw.githubusercontent.com/danielsollondon/azvmimagebuilder/master/"
SUB = "00000000-0000-0000-0000-00000000c0de"
RG = "kiln-samples"

# The samples ask for Ubuntu; only Debian's mirror is reachable here, so the test's state home maps
# those Marketplace offers to Debian 12 through the user-extensible platform image map. Azure's
# Ubuntu images ship unattended-upgrades (the samples' `apt install unattended-upgrades` without -y
# only works because it is already there), so the mapped release carries it too.
PLATFORM_MAP = """
[suites.bookworm]
extra_packages = ["systemd-resolved", "unattended-upgrades"]

[[images]]
publisher = "Canonical"
offer = "UbuntuServer"
skus = ["18.04-LTS"]
distro = "debian"
suite = "bookworm"

[[images]]
publisher = "Canonical"
offer = "0001-com-ubuntu-server-focal"
skus = ["20_04-lts-gen2"]
distro = "debian"
suite = "bookworm"
"""


class Kiln:
    """Runs the real `kiln` command line against one state home."""

    def __init__(self, home: Path) -> None:
        self.home = home

    def __call__(self, *args: str, check: bool = True, timeout: float = 1800, **kw) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "KILN_HOME": str(self.home)}
        if args[:1] == ("build",) and "--boot-timeout" not in args:
            # kiln's default (300 s) is for a host doing one build; here two test folders boot
            # under TCG at once on two cores, and a busy machine took over 300 s to an SSH login.
            args = ("build", "--boot-timeout", "900", *args[1:])
        proc = subprocess.run([sys.executable, "-m", "kiln", *args], env=env, text=True, capture_output=True,
                              timeout=timeout, stdin=subprocess.DEVNULL, **kw)
        if check and proc.returncode != 0:
            raise AssertionError(f"kiln {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
        return proc

    def json(self, *args: str) -> object:
        return json.loads(self(*args, "--json").stdout)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="session")
def samples_web() -> Iterator[str]:
    """The samples' scripts and artifacts, served on 127.0.0.1 (a free port)."""
    handler = functools.partial(_QuietHandler, directory=str(WEB_ROOT))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()


@pytest.fixture(scope="session")
def build_home(tmp_path_factory: pytest.TempPathFactory, samples_web: str) -> Path:
    home = tmp_path_factory.mktemp("build-home")
    (home / "platform-images.toml").write_text(PLATFORM_MAP)
    (home / "config.toml").write_text(f'[[uri_rewrites]]\nprefix = "{SAMPLES_URL_PREFIX}"\ntarget = "{samples_web}"\n')
    return home


@pytest.fixture(scope="session")
def kiln(build_home: Path) -> Kiln:
    return Kiln(build_home)


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load_sample(name: str, **values: str) -> dict:
    """A conformance sample with its <placeholders> filled and its checksums recomputed for the
    stand-in files the local web server serves."""
    text = (conformance() / "aib" / "templates_nonstandard_type" / name).read_text()
    for key, value in values.items():
        text = text.replace(f"<{key}>", value)
    left = set(re.findall(r"<[A-Za-z0-9]+>", text))
    assert not left, f"unfilled placeholders in {name}: {left}"
    data = json.loads(text)
    for step in data["properties"].get("customize", []):
        uri = step.get("scriptUri") or step.get("sourceUri")
        if uri and "sha256Checksum" in step and uri.startswith(SAMPLES_URL_PREFIX):
            step["sha256Checksum"] = sha256_of(WEB_ROOT / uri[len(SAMPLES_URL_PREFIX):])
    return data


def gallery_ids(gallery: str, definition: str) -> tuple[str, str]:
    g = f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.Compute/galleries/{gallery}"
    return g, f"{g}/images/{definition}"
