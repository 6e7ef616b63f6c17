"""Where built images live: the catalog (SQLite) and the content-addressed blob store.

See `kiln.store.store.Store` for the entry point and `kiln.store.blobs` for what a blob is.
"""

from kiln.store.blobs import Blob, BlobStore, DiskRef
from kiln.store.galleries import (
    Gallery,
    GalleryImageDefinition,
    GalleryImageVersion,
    RegionTarget,
    VersionRule,
)
from kiln.store.images import ManagedImage
from kiln.store.maintenance import GcReport
from kiln.store.regions import Replica
from kiln.store.runs import FINAL_STATES, RUN_STATES, RUN_SUB_STATES, Run, RunOutput, TemplateRecord
from kiln.store.store import Store

__all__ = [
    "FINAL_STATES", "RUN_STATES", "RUN_SUB_STATES", "Blob", "BlobStore", "DiskRef", "Gallery",
    "GalleryImageDefinition", "GalleryImageVersion", "GcReport", "ManagedImage", "RegionTarget", "Replica",
    "Run", "RunOutput", "Store", "TemplateRecord", "VersionRule",
]
