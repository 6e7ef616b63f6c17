"""ISO sources: a live ISO made here with mksquashfs + xorriso, found, verified and unpacked."""

from __future__ import annotations

import functools
import hashlib
import http.server
import os
import shutil
import threading
from pathlib import Path

import pytest

from kiln.config import Config
from kiln.errors import InvalidInput
from kiln.events import NullMonitor
from kiln.run import run
from kiln.sources import resolve_source
from kiln.template.model import IsoSource

pytestmark = pytest.mark.skipif(not (shutil.which("mksquashfs") and shutil.which("xorriso")),
                                reason="mksquashfs or xorriso missing (run scripts/setup)")


def make_tree(tree: Path) -> Path:
    """A tiny root: what matters here is extraction (owners, modes, links), not a bootable system."""
    (tree / "etc").mkdir(parents=True)
    (tree / "usr/lib").mkdir(parents=True)
    (tree / "usr/lib/os-release").write_text('ID=kilnlive\nVERSION_ID="1.0"\nPRETTY_NAME="kiln live test"\n')
    (tree / "etc/os-release").symlink_to("../usr/lib/os-release")
    (tree / "usr/bin").mkdir()
    (tree / "usr/bin/tool").write_text("#!/bin/sh\necho tool\n")
    (tree / "usr/bin/tool").chmod(0o4755)
    (tree / "home/user").mkdir(parents=True)
    os.chown(tree / "home/user", 1000, 1000)
    return tree


def make_iso(tmp: Path, squashfs_path: str | None = "live/filesystem.squashfs") -> Path:
    content = tmp / "iso-content"
    content.mkdir()
    (content / "README").write_text("a live ISO\n")
    if squashfs_path:
        (content / squashfs_path).parent.mkdir(parents=True, exist_ok=True)
        run(["mksquashfs", make_tree(tmp / "tree"), content / squashfs_path, "-quiet", "-noappend"], capture=True)
    iso = tmp / "live.iso"
    run(["xorriso", "-as", "mkisofs", "-quiet", "-R", "-V", "KILNLIVE", "-o", iso, content], capture=True)
    return iso


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to keep owners")
def test_live_iso_root_is_unpacked(tmp_path: Path) -> None:
    iso = make_iso(tmp_path)
    work = tmp_path / "work"
    tree = resolve_source(IsoSource(source_uri=str(iso), sha256_checksum=sha(iso)),
                          config=Config(home=tmp_path), work=work, monitor=NullMonitor())
    assert tree.path == work / "root"
    assert tree.os_release["ID"] == "kilnlive" and tree.os_release["PRETTY_NAME"] == "kiln live test"
    assert (tree.path / "usr/bin/tool").stat().st_mode & 0o7777 == 0o4755
    assert (tree.path / "home/user").stat().st_uid == 1000
    assert os.readlink(tree.path / "etc/os-release") == "../usr/lib/os-release"
    assert not list((work / "iso").glob("*"))  # the ISO and squashfs copies are gone


def test_iso_over_http_and_checksum_mismatch(tmp_path: Path) -> None:
    iso = make_iso(tmp_path)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *a: None  # type: ignore[method-assign]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/live.iso"
    try:
        with pytest.raises(InvalidInput) as e:
            resolve_source(IsoSource(source_uri=url, sha256_checksum="ab" * 32),
                           config=Config(home=tmp_path), work=tmp_path / "bad", monitor=NullMonitor())
        assert "sha256 mismatch" in e.value.message and e.value.path == ".properties.source.sha256Checksum"
        assert not (tmp_path / "bad/root").exists()
        tree = resolve_source(IsoSource(source_uri=url, sha256_checksum=sha(iso)),
                              config=Config(home=tmp_path), work=tmp_path / "good", monitor=NullMonitor())
        assert tree.os_release["ID"] == "kilnlive"
    finally:
        server.shutdown()
        server.server_close()


def test_iso_without_squashfs_and_missing_checksum(tmp_path: Path) -> None:
    iso = make_iso(tmp_path, squashfs_path=None)
    with pytest.raises(InvalidInput, match="no squashfs root"):
        resolve_source(IsoSource(source_uri=f"file://{iso}", sha256_checksum=sha(iso)),
                       config=Config(home=tmp_path), work=tmp_path / "w", monitor=NullMonitor())
    with pytest.raises(InvalidInput, match="needs a sha256Checksum"):
        resolve_source(IsoSource(source_uri=str(iso), sha256_checksum=""),
                       config=Config(home=tmp_path), work=tmp_path / "w2", monitor=NullMonitor())
    not_iso = tmp_path / "plain.iso"
    not_iso.write_bytes(b"not an iso" * 100)
    with pytest.raises(InvalidInput, match="not a readable ISO"):
        resolve_source(IsoSource(source_uri=str(not_iso), sha256_checksum=sha(not_iso)),
                       config=Config(home=tmp_path), work=tmp_path / "w3", monitor=NullMonitor())


def test_iso_with_a_damaged_squashfs_is_the_users_input(tmp_path: Path) -> None:
    """A squashfs that unsquashfs cannot read is the ISO's fault, not kiln's: InvalidInput at sourceURI."""
    content = tmp_path / "iso-content"
    (content / "live").mkdir(parents=True)
    (content / "live/filesystem.squashfs").write_bytes(b"hsqs" + os.urandom(64 * 1024))  # a magic, then noise
    iso = tmp_path / "damaged.iso"
    run(["xorriso", "-as", "mkisofs", "-quiet", "-R", "-V", "KILNLIVE", "-o", iso, content], capture=True)
    with pytest.raises(InvalidInput) as e:
        resolve_source(IsoSource(source_uri=str(iso), sha256_checksum=sha(iso)),
                       config=Config(home=tmp_path), work=tmp_path / "w", monitor=NullMonitor())
    assert e.value.path == ".properties.source.sourceURI"
    assert "could not be extracted" in e.value.message and "/live/filesystem.squashfs" in e.value.message
    assert not list((tmp_path / "w").glob("*.squashfs")) and not list((tmp_path / "w").glob("*.iso"))
