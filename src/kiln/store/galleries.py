"""Galleries, image definitions and versions, with Azure's rules.

A gallery holds image definitions (publisher/offer/sku, osType, osState, hyperVGeneration); a
definition holds versions `major.minor.patch`, each one a blob replicated to its target regions.
`latest` is the highest version not marked excludeFromLatest.

A version is published in two steps (kiln.distribute.galleries does both): its blob is replicated
to every target region (idempotent, content-addressed), then `add_version`, one write transaction,
allocates the version number and inserts the row. The number is computed while holding the
definition's lock (SQLite: the database's write lock; PostgreSQL: the definition's row, FOR
UPDATE, so publishers into other definitions run meanwhile), so concurrent publishers never pick
the same one (and `UNIQUE (image_key, major, minor, patch)` would refuse it anyway); a kill before
the commit leaves no row, a kill after it leaves a complete one. Creating a definition locks its
gallery the same way, and deleting either locks the row it deletes. `add_version` refuses a row whose bytes some target region does not hold.
"""

from __future__ import annotations

import builtins
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from kiln import ids
from kiln.errors import InvalidInput, NotFound
from kiln.ids import ResourceId
from kiln.store.blobs import BlobStore, DiskRef
from kiln.store.common import (
    HYPER_V_GENERATIONS,
    OS_STATES,
    OS_TYPES,
    choice,
    dumps,
    join_generations,
    split_generations,
)
from kiln.store.db import Catalog, now
from kiln.store.regions import Regions

_VERSION = re.compile(r"^(\d{1,10})\.(\d{1,10})\.(\d{1,10})$")
_INT32 = 2**31 - 1


def parse_version(text: str, path: str = "") -> tuple[int, int, int]:
    m = _VERSION.match(text.strip())
    if not m or any(int(g) > _INT32 for g in m.groups()):
        raise InvalidInput(f"gallery image version {text!r} is not major.minor.patch", path=path,
                           hint="three integers separated by dots, each within a 32-bit integer, e.g. 1.0.0")
    major, minor, patch = (int(g) for g in m.groups())
    return major, minor, patch


@dataclass(frozen=True)
class RegionTarget:
    name: str
    replica_count: int = 1
    storage_account_type: str = "Standard_LRS"

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "regionalReplicaCount": self.replica_count, "storageAccountType": self.storage_account_type}


@dataclass(frozen=True)
class VersionRule:
    """How a version number is chosen: an explicit one, Latest{major} (next patch above the highest in
    that major; major -1: the highest major), or the source image's version."""

    scheme: Literal["Explicit", "Latest", "Source"]
    version: str = ""
    major: int = -1


@dataclass(frozen=True)
class Gallery:
    id: ResourceId
    location: str
    description: str = ""
    created: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {"id": str(self.id), "name": self.id.name, "type": ids.GALLERY, "location": self.location,
                "properties": {"description": self.description, "provisioningState": "Succeeded"}}


@dataclass(frozen=True)
class GalleryImageDefinition:
    id: ResourceId
    publisher: str
    offer: str
    sku: str
    os_type: str
    os_state: str
    hyper_v_generation: str
    created: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {"id": str(self.id), "name": self.id.name, "type": ids.GALLERY_IMAGE, "properties": {
            "identifier": {"publisher": self.publisher, "offer": self.offer, "sku": self.sku},
            "osType": self.os_type, "osState": self.os_state, "hyperVGeneration": self.hyper_v_generation,
            "provisioningState": "Succeeded"}}


