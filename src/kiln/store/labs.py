"""DevTest Labs: labs in a region, and the custom images each lab offers its users.

A lab is `/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.DevTestLab/labs/{lab}`, kept
in one configured region. Its custom images (`.../labs/{lab}/customimages/{name}`) carry what
DevTest Labs shows: osType, osState (Generalized or Specialized; for Linux `linuxOsState`
DeprovisionApplied or NonDeprovisioned), description, author, the image factory's `ImagePath` tag,
the creation time, plus what kiln adds: whether the image passed its boot test and the digest of
its bytes.

Publishing an image into a lab never writes a byte twice: the blob is already in the store, and the
lab's region gets it through `Regions.replicate` (reflink or hardlink on one filesystem; a lab in
another region gets a verified replica there, which lifts Azure's same-region restriction). The
catalog row is written only after the region holds complete, verified bytes, in one transaction, so
a lab never lists an incomplete image and a killed publish is finished by publishing again.
"""

from __future__ import annotations

import datetime
import json
from dataclasses import dataclass, field
from typing import Any

from kiln import ids
from kiln.errors import InvalidInput, NotFound
from kiln.events import Monitor, NullMonitor
from kiln.ids import ResourceId
from kiln.store.blobs import Blob, BlobStore, DiskRef
from kiln.store.common import OS_STATES, OS_TYPES, choice, dumps
from kiln.store.db import Catalog, now
from kiln.store.regions import Regions

AUTHOR = "kiln image factory"


def os_state_detail(os_type: str, os_state: str) -> str:
    """DevTest Labs' spelling of the state: linuxOsState / windowsOsState."""
    if os_type == "Windows":
        return "SysprepApplied" if os_state == "Generalized" else "NonSysprepped"
    return "DeprovisionApplied" if os_state == "Generalized" else "NonDeprovisioned"


def _iso(t: float) -> str:
    return datetime.datetime.fromtimestamp(t, datetime.UTC).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class Lab:
    id: ResourceId
    location: str
    created: float = 0.0

    def to_json(self, image_count: int | None = None) -> dict[str, Any]:
        data: dict[str, Any] = {"id": str(self.id), "name": self.id.name, "type": ids.LAB, "location": self.location,
                                "properties": {"provisioningState": "Succeeded", "createdDate": _iso(self.created)}}
        if image_count is not None:
            data["kiln"] = {"customImages": image_count}
        return data


@dataclass(frozen=True)
class LabCustomImage:
    id: ResourceId
    location: str
    os_type: str
    os_state: str
    digest: str
    disk: DiskRef  # the replica in the lab's region (for folder regions), else the blob
    description: str = ""
    author: str = AUTHOR
    image_path: str = ""
    boot_tested: bool = False
    source: str = ""
    tags: dict[str, str] = field(default_factory=dict)
    created: float = 0.0

    @property
    def name(self) -> str:
        return self.id.name

    @property
    def lab_id(self) -> ResourceId:
        return self.id.parent()

    @property
    def os_state_detail(self) -> str:
        return os_state_detail(self.os_type, self.os_state)

    def to_json(self) -> dict[str, Any]:
        info_key = "windowsOsInfo" if self.os_type == "Windows" else "linuxOsInfo"
        state_key = "windowsOsState" if self.os_type == "Windows" else "linuxOsState"
        tags = {**self.tags, **({"ImagePath": self.image_path} if self.image_path else {})}
        return {
            "id": str(self.id), "name": self.name, "type": ids.LAB_CUSTOM_IMAGE, "location": self.location,
            "tags": tags,
            "properties": {
                "vhd": {"imageName": self.disk.path.as_uri(), "sysPrep": self.os_state == "Generalized",
                        "osType": self.os_type},
                "vm": {info_key: {state_key: self.os_state_detail}},
                "osState": self.os_state,
                "description": self.description, "author": self.author,
                "creationDate": _iso(self.created), "provisioningState": "Succeeded",
            },
            "kiln": {"digest": self.digest, "bootTested": self.boot_tested, "virtualSize": self.disk.virtual_size,
                     "path": str(self.disk.path), "source": self.source, "created": self.created},
        }


