"""Taking an image out of the store as a file the user owns (raw, fixed or dynamic VHD, qcow2).

The output is written under a temporary name beside it and renamed when complete, so an
interrupted export never leaves a truncated file under the name the user asked for. A fixed VHD is
the blob itself: reflinked where the filesystem can, else sparse-copied (never hardlinked: the user
may write to their file, the store's blob must not change).
"""

from __future__ import annotations

import os
from pathlib import Path

from kiln.disk import formats
from kiln.errors import InvalidInput, KilnError
from kiln.store import files
from kiln.store.blobs import DiskRef


def export_disk(disk: DiskRef, fmt: str, output: Path) -> None:
    if not formats.is_export_format(fmt):
        raise InvalidInput(f"unknown export format {fmt!r}", hint=f"use one of {', '.join(formats.EXPORT_FORMATS)}")
    if output.exists() or output.is_symlink():
        raise InvalidInput(f"{output} already exists", file=str(output), hint="kiln does not overwrite files: remove it or pick another name")
    if not output.parent.is_dir():
        raise InvalidInput(f"{output.parent} is not a directory", file=str(output), hint="create the directory first")
    tmp = files.tmp_name(output.parent, output.name)
    try:
        if fmt == "raw":
            if files.try_reflink(disk.path, tmp):
                os.truncate(tmp, disk.virtual_size)
            else:
                files.sparse_copy(disk.path, tmp, disk.virtual_size)
        elif fmt == "vhd":
            if not files.try_reflink(disk.path, tmp):
                files.sparse_copy(disk.path, tmp)
        else:
            formats.export(disk.path, disk.format, tmp, fmt)
        os.chmod(tmp, 0o644)
        os.replace(tmp, output)
    except OSError as e:
        raise (files.no_space(e, output.parent) or KilnError(f"cannot write {output}: {e.strerror}", file=str(output))) from e
    finally:
        tmp.unlink(missing_ok=True)
