"""Lists longer than a page, as ARM pages them: `nextLink` with an opaque `$skipToken`, followed by
Azure's own SDK pagers (azure-mgmt-imagebuilder, azure-mgmt-compute) against a `kiln serve` whose
page is 2 items (`--page-size 2`), so five of anything take three pages."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import requests
from azure.mgmt.compute import ComputeManagementClient
from azure.mgmt.imagebuilder import models as m
from kilnserve import API_VERSION, RG, SUB, LoopbackBearer, Server, StaticToken, kiln, start_server

from store_helpers import make_disk

NAMES = ["p1", "p2", "p3", "p4", "p5"]
P = f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.VirtualMachineImages/imageTemplates"
COMPUTE = f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.Compute"
GALLERY = f"{COMPUTE}/galleries/paged"
DEFINITION = f"{GALLERY}/images/base"


def template() -> m.ImageTemplate:
    return m.ImageTemplate(
        location="westus2",
        properties=m.ImageTemplateProperties(
            source=m.ImageTemplateSharedImageVersionSource(image_version_id=f"{DEFINITION}/versions/latest"),
            customize=[m.ImageTemplateShellCustomizer(name="hello", inline=["echo hello"])],
            distribute=[m.ImageTemplateManagedImageDistributor(run_output_name="out", image_id=f"{COMPUTE}/images/out",
                                                               location="westus2")],
        ),
    )


@pytest.fixture(scope="module")
def paged(tmp_path_factory) -> Iterator[tuple[Server, str]]:
    tmp = tmp_path_factory.mktemp("paging")
    home = tmp / "home"
    home.mkdir()
    (home / "config.toml").write_text("[triggers]\ninterval_s = 3600\n")  # no scheduled checks meanwhile
    server = start_server(home, args=("--page-size", "2"))
    disk = make_disk(tmp / "disk.raw", size_mib=16, data_mib=1, seed=7)
    for name in NAMES:
        kiln(home, "image", "import", str(disk), "--id", f"{COMPUTE}/images/{name}", "--location", "westus2")
    kiln(home, "gallery", "create", GALLERY, "--location", "westus2")
    kiln(home, "gallery", "image-definition", "create", DEFINITION, "--publisher", "kiln", "--offer", "base", "--sku", "1")
    kiln(home, "gallery", "image-version", "create", f"{DEFINITION}/versions/1.0.0", "--image", f"{COMPUTE}/images/p1")
    token = server.token("pager", SUB)
    templates = server.client(token).virtual_machine_image_templates
    for name in NAMES:
        templates.begin_create_or_update(RG, name, template()).result()
    yield server, token
    server.stop()


def test_the_sdk_follows_next_links_through_every_template(paged) -> None:
    server, token = paged
    templates = server.client(token).virtual_machine_image_templates
    assert [t.name for t in templates.list_by_resource_group(RG)] == NAMES
    assert [t.name for t in templates.list()] == NAMES


def test_a_page_holds_the_page_size_and_links_to_the_next(paged) -> None:
    server, token = paged
    auth = {"Authorization": f"Bearer {token}"}
    url, seen, pages = f"{server.url}{P}?api-version={API_VERSION}", [], 0
    while url:
        r = requests.get(url, headers=auth, timeout=30)
        assert r.status_code == 200, r.text
        body = r.json()
        assert len(body["value"]) <= 2
        seen += [t["name"] for t in body["value"]]
        url, pages = body.get("nextLink"), pages + 1
        assert url is None or ("api-version" in url and "skipToken" in url)
    assert (seen, pages) == (NAMES, 3)
    r = requests.get(f"{server.url}{P}", params={"api-version": API_VERSION, "$skipToken": "not-ours"}, headers=auth,
                     timeout=30)
    assert r.status_code == 400 and r.json()["error"]["code"] == "InvalidQueryParameterValue"


def test_the_compute_client_pages_through_images(paged) -> None:
    server, token = paged
    client = ComputeManagementClient(StaticToken(token), SUB, base_url=server.url,
                                     authentication_policy=LoopbackBearer(token))
    assert [i.name for i in client.images.list_by_resource_group(RG)] == NAMES
    assert sorted(i.name for i in client.images.list()) == NAMES


def test_triggers_page_too(paged) -> None:
    server, token = paged
    triggers = server.client(token).triggers
    for name in ("t1", "t2", "t3"):
        triggers.begin_create_or_update(RG, "p1", name, m.Trigger(properties=m.SourceImageTriggerProperties())).result()
    assert [t.name for t in triggers.list_by_image_template(RG, "p1")] == ["t1", "t2", "t3"]