@dataclass(frozen=True)
class GalleryImageVersion:
    id: ResourceId
    version: str
    digest: str
    disk: DiskRef
    exclude_from_latest: bool = False
    target_regions: tuple[RegionTarget, ...] = ()
    tags: dict[str, str] = field(default_factory=dict)
    source: str = ""
    boot_tested: bool = False
    created: float = 0.0
    boot_generations: tuple[str, ...] = ()  # what its disk boots, read from it: V1 (BIOS), V2 (UEFI); () unknown

    @property
    def definition_id(self) -> ResourceId:
        return self.id.parent()

    def to_json(self) -> dict[str, Any]:
        import datetime

        published = datetime.datetime.fromtimestamp(self.created, datetime.UTC).isoformat().replace("+00:00", "Z")
        return {"id": str(self.id), "name": self.version, "type": ids.GALLERY_IMAGE_VERSION,
                "location": self.target_regions[0].name if self.target_regions else "", "tags": self.tags,
                "properties": {
                    "publishingProfile": {"targetRegions": [t.to_json() for t in self.target_regions],
                                          "excludeFromLatest": self.exclude_from_latest, "publishedDate": published},
                    "storageProfile": {"osDiskImage": {"sizeInGB": -(-self.disk.virtual_size // (1 << 30))},
                                       "source": {"id": self.source} if self.source else {}},
                    "replicationStatus": {"aggregatedState": "Completed", "summary": [
                        {"region": t.name, "state": "Completed", "progress": 100} for t in self.target_regions]},
                    "provisioningState": "Succeeded"},
                "kiln": {"digest": self.digest, "path": str(self.disk.path), "format": self.disk.format,
                         "virtualSize": self.disk.virtual_size, "bootTested": self.boot_tested,
                         "bootGenerations": list(self.boot_generations)}}


class Galleries:
    def __init__(self, catalog: Catalog, blobs: BlobStore, regions: Regions) -> None:
        self.catalog = catalog
        self.blobs = blobs
        self.regions = regions

    # ------------------------------------------------------------------ galleries

    def create(self, gallery_id: str | ResourceId, location: str = "", description: str = "") -> Gallery:
        """Create a gallery (Azure's PUT: creating an existing one returns it unchanged)."""
        rid = _rid(gallery_id, ids.GALLERY, "gallery id")
        known = self.regions.list()
        region = self.regions.get(location) if location else (known[0] if known else None)
        with self.catalog.write() as db:  # one statement: two creators at once both get the first one's row
            db.execute("INSERT INTO galleries (key, id, location, description, created) VALUES (?, ?, ?, ?, ?)"
                       " ON CONFLICT (key) DO NOTHING", (rid.key, str(rid), region.name if region else "", description, now()))
        return self.get(rid)

    def get(self, gallery_id: str | ResourceId) -> Gallery:
        rid = _rid(gallery_id, ids.GALLERY, "gallery id")
        r = self.catalog.one("SELECT * FROM galleries WHERE key = ?", (rid.key,))
        if r is None:
            raise NotFound(f"gallery {rid} does not exist", hint="create it with kiln gallery create ID")
        return Gallery(ids.parse(r["id"]), r["location"], r["description"], r["created"])

    def list(self) -> list[Gallery]:
        return [Gallery(ids.parse(r["id"]), r["location"], r["description"], r["created"])
                for r in self.catalog.query("SELECT * FROM galleries ORDER BY key")]

    def delete(self, gallery_id: str | ResourceId) -> Gallery:
        gallery = self.get(gallery_id)
        with self.catalog.write(parents=[("galleries", gallery.id.key)]) as db:
            n = db.execute("SELECT count(*) FROM gallery_images WHERE gallery_key = ?", (gallery.id.key,)).scalar()
            if n:
                raise InvalidInput(f"gallery {gallery.id} still has {n} image definition(s)",
                                   hint="delete its image definitions first (kiln gallery image-definition delete)")
            db.execute("DELETE FROM galleries WHERE key = ?", (gallery.id.key,))
        return gallery

    # ------------------------------------------------------------------ definitions

    def create_definition(self, definition_id: str | ResourceId, *, publisher: str, offer: str, sku: str,
                          os_type: str = "Linux", os_state: str = "Generalized",
                          hyper_v_generation: str = "V2") -> GalleryImageDefinition:
        """Create an image definition; creating it again with the same properties is a no-op."""
        rid = _rid(definition_id, ids.GALLERY_IMAGE, "image definition id")
        for name, value in (("publisher", publisher), ("offer", offer), ("sku", sku)):
            if not value or not re.fullmatch(r"[A-Za-z0-9._-]{1,128}", value):
                raise InvalidInput(f"{name} {value!r} is not valid", hint="letters, digits, '.', '_' and '-' (1-128)")
        want = (choice(os_type, OS_TYPES, "os type"), choice(os_state, OS_STATES, "os state"),
                choice(hyper_v_generation, HYPER_V_GENERATIONS, "Hyper-V generation"))
        self.get(rid.parent())
        with self.catalog.write(parents=[("galleries", rid.parent().key)]) as db:
            if db.execute("SELECT 1 FROM galleries WHERE key = ?", (rid.parent().key,)).fetchone() is None:
                raise NotFound(f"gallery {rid.parent()} was deleted meanwhile", hint="create it again first")
            r = db.execute("SELECT * FROM gallery_images WHERE key = ?", (rid.key,)).fetchone()
            if r is not None:
                have = (r["publisher"], r["offer"], r["sku"], r["os_type"], r["os_state"], r["hyper_v_generation"])
                if have != (publisher, offer, sku, *want):
                    raise InvalidInput(f"image definition {rid} already exists with other properties",
                                       hint="an image definition's identifier, osType, osState and hyperVGeneration cannot change")
            else:
                db.execute("INSERT INTO gallery_images (key, id, gallery_key, publisher, offer, sku, os_type, os_state,"
                           " hyper_v_generation, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                           (rid.key, str(rid), rid.parent().key, publisher, offer, sku, *want, now()))
        return self.get_definition(rid)

    def _definition(self, r: Any) -> GalleryImageDefinition:
        return GalleryImageDefinition(ids.parse(r["id"]), r["publisher"], r["offer"], r["sku"], r["os_type"],
                                      r["os_state"], r["hyper_v_generation"], r["created"])

    def get_definition(self, definition_id: str | ResourceId, *, path: str = "") -> GalleryImageDefinition:
        rid = _rid(definition_id, ids.GALLERY_IMAGE, "image definition id", path)
        r = self.catalog.one("SELECT * FROM gallery_images WHERE key = ?", (rid.key,))
        if r is None:
            raise NotFound(f"gallery image definition {rid} does not exist", path=path,
                           hint="create it first: kiln gallery image-definition create ID --publisher P --offer O --sku S")
        return self._definition(r)

    def list_definitions(self, gallery_id: str | ResourceId | None = None) -> builtins.list[GalleryImageDefinition]:
        if gallery_id is None:
            rows = self.catalog.query("SELECT * FROM gallery_images ORDER BY key")
        else:
            rows = self.catalog.query("SELECT * FROM gallery_images WHERE gallery_key = ? ORDER BY key",
                                      (self.get(gallery_id).id.key,))
        return [self._definition(r) for r in rows]

    def delete_definition(self, definition_id: str | ResourceId) -> GalleryImageDefinition:
        d = self.get_definition(definition_id)
        with self.catalog.write(parents=[("gallery_images", d.id.key)]) as db:
            n = db.execute("SELECT count(*) FROM gallery_image_versions WHERE image_key = ?", (d.id.key,)).scalar()
            if n:
                raise InvalidInput(f"image definition {d.id} still has {n} version(s)",
                                   hint="delete its versions first (kiln gallery image-version delete)")
            db.execute("DELETE FROM gallery_images WHERE key = ?", (d.id.key,))
        return d

    # ------------------------------------------------------------------ versions

    def _version(self, r: Any) -> GalleryImageVersion:
        blob = self.blobs.get(r["digest"])
        return GalleryImageVersion(
            id=ids.parse(r["id"]), version=f"{r['major']}.{r['minor']}.{r['patch']}", digest=r["digest"], disk=blob.disk,
            exclude_from_latest=bool(r["exclude_from_latest"]),
            target_regions=tuple(RegionTarget(**t) for t in json.loads(r["target_regions"])),
            tags=json.loads(r["tags"]), source=r["source"], boot_tested=bool(r["boot_tested"]), created=r["created"],
            boot_generations=split_generations(r["boot_generations"]))

    def list_versions(self, definition_id: str | ResourceId | None = None) -> builtins.list[GalleryImageVersion]:
        order = "ORDER BY image_key, major, minor, patch"
        if definition_id is None:
            rows = self.catalog.query(f"SELECT * FROM gallery_image_versions {order}")
        else:
            d = self.get_definition(definition_id)
            rows = self.catalog.query(f"SELECT * FROM gallery_image_versions WHERE image_key = ? {order}", (d.id.key,))
        return [self._version(r) for r in rows]

    def get_version(self, version_id: str | ResourceId) -> GalleryImageVersion:
        rid = _rid(version_id, ids.GALLERY_IMAGE_VERSION, "image version id")
        if rid.name.lower() == "latest":
            return self.resolve_version(rid)
        major, minor, patch = parse_version(rid.name)
        r = self.catalog.one("SELECT * FROM gallery_image_versions WHERE image_key = ? AND major = ? AND minor = ? AND patch = ?",
                             (rid.parent().key, major, minor, patch))
        if r is None:
            raise NotFound(f"gallery image version {rid} does not exist",
                           hint=f"kiln gallery image-version list {rid.parent()} shows its versions")
        return self._version(r)

    def latest(self, definition_id: str | ResourceId) -> GalleryImageVersion | None:
        d = self.get_definition(definition_id)
        r = self.catalog.one("SELECT * FROM gallery_image_versions WHERE image_key = ? AND exclude_from_latest = 0 "
                             "ORDER BY major DESC, minor DESC, patch DESC LIMIT 1", (d.id.key,))
        return self._version(r) if r else None

    def resolve_version(self, id_or_latest: str | ResourceId, *, path: str = "") -> GalleryImageVersion:
        """A version from a version id, `.../versions/latest`, or a definition id (meaning its latest)."""
        rid = id_or_latest if isinstance(id_or_latest, ResourceId) else ids.try_parse(id_or_latest)
        if rid is not None and rid.kind.lower() == ids.GALLERY_IMAGE.lower():
            definition = rid
        elif rid is not None and rid.kind.lower() == ids.GALLERY_IMAGE_VERSION.lower():
            if rid.name.lower() != "latest":
                return self.get_version(rid)
            definition = rid.parent()
        else:
            raise InvalidInput(f"{id_or_latest!r} is not a gallery image version or definition id", path=path,
                               hint=f"expected {ids.example(ids.GALLERY_IMAGE_VERSION)} (or .../versions/latest)")
        v = self.latest(definition)
        if v is None:
            raise NotFound(f"gallery image definition {definition} has no version that counts as latest", path=path,
                           hint="publish a version, or one not marked excludeFromLatest")
        return v

    def add_version(self, definition: GalleryImageDefinition, digest: str, *, rule: VersionRule,
                    target_regions: Sequence[RegionTarget], exclude_from_latest: bool = False,
                    tags: dict[str, str] | None = None, source: str = "",
                    boot_tested: bool = False, boot_generations: tuple[str, ...] = ()) -> GalleryImageVersion:
        """Insert a version of `definition` whose blob every target region already holds, its
        number chosen by `rule` under the definition's lock (one transaction). `boot_generations` is what
        the disk boots; the caller has checked it against the definition's hyperVGeneration."""
        d = definition
        fixed = parse_version(rule.version) if rule.scheme in ("Explicit", "Source") else None
        with self.catalog.write(parents=[("gallery_images", d.id.key)]) as db:  # publishers into d queue here
            if db.execute("SELECT 1 FROM gallery_images WHERE key = ?", (d.id.key,)).fetchone() is None:
                raise NotFound(f"gallery image definition {d.id} was deleted while its version was published",
                               hint="create it again, then publish again")
            for t in target_regions:
                if db.execute("SELECT 1 FROM replicas WHERE region = ? AND digest = ?",
                              (t.name.lower(), digest)).fetchone() is None:
                    raise RuntimeError(f"blob {digest} is not replicated to {t.name}: replicate before adding the version")
            if fixed is None:
                fixed = _next_latest(db, d.id.key, rule.major)
            elif db.execute("SELECT 1 FROM gallery_image_versions WHERE image_key = ? AND major = ? AND minor = ? AND patch = ?",
                            (d.id.key, *fixed)).fetchone():
                raise InvalidInput(f"version {'.'.join(map(str, fixed))} of {d.id} already exists with another disk",
                                   hint="a version cannot be overwritten: delete it or publish another version number")
            vid = d.id.child("versions", ".".join(map(str, fixed)))
            db.execute(
                "INSERT INTO gallery_image_versions (key, id, image_key, major, minor, patch, digest, exclude_from_latest,"
                " target_regions, tags, source, boot_tested, created, boot_generations)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (vid.key, str(vid), d.id.key, *fixed, digest, int(exclude_from_latest),
                 json.dumps([t.__dict__ for t in target_regions]), dumps(tags or {}), source, int(boot_tested), now(),
                 join_generations(boot_generations)),
            )
        return self.get_version(vid)

    def existing_version(self, definition: ResourceId, version: tuple[int, int, int],
                         digest: str) -> GalleryImageVersion | None:
        """The version if it exists with this blob, None if it does not exist; another blob is an error."""
        r = self.catalog.one("SELECT * FROM gallery_image_versions WHERE image_key = ? AND major = ? AND minor = ? AND patch = ?",
                             (definition.key, *version))
        if r is None:
            return None
        if r["digest"] != digest:
            raise InvalidInput(f"version {'.'.join(map(str, version))} of {definition} already exists with another disk",
                               hint="a version cannot be overwritten: delete it or publish another version number")
        return self._version(r)

    def delete_version(self, version_id: str | ResourceId) -> GalleryImageVersion:
        v = self.get_version(version_id)
        with self.catalog.write() as db:
            db.execute("DELETE FROM gallery_image_versions WHERE key = ?", (v.id.key,))
        return v


def _next_latest(db: Any, image_key: str, major: int) -> tuple[int, int, int]:
    """Latest{major}: one patch above the highest version in `major` (-1: the highest major there is)."""
    if major < 0:
        r = db.execute("SELECT max(major) FROM gallery_image_versions WHERE image_key = ?", (image_key,)).fetchone()
        major = r[0] if r[0] is not None else 1
    r = db.execute("SELECT minor, patch FROM gallery_image_versions WHERE image_key = ? AND major = ? "
                   "ORDER BY minor DESC, patch DESC LIMIT 1", (image_key, major)).fetchone()
    return (major, 0, 0) if r is None else (major, r["minor"], r["patch"] + 1)


def _rid(value: str | ResourceId, kind: str, what: str, path: str = "") -> ResourceId:
    if isinstance(value, ResourceId):
        if value.kind.lower() != kind.lower():
            raise InvalidInput(f"{what} {value} is a {value.kind} id", path=path, hint=f"expected {ids.example(kind)}")
        return value
    return ids.parse(value, kind, what=what, path=path)
