"""Reading a mirror's Release file: exact versions, and quick clear errors."""

from __future__ import annotations

import functools
import http.server
import socket
import threading
from pathlib import Path

import pytest

from kiln.errors import InvalidInput
from kiln.sources.mirror import fetch_release, parse_release

RELEASE = """Origin: Debian
Label: Debian
Suite: oldstable
Version: 12.15
Codename: bookworm
Date: Sat, 11 Jul 2026 10:16:37 UTC
Architectures: all amd64
Description: Debian 12.15 Released 11 July 2026
MD5Sum:
 0123 456 main/Contents-all
"""


def test_parse_release_reads_the_first_paragraph() -> None:
    f = parse_release(RELEASE)
    assert (f["codename"], f["version"], f["suite"]) == ("bookworm", "12.15", "oldstable")
    assert "md5sum" in f and "0123 456" not in f.values()


@pytest.fixture
def mirror(tmp_path: Path):
    (tmp_path / "dists/bookworm").mkdir(parents=True)
    (tmp_path / "dists/bookworm/Release").write_text(RELEASE)
    (tmp_path / "dists/sid").mkdir(parents=True)
    (tmp_path / "dists/sid/Release").write_text("Suite: unstable\nCodename: sid\nDate: Mon, 02 Mar 2026 08:00:00 UTC\n")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *a: None  # type: ignore[method-assign]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def test_exact_version_is_point_release_and_date(mirror: str) -> None:
    r = fetch_release(mirror, "bookworm")
    assert (r.codename, r.version, r.date, r.exact_version) == ("bookworm", "12.15", "20260711", "12.15.20260711")
    assert fetch_release(mirror, "bookworm") == r  # deterministic
    assert fetch_release(mirror, "sid").exact_version == "0.0.20260302"


def test_missing_suite(mirror: str) -> None:
    with pytest.raises(InvalidInput, match="no suite 'trixie'.*HTTP 404"):
        fetch_release(mirror, "trixie")


@pytest.mark.timeout(60)
def test_unreachable_mirror_is_a_quick_clear_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(InvalidInput) as e:
        fetch_release(f"http://127.0.0.1:{port}/debian", "bookworm")
    assert "apt mirror unreachable" in e.value.message and "[mirrors]" in e.value.hint


@pytest.mark.timeout(60)
def test_silent_mirror_times_out() -> None:
    # A server that accepts the connection and never answers: the read timeout ends the wait.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        with pytest.raises(InvalidInput, match="apt mirror unreachable"):
            fetch_release(f"http://127.0.0.1:{port}/debian", "bookworm")
