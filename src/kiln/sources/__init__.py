"""Sources: turning a template's `source` into a root tree on the host.

- PlatformImage: a Marketplace URN mapped (platform-images.toml) to a Debian-family release,
  bootstrapped with mmdebstrap from the configured mirror and cached by content (bootstrap.py).
- ManagedImage / SharedImageVersion: the root out of a disk in the store (stored.py).
- ISO: a checksum-verified live ISO with a squashfs root (iso.py).

`resolve_source` dispatches; `source_os_type` answers, without building anything, which OS a
source is (and fails fast on a source that cannot be built: unmapped URN, no mirror configured,
image not in the store).
"""

from __future__ import annotations

from pathlib import Path

from kiln.config import Config
from kiln.events import Monitor
from kiln.sources.roottree import RootTree, read_os_release
from kiln.sources.stored import DiskFor
from kiln.template.model import (
    IsoSource,
    ManagedImageSource,
    PlatformImageSource,
    SharedImageVersionSource,
    Source,
    is_windows_publisher,
)

__all__ = ["RootTree", "read_os_release", "resolve_source", "source_os_type"]


def resolve_source(source: Source, *, config: Config, work: Path, monitor: Monitor,
                   disk_for: DiskFor | None = None) -> RootTree:
    """Make `work/root` the root tree of `source` and describe it."""
    dest = work / "root"
    if isinstance(source, PlatformImageSource):
        from kiln.sources.bootstrap import platform_root

        return platform_root(source, config=config, dest=dest, monitor=monitor)
    if isinstance(source, ManagedImageSource | SharedImageVersionSource):
        if disk_for is None:
            raise ValueError("a ManagedImage or SharedImageVersion source needs disk_for (the store's lookup)")
        from kiln.sources.stored import stored_root

        return stored_root(source, disk_for=disk_for, dest=dest, monitor=monitor)
    if isinstance(source, IsoSource):
        from kiln.sources.iso import iso_root

        return iso_root(source, config=config, work=work / "iso", dest=dest, monitor=monitor)
    raise TypeError(f"unknown source type {type(source).__name__}")


def source_os_type(source: Source, config: Config, *, disk_for: DiskFor | None = None) -> str:
    """"Linux" or "Windows", checked cheaply; raises the user's error if the source can't be built."""
    if isinstance(source, PlatformImageSource):
        if is_windows_publisher(source.publisher, source.offer):
            return "Windows"
        from kiln.sources.platform import recipe_for

        recipe_for(source, config)  # unmapped URN or missing mirror: fail before any work
        return "Linux"
    if isinstance(source, ManagedImageSource | SharedImageVersionSource) and disk_for is not None:
        disk_for(source)  # not in the store: NotFound now, not after a bootstrap
    return "Linux"
