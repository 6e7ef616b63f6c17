"""Fetching scriptUri/sourceUri: schemes, URI rewrites, checksums before use, quick failures."""

from __future__ import annotations

import hashlib
import socket
from pathlib import Path

import pytest

from kiln.config import Config, UriRewrite
from kiln.customizers import Fetcher
from kiln.errors import InvalidInput


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once the socket is closed


def test_http_file_url_and_local_path(tmp_path: Path, web) -> None:
    url = web.put("script.sh", "echo hello\n")
    local = tmp_path / "local.txt"
    local.write_text("local\n")
    f = Fetcher(Config(home=tmp_path))
    assert f.fetch_bytes(url, sha(b"echo hello\n")) == b"echo hello\n"
    assert f.fetch_text(f"file://{local}", sha(b"local\n")) == "local\n"
    assert f.fetch_text(str(local), None) == "local\n"


def test_checksum_mismatch_leaves_nothing(tmp_path: Path, web) -> None:
    url = web.put("index.html", "<h1>hi</h1>")
    dest = tmp_path / "out" / "index.html"
    with pytest.raises(InvalidInput) as e:
        Fetcher(Config(home=tmp_path)).fetch_to(url, "0" * 64, dest, what=".properties.customize[2].sourceUri")
    assert "sha256 mismatch" in e.value.message and sha(b"<h1>hi</h1>") in e.value.message
    assert e.value.path == ".properties.customize[2].sha256Checksum"
    assert list(dest.parent.iterdir()) == []  # neither the file nor its .unverified- copy


def test_rewrites_to_folder_and_to_url(tmp_path: Path, web) -> None:
    mirror = tmp_path / "mirror" / "quickquickstarts"
    mirror.mkdir(parents=True)
    (mirror / "customizeScript.sh").write_text("echo from the mirror\n")
    web.put("index.html", "served")
    config = Config(home=tmp_path, uri_rewrites=(
        UriRewrite("https://raw.githubusercontent.com/danielsollondon/", str(tmp_path / "mirror-unused")),
        UriRewrite("https://raw.githubusercontent.com/danielsollondon/azvmimagebuilder/master/", str(tmp_path / "mirror")),
        UriRewrite("https://example.blob.core.windows.net/artifacts/", web.url),
    ))
    f = Fetcher(config)
    azure = "https://raw.githubusercontent.com/danielsollondon/azvmimagebuilder/master/quickquickstarts/customizeScript.sh"
    assert f.rewrite(azure) == str(mirror / "customizeScript.sh")  # the longest prefix wins
    assert f.fetch_text(azure, sha(b"echo from the mirror\n")) == "echo from the mirror\n"
    assert f.fetch_text("https://example.blob.core.windows.net/artifacts/index.html", None) == "served"


@pytest.mark.timeout(60)
def test_unreachable_and_missing_are_clear_errors(tmp_path: Path, web) -> None:
    f = Fetcher(Config(home=tmp_path))
    with pytest.raises(InvalidInput) as e:
        f.fetch_bytes(f"http://127.0.0.1:{closed_port()}/x.sh", None, what=".properties.customize[0].scriptUri")
    assert "cannot download" in e.value.message and e.value.path == ".properties.customize[0].scriptUri"
    assert "uri_rewrites" in e.value.hint
    with pytest.raises(InvalidInput, match="HTTP 404"):
        f.fetch_bytes(web.url + "missing.sh", None)
    with pytest.raises(InvalidInput, match="no such file"):
        f.fetch_bytes(str(tmp_path / "nope.sh"), None)
    with pytest.raises(InvalidInput, match="unsupported URI scheme"):
        f.fetch_bytes("ftp://example.invalid/x", None)