def lab_id(text: str | ResourceId, *, path: str = "", file: str = "") -> ResourceId:
    return text if isinstance(text, ResourceId) else ids.parse(text, ids.LAB, what="lab id", path=path, file=file)


def custom_image_id(text: str | ResourceId) -> ResourceId:
    return text if isinstance(text, ResourceId) else ids.parse(text, ids.LAB_CUSTOM_IMAGE, what="custom image id")


def check_image_name(name: str, path: str = "") -> str:
    """DevTest Labs custom image names: 1-80 letters, digits, '-', '_', '.', spaces and parentheses."""
    ok = 0 < len(name) <= 80 and all(c.isalnum() or c in "-_. ()" for c in name) and name.strip() == name
    if not ok:
        raise InvalidInput(f"custom image name {name!r} is not valid", path=path,
                           hint="use 1-80 letters, digits, '-', '_', '.', spaces or parentheses")
    return name


class Labs:
    def __init__(self, catalog: Catalog, blobs: BlobStore, regions: Regions) -> None:
        self.catalog = catalog
        self.blobs = blobs
        self.regions = regions

    # ------------------------------------------------------------------ labs

    def _lab(self, r: Any) -> Lab:
        return Lab(ids.parse(r["id"], ids.LAB), r["location"], r["created"])

    def create(self, lab: str | ResourceId, location: str) -> Lab:
        """Create a lab in a configured region (idempotent when it exists there already)."""
        rid = lab_id(lab)
        region = self.regions.get(location)
        with self.catalog.write() as db:
            row = db.execute("SELECT * FROM labs WHERE key = ?", (rid.key,)).fetchone()
            if row is not None:
                if row["location"].lower() != region.name.lower():
                    raise InvalidInput(f"lab {rid} already exists in {row['location']}",
                                       hint="a lab stays in its region; delete it first to move it")
                return self._lab(row)
            db.execute("INSERT INTO labs (key, id, location, created) VALUES (?, ?, ?, ?)",
                       (rid.key, str(rid), region.name, now()))
        return self.get(rid)

    def find(self, lab: str | ResourceId) -> Lab | None:
        row = self.catalog.one("SELECT * FROM labs WHERE key = ?", (lab_id(lab).key,))
        return self._lab(row) if row else None

    def get(self, lab: str | ResourceId) -> Lab:
        found = self.find(lab)
        if found is None:
            raise NotFound(f"lab {lab} does not exist", hint="kiln lab list shows the labs; kiln lab create adds one")
        return found

    def list(self) -> list[Lab]:
        return [self._lab(r) for r in self.catalog.query("SELECT * FROM labs ORDER BY key")]

    def delete(self, lab: str | ResourceId, *, with_images: bool = False) -> Lab:
        found = self.get(lab)
        with self.catalog.write() as db:
            (count,) = db.execute("SELECT count(*) FROM lab_custom_images WHERE lab_key = ?", (found.id.key,)).fetchone()
            if count and not with_images:
                raise InvalidInput(f"lab {found.id} still has {count} custom image(s)",
                                   hint="delete them first, or pass --with-images to delete the lab with its images")
            db.execute("DELETE FROM lab_custom_images WHERE lab_key = ?", (found.id.key,))
            db.execute("DELETE FROM labs WHERE key = ?", (found.id.key,))
        return found

    # ------------------------------------------------------------------ custom images

    def _image(self, r: Any, location: str) -> LabCustomImage:
        blob = self.blobs.get(r["digest"])
        disk = blob.disk
        region = self.regions.get(location)
        if region.kind == "folder":
            disk = DiskRef(self.regions.replica_path(region, r["digest"]), "vpc", blob.virtual_size)
        return LabCustomImage(
            id=ids.parse(r["id"], ids.LAB_CUSTOM_IMAGE), location=location, os_type=r["os_type"], os_state=r["os_state"],
            digest=r["digest"], disk=disk, description=r["description"], author=r["author"], image_path=r["image_path"],
            boot_tested=bool(r["boot_tested"]), source=r["source"], tags=json.loads(r["tags"]), created=r["created"])

    def images(self, lab: str | ResourceId) -> list[LabCustomImage]:
        """The lab's custom images, oldest first."""
        found = self.get(lab)
        rows = self.catalog.query("SELECT * FROM lab_custom_images WHERE lab_key = ? ORDER BY created, key", (found.id.key,))
        return [self._image(r, found.location) for r in rows]

    def all_images(self) -> list[LabCustomImage]:
        rows = self.catalog.query("SELECT c.*, l.location AS lab_location FROM lab_custom_images c "
                                  "JOIN labs l ON l.key = c.lab_key ORDER BY c.lab_key, c.created, c.key")
        return [self._image(r, r["lab_location"]) for r in rows]

    def find_image(self, image: str | ResourceId) -> LabCustomImage | None:
        rid = custom_image_id(image)
        row = self.catalog.one("SELECT c.*, l.location AS lab_location FROM lab_custom_images c "
                               "JOIN labs l ON l.key = c.lab_key WHERE c.key = ?", (rid.key,))
        return self._image(row, row["lab_location"]) if row else None

    def get_image(self, image: str | ResourceId) -> LabCustomImage:
        found = self.find_image(image)
        if found is None:
            raise NotFound(f"custom image {image} does not exist", hint="kiln lab image list LAB shows a lab's images")
        return found

    def delete_image(self, image: str | ResourceId) -> LabCustomImage:
        found = self.get_image(image)
        with self.catalog.write() as db:
            db.execute("DELETE FROM lab_custom_images WHERE key = ?", (found.id.key,))
        return found

    def publish_image(
        self,
        lab: str | ResourceId,
        name: str,
        blob: Blob,
        *,
        os_type: str = "Linux",
        os_state: str = "Generalized",
        description: str = "",
        author: str = AUTHOR,
        image_path: str = "",
        boot_tested: bool = False,
        source: str = "",
        tags: dict[str, str] | None = None,
        created: float | None = None,
        monitor: Monitor | None = None,
    ) -> LabCustomImage:
        """Make the lab offer `blob` as custom image `name`: the lab's region gets the bytes first
        (verified, never copied twice), then the row appears in one transaction. Publishing the same
        blob under the same name again is a no-op; another blob under a taken name is refused."""
        monitor = monitor or NullMonitor()
        found = self.get(lab)
        rid = found.id.child("customimages", check_image_name(name))
        os_type = choice(os_type, OS_TYPES, "os type")
        os_state = choice(os_state, OS_STATES, "os state")
        existing = self.find_image(rid)
        if existing is not None:
            if existing.digest == blob.digest:
                return existing
            raise InvalidInput(f"custom image {rid} already exists with other content",
                               hint="pick another name or delete the image first")
        self.regions.replicate(blob, found.location, monitor)
        with self.catalog.write() as db:
            row = db.execute("SELECT digest FROM lab_custom_images WHERE key = ?", (rid.key,)).fetchone()
            if row is None:
                db.execute(
                    "INSERT INTO lab_custom_images (key, id, lab_key, name, os_type, os_state, description, author,"
                    " image_path, digest, boot_tested, source, tags, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (rid.key, str(rid), found.id.key, name, os_type, os_state, description, author, image_path,
                     blob.digest, int(boot_tested), source, dumps(tags or {}), created if created is not None else now()))
            elif row["digest"] != blob.digest:
                raise InvalidInput(f"custom image {rid} already exists with other content",
                                   hint="pick another name or delete the image first")
        return self.get_image(rid)
