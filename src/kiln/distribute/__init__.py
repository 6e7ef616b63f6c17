"""Distribution: publishing a stored disk to its targets. The store keeps the catalog rows and the
blobs; this package owns the act of publishing, and is what the pipeline, the factory and the CLI
call.

    outputs = distribute(store, template.distribute, artifact, template_id=tid, run_id=run, monitor=m)

`distribute` (kiln.distribute.targets) is a build's last step. The disk is ingested once
(`move=True`: it is consumed from the work dir, no byte copied) and every target shares that one
blob: a ManagedImage row, a gallery version replicated to its regions, a VHD file (a hardlink or
reflink of the blob, which already *is* a fixed VHD). Each target gets its own run output
(runOutputName, artifactId, artifactUri, provisioningState, error); a failing target is recorded
as Failed and the others are still published, so the caller can report PartiallySucceeded. The
blob is leased to the run while it is distributed, so gc cannot take it.

Below it, one module per kind of target, each usable on its own:
    kiln.distribute.galleries   publish_gallery_version (targetRegions, replication, version numbers)
    kiln.distribute.labs        prepare/publish_lab_image, publish_lab_images (many, group-committed)
    kiln.distribute.targets     the template's targets: ManagedImage, SharedImage, VHD

The names below are imported on first use (PEP 562): `kiln factory distribute` publishes lab
images and needs neither the template model nor the pipeline.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kiln.lazy import lazy_attributes

_WHERE = {
    "BuiltArtifact": "artifact",
    "distribute": "targets", "distribute_managed_image": "targets", "distribute_shared_image": "targets",
    "distribute_vhd": "targets",
    "publish_gallery_version": "galleries", "publish_version_from": "galleries",
    "prepare_lab_image": "labs", "publish_lab_image": "labs", "publish_lab_images": "labs",
}

if TYPE_CHECKING:
    from kiln.distribute.artifact import BuiltArtifact
    from kiln.distribute.galleries import publish_gallery_version, publish_version_from
    from kiln.distribute.labs import prepare_lab_image, publish_lab_image, publish_lab_images
    from kiln.distribute.targets import (
        distribute,
        distribute_managed_image,
        distribute_shared_image,
        distribute_vhd,
    )


__getattr__ = lazy_attributes(__name__, _WHERE)


__all__ = ["BuiltArtifact", "distribute", "distribute_managed_image", "distribute_shared_image", "distribute_vhd",
           "prepare_lab_image", "publish_gallery_version", "publish_lab_image", "publish_lab_images",
           "publish_version_from"]
