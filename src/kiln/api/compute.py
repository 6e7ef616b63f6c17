"""kiln's catalog under Azure Compute's own read paths, so `azure-mgmt-compute` lists what builds made.

    GET /subscriptions/{sub}[/resourceGroups/{rg}]/providers/Microsoft.Compute/images[/{name}]
    GET /subscriptions/{sub}[/resourceGroups/{rg}]/providers/Microsoft.Compute/galleries
    GET .../galleries/{g}[/images[/{d}[/versions[/{x.y.z}]]]]     ($expand=ReplicationStatus on a version)

Each answer is the resource as Azure's compute REST API returns it (id, name, type, location, tags,
properties with provisioningState), made from kiln's store (kiln.store.images, .galleries, and the
replicas of kiln.store.regions for a version's replication status). Read-only: a PUT or DELETE
here is ARM's 405, since kiln creates these resources by building and publishing (`kiln build`,
`kiln gallery ...`), not through this API. An id kiln does not hold is ARM's 404 `ResourceNotFound`.
"""

from __future__ import annotations

import datetime
from typing import Any

from fastapi import APIRouter, Request

from kiln import ids
from kiln.api.errors import not_found
from kiln.api.guard import api_version, authorize, listing, scoped
from kiln.api.service import Service
from kiln.errors import KilnError
from kiln.store.galleries import Gallery, GalleryImageDefinition, GalleryImageVersion, parse_version
from kiln.store.images import ManagedImage
from kiln.store.store import Store

PROVIDER = "Microsoft.Compute"
# What azure-mgmt-compute 39.0.0 sends: images at 2026-04-01, galleries and their children at 2026-03-03.
NEWEST_API_VERSION = "2026-04-01"
GIB = 1 << 30
SUB = "/subscriptions/{sub}"
RG = SUB + "/resourceGroups/{rg}"
GALLERY = RG + "/providers/Microsoft.Compute/galleries/{gallery}"


def _iso(t: float) -> str:
    return datetime.datetime.fromtimestamp(t, datetime.UTC).isoformat().replace("+00:00", "Z")


