"""Benchmark: upload and fetch one 1 GiB blob through each shared-blob backend, against the plain tool.

    .venv/bin/python bench/shared_blobs.py [--dir DIR] [--size-mib 1024] [--backends posix,s3,azure]

The blob is all data (incompressible, no holes): the worst case, every byte crosses. For each
backend, in one run, on the same file:
- posix: kiln's put / fetch against `cp` into / out of the shared folder (same filesystem), each
  followed by `sync FILE` (kiln fsyncs what it stores);
- s3 (moto's server on 127.0.0.1) and azure (Azurite on 127.0.0.1): kiln's put / fetch against
  the SDK's own one-call upload and download of the same file, with the SDK's default settings
  (boto3 `upload_file` / `download_file`; azure `upload_blob` / `download_blob().readinto`).
kiln's fetch is measured twice: the download alone (`SharedBlobs.fetch`) and what a host does
before using a blob (`BlobStore.fetch_shared`: download, verify the digest, rename into the cache).
Ratios are kiln's time over the peer's (under 1.0: kiln is faster).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from store_common import MIB, Timer  # noqa: E402

from kiln.config import SharedBlobsConfig  # noqa: E402
from kiln.store.blobs import BlobStore  # noqa: E402
from kiln.store.db import open_catalog  # noqa: E402
from kiln.store.shared import SharedBlobs, open_shared  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
AZURITE = REPO / ".tools" / "node_modules" / ".bin" / "azurite-blob"
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
S3_KEYS = {"aws_access_key_id": "bench", "aws_secret_access_key": "bench", "region_name": "us-east-1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def server(argv: list[str], port: int, env: dict[str, str] | None = None) -> Iterator[None]:
    proc = subprocess.Popen(argv, env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"{argv[0]} did not start") from None
                time.sleep(0.2)
        yield
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def make_blob(store: BlobStore, path: Path, size: int) -> tuple[str, Path, int]:
    """A `size`-byte disk of random data, published into the local store (as a build would)."""
    with path.open("wb") as f:
        chunk = os.urandom(4 * MIB)
        for i in range(size // len(chunk)):
            f.write(i.to_bytes(8, "big") + chunk[8:])
    subprocess.run(["sgdisk", "-o", "-n", "1:2048:0", "-t", "1:8300", str(path)], check=True, capture_output=True)
    blob = store.ingest(path, holder="bench", move=True)
    return blob.digest, blob.path, blob.virtual_size


def measure(name: str, shared: SharedBlobs, store: BlobStore, digest: str, blob: Path, virtual_size: int,
            peer_up: Callable[[Path], None], peer_down: Callable[[Path], None], scratch: Path) -> list[str]:
    subprocess.run(["sync"], check=True)
    with Timer() as peer_put:
        peer_up(blob)
    with Timer() as kiln_put:
        shared.put(digest, blob)
    out = scratch / f"{name}-peer.out"
    with Timer() as peer_get:
        peer_down(out)
    out.unlink()
    out = scratch / f"{name}-kiln.out"
    with Timer() as kiln_get:
        shared.fetch(digest, out)
    out.unlink()
    store.path_for(digest).chmod(0o644)
    store.path_for(digest).unlink()  # so fetch_shared fetches it again
    with Timer() as kiln_use:
        store.fetch_shared(digest, virtual_size)
    mb = blob.stat().st_size / 1e6
    peer = {"posix": "cp + sync", "s3": "boto3", "azure": "azure SDK"}[name]

    def row(what: str, k: Timer, p: Timer) -> str:
        return (f"| {name} | {what} | {k.seconds:.2f} s ({mb / k.seconds:.0f} MB/s) | {p.seconds:.2f} s "
                f"({mb / p.seconds:.0f} MB/s) | {k.seconds / p.seconds:.2f}x |")

    return [row(f"upload vs {peer}", kiln_put, peer_put), row(f"fetch vs {peer}", kiln_get, peer_get),
            row(f"fetch + verify vs {peer} download", kiln_use, peer_get)]


def bench_posix(root: Path, store: BlobStore, blob: tuple[str, Path, int], scratch: Path) -> list[str]:
    shared_dir = root / "shared"
    shared_dir.mkdir()
    copy = shared_dir / "cp-copy.vhd"
    shared = use(store, SharedBlobsConfig(shared_dir.as_uri(), "file", path=str(shared_dir)))
    return measure("posix", shared, store, *blob,
                   lambda p: cp(p, copy), lambda out: cp(copy, out), scratch)


def cp(src: Path, dst: Path) -> None:
    """`cp`, then `sync` of the copy: kiln fsyncs what it stores, so the peer does too."""
    subprocess.run(["cp", str(src), str(dst)], check=True)
    subprocess.run(["sync", str(dst)], check=True)


def bench_s3(root: Path, store: BlobStore, blob: tuple[str, Path, int], scratch: Path) -> list[str]:
    import boto3

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    (root / "moto").mkdir()
    moto = Path(sys.executable).parent / "moto_server"
    with server([str(moto), "-H", "127.0.0.1", "-p", str(port)], port, {"TMPDIR": str(root / "moto")}):
        client = boto3.client("s3", endpoint_url=url, **S3_KEYS)
        client.create_bucket(Bucket="bench")
        shared = use(store, SharedBlobsConfig("s3://bench/kiln", "s3", container="bench", prefix="kiln/", endpoint_url=url,
                                              region="us-east-1", access_key_id="bench", secret_access_key="bench"))
        return measure("s3", shared, store, *blob,
                       lambda p: client.upload_file(str(p), "bench", "peer.vhd"),
                       lambda out: client.download_file("bench", "peer.vhd", str(out)), scratch)


def bench_azure(root: Path, store: BlobStore, blob: tuple[str, Path, int], scratch: Path) -> list[str]:
    from azure.storage.blob import BlobServiceClient

    port = free_port()
    (root / "azurite").mkdir()
    conn = (f"DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={AZURITE_KEY};"
            f"BlobEndpoint=http://127.0.0.1:{port}/devstoreaccount1;")
    with server([str(AZURITE), "--blobHost", "127.0.0.1", "--blobPort", str(port), "--location",
                 str(root / "azurite"), "--disableTelemetry", "--silent", "--skipApiVersionCheck"], port):
        container = BlobServiceClient.from_connection_string(conn).get_container_client("bench")
        container.create_container()
        shared = use(store, SharedBlobsConfig("azureblob://bench/kiln", "azureblob", container="bench", prefix="kiln/",
                                              connection_string=conn))

        def up(p: Path) -> None:
            with p.open("rb") as f:
                container.upload_blob("peer.vhd", f, overwrite=True)

        def down(out: Path) -> None:
            with out.open("wb") as f:
                container.download_blob("peer.vhd").readinto(f)

        return measure("azure", shared, store, *blob, up, down, scratch)


def use(store: BlobStore, config: SharedBlobsConfig) -> SharedBlobs:
    shared = open_shared(config)
    assert shared is not None
    store.shared = shared
    return shared


BACKENDS = {"posix": bench_posix, "s3": bench_s3, "azure": bench_azure}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", type=Path, default=Path("/var/tmp"))
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--backends", default=",".join(BACKENDS))
    args = ap.parse_args()
    rows: list[str] = []
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="kiln-bench-") as tmp:
        root = Path(tmp)
        catalog = open_catalog(root / "catalog.sqlite")
        store = BlobStore(root / "blobs", catalog, root / "work")
        blob = make_blob(store, root / "disk.raw", args.size_mib * MIB)
        scratch = root / "scratch"
        scratch.mkdir()
        for name in args.backends.split(","):
            rows += BACKENDS[name](root, store, blob, scratch)
        catalog.close()
    print(f"one {args.size_mib} MiB blob of random data; ratio = kiln's time / the peer's time")
    print("| backend | operation | kiln | peer | ratio |\n|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
