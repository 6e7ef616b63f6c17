"""A limit on the runs one token keeps queued or running: past it, 429 in ARM's shape with Retry-After.

No build has to finish: the server's apt mirror (config.toml) is a local server that answers the
first request of a build byte by byte, so a run stays in progress, really fetching, for as long as
the test wants; canceling it is then the ordinary cancel of a running build.
"""

from __future__ import annotations

import socket
import socketserver
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from azure.core.exceptions import HttpResponseError
from azure.mgmt.imagebuilder import models as m
from kilnserve import API_VERSION, RG, SUB, Server, start_server

P = f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.VirtualMachineImages/imageTemplates"


class TricklingMirror(socketserver.ThreadingTCPServer):
    """An HTTP server on 127.0.0.1 that promises a large body and sends one byte a second until stopped."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        self.stopping = threading.Event()
        self.requests: list[str] = []
        super().__init__(("127.0.0.1", 0), _Trickle)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/debian"

    def stop(self) -> None:
        self.stopping.set()
        self.shutdown()
        self.server_close()


class _Trickle(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        server: TricklingMirror = self.server  # type: ignore[assignment]
        self.request.settimeout(30)
        first = self.request.recv(4096).decode(errors="replace").split("\r\n", 1)[0]
        server.requests.append(first)
        try:
            self.request.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 1000000\r\n\r\n")
            while not server.stopping.wait(1):
                self.request.sendall(b"#")
        except OSError:
            pass  # the build was canceled: its connection is gone


def template(auto_run: bool = False) -> m.ImageTemplate:
    return m.ImageTemplate(location="westus2", properties=m.ImageTemplateProperties(
        source=m.ImageTemplatePlatformImageSource(publisher="Debian", offer="debian-12", sku="12-gen2", version="latest"),
        customize=[m.ImageTemplateShellCustomizer(name="hello", inline=["echo hello"])],
        distribute=[m.ImageTemplateManagedImageDistributor(
            run_output_name="out", location="westus2",
            image_id=f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.Compute/images/quota")],
        auto_run=m.ImageTemplateAutoRun(state="Enabled") if auto_run else None))


def server_with(tmp: Path, limit: int, mirror: str) -> Server:
    home = tmp / "home"
    home.mkdir()
    (home / "config.toml").write_text(f'[mirrors]\ndebian = "{mirror}"\n\n[api]\nmax_queued_runs_per_token = {limit}\n')
    return start_server(home)


@pytest.fixture
def mirror() -> Iterator[TricklingMirror]:
    t = TricklingMirror()
    yield t
    t.stop()


def test_past_the_limit_a_run_is_429_for_that_token_only(tmp_path: Path, mirror: TricklingMirror) -> None:
    server = server_with(tmp_path, 1, mirror.url)
    try:
        alice, bob = server.token("alice", SUB), server.token("bob", SUB)
        a = server.client(alice, retry_total=0).virtual_machine_image_templates  # no retry: see the 429 itself
        b = server.client(bob, retry_total=0).virtual_machine_image_templates
        for name in ("one", "two", "three"):
            a.begin_create_or_update(RG, name, template()).result()

        first = a.begin_run(RG, "one")  # in progress: soon its bootstrap is reading the mirror's Release
        deadline = time.monotonic() + 120
        while not mirror.requests:
            assert time.monotonic() < deadline, "the build never asked the mirror"
            time.sleep(0.2)
        assert mirror.requests[0].startswith("GET /debian/dists/")
        assert a.get(RG, "one").properties.last_run_status.run_state == "Running"
        with pytest.raises(HttpResponseError) as e:
            a.begin_run(RG, "two")
        assert e.value.status_code == 429 and e.value.error.code == "TooManyRequests"
        assert "max_queued_runs_per_token = 1" in e.value.error.message
        assert e.value.response.headers["Retry-After"].isdigit()
        assert a.get(RG, "two").properties.last_run_status is None  # nothing was queued

        # The same refusal seen raw: ARM's error shape, Retry-After.
        r = requests.post(f"{server.url}{P}/two/run", params={"api-version": API_VERSION},
                          headers={"Authorization": f"Bearer {alice}"}, timeout=30)
        assert r.status_code == 429 and int(r.headers["Retry-After"]) > 0
        assert set(r.json()["error"]) == {"code", "message", "details"}

        # A create with autoRun is a run too: refused, and nothing is created.
        with pytest.raises(HttpResponseError) as e:
            a.begin_create_or_update(RG, "auto", template(auto_run=True)).result()
        assert e.value.status_code == 429
        assert "auto" not in [t.name for t in a.list()]

        # Another token has its own count: bob's run is queued behind alice's (one build at a time).
        queued = b.begin_run(RG, "two")
        status = b.get(RG, "two").properties.last_run_status
        assert (status.run_state, status.run_sub_state) == ("Running", "Queued")

        # Once alice's run has ended (canceled here), she may run again.
        a.begin_cancel(RG, "one").result()
        with pytest.raises(HttpResponseError):
            first.result()
        assert a.get(RG, "one").properties.last_run_status.run_state == "Canceled"
        third = a.begin_run(RG, "three")
        for name, poller in (("two", queued), ("three", third)):
            a.begin_cancel(RG, name).result()
            with pytest.raises(HttpResponseError):
                poller.result()
    finally:
        server.stop()


def test_a_limit_of_zero_allows_no_runs(tmp_path: Path) -> None:
    with socket.socket() as s:  # a mirror nobody listens on: no run gets that far anyway
        s.bind(("127.0.0.1", 0))
        unused = f"http://127.0.0.1:{s.getsockname()[1]}/debian"
    server = server_with(tmp_path, 0, unused)
    try:
        client = server.client(server.token("nobody", SUB), retry_total=0).virtual_machine_image_templates
        client.begin_create_or_update(RG, "t", template()).result()
        with pytest.raises(HttpResponseError) as e:
            client.begin_run(RG, "t")
        assert e.value.status_code == 429 and "has 0 run(s)" in e.value.error.message
        assert client.get(RG, "t").properties.last_run_status is None
    finally:
        server.stop()


def test_a_bad_limit_is_a_clear_error(tmp_path: Path) -> None:
    from kilnserve import kiln

    home = tmp_path / "home"
    home.mkdir()
    (home / "config.toml").write_text('[api]\nmax_queued_runs_per_token = "many"\n')
    r = kiln(home, "serve", "--insecure-http", "--port", "1", check=False)
    assert r.returncode == 2 and "max_queued_runs_per_token" in r.stderr and "Traceback" not in r.stderr
