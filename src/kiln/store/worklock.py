"""Telling a live run's work directory from a dead one's: an flock held for the owner's whole life.

A build holds an exclusive flock on `<work>/.kiln-lock` from the moment its work directory exists
until its process exits. The kernel drops the lock when the process dies, however it dies (kill -9
included), and a lock is tied to an open file, not to a pid, so a reused pid can never make a dead
run look alive. gc takes the lock itself before it removes a directory: if it can, the owner is gone.
A directory that also holds `KEEP_MARKER` was kept on purpose and is never removed by gc or
`kiln factory cleanup`.
"""

from __future__ import annotations

import errno
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

LOCK_NAME = ".kiln-lock"
KEEP_MARKER = ".kiln-keep"  # a run's work directory kept on purpose (errorHandling abort, --keep-work)


def hold(work: Path) -> int:
    """Create `work` and lock it for this process; returns the fd that holds the lock (close = release).

    The lock file is locked under a private name and renamed into place, so nobody ever sees an
    unlocked `.kiln-lock` of a live run.
    """
    work.mkdir(parents=True, exist_ok=True)
    private = work / f"{LOCK_NAME}.{os.getpid()}"
    fd = os.open(private, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.rename(private, work / LOCK_NAME)
    return fd


def try_take(work: Path) -> int | None:
    """The fd of `work`'s lock if its owner is gone (the caller now holds it), else None.

    None too for a directory without a lock file: not a run's work directory (or one from before
    runs took locks), which gc cannot judge and leaves alone.
    """
    try:
        fd = os.open(work / LOCK_NAME, os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        os.close(fd)
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return None
        raise
    return fd


def dead_work_dirs(root: Path) -> Iterator[tuple[Path, int]]:
    """(directory, held lock fd) for each directory under `root` whose owning process is gone."""
    for entry in sorted(root.iterdir()) if root.is_dir() else []:
        if entry.is_dir() and not entry.is_symlink() and (fd := try_take(entry)) is not None:
            yield entry, fd
