"""What a build hands to distribution."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from kiln.store.blobs import KnownDigest


@dataclass(frozen=True)
class BuiltArtifact:
    """A finished disk and what is known about it.

    `disk` is a raw disk (or a fixed VHD) in the state home's work dir; distribution consumes it
    (it is renamed into the blob store). `source_version` is the source image's version (x.y.z),
    used by SharedImage targets with `versioning: Source`. `hyper_v_generation` is what a
    ManagedImage target's image is recorded as (the source's generation).
    """

    disk: Path
    os_type: str = "Linux"
    os_state: str = "Generalized"
    hyper_v_generation: str = "V2"
    source_version: str | None = None
    boot_tested: bool = False
    boot_test: str = ""  # which boot test proved it: ssh-login | serial ("" if none ran or it failed)
    description: str = ""
    source_id: str = ""  # the template's source, recorded on the images made from it
    known_digest: KnownDigest | None = None  # hashed ahead (during the boot test): publishing skips it
    boot_generations: tuple[str, ...] = ()  # what the disk boots (V1 BIOS, V2 UEFI); () = read it from the disk
