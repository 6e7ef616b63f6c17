"""A full filesystem is the host's state, not a bug: one translation into a KilnError that says
what ran out, where (the mount point and a path on it), how much is free now, and what to do.

ENOSPC reaches kiln two ways: as an OSError from its own writes (a blob copy, a log line) and as
a tool's failure (mmdebstrap, cp, mkfs.ext4 print "No space left on device" and exit non-zero).
`no_space_error` recognises both; the places that catch a whole operation's failure call it once
(the build for every step, the blob store for imports), never each step on its own. It runs
before the failed operation's files are cleaned up, so "free" is what was left when it failed.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from kiln.errors import KilnError

if TYPE_CHECKING:
    from kiln.config import Config
    from kiln.scratch import ScratchDir

_TOOL_TEXT = ("no space left on device", "disk quota exceeded", "not enough space", "disk full")


class NoSpace(KilnError):
    """A filesystem kiln writes to is full (exit 1: the run failed; nothing was published)."""


def _mib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def mount_point(path: Path) -> tuple[str, str]:
    """(mount point, filesystem type) of the filesystem holding `path`."""
    best, kind = "/", ""
    p = str(_existing(path).resolve())
    try:
        for line in Path("/proc/self/mounts").read_text().splitlines():
            fields = line.split()
            if len(fields) >= 3:
                mnt = fields[1].replace("\\040", " ")
                if (p == mnt or p.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best):
                    best, kind = mnt, fields[2]
    except OSError:
        pass
    return best, kind


def _existing(path: Path) -> Path:
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _free(path: Path) -> tuple[int, int]:
    st = os.statvfs(_existing(path))
    return st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize


def is_no_space(e: BaseException) -> bool:
    if isinstance(e, OSError):
        return e.errno in (errno.ENOSPC, errno.EDQUOT)
    output = getattr(e, "output", None)  # kiln.run.CommandFailed: what the tool printed
    return isinstance(output, str) and any(t in output.lower() for t in _TOOL_TEXT)


def no_space_error(e: BaseException, places: Iterable[Path | None] = ()) -> NoSpace | None:
    """A NoSpace for `e` if it is a full filesystem, else None.

    Where: the file the OSError names, else the fullest of `places` (the folders the failed
    operation wrote to: a tool's message does not say which of them ran out)."""
    if isinstance(e, NoSpace) or not is_no_space(e):
        return e if isinstance(e, NoSpace) else None
    filename = getattr(e, "filename", None) if isinstance(e, OSError) else None
    candidates = [Path(filename)] if filename else [Path(p) for p in places if p is not None]
    if not candidates:
        candidates = [Path.cwd()]
    where = min(candidates, key=lambda p: _free(p)[0])
    free, total = _free(where)
    mnt, kind = mount_point(where)
    cmd = getattr(e, "cmd", None)
    what = f" while {Path(cmd[0]).name if cmd[0] not in ('setpriv', 'unshare') else _tool(cmd)} ran" if cmd else ""
    return NoSpace(
        f"no space left on the filesystem of {where}{what}: the {kind or 'filesystem'} mounted at {mnt} "
        f"has {_mib(free)} free of {_mib(total)} now",
        hint="free some space there (kiln gc removes unreferenced blobs and killed runs' work directories), "
             "or move KILN_HOME (the store, cache and work directories) or KILN_SCRATCH (where root trees are "
             "built) to a bigger filesystem")


def _tool(cmd: list[str]) -> str:
    """The program a wrapped command line (setpriv … -- unshare … -- mmdebstrap …) really runs."""
    rest = cmd
    while "--" in rest:
        rest = rest[rest.index("--") + 1:]
    return Path(rest[0]).name if rest else Path(cmd[0]).name


def explain_no_space(e: KilnError, places: Iterable[Path | None] = ()) -> None:
    """Rewrite a failed tool's error in place (its type, so its exit code, stays) when the tool
    ran out of space: the tool's own words ("cannot write ...") stay as the last lines."""
    if isinstance(e, NoSpace) or getattr(e, "no_space_explained", False):
        return  # explained where it happened, with the free space of that moment
    full = no_space_error(e, places)
    if full is not None:
        e.message = f"{full.message}\n{e.message}"
        e.args = (e.message,)
        e.hint = full.hint
        e.no_space_explained = True  # type: ignore[attr-defined]


def translated(e: BaseException, places: Iterable[Path | None] = ()) -> BaseException:
    """What to raise for `e` from a place that is about to free the failed step's room: a KilnError
    explained in place, a NoSpace for a full-disk OSError (raise it `from e`), else `e` itself."""
    if isinstance(e, KilnError):
        explain_no_space(e, places)
        return e
    return no_space_error(e, places) or e


def build_places(work: Path, scratch: ScratchDir | None, config: Config) -> list[Path | None]:
    """The folders a build writes to: its work directory, its scratch tree, the cache and the blobs."""
    return [work, scratch.path if scratch is not None else None, config.cache_dir, config.blobs_dir]
