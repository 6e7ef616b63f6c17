"""ISO sources: a live ISO whose root file system is a squashfs.

The preview API's ISO source names a `sourceURI` (local path, file:// or http(s)) and a
mandatory `sha256Checksum`; the ISO is fetched through the customizers' `Fetcher` (so URI
rewrites apply and nothing unverified is used), then the squashfs inside it is found and pulled
out with xorriso's `-osirrox` extraction (no loop mount) and unpacked with `unsquashfs`, which
keeps owners, modes and xattrs. Supported layouts: Debian live (`/live/*.squashfs`), Ubuntu
casper (`/casper/*.squashfs`) and any ISO with one `.squashfs` file; the largest wins when there
are several.
"""

from __future__ import annotations

import re
from pathlib import Path

from kiln.config import Config
from kiln.errors import InvalidInput
from kiln.events import Monitor
from kiln.fetch import Fetcher
from kiln.run import ToolFailed, run
from kiln.sources.roottree import RootTree, read_os_release
from kiln.template.model import IsoSource

_PREFERRED = ("/live/filesystem.squashfs", "/casper/filesystem.squashfs")


def iso_root(source: IsoSource, *, config: Config, work: Path, dest: Path, monitor: Monitor) -> RootTree:
    if not (source.sha256_checksum or "").strip():
        raise InvalidInput("ISO source needs a sha256Checksum", path=".properties.source.sha256Checksum",
                           hint="add the ISO's sha256 (sha256sum FILE.iso)")
    work.mkdir(parents=True, exist_ok=True)
    iso = Fetcher(config, monitor).fetch_to(source.source_uri, source.sha256_checksum, work / "source.iso",
                                            what=".properties.source.sourceURI")
    try:
        squashfs_in_iso = find_squashfs(iso)
        if squashfs_in_iso is None:
            raise InvalidInput(
                f"ISO {source.source_uri} has no squashfs root file system",
                path=".properties.source.sourceURI",
                hint="kiln supports live ISOs with a squashfs root (e.g. /live/filesystem.squashfs)",
            )
        monitor.log(f"ISO root file system: {squashfs_in_iso}", name="source")
        squashfs = work / "root.squashfs"
        try:
            run(["xorriso", "-osirrox", "on", "-indev", iso, "-extract", squashfs_in_iso, squashfs], capture=True)
            iso.unlink()
            dest.parent.mkdir(parents=True, exist_ok=True)
            run(["unsquashfs", "-no-progress", "-f", "-d", dest, squashfs], capture=True)
        except ToolFailed as e:  # the ISO passed its checksum, so its content is what the user gave
            raise InvalidInput(
                f"the root file system {squashfs_in_iso} of ISO {source.source_uri} could not be extracted: "
                f"{e.message.splitlines()[0]}",
                path=".properties.source.sourceURI",
                hint="the ISO or its squashfs is damaged or in a format this host's xorriso/unsquashfs cannot read; "
                     "`kiln doctor` checks the tools",
            ) from e
        squashfs.unlink()
    finally:
        iso.unlink(missing_ok=True)
        (work / "root.squashfs").unlink(missing_ok=True)
    return RootTree(path=dest, os_release=read_os_release(dest), exact_version=None, cache_key=None)


def find_squashfs(iso: Path) -> str | None:
    """The path inside the ISO of its root squashfs, or None."""
    try:
        out = run(["xorriso", "-indev", iso, "-find", "/", "-type", "f", "-name", "*.squashfs", "-exec", "lsdl", "--"],
                  capture=True).stdout
    except Exception as e:  # xorriso refuses files that are not ISO 9660 images
        raise InvalidInput(f"{iso.name} is not a readable ISO image", path=".properties.source.sourceURI",
                           hint="point sourceURI at a live ISO") from e
    if "is blank" in out or "No ISO 9660 image" in out:  # xorriso found no ISO 9660 file system
        raise InvalidInput(f"{iso.name} is not a readable ISO image", path=".properties.source.sourceURI",
                           hint="point sourceURI at a live ISO")
    found: dict[str, int] = {}
    for line in out.splitlines():
        # lsdl lines look like ls -l: mode links owner group size date... 'path'
        m = re.match(r"^-\S*\s+\d+\s+\S+\s+\S+\s+(\d+)\s+.*?'(/.*)'\s*$", line)
        if m:
            found[m.group(2)] = int(m.group(1))
    for p in _PREFERRED:
        if p in found:
            return p
    return max(found, key=lambda p: found[p]) if found else None
