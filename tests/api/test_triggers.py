"""AIB SourceImage triggers through Azure's SDK against a real `kiln serve`, fired by `kiln trigger check`.

A template whose source is `.../versions/latest` of a kiln gallery image definition gets a trigger;
with no new version, checking starts nothing; once `kiln gallery image-version create` publishes
a newer version, `kiln trigger check` asks for a run, the server starts it (the run is canceled
right away, so the test stays fast) and the trigger's status says when and why.
"""

from __future__ import annotations

import json
import time

import pytest
import requests
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
from azure.mgmt.imagebuilder import models as m
from kilnserve import API_VERSION, RG, SUB, kiln, start_server

from store_helpers import make_disk

GALLERY = f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.Compute/galleries/triggers"
DEFINITION = f"{GALLERY}/images/base"
P = f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.VirtualMachineImages/imageTemplates"
OUT = f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.Compute/images/from-trigger"


def template(version_id: str) -> m.ImageTemplate:
    return m.ImageTemplate(
        location="westus2",
        properties=m.ImageTemplateProperties(
            source=m.ImageTemplateSharedImageVersionSource(image_version_id=version_id),
            customize=[m.ImageTemplateShellCustomizer(name="hello", inline=["echo hello"])],
            distribute=[m.ImageTemplateManagedImageDistributor(run_output_name="out", image_id=OUT, location="westus2")],
        ),
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    home = tmp_path_factory.mktemp("triggers") / "home"
    home.mkdir()
    # The server's own schedule checks hourly here, so the checks this test makes are its only ones.
    (home / "config.toml").write_text("[triggers]\ninterval_s = 3600\n")
    s = start_server(home)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def disks(tmp_path_factory):
    d = tmp_path_factory.mktemp("trigger-disks")
    return [make_disk(d / f"v{i}.raw", size_mib=16, data_mib=1, seed=10 + i) for i in range(2)]


@pytest.fixture(scope="module")
def client(server, disks):
    kiln(server.home, "gallery", "create", GALLERY, "--location", "westus2")
    kiln(server.home, "gallery", "image-definition", "create", DEFINITION, "--publisher", "kiln", "--offer", "base",
         "--sku", "1")
    kiln(server.home, "gallery", "image-version", "create", f"{DEFINITION}/versions/1.0.0", "--disk", str(disks[0]))
    return server.client(server.token("trigger-writer", SUB))


def check(server) -> list[dict]:
    return json.loads(kiln(server.home, "trigger", "check", "--json").stdout)


def runs_of(server, name: str) -> list[dict]:
    runs = json.loads(kiln(server.home, "runs", "list", "--json").stdout)
    return [r for r in runs if r["templateId"].lower() == f"{P}/{name}".lower()]


def test_a_new_source_version_starts_a_run(server, client, disks) -> None:
    templates = client.virtual_machine_image_templates
    templates.begin_create_or_update(RG, "follow", template(f"{DEFINITION}/versions/latest")).result()
    trigger = client.triggers.begin_create_or_update(
        RG, "follow", "source", m.Trigger(properties=m.SourceImageTriggerProperties())).result()
    assert trigger.id == f"{P}/follow/triggers/source" and trigger.name == "source"
    assert trigger.type == "Microsoft.VirtualMachineImages/imageTemplates/triggers"
    assert trigger.properties.kind == "SourceImage" and trigger.properties.provisioning_state == "Succeeded"
    assert trigger.properties.status.code == "Healthy" and "version 1.0.0" in trigger.properties.status.message
    assert [t.name for t in client.triggers.list_by_image_template(RG, "follow")] == ["source"]

    # No new version: nothing starts.
    (outcome,) = check(server)
    assert outcome["id"] == trigger.id and outcome["result"] == "unchanged" and outcome["run"] is None
    assert runs_of(server, "follow") == []
    assert templates.get(RG, "follow").properties.last_run_status is None

    # A newer version is published: the check asks for a run, the server starts it.
    kiln(server.home, "gallery", "image-version", "create", f"{DEFINITION}/versions/1.0.1", "--disk", str(disks[1]))
    (outcome,) = check(server)
    assert outcome["result"] == "fired", outcome
    assert "new source image version: version 1.0.1" in outcome["reason"] and "newer than 1.0.0" in outcome["reason"]
    assert outcome["run"].startswith("started: operation ")
    status = client.triggers.get(RG, "follow", "source").properties.status
    assert status.code == "Healthy" and "version 1.0.1" in status.message and "a run started at" in status.message
    assert outcome["run"].removeprefix("started: operation ") in status.message
    assert templates.get(RG, "follow").properties.last_run_status is not None  # the SDK sees the run
    listed = json.loads(kiln(server.home, "trigger", "list", "--json").stdout)
    assert listed[0]["lastRun"]["reason"] == outcome["reason"] and listed[0]["pendingRun"] is None

    # Cancel it right away (a real build would take minutes), then wait for it to be recorded.
    try:
        templates.begin_cancel(RG, "follow").result()
    except HttpResponseError as e:
        assert e.status_code == 409  # it ended on its own first
    deadline = time.monotonic() + 180
    while not (runs := runs_of(server, "follow")) or runs[0]["lastRunStatus"]["runState"] in ("Running", "Canceling"):
        assert time.monotonic() < deadline, "the triggered run did not end"
        time.sleep(0.5)
    assert len(runs) == 1

    # Checking again: the version was seen, nothing new starts.
    (outcome,) = check(server)
    assert outcome["result"] == "unchanged"
    assert len(runs_of(server, "follow")) == 1

    client.triggers.begin_delete(RG, "follow", "source").result()
    with pytest.raises(ResourceNotFoundError):
        client.triggers.get(RG, "follow", "source")
    assert check(server) == []
    templates.begin_delete(RG, "follow").result()


def test_triggers_that_could_never_fire_are_refused(server, client) -> None:
    templates = client.virtual_machine_image_templates
    templates.begin_create_or_update(RG, "pinned", template(f"{DEFINITION}/versions/1.0.0")).result()
    with pytest.raises(HttpResponseError) as e:
        client.triggers.begin_create_or_update(RG, "pinned", "source",
                                               m.Trigger(properties=m.SourceImageTriggerProperties())).result()
    assert e.value.status_code == 400 and "pinned to version 1.0.0" in e.value.error.message
    with pytest.raises(ResourceNotFoundError):
        client.triggers.begin_create_or_update(RG, "no-template", "source",
                                               m.Trigger(properties=m.SourceImageTriggerProperties())).result()
    url = f"{server.url}{P}/pinned/triggers/source"
    auth = {"Authorization": f"Bearer {server.token('raw', SUB)}"}
    for body in ({"properties": {"kind": "Schedule"}}, {}, [1]):
        r = requests.put(url, params={"api-version": API_VERSION}, json=body, headers=auth, timeout=30)
        assert r.status_code == 400 and set(r.json()["error"]) == {"code", "message", "details"}, r.text
    r = requests.put(f"{url[:-len('source')]}bad name!", params={"api-version": API_VERSION},
                     json={"properties": {"kind": "SourceImage"}}, headers=auth, timeout=30)
    assert r.status_code in (400, 404) and "error" in r.json()
    assert list(client.triggers.list_by_image_template(RG, "pinned")) == []
    templates.begin_delete(RG, "pinned").result()


def test_a_templates_triggers_go_with_it(server, client) -> None:
    templates = client.virtual_machine_image_templates
    templates.begin_create_or_update(RG, "again", template(f"{DEFINITION}/versions/latest")).result()
    client.triggers.begin_create_or_update(RG, "again", "source",
                                           m.Trigger(properties=m.SourceImageTriggerProperties())).result()
    templates.begin_delete(RG, "again").result()
    with pytest.raises(ResourceNotFoundError):
        client.triggers.get(RG, "again", "source")
    templates.begin_create_or_update(RG, "again", template(f"{DEFINITION}/versions/latest")).result()
    assert list(client.triggers.list_by_image_template(RG, "again")) == []  # a new template has no old triggers
    templates.begin_delete(RG, "again").result()
