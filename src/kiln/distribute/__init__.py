"""Distribution: a built disk, published to every target of a template's `distribute` list.

    outputs = distribute(store, template.distribute, artifact, template_id=tid, run_id=run, monitor=m)

The disk is ingested once (`move=True`: it is consumed from the work dir, no byte copied) and every
target shares that one blob: a ManagedImage row, a gallery version replicated to its regions, a VHD
file (a hardlink or reflink of the blob, which already *is* a fixed VHD). Each target gets its own
run output (runOutputName, artifactId, artifactUri, provisioningState, error); a failing target is
recorded as Failed and the others are still published, so the caller can report
PartiallySucceeded. The blob is leased to the run while it is distributed, so gc cannot take it.
"""

from kiln.distribute.artifact import BuiltArtifact
from kiln.distribute.targets import (
    distribute,
    distribute_managed_image,
    distribute_shared_image,
    distribute_vhd,
)

__all__ = ["BuiltArtifact", "distribute", "distribute_managed_image", "distribute_shared_image", "distribute_vhd"]
