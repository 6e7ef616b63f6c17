"""Which stored disk a VM is made from: a managed image, a gallery image version, or a lab custom image.

The lookups are the store's own (`Images.get`, `Galleries.resolve_version` with its `latest`,
`Labs.get_image`); this module only tells them apart by the id's kind and says, in one error,
which kinds are accepted. The result names the blob (by digest, in the blob store), never a
region's replica: gc keeps a blob a VM uses, not its replicas.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from kiln import ids
from kiln.errors import InvalidInput

if TYPE_CHECKING:
    from kiln.store import Store

ACCEPTED = (ids.IMAGE, ids.GALLERY_IMAGE_VERSION, ids.GALLERY_IMAGE, ids.LAB_CUSTOM_IMAGE)
_HINT = ("give a managed image (.../Microsoft.Compute/images/NAME), a gallery image version "
         "(.../galleries/G/images/D/versions/1.0.0 or .../versions/latest) or a lab custom image "
         "(.../Microsoft.DevTestLab/labs/LAB/customimages/NAME)")


@dataclass(frozen=True)
class SourceImage:
    id: str  # exact: a gallery `latest` resolved to its version
    digest: str
    disk: Path  # the blob: a fixed VHD (qemu format vpc)
    virtual_size: int
    os_type: str
    hyper_v_generation: str  # V1 (BIOS) or V2 (UEFI)
    os_state: str


def resolve(store: Store, text: str, *, lab: ids.ResourceId | None = None) -> SourceImage:
    """The stored image `text` names. With `lab`, a bare NAME is that lab's custom image."""
    if lab is not None and not text.startswith("/"):
        text = str(lab.child("customimages", text))
    rid = ids.try_parse(text)
    kind = rid.kind.lower() if rid else ""
    if rid is None or kind not in (k.lower() for k in ACCEPTED):
        raise InvalidInput(f"--image {text!r} is not an image id" + (f" ({rid.kind})" if rid else ""), hint=_HINT)
    if lab is not None and (kind != ids.LAB_CUSTOM_IMAGE.lower() or rid.parent() != lab):
        raise InvalidInput(f"--image {text} is not a custom image of lab {lab}",
                           hint=f"a lab VM is made from its lab's images: kiln lab image list {lab}")
    if kind == ids.IMAGE.lower():
        image = store.images.get(rid)
        return SourceImage(str(image.id), image.digest, store.blobs.path_for(image.digest), image.disk.virtual_size,
                           image.os_type, image.hyper_v_generation, image.os_state)
    if kind == ids.LAB_CUSTOM_IMAGE.lower():
        custom = store.labs.get_image(rid)
        return SourceImage(str(custom.id), custom.digest, store.blobs.path_for(custom.digest),
                           custom.disk.virtual_size, custom.os_type, "V2", custom.os_state)
    version = store.galleries.resolve_version(rid)
    definition = store.galleries.get_definition(version.definition_id)
    return SourceImage(str(version.id), version.digest, store.blobs.path_for(version.digest),
                       version.disk.virtual_size, definition.os_type, definition.hyper_v_generation,
                       definition.os_state)


def check_generation(source: SourceImage) -> None:
    """A V1 (BIOS) image must boot with BIOS (kiln.disk.bios reads what the disk boots): rows made
    before kiln recorded generations, or a UEFI-only disk, are refused here rather than hang SeaBIOS."""
    from kiln.disk import bios

    bios.require_generation(source.hyper_v_generation, bios.boot_generations(source.disk, "vpc"),
                            what=f"image {source.id}", path="--image",
                            hint="a V1 VM boots with SeaBIOS: make the VM from a hybrid (V1 and V2) disk, "
                                 "or import this disk as V2 (UEFI)")
