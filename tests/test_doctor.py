"""`kiln doctor` as a user runs it: the real command, on this host, with problems made real (a
PATH without a required tool, a mirror nobody listens on) and a stand-in Debian mirror on 127.0.0.1."""

from __future__ import annotations

import functools
import http.server
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kiln.sandbox.limits import probe
from kiln.tools import host_tools

GiB = 1024**3

RELEASE = """\
Origin: Debian
Label: Debian
Suite: stable
Version: 12.15
Codename: bookworm
Date: Sat, 11 Jul 2026 10:00:00 UTC
Architectures: amd64
Components: main
"""


@pytest.fixture
def mirror(tmp_path: Path) -> Iterator[str]:
    """A Debian mirror on 127.0.0.1 that has bookworm's Release file (and nothing else)."""
    root = tmp_path / "mirror"
    (root / "debian" / "dists" / "bookworm").mkdir(parents=True)
    (root / "debian" / "dists" / "bookworm" / "Release").write_text(RELEASE)
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/debian"
    finally:
        server.shutdown()
        server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # bound, never listening: closed once this returns


def doctor(home: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    scratch = {"KILN_SCRATCH": str(home / "scratch")}  # on the state home's filesystem, whatever /dev/shm has
    return subprocess.run([sys.executable, "-m", "kiln", "--home", str(home), "doctor", *args],
                          capture_output=True, text=True, timeout=120, env={**os.environ, **scratch, **(env or {})})


def short_of_space(home: Path) -> list[tuple[str, str]]:
    """The space problems this host really has where `home` is (a busy CI disk can be one): measured here,
    not taken from kiln's report, so a test expects exactly them beside the problem it makes."""
    free = shutil.disk_usage(home).free
    return [("space", name) for name, need in (("state home", 4 * GiB), ("scratch", 2 * GiB)) if free < need]


def problems(report: dict[str, Any]) -> list[tuple[str, str]]:
    return [(c["kind"], c["name"]) for c in report["checks"] if c["required"] and not c["ok"]]


def use_mirror(home: Path, url: str) -> None:
    (home / "config.toml").write_text(f'[mirrors]\ndebian = "{url}"\n')


def test_this_host_can_build(kiln_home: Path, mirror: str) -> None:
    use_mirror(kiln_home, mirror)
    proc = doctor(kiln_home, "--json")
    report = json.loads(proc.stdout)
    short = short_of_space(kiln_home)
    assert problems(report) == short, [c for c in report["checks"] if not c["ok"]]
    assert proc.returncode == (1 if short else 0) and report["ready"] is (not short)
    checks = {(c["kind"], c["name"]): c for c in report["checks"]}
    for tool in host_tools():
        check = checks["tool", tool.program]
        if tool.required:
            assert check["ok"] and tool.package in check["detail"], check
    assert checks["mirror", "Debian mirror"]["ok"] and "bookworm 12.15" in checks["mirror", "Debian mirror"]["detail"]
    assert checks["accel", "acceleration"]["detail"].startswith(("KVM usable", "TCG only"))
    assert checks["firmware", "OVMF"]["ok"] and "OVMF_CODE" in checks["firmware", "OVMF"]["detail"]
    assert str(kiln_home) in checks["space", "state home"]["detail"] and "GiB free" in checks["space", "state home"]["detail"]
    assert "GiB free" in checks["space", "scratch"]["detail"]
    assert ("optional", "Azurite") in checks
    limits, found = checks["sandbox", "resource limits"], probe()  # what a customizer's sandbox gets here
    assert limits["ok"] is (not found.why_not) and limits["required"] is False
    assert all(why in limits["detail"] for why in found.why_not)

    text = doctor(kiln_home)
    assert text.returncode == (1 if short else 0), text.stdout + text.stderr
    assert "sfdisk" in text.stdout and "fdisk" in text.stdout
    if not short:
        assert "kiln doctor: a build can run here" in text.stdout


def test_a_missing_required_tool_is_a_problem_with_its_package(kiln_home: Path, mirror: str, tmp_path: Path) -> None:
    # A PATH holding every tool but mmdebstrap (kiln adds /usr/sbin, where mmdebstrap is not).
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in host_tools():
        found = subprocess.run(["sh", "-c", f"command -v {tool.program}"], capture_output=True, text=True).stdout.strip()
        if found and tool.program != "mmdebstrap":
            (bin_dir / tool.program).symlink_to(found)
    use_mirror(kiln_home, mirror)
    env = {"PATH": str(bin_dir)}
    proc = doctor(kiln_home, "--json", env=env)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    assert report["ready"] is False
    short = short_of_space(kiln_home)
    assert problems(report) == [("tool", "mmdebstrap"), *short]
    (check,) = [c for c in report["checks"] if c["name"] == "mmdebstrap"]
    assert check["detail"].startswith("not found") and "apt-get install mmdebstrap" in check["hint"]

    text = doctor(kiln_home, env=env)
    assert text.returncode == 1 and "Traceback" not in text.stderr
    assert "FAIL" in text.stdout and "hint: install it: apt-get install mmdebstrap" in text.stdout
    assert f"{1 + len(short)} problem(s), a build cannot run here: mmdebstrap" in text.stderr


def test_an_unreachable_mirror_is_a_problem_with_a_hint(kiln_home: Path) -> None:
    url = f"http://127.0.0.1:{closed_port()}/debian"
    use_mirror(kiln_home, url)
    proc = doctor(kiln_home, "--json")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    (check,) = [c for c in json.loads(proc.stdout)["checks"] if c["kind"] == "mirror"]
    assert not check["ok"] and "unreachable" in check["detail"] and url in check["detail"]
    assert str(kiln_home / "config.toml") in check["hint"]

    text = doctor(kiln_home)
    assert text.returncode == 1 and "Traceback" not in text.stderr
    short = short_of_space(kiln_home)
    assert problems(json.loads(proc.stdout)) == [*short, ("mirror", "Debian mirror")]
    assert "a build cannot run here: " in text.stderr and text.stderr.rstrip().endswith("Debian mirror")
    assert f"check [mirrors] debian in {kiln_home / 'config.toml'}" in text.stdout

    # --no-mirror leaves the mirror alone: the rest of this host can build (if it has the room).
    assert doctor(kiln_home, "--no-mirror").returncode == (1 if short else 0)


@pytest.mark.skipif(os.geteuid() != 0, reason="mounts a small tmpfs as the state home")
def test_a_state_home_without_room_is_a_problem_with_a_hint(tmp_path: Path, mirror: str) -> None:
    home = tmp_path / "small-home"
    home.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(home)], check=True)
    try:
        use_mirror(home, mirror)
        proc = doctor(home, "--json")
        assert proc.returncode == 1, proc.stdout + proc.stderr
        checks = {(c["kind"], c["name"]): c for c in json.loads(proc.stdout)["checks"]}
        state, scratch = checks["space", "state home"], checks["space", "scratch"]
        assert not state["ok"] and "a build needs 4 GiB" in state["detail"] and "KILN_HOME or --home" in state["hint"]
        assert not scratch["ok"] and "KILN_SCRATCH" in scratch["hint"]
        text = doctor(home)
        assert "2 problem(s), a build cannot run here: state home, scratch" in text.stderr
        assert "Traceback" not in text.stderr
    finally:
        subprocess.run(["umount", "-l", str(home)], check=True)
