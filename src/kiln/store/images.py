"""Managed images: one disk, one location, an id like Azure's `.../Microsoft.Compute/images/NAME`.

An image row points at a blob (and the blob has a replica in the image's location region) only
after both exist completely: import ingests the disk, replicates it, and only then writes the row,
in one transaction. Importing the same disk again under the same id is a no-op, so a killed import
is finished by running it again.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kiln import ids
from kiln.disk import bios, formats
from kiln.errors import InvalidInput, NotFound
from kiln.events import Monitor, NullMonitor
from kiln.ids import ResourceId
from kiln.store.blobs import Blob, BlobStore, DiskRef, content_digest
from kiln.store.common import (
    HYPER_V_GENERATIONS,
    OS_STATES,
    OS_TYPES,
    choice,
    dumps,
    join_generations,
    new_holder,
    split_generations,
)
from kiln.store.db import Catalog, Db, Row, now
from kiln.store.regions import Regions


@dataclass(frozen=True)
class ManagedImage:
    id: ResourceId
    location: str
    os_type: str
    os_state: str
    hyper_v_generation: str
    digest: str
    disk: DiskRef
    tags: dict[str, str] = field(default_factory=dict)
    source: str = ""
    boot_tested: bool = False
    created: float = 0.0
    boot_generations: tuple[str, ...] = ()  # what its disk boots, read from it: V1 (BIOS), V2 (UEFI); () unknown
    boot_test: str = ""  # the boot test that proved it: ssh-login | serial ("" if none)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "name": self.id.name,
            "type": ids.IMAGE,
            "location": self.location,
            "tags": self.tags,
            "properties": {
                "storageProfile": {
                    "osDisk": {
                        "osType": self.os_type,
                        "osState": self.os_state,
                        "diskSizeGB": -(-self.disk.virtual_size // (1 << 30)),
                        "blobUri": self.disk.path.as_uri(),
                    }
                },
                "hyperVGeneration": self.hyper_v_generation,
                "sourceVirtualMachine": {"id": self.source} if self.source else None,
                "provisioningState": "Succeeded",
            },
            "kiln": {"digest": self.digest, "virtualSize": self.disk.virtual_size, "format": self.disk.format,
                     "path": str(self.disk.path), "bootTested": self.boot_tested, "created": self.created,
                     "bootGenerations": list(self.boot_generations), "bootTest": self.boot_test or None},
        }


class Images:
    def __init__(self, catalog: Catalog, blobs: BlobStore, regions: Regions) -> None:
        self.catalog = catalog
        self.blobs = blobs
        self.regions = regions

    def _row(self, r: Row, *, fetch: bool = True) -> ManagedImage:
        blob = self.blobs.get(r["digest"], fetch=fetch)
        return ManagedImage(
            id=ids.parse(r["id"], ids.IMAGE), location=r["location"], os_type=r["os_type"], os_state=r["os_state"],
            hyper_v_generation=r["hyper_v_generation"], digest=r["digest"], disk=blob.disk, tags=json.loads(r["tags"]),
            source=r["source"], boot_tested=bool(r["boot_tested"]), created=r["created"],
            boot_generations=split_generations(r["boot_generations"]), boot_test=r["boot_test"],
        )

    def find(self, image_id: str | ResourceId) -> ManagedImage | None:
        rid = image_id if isinstance(image_id, ResourceId) else ids.parse(image_id, ids.IMAGE, what="image id")
        row = self.catalog.one("SELECT * FROM images WHERE key = ?", (rid.key,))
        return self._row(row) if row else None

    def get(self, image_id: str | ResourceId) -> ManagedImage:
        image = self.find(image_id)
        if image is None:
            raise NotFound(f"image {image_id} does not exist", hint="kiln image list shows the images; kiln image import adds one")
        return image

    def list(self) -> list[ManagedImage]:
        # A list needs no disk: with shared blobs, it fetches none.
        return [self._row(r, fetch=False) for r in self.catalog.query("SELECT * FROM images ORDER BY key")]

    def delete(self, image_id: str | ResourceId) -> ManagedImage:
        image = self.get(image_id)

        def delete(db: Db) -> None:  # serializable: a VM made from it meanwhile makes one of the two run again
            users = [r["id"] for r in db.execute("SELECT id FROM vms WHERE image_key = ? ORDER BY key", (image.id.key,))]
            if users:
                names = ", ".join(users)
                raise InvalidInput(f"image {image.id} is the disk of {len(users)} VM(s): {names}",
                                   hint="delete those VMs first (kiln vm delete NAME), or capture them as images")
            db.execute("DELETE FROM images WHERE key = ?", (image.id.key,))

        self.catalog.transact(delete)
        return image

    def import_disk(
        self,
        path: Path,
        image_id: str | ResourceId,
        location: str,
        os_type: str = "Linux",
        *,
        move: bool = False,
        tags: dict[str, str] | None = None,
        os_state: str = "Generalized",
        hyper_v_generation: str = "V2",
        source: str = "",
        boot_tested: bool = False,
        replace: bool = False,
        monitor: Monitor | None = None,
    ) -> ManagedImage:
        """Import the disk at `path` (raw, qcow2, fixed or dynamic VHD) as a managed image.

        Everything is checked before anything is written. `move=True` consumes a disk the build left in
        the work dir (no copy); otherwise `path` is never modified. With the same id and the same
        disk content this is a no-op; a different disk under an existing id needs `replace`.
        """
        monitor = monitor or NullMonitor()
        rid = image_id if isinstance(image_id, ResourceId) else ids.parse(image_id, ids.IMAGE, what="image id")
        region = self.regions.get(location)
        os_type = choice(os_type, OS_TYPES, "os type")
        os_state = choice(os_state, OS_STATES, "os state")
        hyper_v_generation = choice(hyper_v_generation, HYPER_V_GENERATIONS, "Hyper-V generation")
        info = formats.detect(path)
        boots = bios.boot_generations(path, info.format)  # a V1 image must boot with BIOS: refused before any write
        bios.require_generation(hyper_v_generation, boots, what=f"image {rid}", path=".properties.hyperVGeneration",
                                file=str(path))
        existing = self.find(rid)
        if existing is not None and not replace:
            if content_digest(path, info) == existing.digest:
                monitor.log(f"{rid} already holds this disk")
                return existing
            raise InvalidInput(f"image {rid} already exists with a different disk",
                               hint="delete it first (kiln image delete) or import under another name")
        holder = new_holder("import")
        try:
            blob = self.blobs.ingest(path, holder=holder, move=move, monitor=monitor)
            return self.publish_blob(blob, rid, region.name, os_type=os_type, os_state=os_state,
                                     hyper_v_generation=hyper_v_generation, tags=tags, source=source,
                                     boot_tested=boot_tested, replace=replace, monitor=monitor,
                                     boot_generations=boots)
        finally:
            self.blobs.release_holder(holder)

    def publish_blob(
        self,
        blob: Blob,
        image_id: ResourceId,
        location: str,
        *,
        os_type: str,
        os_state: str = "Generalized",
        hyper_v_generation: str = "V2",
        tags: dict[str, str] | None = None,
        source: str = "",
        boot_tested: bool = False,
        replace: bool = True,
        monitor: Monitor | None = None,
        boot_generations: tuple[str, ...] = (),
        boot_test: str = "",
    ) -> ManagedImage:
        """Make `image_id` name the stored `blob` (replicated to `location` first). The caller holds a lease.
        `boot_generations` is what the disk boots (`kiln.disk.bios.boot_generations`); the caller checks it."""
        region = self.regions.get(location)
        self.regions.replicate(blob, region.name, monitor)
        def record(db: Db) -> None:  # serializable: two importers of one name never both find it free
            row = db.execute("SELECT digest FROM images WHERE key = ?", (image_id.key,)).fetchone()
            if row is not None and row["digest"] != blob.digest and not replace:
                raise InvalidInput(f"image {image_id} already exists with a different disk",
                                   hint="delete it first (kiln image delete) or import under another name")
            db.execute("DELETE FROM images WHERE key = ?", (image_id.key,))
            db.execute(
                "INSERT INTO images (key, id, location, os_type, os_state, hyper_v_generation, digest, tags, source,"
                " boot_tested, created, boot_generations, boot_test) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (image_id.key, str(image_id), region.name, os_type, os_state, hyper_v_generation, blob.digest,
                 dumps(tags or {}), source, int(boot_tested), now(), join_generations(boot_generations), boot_test),
            )

        self.catalog.transact(record)
        return self.get(image_id)

