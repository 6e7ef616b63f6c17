"""The apt mirror goes away in the middle of a bootstrap.

A stand-in mirror on 127.0.0.1 (this test's HTTP server, passing requests on to the host's
configured Debian mirror) is what the state home's config.toml names. It stops for good after it
has served a few packages: the build must fail with a clear error (exit 1, no traceback), leave no
partial root in the cache, and the next build, with the mirror back, must bootstrap cleanly. A fresh
state home with its own (empty) cache, so both builds really bootstrap."""

from __future__ import annotations

import http.server
import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import requests

from envcheck import unavailable
from kiln.config import host_debian_mirror
from templates import debian12_template

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
IMAGE_ID = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/images/mirror-lost"


class StandIn:
    """An HTTP server on 127.0.0.1:`port` serving `/debian/...` from `upstream`; with `stop_after`,
    it closes every connection and stops listening once it has served that many packages."""

    def __init__(self, port: int, upstream: str, stop_after: int | None = None) -> None:
        self.upstream, self.stop_after, self.debs = upstream.rstrip("/"), stop_after, 0
        self.stopped = threading.Event()
        stand_in = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (the http.server interface)
                if stand_in.stopped.is_set() or not self.path.startswith("/debian/"):
                    self.send_error(404)
                    return
                try:
                    up = requests.get(stand_in.upstream + self.path[len("/debian"):], stream=True, timeout=30)
                except requests.RequestException:
                    self.send_error(502)
                    return
                with up:
                    self.send_response(up.status_code)
                    for h in ("Content-Type", "Content-Length", "Last-Modified"):
                        if h in up.headers:
                            self.send_header(h, up.headers[h])
                    self.end_headers()
                    for chunk in up.raw.stream(64 * 1024, decode_content=False):
                        if stand_in.stopped.is_set():
                            self.connection.shutdown(socket.SHUT_RDWR)  # mid-file, as a dying server does
                            return
                        self.wfile.write(chunk)
                if self.path.endswith(".deb"):
                    stand_in.served_a_package()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def served_a_package(self) -> None:
        self.debs += 1
        if self.stop_after is not None and self.debs >= self.stop_after and not self.stopped.is_set():
            self.stopped.set()
            threading.Thread(target=self.close).start()  # not from a handler: shutdown() waits for the loop

    def close(self) -> None:
        self.stopped.set()
        self.server.shutdown()
        self.server.server_close()  # the port refuses connections from now on


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def kiln(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KILN_HOME": str(home), "PYTHONPATH": str(REPO / "src")}
    return subprocess.run([sys.executable, "-m", "kiln", *args], env=env, text=True, capture_output=True,
                          timeout=1800, stdin=subprocess.DEVNULL)



def cache_entries(home: Path) -> list[str]:
    roots = home / "cache" / "roots"
    return sorted(p.name for p in roots.iterdir() if not p.name.endswith(".lock")) if roots.is_dir() else []


def test_mirror_lost_mid_bootstrap_then_back(tmp_path: Path) -> None:
    upstream = host_debian_mirror()
    if upstream is None:
        unavailable("no Debian mirror in the host's apt sources")
    home = tmp_path / "home"
    home.mkdir()
    port = free_port()
    (home / "config.toml").write_text(f'[mirrors]\ndebian = "http://127.0.0.1:{port}/debian"\n')
    path = debian12_template(tmp_path, IMAGE_ID)

    mirror = StandIn(port, upstream, stop_after=12)
    try:
        lost = kiln(home, "build", str(path), "--no-validate")
    finally:
        mirror.close()
    assert mirror.debs >= 12  # it went away mid-bootstrap, after packages had started to arrive
    assert lost.returncode == 1, lost.stdout + lost.stderr
    assert "Traceback" not in lost.stderr
    assert f"the apt mirror http://127.0.0.1:{port}/debian stopped serving packages during the bootstrap" in lost.stderr
    assert "hint: nothing was cached; run the build again once the mirror answers" in lost.stderr
    assert cache_entries(home) == []  # no partial root that a later build could take for a complete one
    assert json.loads(kiln(home, "image", "list", "--json").stdout) == []
    assert json.loads(kiln(home, "runs", "list", "--json").stdout)[-1]["lastRunStatus"]["runState"] == "Failed"

    back = StandIn(port, upstream)
    try:
        done = kiln(home, "build", str(path), "--no-validate")
    finally:
        back.close()
    assert done.returncode == 0, done.stdout + done.stderr
    assert back.debs > 12  # bootstrapped again, from the mirror
    entries = cache_entries(home)
    assert len(entries) == 2 and entries[1] == entries[0] + ".json"  # one complete root and its metadata
    assert [i["id"] for i in json.loads(kiln(home, "image", "list", "--json").stdout)] == [IMAGE_ID]
    check = kiln(home, "store", "check")
    assert check.returncode == 0, check.stdout + check.stderr
