"""kiln's catalog through Azure's own compute client (azure-mgmt-compute) against a real `kiln serve`.

The catalog is filled the way a user fills it (`kiln image import`, `kiln gallery ...` on real
GPT disks), then read only through the SDK: managed images by resource group and subscription,
galleries, image definitions and versions with their target regions and replication status.
"""

from __future__ import annotations

import pytest
import requests
from azure.core.exceptions import ClientAuthenticationError, HttpResponseError, ResourceNotFoundError
from azure.mgmt.compute import ComputeManagementClient
from kilnserve import OTHER_SUB, RG, SUB, LoopbackBearer, StaticToken, kiln

from store_helpers import make_disk

OTHER_RG = "kiln-other-rg"
COMPUTE = f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.Compute"
IMAGE = f"{COMPUTE}/images/built"
ELSEWHERE = f"/subscriptions/{SUB}/resourceGroups/{OTHER_RG}/providers/Microsoft.Compute/images/elsewhere"
FOREIGN = f"/subscriptions/{OTHER_SUB}/resourceGroups/{RG}/providers/Microsoft.Compute/images/foreign"
GALLERY = f"{COMPUTE}/galleries/kilngallery"
DEFINITION = f"{GALLERY}/images/debian12"


def compute(server, token: str, subscription: str = SUB) -> ComputeManagementClient:
    return ComputeManagementClient(StaticToken(token), subscription, base_url=server.url,
                                   authentication_policy=LoopbackBearer(token))


@pytest.fixture(scope="module")
def token(server, tmp_path_factory) -> str:
    disks = tmp_path_factory.mktemp("compute-disks")
    first = make_disk(disks / "first.raw", size_mib=16, data_mib=1, seed=1)
    second = make_disk(disks / "second.raw", size_mib=16, data_mib=1, seed=2)
    home = server.home
    kiln(home, "image", "import", str(first), "--id", IMAGE, "--location", "westus2", "--tag", "team=kiln")
    kiln(home, "image", "import", str(second), "--id", ELSEWHERE, "--location", "eastus")
    kiln(home, "image", "import", str(second), "--id", FOREIGN, "--location", "eastus")
    kiln(home, "gallery", "create", GALLERY, "--location", "westus2", "--description", "kiln's images")
    kiln(home, "gallery", "image-definition", "create", DEFINITION, "--publisher", "kiln", "--offer", "debian",
         "--sku", "12")
    kiln(home, "gallery", "image-version", "create", f"{DEFINITION}/versions/1.0.0", "--disk", str(first),
         "--target-region", "westus2", "--target-region", "eastus")
    kiln(home, "gallery", "image-version", "create", f"{DEFINITION}/versions/1.1.0", "--image", IMAGE,
         "--exclude-from-latest")
    return server.token("compute-reader", SUB, read_only=True)


def test_managed_images_get_and_list(server, token) -> None:
    client = compute(server, token)
    image = client.images.get(RG, "built")
    assert image.id == IMAGE and image.name == "built" and image.type == "Microsoft.Compute/images"
    assert image.location == "westus2" and image.tags == {"team": "kiln"}
    assert image.properties.provisioning_state == "Succeeded"
    assert image.properties.hyper_v_generation == "V2"
    disk = image.properties.storage_profile.os_disk
    assert (disk.os_type, disk.os_state, disk.disk_size_gb) == ("Linux", "Generalized", 1)
    assert disk.blob_uri.startswith("file:///")

    assert [i.name for i in client.images.list_by_resource_group(RG)] == ["built"]
    assert [i.name for i in client.images.list_by_resource_group(OTHER_RG)] == ["elsewhere"]
    assert sorted(i.name for i in client.images.list()) == ["built", "elsewhere"]  # not the other subscription's
    assert [i.name for i in compute(server, server.token("other", OTHER_SUB), OTHER_SUB).images.list()] == ["foreign"]