def _gib(size: int) -> int:
    return -(-size // GIB)


# ---------------------------------------------------------------------- shapes


def image_json(image: ManagedImage) -> dict[str, Any]:
    return {
        "id": str(image.id), "name": image.id.name, "type": ids.IMAGE, "location": image.location, "tags": image.tags,
        "properties": {
            "storageProfile": {
                "osDisk": {"osType": image.os_type, "osState": image.os_state, "blobUri": image.disk.path.as_uri(),
                           "caching": "ReadWrite", "diskSizeGB": _gib(image.disk.virtual_size),
                           "storageAccountType": "Standard_LRS"},
                "dataDisks": [],
                "zoneResilient": False,
            },
            "hyperVGeneration": image.hyper_v_generation,
            "provisioningState": "Succeeded",
        },
    }


def gallery_json(gallery: Gallery) -> dict[str, Any]:
    return {
        "id": str(gallery.id), "name": gallery.id.name, "type": ids.GALLERY, "location": gallery.location, "tags": {},
        "properties": {"description": gallery.description,
                       "identifier": {"uniqueName": f"{gallery.id.subscription}-{gallery.id.name.upper()}"},
                       "provisioningState": "Succeeded"},
    }


def definition_json(d: GalleryImageDefinition, location: str) -> dict[str, Any]:
    return {
        "id": str(d.id), "name": d.id.name, "type": ids.GALLERY_IMAGE, "location": location, "tags": {},
        "properties": {"identifier": {"publisher": d.publisher, "offer": d.offer, "sku": d.sku},
                       "osType": d.os_type, "osState": d.os_state, "hyperVGeneration": d.hyper_v_generation,
                       "architecture": "x64", "provisioningState": "Succeeded"},
    }


def version_json(store: Store, v: GalleryImageVersion, location: str, *, replication: bool) -> dict[str, Any]:
    storage: dict[str, Any] = {"osDiskImage": {"sizeInGB": _gib(v.disk.virtual_size), "hostCaching": "ReadOnly"}}
    if ids.try_parse(v.source) is not None:  # a managed image it was published from; a build's source is no resource
        storage["source"] = {"id": v.source}
    props: dict[str, Any] = {
        "publishingProfile": {"targetRegions": [t.to_json() for t in v.target_regions],
                              "replicaCount": max((t.replica_count for t in v.target_regions), default=1),
                              "excludeFromLatest": v.exclude_from_latest, "publishedDate": _iso(v.created),
                              "storageAccountType": "Standard_LRS"},
        "storageProfile": storage,
        "provisioningState": "Succeeded",
    }
    if replication:
        props["replicationStatus"] = replication_status(store, v)
    return {"id": str(v.id), "name": v.version, "type": ids.GALLERY_IMAGE_VERSION, "location": location,
            "tags": v.tags, "properties": props}


def replication_status(store: Store, v: GalleryImageVersion) -> dict[str, Any]:
    """Per target region, whether the region holds the version's bytes (kiln replicates before it
    lists a version, so a region without a replica is one whose replica was removed since)."""
    summary = []
    for t in v.target_regions:
        if store.regions.get_replica(t.name, v.digest) is not None:
            summary.append({"region": t.name, "state": "Completed", "details": "", "progress": 100})
        else:
            summary.append({"region": t.name, "state": "Failed", "progress": 0,
                            "details": "this region no longer holds a replica of the version (kiln store check)"})
    states = {s["state"] for s in summary}
    return {"aggregatedState": "Completed" if states <= {"Completed"} else "Failed", "summary": summary}


# ---------------------------------------------------------------------- routes


def router(service: Service) -> APIRouter:
    r = APIRouter()

    def allow(request: Request, sub: str) -> Store:
        authorize(service, request, sub, f"{PROVIDER}/read")
        api_version(request, NEWEST_API_VERSION)
        return service.store()

    def gallery_of(store: Store, sub: str, rg: str, name: str) -> Gallery:
        rid = _id(sub, rg, ids.GALLERY, name)
        try:
            return store.galleries.get(rid)
        except KilnError:
            raise not_found(ids.GALLERY, name, rg) from None

    def definition_of(store: Store, sub: str, rg: str, gallery: str, name: str) -> GalleryImageDefinition:
        g = gallery_of(store, sub, rg, gallery)
        try:
            return store.galleries.get_definition(g.id.child("images", name))
        except KilnError:
            raise not_found(ids.GALLERY_IMAGE, f"{gallery}/images/{name}", rg) from None

    # ------------------------------------------------------------------ managed images

    @r.get(SUB + "/providers/Microsoft.Compute/images")
    def images_by_subscription(request: Request, sub: str) -> dict[str, Any]:
        return listing(service, request, scoped(allow(request, sub).images.list(), sub), image_json)

    @r.get(RG + "/providers/Microsoft.Compute/images")
    def images_by_resource_group(request: Request, sub: str, rg: str) -> dict[str, Any]:
        return listing(service, request, scoped(allow(request, sub).images.list(), sub, rg), image_json)

    @r.get(RG + "/providers/Microsoft.Compute/images/{name}")
    def image(request: Request, sub: str, rg: str, name: str) -> dict[str, Any]:
        store = allow(request, sub)
        found = store.images.find(_id(sub, rg, ids.IMAGE, name))
        if found is None:
            raise not_found(ids.IMAGE, name, rg)
        return image_json(found)

    # ------------------------------------------------------------------ galleries

    @r.get(SUB + "/providers/Microsoft.Compute/galleries")
    def galleries_by_subscription(request: Request, sub: str) -> dict[str, Any]:
        return listing(service, request, scoped(allow(request, sub).galleries.list(), sub), gallery_json)

    @r.get(RG + "/providers/Microsoft.Compute/galleries")
    def galleries_by_resource_group(request: Request, sub: str, rg: str) -> dict[str, Any]:
        return listing(service, request, scoped(allow(request, sub).galleries.list(), sub, rg), gallery_json)

    @r.get(GALLERY)
    def gallery(request: Request, sub: str, rg: str, gallery: str) -> dict[str, Any]:
        return gallery_json(gallery_of(allow(request, sub), sub, rg, gallery))

    @r.get(GALLERY + "/images")
    def definitions(request: Request, sub: str, rg: str, gallery: str) -> dict[str, Any]:
        store = allow(request, sub)
        g = gallery_of(store, sub, rg, gallery)
        return listing(service, request, store.galleries.list_definitions(g.id), lambda d: definition_json(d, g.location))

    @r.get(GALLERY + "/images/{definition}")
    def definition(request: Request, sub: str, rg: str, gallery: str, definition: str) -> dict[str, Any]:
        store = allow(request, sub)
        d = definition_of(store, sub, rg, gallery, definition)
        return definition_json(d, gallery_of(store, sub, rg, gallery).location)

    @r.get(GALLERY + "/images/{definition}/versions")
    def versions(request: Request, sub: str, rg: str, gallery: str, definition: str) -> dict[str, Any]:
        store = allow(request, sub)
        d = definition_of(store, sub, rg, gallery, definition)
        location = gallery_of(store, sub, rg, gallery).location
        return listing(service, request, store.galleries.list_versions(d.id),
                       lambda v: version_json(store, v, location, replication=False))

    @r.get(GALLERY + "/images/{definition}/versions/{version}")
    def version(request: Request, sub: str, rg: str, gallery: str, definition: str, version: str) -> dict[str, Any]:
        store = allow(request, sub)
        d = definition_of(store, sub, rg, gallery, definition)
        missing = not_found(ids.GALLERY_IMAGE_VERSION, f"{gallery}/images/{definition}/versions/{version}", rg)
        try:
            parse_version(version)  # not x.y.z ('latest' included): no such resource on Azure either
            v = store.galleries.get_version(d.id.child("versions", version))
        except KilnError:
            raise missing from None
        expand = request.query_params.get("$expand", "")
        return version_json(store, v, gallery_of(store, sub, rg, gallery).location,
                            replication=expand.lower() == "replicationstatus")

    return r


def _id(sub: str, rg: str, kind: str, name: str) -> ids.ResourceId:
    """The id a path names; a name ARM could not hold (empty, with spaces around it) is 404 here."""
    namespace, *types = kind.split("/")
    rid = ids.ResourceId(sub, rg, namespace, tuple(types), (name,))
    if ids.try_parse(str(rid)) is None:
        raise not_found(kind, name, rg)
    return rid

