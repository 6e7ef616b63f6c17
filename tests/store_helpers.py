"""Helpers shared by the store, distribute and factory tests (their disk fixtures are in tests/conftest.py).

`make_disk` makes small real disks: a sparse raw file with a GPT (sgdisk) and an ext4 filesystem
written with `mkfs.ext4 -d` into its partition. Not bootable; these tests do not need that.
`kiln_cmd` runs the real CLI in a subprocess; `snapshot` captures a state home to compare."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from envcheck import unavailable

REPO = Path(__file__).resolve().parents[1]
KILN = [sys.executable, "-m", "kiln"]

SECTOR = 512
PART_START = 2048  # sectors: the first partition at 1 MiB


def make_disk(path: Path, size_mib: int = 64, data_mib: int = 4, seed: int = 0) -> Path:
    """A GPT disk of `size_mib` with one ext4 partition holding `data_mib` of pseudo-random data.

    Different seeds give different disks (different content digests)."""
    root = path.parent / f".{path.name}.root"
    root.mkdir(parents=True, exist_ok=True)
    rnd = os.urandom(32) if seed < 0 else seed.to_bytes(8, "big") * 4
    chunk = (rnd * (1024 * 1024 // len(rnd) + 1))[: 1024 * 1024]
    with (root / "payload.bin").open("wb") as f:
        for i in range(data_mib):
            f.write(i.to_bytes(8, "big") + chunk[8:])
    (root / "hello.txt").write_text(f"disk {path.name} seed {seed}\n")
    with path.open("wb") as f:
        f.truncate(size_mib * 1024 * 1024)
    subprocess.run(["sgdisk", "-o", "-n", f"1:{PART_START}:0", "-t", "1:8300", str(path)],
                   check=True, capture_output=True)
    fs_kib = (size_mib - 2) * 1024
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(root), "-E", f"offset={PART_START * SECTOR}",
                    str(path), f"{fs_kib}k"], check=True, capture_output=True)
    for p in root.iterdir():
        p.unlink()
    root.rmdir()
    return path


def kiln_cmd(home: Path, *args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KILN_HOME": str(home), "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.run([*KILN, "--progress", "quiet", *args], capture_output=True, text=True, env=env, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"kiln {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def snapshot(home: Path) -> tuple[list[str], list[tuple[str, int]]]:
    """The catalog's rows and the state home's files (name, size): equal snapshots mean "unchanged"."""
    from kiln.store.db import Catalog

    rows: list[str] = []
    where = os.environ.get("KILN_CATALOG") or home / "catalog.sqlite"  # PostgreSQL in tests/store's second pass
    if not isinstance(where, Path) or where.exists():
        catalog = Catalog(where)  # no migration: looking must not change it
        rows = catalog.dump()
        catalog.close()
    listing = sorted((str(p.relative_to(home)), p.stat().st_size if p.is_file() else -1)
                     for p in home.rglob("*") if not p.name.startswith("catalog.sqlite"))
    return rows, listing


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------- fixtures (imported by the conftests)

AZURITE = REPO / ".tools" / "node_modules" / ".bin" / "azurite-blob"
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


@pytest.fixture(scope="session")
def disk_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("disks")


@pytest.fixture(scope="session")
def raw_disk(disk_dir: Path) -> Path:
    """A 64 MiB sparse GPT+ext4 raw disk with ~4 MiB of data (read-only: tests must not change it)."""
    return make_disk(disk_dir / "base.raw", 64, 4, seed=1)


@pytest.fixture(scope="session")
def other_disk(disk_dir: Path) -> Path:
    return make_disk(disk_dir / "other.raw", 64, 4, seed=2)


@pytest.fixture(scope="session")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An Azurite blob service on 127.0.0.1 (a free port); yields its connection string."""
    if not AZURITE.exists():
        unavailable("azurite is not installed (run scripts/setup)")
    location = tmp_path_factory.mktemp("azurite")
    port = free_port()
    proc = subprocess.Popen(  # long-running server: run() is for commands that finish
        [str(AZURITE), "--blobHost", "127.0.0.1", "--blobPort", str(port), "--location", str(location),
         "--disableTelemetry", "--silent", "--skipApiVersionCheck"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail("azurite did not start")
                time.sleep(0.2)
        yield (f"DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={AZURITE_KEY};"
               f"BlobEndpoint=http://127.0.0.1:{port}/devstoreaccount1;")
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
        shutil.rmtree(location, ignore_errors=True)


# A CPU hog (a busy shell loop) and an I/O hog (writes, fsyncs and deletes 32 MiB over and over),
# so the kill tests run on a loaded machine, where the windows between two steps of a commit
# protocol are wide enough for a kill to land in them (as on a busy CI host).
_CPU_HOG = "while :; do :; done"
_IO_HOG = 'while :; do dd if=/dev/zero of="$1" bs=1M count=32 conv=fsync status=none; rm -f "$1"; done'


@pytest.fixture
def load(tmp_path: Path) -> Iterator[None]:
    hogs = [subprocess.Popen(["sh", "-c", _CPU_HOG]),
            subprocess.Popen(["sh", "-c", _IO_HOG, "io-hog", str(tmp_path / "io-hog.bin")])]
    try:
        yield
    finally:
        for hog in hogs:
            hog.send_signal(signal.SIGKILL)
            hog.wait()
        (tmp_path / "io-hog.bin").unlink(missing_ok=True)
