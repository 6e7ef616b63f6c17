"""Moving disk bytes without wasting them: data extents, sparse copies, reflinks, hardlinks, fsync.

Disks are mostly holes. Everything here walks only the data (`SEEK_DATA`/`SEEK_HOLE`), never writes
a zero block, and prefers sharing over copying: `place()` puts a file's content at a new path by
reflink (copy-on-write clone, where the filesystem can), else hardlink (same filesystem), else a
sparse copy, always through a temporary `.unverified` name that is renamed into place only once
the bytes are complete and fsynced, so a reader (or a crash) never sees a partial file under the
final name.
"""

from __future__ import annotations

import errno
import fcntl
import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path

from kiln.errors import KilnError

FICLONE = 0x40049409  # linux/fs.h: _IOW(0x94, 9, int)
COPY_BLOCK = 1024 * 1024
_ZERO = bytes(COPY_BLOCK)
TMP_SUFFIX = ".unverified"


def data_extents(fd: int, end: int) -> Iterator[tuple[int, int]]:
    """(start, stop) byte ranges holding data in [0, end); the whole range if holes are not reported."""
    pos = 0
    while pos < end:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as e:
            if e.errno == errno.ENXIO:  # only a hole remains
                return
            if e.errno in (errno.EINVAL, errno.EOPNOTSUPP):
                yield pos, end
                return
            raise
        if start >= end:
            return
        stop = min(os.lseek(fd, start, os.SEEK_HOLE), end)
        yield start, stop
        pos = stop


def tmp_name(directory: Path, stem: str = "") -> Path:
    """A temporary name in `directory` that says which process owns it (so gc can tell leftovers)."""
    return directory / f".{stem}{'-' if stem else ''}{os.getpid()}-{secrets.token_hex(4)}{TMP_SUFFIX}"


def tmp_owner_pid(path: Path) -> int | None:
    """The pid in a name made by `tmp_name`, or None if it is not one."""
    if not path.name.endswith(TMP_SUFFIX):
        return None
    parts = path.name[: -len(TMP_SUFFIX)].split("-")
    try:
        return int(parts[-2])
    except (IndexError, ValueError):
        return None


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sparse_copy(src: Path, dst: Path, length: int | None = None) -> int:
    """Copy the first `length` bytes (default: all) of `src` to a new file `dst`, holes kept.

    Only data extents are read, and 1 MiB blocks that are all zeros are not written. Returns the
    number of bytes written. `dst` is fsynced.
    """
    written = 0
    with src.open("rb") as fi, dst.open("xb") as fo:
        ifd, ofd = fi.fileno(), fo.fileno()
        end = os.fstat(ifd).st_size if length is None else length
        os.ftruncate(ofd, end)
        for start, stop in data_extents(ifd, end):
            pos = start
            while pos < stop:
                n = min(COPY_BLOCK, stop - pos)
                buf = os.pread(ifd, n, pos)
                if not buf:
                    break
                if buf != _ZERO[: len(buf)]:
                    os.pwrite(ofd, buf, pos)
                    written += len(buf)
                pos += len(buf)
        os.fsync(ofd)
    return written


def try_reflink(src: Path, dst: Path) -> bool:
    """Clone `src` into a new file `dst` (copy-on-write); False if the filesystem cannot."""
    with src.open("rb") as fi:
        fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            fcntl.ioctl(fd, FICLONE, fi.fileno())
            os.fsync(fd)
            return True
        except OSError as e:
            if e.errno in (errno.EOPNOTSUPP, errno.EXDEV, errno.EINVAL, errno.ENOTTY, errno.EPERM):
                os.unlink(dst)
                return False
            os.unlink(dst)
            raise
        finally:
            os.close(fd)


def place(src: Path, dst: Path, *, verify: Callable[[Path], None] | None = None, read_only: bool = True) -> str:
    """Make `dst` hold the content of `src`, costing as few new bytes as the filesystems allow.

    Returns how: "existing" (dst was already there: content-addressed names are complete by
    construction), "reflink", "hardlink" or "copy". A copy goes through a temporary name, is
    checked by `verify` (if given) and renamed into place only then.
    """
    if dst.exists():
        return "existing"
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_name(dst.parent, dst.name)
    try:
        if try_reflink(src, tmp):
            method = "reflink"
        else:
            try:
                os.link(src, dst)
                fsync_dir(dst.parent)
                return "hardlink"
            except FileExistsError:
                return "existing"
            except OSError as e:
                if e.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.EOPNOTSUPP):
                    raise
            sparse_copy(src, tmp)
            method = "copy"
        if verify is not None:
            verify(tmp)
        if read_only:
            os.chmod(tmp, 0o444)
        os.replace(tmp, dst)
        fsync_dir(dst.parent)
        return method
    finally:
        tmp.unlink(missing_ok=True)


def no_space(e: OSError, where: Path) -> KilnError | None:
    """A user-facing error for a full disk (ENOSPC/EDQUOT), or None for other errors."""
    from kiln.diskfull import no_space_error

    return no_space_error(OSError(e.errno, e.strerror), [where]) if e.errno in (errno.ENOSPC, errno.EDQUOT) else None