def test_unknown_ids_are_arms_404(server, token) -> None:
    client = compute(server, token)
    with pytest.raises(ResourceNotFoundError) as e:
        client.images.get(RG, "nothing")
    assert e.value.status_code == 404 and e.value.error.code == "ResourceNotFound"
    assert "Microsoft.Compute/images/nothing" in e.value.error.message
    for call in (lambda: client.galleries.get(RG, "nogallery"),
                 lambda: client.gallery_images.get(RG, "kilngallery", "nodefinition"),
                 lambda: client.gallery_image_versions.get(RG, "kilngallery", "debian12", "9.9.9"),
                 lambda: client.gallery_image_versions.get(RG, "kilngallery", "debian12", "latest"),
                 lambda: list(client.gallery_image_versions.list_by_gallery_image(RG, "nogallery", "debian12"))):
        with pytest.raises(ResourceNotFoundError) as e:
            call()
        assert e.value.error.code == "ResourceNotFound"


def test_galleries_definitions_and_versions(server, token) -> None:
    client = compute(server, token)
    gallery = client.galleries.get(RG, "kilngallery")
    assert gallery.id == GALLERY and gallery.type == "Microsoft.Compute/galleries" and gallery.location == "westus2"
    assert gallery.properties.description == "kiln's images"
    assert gallery.properties.provisioning_state == "Succeeded"
    assert [g.name for g in client.galleries.list_by_resource_group(RG)] == ["kilngallery"]
    assert [g.name for g in client.galleries.list()] == ["kilngallery"]

    definition = client.gallery_images.get(RG, "kilngallery", "debian12")
    assert definition.id == DEFINITION and definition.type == "Microsoft.Compute/galleries/images"
    ident = definition.properties.identifier
    assert (ident.publisher, ident.offer, ident.sku) == ("kiln", "debian", "12")
    assert (definition.properties.os_type, definition.properties.os_state) == ("Linux", "Generalized")
    assert definition.properties.hyper_v_generation == "V2"
    assert [d.name for d in client.gallery_images.list_by_gallery(RG, "kilngallery")] == ["debian12"]

    versions = list(client.gallery_image_versions.list_by_gallery_image(RG, "kilngallery", "debian12"))
    assert [v.name for v in versions] == ["1.0.0", "1.1.0"]
    first, second = versions
    assert first.type == "Microsoft.Compute/galleries/images/versions"
    profile = first.properties.publishing_profile
    assert [(t.name, t.regional_replica_count) for t in profile.target_regions] == [("westus2", 1), ("eastus", 1)]
    assert profile.exclude_from_latest is False and profile.published_date is not None
    assert second.properties.publishing_profile.exclude_from_latest is True
    assert second.properties.storage_profile.source.id == IMAGE  # published from the managed image
    assert first.properties.replication_status is None  # only with $expand, as on Azure

    got = client.gallery_image_versions.get(RG, "kilngallery", "debian12", "1.0.0", expand="ReplicationStatus")
    status = got.properties.replication_status
    assert status.aggregated_state == "Completed"
    assert [(s.region, s.state, s.progress) for s in status.summary] == [("westus2", "Completed", 100),
                                                                        ("eastus", "Completed", 100)]
    assert got.properties.provisioning_state == "Succeeded"
    assert got.properties.storage_profile.os_disk_image.size_in_gb == 1


def test_reads_need_a_token_in_scope_and_writes_are_not_offered(server, token) -> None:
    with pytest.raises(ClientAuthenticationError) as e:
        compute(server, "kiln_bogus").images.get(RG, "built")
    assert e.value.status_code == 401
    with pytest.raises(HttpResponseError) as e:
        compute(server, token, OTHER_SUB).images.get(RG, "built")
    assert e.value.status_code == 403 and e.value.error.code == "AuthorizationFailed"
    url = f"{server.url}{IMAGE}"
    auth = {"Authorization": f"Bearer {server.token('compute-writer', SUB)}"}
    r = requests.delete(url, params={"api-version": "2026-04-01"}, headers=auth, timeout=30)
    assert r.status_code == 405 and r.json()["error"]["code"] == "MethodNotAllowed"
    assert compute(server, token).images.get(RG, "built").name == "built"  # still there
    for version in ("2099-01-01", "yesterday"):
        r = requests.get(url, params={"api-version": version}, headers=auth, timeout=30)
        assert r.status_code == 400 and r.json()["error"]["code"] == "InvalidApiVersionParameter"
    # An older api-version (az CLI pins older ones) reads the same resource; paths are case-insensitive.
    r = requests.get(url.replace("Microsoft.Compute", "microsoft.compute").replace("resourceGroups", "resourcegroups"),
                     params={"api-version": "2024-03-01"}, headers=auth, timeout=30)
    assert r.status_code == 200 and r.json()["id"] == IMAGE
