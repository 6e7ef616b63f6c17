"""Shared blobs: one catalog's blobs kept where every host can reach them (`[cluster] blobs`).

With a shared backend the local `BlobStore` stays the working copy and becomes this host's cache,
keyed by digest like the shared store. The atomic-publish rule holds unchanged:

- `put` makes the object under a digest's key visible only when all of its bytes are there (an S3
  multipart upload completes, an Azure block list is committed, a shared-folder file is renamed
  into place), so a reader never sees a partial object, and a publisher inserts the catalog row
  only after `put` returned.
- `fetch` writes the object into a new local file; the caller (`BlobStore.fetch_shared`) verifies
  the digest before the file gets its name in the cache, so a damaged object is never used.

Backends (one small module each): `posix` (a folder every host mounts: `file:///...`), `s3`
(boto3) and `azure` (a block-blob container). The SDKs are imported only when a backend is used.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from kiln.config import SharedBlobsConfig
from kiln.errors import KilnError

PART = 16 * 1024 * 1024  # upload part / download range: big enough to stream, small enough to hold 4 in memory
THREADS = 4
STALE_UPLOAD_SECONDS = 3600  # a killed upload's leftovers (temp files, multipart parts) older than this are swept
_BLOCK = 1024 * 1024
_ZERO = bytes(_BLOCK)


class SharedBlobError(KilnError):
    """The shared blob store could not be reached or refused a request."""


class SharedBlobMissing(SharedBlobError):
    """The shared store has no object under a digest the catalog names."""


class SharedBlobs(ABC):
    """A content-addressed store of blob files, keyed by digest, that several hosts share."""

    url: str  # what the user configured, for messages

    @abstractmethod
    def put(self, digest: str, path: Path) -> None:
        """Store the bytes of `path` under `digest`; nothing is visible under the key until all are."""

    @abstractmethod
    def fetch(self, digest: str, dest: Path) -> None:
        """Write the object into the new file `dest` (MiB blocks of zeros stay holes). Unverified."""

    @abstractmethod
    def exists(self, digest: str) -> bool: ...

    @abstractmethod
    def delete(self, digest: str) -> None:
        """Remove the object (already gone: fine)."""

    @abstractmethod
    def digests(self) -> list[str]:
        """The digests of every visible object (gc looks for ones no row references)."""

    def sweep_partial(self) -> int:
        """Remove what killed uploads left (invisible under any key) older than an hour; returns a count."""
        return 0

    def error(self, e: Exception, what: str) -> SharedBlobError:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return SharedBlobError(f"shared blobs {self.url}: {what} failed: {first}",
                               hint="check [cluster] blobs and its credentials in config.toml, and that the store is reachable")

    def missing(self, digest: str) -> SharedBlobMissing:
        return SharedBlobMissing(f"blob {digest} is not in the shared store {self.url}",
                                 hint="the catalog names a blob nobody uploaded (or that was removed): "
                                      "publish the disk again from a host that has it, or delete what uses it")


def open_shared(config: SharedBlobsConfig | None) -> SharedBlobs | None:
    """The backend `[cluster] blobs` names (None: blobs stay on this host). Connects on first use."""
    if config is None:
        return None
    if config.kind == "file":
        from kiln.store.shared.posix import PosixBlobs

        return PosixBlobs(config)
    if config.kind == "s3":
        from kiln.store.shared.s3 import S3Blobs

        return S3Blobs(config)
    from kiln.store.shared.azure import AzureBlobs

    return AzureBlobs(config)


def is_digest(name: str) -> bool:
    return len(name) == 64 and all(c in "0123456789abcdef" for c in name)


def ranged_fetch(size: int, read: Callable[[int, int], bytes], dest: Path) -> None:
    """Download `size` bytes as parallel ranges (`read(offset, length)`) into the new file `dest`,
    leaving MiB blocks of zeros as holes (blobs are sparse disks), then fsync it."""
    with dest.open("xb") as f:
        fd = f.fileno()
        os.ftruncate(fd, size)

        def one(offset: int) -> None:
            want = min(PART, size - offset)
            data = read(offset, want)
            if len(data) != want:
                raise SharedBlobError(f"short read: {len(data)} of {want} bytes at offset {offset}")
            view = memoryview(data)
            for pos in range(0, want, _BLOCK):
                block = view[pos:pos + _BLOCK]
                if block != _ZERO[:len(block)]:
                    os.pwrite(fd, block, offset + pos)

        with ThreadPoolExecutor(max_workers=THREADS) as pool:
            for _ in pool.map(one, range(0, size, PART)):
                pass
        os.fsync(fd)
