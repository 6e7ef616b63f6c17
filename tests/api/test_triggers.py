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
    assert wait_for_end(client, "follow") in ("Canceled", "Failed")
    assert len(runs_of(server, "follow")) <= 1  # one run (none if it was canceled before its build began)

    # Checking again: the version was seen, nothing new starts.
    before = templates.get(RG, "follow").properties.last_run_status.start_time
    (outcome,) = check(server)
    assert outcome["result"] == "unchanged"
    assert templates.get(RG, "follow").properties.last_run_status.start_time == before

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


class Mirror:
    """An apt mirror on 127.0.0.1 with only a Release file: what a PlatformImage `latest` resolves by."""

    def __init__(self, root) -> None:
        import functools
        import http.server
        import threading

        self.root = root
        class Quiet(http.server.SimpleHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

        handler = functools.partial(Quiet, directory=str(root))
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/debian"

    def release(self, version: str, date: str) -> None:
        path = self.root / "debian" / "dists" / "bookworm" / "Release"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"Origin: Debian\nLabel: Debian\nSuite: stable\nVersion: {version}\nCodename: bookworm\n"
                        f"Date: {date}\n")


def wait_for_run_started(client, name: str, timeout_s: float = 120) -> str:
    deadline = time.monotonic() + timeout_s
    while "a run started" not in (message := client.triggers.get(RG, name, "source").properties.status.message):
        assert time.monotonic() < deadline, f"the server's schedule did not fire the trigger of {name}: {message}"
        time.sleep(0.5)
    return message


def cancel_and_wait(client, name: str) -> None:
    try:
        client.virtual_machine_image_templates.begin_cancel(RG, name).result()
    except HttpResponseError as e:
        assert e.status_code == 409  # it ended (or had not started) first
    wait_for_end(client, name)


def wait_for_end(client, name: str) -> str:
    """The template's last run's final state (a run canceled while queued has no build run at all)."""
    deadline = time.monotonic() + 180
    while (state := client.virtual_machine_image_templates.get(RG, name).properties.last_run_status.run_state) \
            in ("Running", "Canceling"):
        assert time.monotonic() < deadline, f"the triggered run of {name} did not end"
        time.sleep(0.5)
    return state


def test_the_server_fires_on_its_own_schedule_for_replaced_images_and_mirror_updates(tmp_path, disks) -> None:
    """`kiln serve` checks every `[triggers] interval_s`: a managed image replaced, and a platform
    image's `latest` resolving to a newer exact version (the local mirror's Release file changed)."""
    mirror = Mirror(tmp_path / "mirror")
    mirror.release("12.14", "Sat, 09 May 2026 10:00:00 UTC")
    home = tmp_path / "home"
    home.mkdir()
    (home / "config.toml").write_text(f'[mirrors]\ndebian = "{mirror.url}"\n\n[triggers]\ninterval_s = 1\n')
    server = start_server(home)
    try:
        client = server.client(server.token("schedule", SUB))
        image = f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.Compute/images/base"
        kiln(home, "image", "import", str(disks[0]), "--id", image, "--location", "westus2")
        managed = template("unused")
        managed.properties.source = m.ImageTemplateManagedImageSource(image_id=image)
        platform = template("unused")
        platform.properties.source = m.ImageTemplatePlatformImageSource(publisher="Debian", offer="debian-12",
                                                                        sku="12-gen2", version="latest")
        for name, body in (("managed", managed), ("platform", platform)):
            client.virtual_machine_image_templates.begin_create_or_update(RG, name, body).result()
            t = client.triggers.begin_create_or_update(RG, name, "source",
                                                       m.Trigger(properties=m.SourceImageTriggerProperties())).result()
            assert t.properties.status.code == "Healthy", t.properties.status.message
        assert "12.14.20260509" in client.triggers.get(RG, "platform", "source").properties.status.message
        time.sleep(3)  # a few scheduled checks: nothing changed, nothing starts
        assert runs_of(server, "managed") == [] and runs_of(server, "platform") == []

        kiln(home, "image", "delete", image)
        kiln(home, "image", "import", str(disks[1]), "--id", image, "--location", "westus2")
        assert "source image replaced: managed image" in wait_for_run_started(client, "managed")
        cancel_and_wait(client, "managed")

        mirror.release("12.15", "Sat, 11 Jul 2026 10:00:00 UTC")
        message = wait_for_run_started(client, "platform")
        assert "12.15.20260711" in message and "newer than 12.14.20260509" in message
        cancel_and_wait(client, "platform")
        started = {n: client.virtual_machine_image_templates.get(RG, n).properties.last_run_status.start_time
                   for n in ("managed", "platform")}
        time.sleep(3)  # more scheduled checks: what was seen starts nothing again
        for name in ("managed", "platform"):
            assert client.virtual_machine_image_templates.get(RG, name).properties.last_run_status.start_time \
                == started[name]
    finally:
        server.stop()
        mirror.httpd.shutdown()
