"""One function per distribute target type, and `distribute()` that runs them all for one build.

Each target function takes the already-stored blob and returns the target's run output; errors
that are the user's (a missing gallery definition, an unknown region, a malformed id) are raised
as KilnError with the target's JSON path, and `distribute()` turns them into a Failed run output.

Hyper-V generations: an AIB template has no hyperVGeneration of its own. A SharedImage target
takes its gallery image definition's; a ManagedImage target the source's, as AIB does (a
ManagedImage source's, a SharedImageVersion source's definition's, a PlatformImage SKU ending in
`gen1` is V1), V2 by default. `plan_generations` says which generations a build's targets will
receive, so the boot test boots with SeaBIOS when one of them is V1. Every target checks that the
disk, as read from its bytes (`kiln.disk.bios.boot_generations`), boots the generation it is
published as; the generations are recorded on the image or version.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import unquote, urlparse

from kiln import ids
from kiln.disk import bios
from kiln.distribute.artifact import BuiltArtifact
from kiln.distribute.galleries import publish_gallery_version
from kiln.errors import InvalidInput, KilnError
from kiln.events import Monitor, NullMonitor
from kiln.ids import ResourceId
from kiln.store import Store
from kiln.store.blobs import Blob
from kiln.store.files import no_space, place
from kiln.store.galleries import RegionTarget, VersionRule, parse_version
from kiln.store.runs import RunOutput
from kiln.template.model import (
    DistributeTarget,
    ImageTemplate,
    ManagedImageSource,
    ManagedImageTarget,
    PlatformImageSource,
    SharedImageTarget,
    SharedImageVersionSource,
    Source,
    VhdTarget,
)

Target = Callable[[Store, DistributeTarget, Blob, BuiltArtifact, ResourceId, str, Monitor, str], RunOutput]


def distribute_managed_image(store: Store, target: ManagedImageTarget, blob: Blob, artifact: BuiltArtifact,
                             template_id: ResourceId, run_id: str, monitor: Monitor, path: str = "") -> RunOutput:
    image_id = ids.parse(target.image_id, ids.IMAGE, what="imageId", path=f"{path}.imageId")
    store.regions.get(target.location, path=f"{path}.location")
    bios.require_generation(artifact.hyper_v_generation, artifact.boot_generations, what=f"image {image_id}",
                            path=f"{path}.imageId")
    image = store.images.publish_blob(
        blob, image_id, target.location, os_type=artifact.os_type, os_state=artifact.os_state,
        hyper_v_generation=artifact.hyper_v_generation, tags=dict(target.artifact_tags), source=artifact.source_id,
        boot_tested=artifact.boot_tested, replace=True, monitor=monitor, boot_generations=artifact.boot_generations,
        boot_test=artifact.boot_test)
    replica = store.regions.get_replica(image.location, blob.digest)
    return RunOutput(target.run_output_name, template_id, "ManagedImage", "Succeeded", artifact_id=str(image.id),
                     artifact_uri=replica.uri if replica else "")


def _version_rule(target: SharedImageTarget, artifact: BuiltArtifact, path: str) -> VersionRule:
    v = target.versioning
    if v is None or v.scheme == "Latest":
        return VersionRule("Latest", major=v.major if v is not None else -1)
    if not artifact.source_version:
        raise InvalidInput("versioning scheme Source needs a source image with a version", path=f"{path}.versioning",
                           hint="use a SharedImageVersion or PlatformImage source with x.y.z, or versioning Latest")
    parse_version(artifact.source_version, path=f"{path}.versioning")
    return VersionRule("Source", version=artifact.source_version)


def distribute_shared_image(store: Store, target: SharedImageTarget, blob: Blob, artifact: BuiltArtifact,
                            template_id: ResourceId, run_id: str, monitor: Monitor, path: str = "") -> RunOutput:
    gpath = f"{path}.galleryImageId"
    definition = store.galleries.get_definition(
        ids.parse(target.gallery_image_id, ids.GALLERY_IMAGE, what="galleryImageId", path=gpath), path=gpath)
    if definition.os_type != artifact.os_type:
        raise InvalidInput(f"gallery image definition {definition.id} is for {definition.os_type}, the image is {artifact.os_type}",
                           path=gpath, hint="distribute to a definition with the same osType")
    bios.require_generation(definition.hyper_v_generation, artifact.boot_generations,
                            what=f"gallery image definition {definition.id}", path=gpath,
                            hint=f"distribute to a definition whose hyperVGeneration the disk boots "
                                 f"({', '.join(artifact.boot_generations) or 'none found'})")
    regions = []
    for i, t in enumerate(target.target_regions):
        store.regions.get(t.name, path=f"{path}.targetRegions[{i}].name")
        regions.append(RegionTarget(t.name, t.replica_count, t.storage_account_type or target.storage_account_type or "Standard_LRS"))
    if not regions:
        regions.append(RegionTarget(store.galleries.get(definition.id.parent()).location))
    version = publish_gallery_version(
        store, definition.id, blob, rule=_version_rule(target, artifact, path), target_regions=regions,
        exclude_from_latest=target.exclude_from_latest, tags=dict(target.artifact_tags), source=artifact.source_id,
        boot_tested=artifact.boot_tested, monitor=monitor, boot_generations=artifact.boot_generations, path=gpath)
    return RunOutput(target.run_output_name, template_id, "SharedImage", "Succeeded", artifact_id=str(version.id))


def vhd_destination(store: Store, target: VhdTarget, template_id: ResourceId, run_id: str, path: str) -> Path:
    """Where a VHD target's file goes: its `uri` (a local path or file:// URI), else under the state home."""
    if not target.uri:
        return store.config.home / "vhds" / template_id.name / run_id / f"{target.run_output_name}.vhd"
    parsed = urlparse(target.uri)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    if parsed.scheme == "" and target.uri.startswith("/"):
        return Path(target.uri)
    raise InvalidInput(f"VHD uri {target.uri!r} is not a local path", path=f"{path}.uri",
                       hint="give a file:// URI or an absolute path, or omit uri to keep the VHD in the state home")


