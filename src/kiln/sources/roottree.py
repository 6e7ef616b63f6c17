"""A root tree: the directory every source turns into, and what is known about it."""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class RootTree:
    """A root file system tree on the host, ready to customize.

    `exact_version` is the source's exact version (`latest` resolved); `cache_key` is the
    content-addressed key of a bootstrapped root (None for other sources).
    """

    path: Path
    os_release: dict[str, str] = field(default_factory=dict, compare=False)
    exact_version: str | None = None
    cache_key: str | None = None


def read_os_release(root: Path) -> dict[str, str]:
    """The root's os-release (etc/ first, then usr/lib/), as a dict; empty if it has none."""
    for rel in ("etc/os-release", "usr/lib/os-release"):
        p = root / rel
        # etc/os-release is usually a relative symlink into usr/lib; an absolute one would point
        # at the host's file, so only relative links and regular files are read.
        if p.is_symlink() and Path(p.readlink()).is_absolute():
            continue
        try:
            text = p.read_text(errors="replace")
        except OSError:
            continue
        out: dict[str, str] = {}
        for line in text.splitlines():
            line = line.strip()
            if not line or line.startswith("#") or "=" not in line:
                continue
            key, value = line.split("=", 1)
            try:
                words = shlex.split(value)
            except ValueError:
                words = [value]
            out[key.strip()] = words[0] if words else ""
        return out
    return {}
