"""Shared blobs in a folder every host mounts (`[cluster] blobs = "file:///srv/kiln-blobs"`).

Objects are `<root>/<d[:2]>/<digest>.vhd`, like the local store. An upload is written (reflinked
where the filesystem can, else its data extents copied in the kernel with copy_file_range, holes
kept) under a temporary name in `<root>/tmp` and renamed into place once fsynced: rename is atomic
on local filesystems and NFS alike. The root must already exist,
so an unmounted share fails loudly instead of filling this host's own disk.
"""

from __future__ import annotations

import errno
import os
import socket
import time
from pathlib import Path

from kiln.config import SharedBlobsConfig
from kiln.store import files
from kiln.store.shared import STALE_UPLOAD_SECONDS, SharedBlobError, SharedBlobs, is_digest


class PosixBlobs(SharedBlobs):
    def __init__(self, config: SharedBlobsConfig) -> None:
        self.url = config.url
        self.root = Path(config.path)

    def _path(self, digest: str) -> Path:
        return self.root / digest[:2] / f"{digest}.vhd"

    def _root(self) -> Path:
        if not self.root.is_dir():
            raise SharedBlobError(f"shared blobs {self.url}: {self.root} is not a directory",
                                  hint="mount the shared folder (or create it), or fix [cluster] blobs in config.toml")
        return self.root

    def put(self, digest: str, path: Path) -> None:
        tmp_dir = self._root() / "tmp"
        tmp_dir.mkdir(exist_ok=True)
        # The host name keeps two hosts' temporary names apart (their pids may be equal).
        tmp = files.tmp_name(tmp_dir, f"{digest[:16]}-{socket.gethostname()}")
        final = self._path(digest)
        try:
            if not files.try_reflink(path, tmp):
                copy(path, tmp)
            os.chmod(tmp, 0o444)
            final.parent.mkdir(exist_ok=True)
            os.replace(tmp, final)
            files.fsync_dir(final.parent)
        except OSError as e:
            raise self.error(e, "upload") from e
        finally:
            tmp.unlink(missing_ok=True)

    def fetch(self, digest: str, dest: Path) -> None:
        src = self._path(digest)
        if not src.exists():
            self._root()
            raise self.missing(digest)
        try:
            if not files.try_reflink(src, dest):
                copy(src, dest)
        except FileNotFoundError as e:  # gc on another host removed it meanwhile
            raise self.missing(digest) from e
        except OSError as e:
            raise self.error(e, "download") from e

    def exists(self, digest: str) -> bool:
        self._root()
        return self._path(digest).exists()

    def delete(self, digest: str) -> None:
        self._path(digest).unlink(missing_ok=True)

    def digests(self) -> list[str]:
        return sorted(p.name[:-4] for p in self._root().glob("??/*.vhd") if is_digest(p.name[:-4]))

    def sweep_partial(self) -> int:
        """Temporary files of uploads killed on any host: no longer written to for an hour."""
        tmp_dir = self._root() / "tmp"
        count = 0
        for p in tmp_dir.glob(f"*{files.TMP_SUFFIX}") if tmp_dir.is_dir() else []:
            try:
                if time.time() - p.stat().st_mtime > STALE_UPLOAD_SECONDS:
                    p.unlink()
                    count += 1
            except FileNotFoundError:
                pass
        return count


def copy(src: Path, dst: Path) -> None:
    """Copy `src` into the new file `dst`, holes kept: the data extents go through copy_file_range
    (no trip through user space; NFS can copy on the server), else through kiln's sparse copy."""
    try:
        with src.open("rb") as fi, dst.open("xb") as fo:
            ifd, ofd = fi.fileno(), fo.fileno()
            size = os.fstat(ifd).st_size
            os.ftruncate(ofd, size)
            for start, stop in files.data_extents(ifd, size):
                pos = start
                while pos < stop:
                    n = os.copy_file_range(ifd, ofd, stop - pos, pos, pos)
                    if n == 0:
                        break
                    pos += n
            os.fsync(ofd)
    except OSError as e:
        if e.errno not in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
            raise
        dst.unlink(missing_ok=True)
        files.sparse_copy(src, dst)
