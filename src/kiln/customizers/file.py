"""The File customizer: `sourceUri` → `destination` inside the root, checksum verified.

The destination is an absolute path as the image sees it. It is resolved the way the guest
would resolve it (absolute symlinks inside the root are followed *inside* the root, never on the
host), and refused when it tries to leave the root: `..` above `/`, or a relative symlink that
climbs above the root. A destination ending in `/` (or naming an existing folder) receives the
file under the URI's last path component, as Packer's file provisioner does. Missing parent
folders are created. The file is written as root with mode 0644.

As an in-VM validation the fetched, verified bytes travel inside the guest script, which writes
them to the destination (its parent folders created).
"""

from __future__ import annotations

import base64
import os
import posixpath
import shlex
import shutil
import urllib.parse
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from kiln.errors import InvalidInput

from .base import SHA256, CustomizerType, GuestContext, StepContext, register, step_schema

if TYPE_CHECKING:
    from kiln.template.model import FileStep

# sourceUri and destination are required, but template/checks.py says so (with a hint), not the schema.
SCHEMA: dict[str, Any] = step_schema("File", "File step", {
    "sourceUri": {"type": "string", "description": "URI of the file to upload"},
    "sha256Checksum": SHA256,
    "destination": {"type": "string",
                    "description": "absolute path in the image where the file goes (its directory must exist)"},
})


@dataclass(frozen=True)
class Prepared:
    staged: Path


def prepare(step: FileStep, ctx: StepContext) -> Prepared:
    staged = ctx.fetcher.fetch_to(step.source_uri, step.sha256_checksum, ctx.stage / f"step-{ctx.info.index}-file",
                                  what=f"{ctx.info.path}.sourceUri")
    # Resolve now too, so a bad destination fails before any step runs.
    destination_in_root(ctx.root.root, step.destination, step.source_uri, where=f"{ctx.info.path}.destination")
    return Prepared(staged)


def run(step: FileStep, ctx: StepContext, prepared: Prepared) -> None:
    root = ctx.root.root
    inside = destination_in_root(root, step.destination, step.source_uri, where=f"{ctx.info.path}.destination")
    host = root / str(inside).lstrip("/")
    _make_parents(root, inside.parent)
    tmp = host.with_name(f".kiln-{host.name}")
    shutil.copyfile(prepared.staged, tmp)
    os.chmod(tmp, 0o644)
    os.replace(tmp, host)
    ctx.monitor.log(f"copied {step.source_uri} to {inside}", name=ctx.info.name or "File")


def guest(step: FileStep, ctx: GuestContext) -> bytes:
    data = ctx.fetcher.fetch_bytes(step.source_uri, step.sha256_checksum, what=f"{ctx.info.path}.sourceUri")
    encoded = base64.b64encode(data).decode()
    dest = shlex.quote(step.destination)
    return f"set -e\nmkdir -p \"$(dirname {dest})\"\necho {encoded} | base64 -d > {dest}\n".encode()


def destination_in_root(root: Path, destination: str, source_uri: str = "", *, where: str = "") -> PurePosixPath:
    """The destination as an absolute, symlink-free path inside the root; `InvalidInput` if it escapes."""
    hint = "give an absolute path inside the image, e.g. /tmp/index.html"
    if not destination.startswith("/"):
        raise InvalidInput(f"File destination {destination!r} is not an absolute path", path=where, hint=hint)
    depth = 0
    for part in PurePosixPath(destination).parts[1:]:
        depth = depth - 1 if part == ".." else depth + (part != ".")
        if depth < 0:
            raise InvalidInput(f"File destination {destination!r} escapes the image's root", path=where, hint=hint)
    wants_dir = destination.endswith("/")
    resolved = _resolve(root, posixpath.normpath(destination), destination, where)
    host = root / str(resolved).lstrip("/")
    if wants_dir or host.is_dir():
        name = PurePosixPath(urllib.parse.urlsplit(source_uri).path).name or "file"
        resolved = _resolve(root, str(resolved / name), destination, where)
        host = root / str(resolved).lstrip("/")
    if host.is_dir():
        raise InvalidInput(f"File destination {destination!r} is a folder in the image", path=where, hint=hint)
    return resolved


def _resolve(root: Path, path: str, shown: str, where: str) -> PurePosixPath:
    """Follow symlinks as the guest would, refusing relative links that climb above the root."""
    parts = list(PurePosixPath(path).parts[1:])
    done: list[str] = []
    hops = 0
    while parts:
        part = parts.pop(0)
        if part in ("", "."):
            continue
        if part == "..":
            if not done:
                raise InvalidInput(f"File destination {shown!r} escapes the image's root through a symlink",
                                   path=where, hint="a symbolic link on the way points outside the image")
            done.pop()
            continue
        host = root.joinpath(*done, part)
        if host.is_symlink():
            hops += 1
            if hops > 40:
                raise InvalidInput(f"File destination {shown!r}: too many symbolic links", path=where)
            target = os.readlink(host)
            if target.startswith("/"):
                done = []  # absolute: from the image's root, as the guest sees it
            parts = [p for p in PurePosixPath(target).parts if p != "/"] + parts
            continue
        done.append(part)
    return PurePosixPath("/", *done)


def _make_parents(root: Path, inside: PurePosixPath) -> None:
    current = root
    for part in inside.parts[1:]:
        current = current / part
        if current.is_symlink() or (current.exists() and not current.is_dir()):
            raise InvalidInput(f"cannot create folder {inside} in the image: {part} is not a folder")
        if not current.exists():
            current.mkdir(mode=0o755)


register(CustomizerType("File", SCHEMA, ("Linux", "Windows"), prepare, run, guest=guest))
