"""Publishing a gallery image version: the blob replicated to its target regions, then the row.

`publish_gallery_version` is the one way a version is made, by a build's SharedImage target and
by `kiln gallery image-version create` alike (`publish_version_from` takes the command's disk file
or managed image). Replication comes first and is idempotent (content-addressed: a region that
holds the bytes gets none again); then the store's `Galleries.add_version` allocates the number
and inserts the row in one transaction. An explicit (or Source) version that already holds this
blob is returned as is, so a killed publish is finished by running it again; one that holds
another blob is an error, raised before anything is written.

A version's disk must boot its definition's hyperVGeneration (`kiln.disk.bios.require_generation`,
from what the disk's bytes say it boots): a V1 (BIOS) definition never receives a UEFI-only disk.
What the disk boots is recorded on the version.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from kiln import ids
from kiln.disk import bios
from kiln.errors import InvalidInput
from kiln.events import Monitor
from kiln.ids import ResourceId
from kiln.store.galleries import GalleryImageVersion, RegionTarget, VersionRule, parse_version

if TYPE_CHECKING:
    from kiln.store import Store
    from kiln.store.blobs import Blob

LATEST = VersionRule("Latest")  # one patch above the highest version of the highest major


def publish_gallery_version(
    store: Store,
    definition_id: str | ResourceId,
    blob: Blob,
    *,
    rule: VersionRule = LATEST,
    target_regions: Sequence[RegionTarget] = (),
    exclude_from_latest: bool = False,
    tags: dict[str, str] | None = None,
    source: str = "",
    boot_tested: bool = False,
    monitor: Monitor | None = None,
    boot_generations: tuple[str, ...] | None = None,
    path: str = "",
) -> GalleryImageVersion:
    """Replicate `blob` to the target regions (default: the first region), then add it as a new
    version of the definition. The caller holds a lease on the blob. `boot_generations` is what the
    disk boots (None: read it from the blob); a disk that cannot boot the definition's
    hyperVGeneration is refused (at `path`) before anything is written."""
    d = store.galleries.get_definition(definition_id)
    if boot_generations is None:
        boot_generations = bios.boot_generations(blob.disk.path, blob.disk.format)
    bios.require_generation(d.hyper_v_generation, boot_generations, what=f"gallery image definition {d.id}",
                            path=path or ".properties.hyperVGeneration")
    regions = [store.regions.get(t.name, path=".targetRegions") for t in target_regions] or store.regions.list()[:1]
    targets = tuple(RegionTarget(r.name, t.replica_count, t.storage_account_type)
                    for r, t in zip(regions, target_regions or [RegionTarget(regions[0].name)], strict=True))
    if rule.scheme in ("Explicit", "Source"):
        done = store.galleries.existing_version(d.id, parse_version(rule.version), blob.digest)
        if done is not None:
            return done
    for r in regions:
        store.regions.replicate(blob, r.name, monitor)
    return store.galleries.add_version(d, blob.digest, rule=rule, target_regions=targets,
                                       exclude_from_latest=exclude_from_latest, tags=tags, source=source,
                                       boot_tested=boot_tested, boot_generations=boot_generations)


def publish_version_from(store: Store, version_id: str, *, disk: Path | None = None, image_id: str | None = None,
                         regions: Sequence[str] = (), exclude_from_latest: bool = False,
                         monitor: Monitor | None = None) -> GalleryImageVersion:
    """Publish version `version_id` (.../versions/x.y.z) from a disk file or a managed image.

    Everything is checked before the first write: the id, the definition, the regions, and that an
    existing version of that number holds the same content (then this is a no-op)."""
    from kiln.store.common import new_holder

    if (disk is None) == (image_id is None):
        raise InvalidInput("give exactly one of --disk FILE and --image ID", hint="e.g. --disk build/disk.raw")
    rid = ids.parse(version_id, ids.GALLERY_IMAGE_VERSION, what="image version id")
    number = parse_version(rid.name)
    d = store.galleries.get_definition(rid.parent())
    targets = [RegionTarget(store.regions.get(r).name) for r in regions]
    if not targets:
        targets = [RegionTarget(store.galleries.get(d.id.parent()).location)]
    digest: Callable[[], str | None]
    if disk is not None:
        from kiln.disk import formats
        from kiln.store.blobs import content_digest

        info = formats.detect(disk)  # a file that is no disk is refused first
        digest = lambda: content_digest(disk, info)  # noqa: E731 - hashed only if the version exists
        boots = bios.boot_generations(disk, info.format)
        file = str(disk)
    else:
        image = store.images.get(image_id)  # type: ignore[arg-type]  # set: exactly one of the two, checked above
        digest = lambda: image.digest  # noqa: E731
        boots = image.boot_generations or bios.boot_generations(image.disk.path, image.disk.format)  # recorded, else read
        file = ""
    # A V1 definition never receives a disk that cannot boot with BIOS: refused before anything is written.
    bios.require_generation(d.hyper_v_generation, boots, what=f"gallery image definition {d.id}",
                            path=".properties.hyperVGeneration", file=file,
                            hint=_generation_hint(d.hyper_v_generation, boots, image_id))
    existing = next((v for v in store.galleries.list_versions(d.id) if v.version == ".".join(map(str, number))), None)
    if existing is not None and digest() != existing.digest:
        raise InvalidInput(f"version {existing.id} already exists with another disk",
                           hint="a version cannot be overwritten: delete it or publish another version number")
    holder = new_holder("version")
    try:
        if disk is not None:
            blob = store.blobs.ingest(disk, holder=holder, monitor=monitor)
            source = ""
        else:
            store.blobs.take_lease(image.digest, holder)
            blob, source = store.blobs.get(image.digest), str(image.id)
        return publish_gallery_version(store, d.id, blob, rule=VersionRule("Explicit", rid.name),
                                       target_regions=targets, exclude_from_latest=exclude_from_latest,
                                       source=source, monitor=monitor, boot_generations=boots)
    finally:
        store.blobs.release_holder(holder)


def _generation_hint(generation: str, boots: tuple[str, ...], image_id: str | None) -> str:
    what = f"image {image_id}" if image_id else "this disk"
    if generation == "V1":
        return (f"{what} boots {' and '.join(boots) or 'neither with BIOS nor with UEFI'}; publish it to a "
                "V2 definition, or publish a hybrid disk (a BIOS boot partition and MBR boot code, as kiln builds)")
    return f"{what} boots {' and '.join(boots) or 'nothing kiln recognises'}; publish it to a V1 definition"
