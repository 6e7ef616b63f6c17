"""ManagedImage and SharedImageVersion sources: the root tree out of a disk kiln stored.

The store knows where the disk of an image or gallery version is (the pipeline passes
`disk_for`, which returns its path, format and exact version); the disk part knows how to read
the ext4 root out of it without mounting (`kiln.disk.extract.extract_root`). This module only
joins the two.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from kiln.events import Monitor
from kiln.sources.roottree import RootTree, read_os_release
from kiln.template.model import ManagedImageSource, SharedImageVersionSource

StoredSource = ManagedImageSource | SharedImageVersionSource
DiskFor = Callable[[StoredSource], tuple[Path, str, str | None]]


def stored_root(source: StoredSource, *, disk_for: DiskFor, dest: Path, monitor: Monitor) -> RootTree:
    from kiln.disk.extract import extract_root  # the disk part owns reading disks

    disk, fmt, version = disk_for(source)
    monitor.log(f"root tree from stored disk {disk} ({fmt})", name="source")
    dest.parent.mkdir(parents=True, exist_ok=True)
    extract_root(Path(disk), fmt, dest, monitor=monitor)
    return RootTree(path=dest, os_release=read_os_release(dest), exact_version=version, cache_key=None)
