"""DevTest Labs: labs in a region, and the custom images each lab offers its users.

A lab is `/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.DevTestLab/labs/{lab}`, kept
in one configured region. Its custom images (`.../labs/{lab}/customimages/{name}`) carry what
DevTest Labs shows: osType, osState (Generalized or Specialized; for Linux `linuxOsState`
DeprovisionApplied or NonDeprovisioned), description, author, the image factory's `ImagePath` tag,
the creation time, plus what kiln adds: whether the image passed its boot test and the digest of
its bytes.

The store keeps the rows; publishing into a lab (putting the bytes in the lab's region first) is
kiln.distribute.labs. `commit_images` is the store's half: it lists any number of images whose
bytes are in place in one write transaction (one fsync for all of them), each with its own
outcome, so a lab never lists an incomplete image and a killed publish is finished by publishing
again. It holds the lock of each lab it lists into (PostgreSQL: the lab rows, FOR UPDATE): two
publishers into one lab queue, publishers into other labs run meanwhile.
"""

from __future__ import annotations

import builtins
import datetime
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from kiln import ids
from kiln.errors import InvalidInput, KilnError, NotFound
from kiln.ids import ResourceId
from kiln.store.blobs import BlobStore, DiskRef
from kiln.store.common import dumps
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


@dataclass(frozen=True)
class PendingImage:
    """A custom image whose bytes are complete in its lab's region, not yet listed by the lab."""

    id: ResourceId
    lab: Lab
    digest: str
    os_type: str
    os_state: str
    description: str
    author: str
    image_path: str
    boot_tested: bool
    source: str
    tags: dict[str, str]
    created: float


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
        return self.create_many([lab], location)[0]

    def create_many(self, labs: Sequence[str | ResourceId], location: str) -> list[Lab]:
        """Create labs in a configured region, all in one transaction (one fsync however many there
        are). Labs that exist there already are kept; one that exists in another region is refused
        and then none is created."""
        rids = [lab_id(lab) for lab in labs]
        region = self.regions.get(location)
        with self.catalog.write() as db:  # insert-if-new first: two creators at once never both insert
            for rid in rids:
                db.execute("INSERT INTO labs (key, id, location, created) VALUES (?, ?, ?, ?) ON CONFLICT (key) DO NOTHING",
                           (rid.key, str(rid), region.name, now()))
                row = db.execute("SELECT location FROM labs WHERE key = ?", (rid.key,)).fetchone()
                if row is not None and row["location"].lower() != region.name.lower():
                    raise InvalidInput(f"lab {rid} already exists in {row['location']}",
                                       hint="a lab stays in its region; delete it first to move it")
        return [self.get(rid) for rid in rids]

    def ensure(self, lab: str | ResourceId, location: str) -> Lab:
        """The lab, created in `location` if it does not exist (an existing lab stays in its region)."""
        return self.find(lab) or self.create(lab, location)

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
        with self.catalog.write(parents=[("labs", found.id.key)]) as db:
            vms = [r[0] for r in db.execute("SELECT name FROM vms WHERE lab_key = ? ORDER BY name", (found.id.key,))]
            if vms:  # their disks and QEMU processes would be left with no lab to list them
                raise InvalidInput(f"lab {found.id} still has {len(vms)} VM(s): {', '.join(vms)}",
                                   hint=f"delete them first: kiln lab vm delete {found.id} NAME")
            count = db.execute("SELECT count(*) FROM lab_custom_images WHERE lab_key = ?", (found.id.key,)).scalar()
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

    def images(self, lab: str | ResourceId) -> builtins.list[LabCustomImage]:
        """The lab's custom images, oldest first."""
        found = self.get(lab)
        rows = self.catalog.query("SELECT * FROM lab_custom_images WHERE lab_key = ? ORDER BY created, key", (found.id.key,))
        return [self._image(r, found.location) for r in rows]

    def all_images(self) -> builtins.list[LabCustomImage]:
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

    def listed_digest(self, image: ResourceId) -> str | None:
        """The digest a lab lists under this custom image id, or None if it lists none."""
        row = self.catalog.one("SELECT digest FROM lab_custom_images WHERE key = ?", (image.key,))
        return row["digest"] if row is not None else None

    def commit_images(self, pending: Sequence[PendingImage]) -> builtins.list[KilnError | None]:
        """List prepared images, all in one write transaction. Each gets its own outcome (None: it
        is listed, now or before): an image whose name was taken meanwhile by other content, or
        whose lab or blob was deleted meanwhile, fails alone and the others are still listed."""
        outcomes: list[KilnError | None] = []
        with self.catalog.write(parents=[("labs", p.lab.id.key) for p in pending]) as db:
            for p in pending:
                row = db.execute("SELECT digest FROM lab_custom_images WHERE key = ?", (p.id.key,)).fetchone()
                if row is not None:
                    outcomes.append(None if row["digest"] == p.digest else image_taken(p.id))
                elif db.execute("SELECT 1 FROM labs WHERE key = ?", (p.lab.id.key,)).fetchone() is None:
                    outcomes.append(NotFound(f"lab {p.lab.id} was deleted while its image was published"))
                elif db.execute("SELECT 1 FROM blobs WHERE digest = ?", (p.digest,)).fetchone() is None:
                    outcomes.append(KilnError(f"blob {p.digest} left the store while it was published",
                                              hint="publish it again"))
                else:
                    db.execute(
                        "INSERT INTO lab_custom_images (key, id, lab_key, name, os_type, os_state, description, author,"
                        " image_path, digest, boot_tested, source, tags, created)"
                        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (p.id.key, str(p.id), p.lab.id.key, p.id.name, p.os_type, p.os_state, p.description, p.author,
                         p.image_path, p.digest, int(p.boot_tested), p.source, dumps(p.tags), p.created))
                    outcomes.append(None)
        return outcomes


def image_taken(rid: ResourceId) -> InvalidInput:
    return InvalidInput(f"custom image {rid} already exists with other content",
                        hint="pick another name or delete the image first")
