"""A lab's custom images through Azure's own DevTest Labs client (azure-mgmt-devtestlabs) against `kiln serve`.

The lab is made with `kiln lab create`; its images are published with kiln's own publish function
(what `kiln factory distribute` calls), from real GPT disks; everything is read through the SDK.
"""

from __future__ import annotations

import pytest
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
from azure.mgmt.devtestlabs import DevTestLabsClient
from kilnserve import OTHER_SUB, RG, SUB, LoopbackBearer, StaticToken, kiln

from store_helpers import make_disk

LAB = f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.DevTestLab/labs/factorylab"


def devtestlabs(server, token: str, subscription: str = SUB) -> DevTestLabsClient:
    return DevTestLabsClient(StaticToken(token), subscription, base_url=server.url,
                             authentication_policy=LoopbackBearer(token))


@pytest.fixture(scope="module")
def token(server, tmp_path_factory) -> str:
    from kiln.config import load_config
    from kiln.distribute.labs import publish_lab_image
    from kiln.store import Store
    from kiln.store.common import new_holder

    disks = tmp_path_factory.mktemp("lab-disks")
    kiln(server.home, "lab", "create", LAB, "--location", "westeurope")
    with Store.open(load_config(server.home)) as store:
        for seed, name, path in ((1, "Datacenter", "Win2016/Datacenter.json"), (2, "debian-12", "Linux/debian12.json")):
            holder = new_holder("test")
            try:
                blob = store.blobs.ingest(make_disk(disks / f"{name}.raw", size_mib=16, data_mib=1, seed=seed),
                                          holder=holder)
                windows = name == "Datacenter"
                publish_lab_image(store, LAB, name, blob, os_type="Windows" if windows else "Linux",
                                  description=f"{name} from the factory", image_path=path, boot_tested=True)
            finally:
                store.blobs.release_holder(holder)
    return server.token("lab-reader", SUB, read_only=True)


def test_custom_images_get_and_list(server, token) -> None:
    client = devtestlabs(server, token)
    images = list(client.custom_images.list(RG, "factorylab"))
    assert [i.name for i in images] == ["Datacenter", "debian-12"]  # in creation order
    assert [i.name for i in client.custom_images.list(RG, "factorylab", top=1)] == ["Datacenter"]

    image = client.custom_images.get(RG, "factorylab", "debian-12")
    assert image.id == f"{LAB}/customimages/debian-12" and image.type == "Microsoft.DevTestLab/labs/customimages"
    assert image.location == "westeurope"
    assert image.tags == {"ImagePath": "Linux/debian12.json"}
    assert image.description == "debian-12 from the factory" and image.author == "kiln image factory"
    assert image.provisioning_state == "Succeeded" and image.creation_date is not None
    assert image.vhd.os_type == "Linux" and image.vhd.sys_prep is True
    assert image.vhd.image_name.startswith("file:///")
    assert image.vm.linux_os_info.linux_os_state == "DeprovisionApplied"
    windows = client.custom_images.get(RG, "factorylab", "datacenter")  # names are case-insensitive
    assert windows.name == "Datacenter" and windows.vm.windows_os_info.windows_os_state == "SysprepApplied"

    lab = client.labs.get(RG, "factorylab")
    assert lab.id == LAB and lab.location == "westeurope" and lab.provisioning_state == "Succeeded"
    assert [lab.name for lab in client.labs.list_by_resource_group(RG)] == ["factorylab"]
    assert [lab.name for lab in client.labs.list_by_subscription()] == ["factorylab"]


def test_unknown_lab_or_image_is_404_and_scope_is_checked(server, token) -> None:
    client = devtestlabs(server, token)
    with pytest.raises(ResourceNotFoundError) as e:
        client.custom_images.get(RG, "factorylab", "nothing")
    assert e.value.error.code == "ResourceNotFound"
    with pytest.raises(ResourceNotFoundError):
        list(client.custom_images.list(RG, "nolab"))
    with pytest.raises(HttpResponseError) as e:
        devtestlabs(server, token, OTHER_SUB).custom_images.get(RG, "factorylab", "debian-12")
    assert e.value.status_code == 403
    with pytest.raises(HttpResponseError) as e:
        list(client.custom_images.list(RG, "factorylab", top=0))
    assert e.value.status_code == 400
