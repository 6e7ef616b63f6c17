"""kiln's DevTest Labs under Azure's own read paths, so `azure-mgmt-devtestlabs` lists a lab's images.

    GET /subscriptions/{sub}[/resourceGroups/{rg}]/providers/Microsoft.DevTestLab/labs[/{lab}]
    GET .../labs/{lab}/customimages[/{name}]      ($top limits a list)

Shapes as DevTest Labs' REST API (2018-09-15, what azure-mgmt-devtestlabs 9.0.1 sends) returns
them, made from kiln's labs store (kiln.store.labs): the custom image's VHD (`imageName`, its bytes
in the lab's region), its OS state as DevTest Labs spells it (`linuxOsState`/`windowsOsState`),
author, description, creation date and the image factory's `ImagePath` tag. `$filter` and
`$orderby` are not applied (lists come in creation order). Read-only: kiln's image factory
(`kiln factory distribute`) is what publishes into a lab.
"""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import APIRouter, Request

from kiln import ids
from kiln.api.errors import not_found
from kiln.api.guard import api_version, authorize, listing, scoped
from kiln.api.service import Service
from kiln.store.labs import Lab, LabCustomImage
from kiln.store.store import Store

PROVIDER = "Microsoft.DevTestLab"
API_VERSIONS = ("2015-05-21-preview", "2016-05-15", "2018-09-15", "2018-10-15-preview")
SUB = "/subscriptions/{sub}"
LABS = SUB + "/resourceGroups/{rg}/providers/Microsoft.DevTestLab/labs"


def lab_json(lab: Lab) -> dict[str, Any]:
    data = lab.to_json()
    data.pop("kiln", None)
    data["tags"] = {}
    data["properties"]["uniqueIdentifier"] = str(uuid.uuid5(uuid.NAMESPACE_URL, lab.id.key))
    return data


def custom_image_json(image: LabCustomImage) -> dict[str, Any]:
    info_key = "windowsOsInfo" if image.os_type == "Windows" else "linuxOsInfo"
    state_key = "windowsOsState" if image.os_type == "Windows" else "linuxOsState"
    tags = {**image.tags, **({"ImagePath": image.image_path} if image.image_path else {})}
    return {
        "id": str(image.id), "name": image.name, "type": ids.LAB_CUSTOM_IMAGE, "location": image.location, "tags": tags,
        "properties": {
            "vm": {info_key: {state_key: image.os_state_detail}},
            "vhd": {"imageName": image.disk.path.as_uri(), "sysPrep": image.os_state == "Generalized",
                    "osType": image.os_type},
            "description": image.description,
            "author": image.author,
            "creationDate": custom_image_date(image),
            "isPlanAuthorized": False,
            "provisioningState": "Succeeded",
            "uniqueIdentifier": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{image.id.key}@{image.digest}")),
        },
    }


def custom_image_date(image: LabCustomImage) -> str:
    return str(image.to_json()["properties"]["creationDate"])


def router(service: Service) -> APIRouter:
    r = APIRouter()

    def allow(request: Request, sub: str) -> Store:
        authorize(service, request, sub, f"{PROVIDER}/labs/read")
        api_version(request, API_VERSIONS[-1], API_VERSIONS)
        return service.store()

    def lab_of(store: Store, sub: str, rg: str, name: str) -> Lab:
        rid = ids.try_parse(f"/subscriptions/{sub}/resourceGroups/{rg}/providers/{ids.LAB}/{name}")
        found = store.labs.find(rid) if rid is not None else None
        if found is None:
            raise not_found(ids.LAB, name, rg)
        return found

    @r.get(SUB + "/providers/Microsoft.DevTestLab/labs")
    def labs_by_subscription(request: Request, sub: str) -> dict[str, Any]:
        return listing(service, request, scoped(allow(request, sub).labs.list(), sub), lab_json, top=True)

    @r.get(LABS)
    def labs_by_resource_group(request: Request, sub: str, rg: str) -> dict[str, Any]:
        return listing(service, request, scoped(allow(request, sub).labs.list(), sub, rg), lab_json, top=True)

    @r.get(LABS + "/{lab}")
    def lab(request: Request, sub: str, rg: str, lab: str) -> dict[str, Any]:
        return lab_json(lab_of(allow(request, sub), sub, rg, lab))

    @r.get(LABS + "/{lab}/customimages")
    def custom_images(request: Request, sub: str, rg: str, lab: str) -> dict[str, Any]:
        store = allow(request, sub)
        found = lab_of(store, sub, rg, lab)
        return listing(service, request, store.labs.images(found.id), custom_image_json, top=True)

    @r.get(LABS + "/{lab}/customimages/{name}")
    def custom_image(request: Request, sub: str, rg: str, lab: str, name: str) -> dict[str, Any]:
        store = allow(request, sub)
        found = lab_of(store, sub, rg, lab)
        image = next((i for i in store.labs.images(found.id) if i.name.lower() == name.lower()), None)
        if image is None:
            raise not_found(ids.LAB_CUSTOM_IMAGE, f"{lab}/customimages/{name}", rg)
        return custom_image_json(image)

    return r