def distribute_vhd(store: Store, target: VhdTarget, blob: Blob, artifact: BuiltArtifact,
                   template_id: ResourceId, run_id: str, monitor: Monitor, path: str = "") -> RunOutput:
    dst = vhd_destination(store, target, template_id, run_id, path)
    if dst.exists() and not dst.samefile(blob.path):
        raise InvalidInput(f"{dst} already exists", path=f"{path}.uri", hint="kiln does not overwrite files: pick another uri")
    try:
        # The blob is a fixed VHD already: a reflink or hardlink gives the user the file for free.
        method = place(blob.path, dst, verify=lambda p: store.blobs.verify_file(p, blob.digest, blob.virtual_size))
    except OSError as e:
        raise (no_space(e, dst.parent) or KilnError(f"cannot write {dst}: {e.strerror}", path=f"{path}.uri")) from e
    monitor.log(f"VHD {dst} ({method})", name="distribute")
    return RunOutput(target.run_output_name, template_id, "VHD", "Succeeded", artifact_uri=dst.as_uri())


# ---------------------------------------------------------------------------------- generations


@dataclass(frozen=True)
class GenerationPlan:
    """The Hyper-V generations a build's targets will receive."""

    image: str  # what a ManagedImage target's image is: the source's generation
    targets: frozenset[str]  # every generation some target receives (V2 when none says)

    @property
    def firmware(self) -> str:
        """What the boot test boots with: SeaBIOS if any target is V1 (kiln's disks are hybrid,
        and the BIOS path is the one only V1 targets use), else UEFI."""
        return "bios" if "V1" in self.targets else "uefi"


def source_generation(store: Store, source: Source) -> str:
    """The hyperVGeneration a template's source has, as AIB reads it; V2 when nothing says."""
    try:
        if isinstance(source, ManagedImageSource):
            return store.images.get(source.image_id).hyper_v_generation
        if isinstance(source, SharedImageVersionSource):
            version = store.galleries.resolve_version(source.image_version_id)
            return store.galleries.get_definition(version.definition_id).hyper_v_generation
    except KilnError:
        return "V2"  # resolving the source reports it properly
    if isinstance(source, PlatformImageSource) and source.sku.lower().endswith("gen1"):
        return "V1"  # Azure's "...-gen1" SKUs (ubuntu-24_04-lts server-gen1); "-gen2" and the rest: V2
    return "V2"


def plan_generations(store: Store, template: ImageTemplate) -> GenerationPlan:
    image = source_generation(store, template.source)
    wanted: set[str] = set()
    for target in template.distribute:
        if isinstance(target, ManagedImageTarget):
            wanted.add(image)
        elif isinstance(target, SharedImageTarget):
            try:
                wanted.add(store.galleries.get_definition(target.gallery_image_id).hyper_v_generation)
            except KilnError:
                pass  # a missing definition fails that target, with its own error
    return GenerationPlan(image, frozenset(wanted or {"V2"}))


_TARGETS: dict[type, Callable[..., RunOutput]] = {
    ManagedImageTarget: distribute_managed_image,
    SharedImageTarget: distribute_shared_image,
    VhdTarget: distribute_vhd,
}


def distribute(store: Store, targets: Sequence[DistributeTarget], artifact: BuiltArtifact, *,
               template_id: ResourceId, run_id: str, monitor: Monitor | None = None) -> list[RunOutput]:
    """Publish `artifact` to every target; one run output each, recorded in the catalog under `run_id`.

    Raises only for bugs; every user-facing failure becomes a Failed run output. If the disk
    itself cannot be stored (say, the disk is full), every target fails with that reason."""
    monitor = monitor or NullMonitor()
    holder = f"run:{run_id}:{os.getpid()}"
    outputs: list[RunOutput] = []
    try:
        try:
            blob: Blob | None = store.blobs.ingest(artifact.disk, holder=holder, move=True, monitor=monitor,
                                                     known=artifact.known_digest)
            failure = ""
        except KilnError as e:
            blob, failure = None, f"the disk could not be stored: {e.render()}"
        if blob is not None and not artifact.boot_generations:  # what the stored bytes boot, not what was meant
            artifact = dataclasses.replace(artifact, boot_generations=bios.boot_generations(blob.disk.path,
                                                                                            blob.disk.format))
        for i, target in enumerate(targets):
            name = target.run_output_name
            monitor.step(f"distribute {name}", f"{target.type}")
            if blob is None:
                out = RunOutput(name, template_id, target.type, "Failed", error=failure)
            else:
                try:
                    out = _TARGETS[type(target)](store, target, blob, artifact, template_id, run_id, monitor,
                                                 f".properties.distribute[{i}]")
                except KilnError as e:
                    out = RunOutput(name, template_id, target.type, "Failed", error=e.render())
            outputs.append(store.runs.record_output(run_id, replace(out, boot_test=artifact.boot_test)))
            monitor.result(f"distribute {name}", ok=out.provisioning_state == "Succeeded",
                           message=out.artifact_id or out.artifact_uri or out.error)
    finally:
        store.blobs.release_holder(holder)
    return outputs
