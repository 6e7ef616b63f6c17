"""A SourceImage trigger of `kiln serve` with a cluster queue: the run it fires is a job for the workers.

The template is pinned to a worker that does not exist (`kiln.host`), so its run stays queued
where `kiln cluster status` shows it instead of building (a build here would prove nothing the
other cluster tests do not): the point is that the trigger's run went to the queue, not to a
build on the server's host. Cancelling it through the SDK takes it out of the queue again.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from clusterlib import Cluster, kiln

from store_helpers import make_disk

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "api"))
from kilnserve import RG, SUB, start_server  # noqa: E402

GALLERY = f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.Compute/galleries/clustertriggers"
DEFINITION = f"{GALLERY}/images/base"
OUT = f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.Compute/images/from-cluster-trigger"
HOST_QUEUE = "kiln.host.nobody-serves-this"


def queued(c: Cluster) -> dict[str, int]:
    return {q["name"]: q["queued"] for q in c.status()["queues"]}


def test_a_fired_trigger_enqueues_its_run_for_the_workers(cluster: Cluster, tmp_path: Path) -> None:
    from azure.core.exceptions import HttpResponseError
    from azure.mgmt.imagebuilder import models as m

    home = cluster.submitter
    # The server's own schedule checks hourly, so the `kiln trigger check` below is the only check.
    (home / "config.toml").write_text(cluster.config() + "[triggers]\ninterval_s = 3600\n")
    disks = [make_disk(tmp_path / f"v{i}.raw", size_mib=16, data_mib=1, seed=30 + i) for i in range(2)]
    kiln(home, "gallery", "create", GALLERY, "--location", "westus2")
    kiln(home, "gallery", "image-definition", "create", DEFINITION, "--publisher", "kiln", "--offer", "base",
         "--sku", "1")
    kiln(home, "gallery", "image-version", "create", f"{DEFINITION}/versions/1.0.0", "--disk", str(disks[0]))
    server = start_server(home)
    try:
        client = server.client(server.token("trigger-writer", SUB))
        templates = client.virtual_machine_image_templates
        templates.begin_create_or_update(RG, "follow", m.ImageTemplate(
            location="westus2", tags={"kiln.host": HOST_QUEUE.removeprefix("kiln.host.")},
            properties=m.ImageTemplateProperties(
                source=m.ImageTemplateSharedImageVersionSource(image_version_id=f"{DEFINITION}/versions/latest"),
                customize=[m.ImageTemplateShellCustomizer(name="hello", inline=["echo hello"])],
                distribute=[m.ImageTemplateManagedImageDistributor(run_output_name="out", image_id=OUT,
                                                                   location="westus2")]))).result()
        client.triggers.begin_create_or_update(RG, "follow", "source",
                                               m.Trigger(properties=m.SourceImageTriggerProperties())).result()
        assert queued(cluster).get(HOST_QUEUE, 0) == 0

        kiln(home, "gallery", "image-version", "create", f"{DEFINITION}/versions/1.0.1", "--disk", str(disks[1]))
        (outcome,) = json.loads(kiln(home, "trigger", "check", "--json").stdout)
        assert outcome["result"] == "fired" and outcome["run"].startswith("started: operation "), outcome
        # The run is a job in the pinned worker's queue, and nothing builds on the server's host.
        deadline = time.monotonic() + 120
        while queued(cluster).get(HOST_QUEUE, 0) != 1:
            assert time.monotonic() < deadline, cluster.status()
            time.sleep(0.5)
        assert templates.get(RG, "follow").last_run_status.run_state == "Running"
        assert not any((home / "work").glob("*"))

        try:
            templates.begin_cancel(RG, "follow").result()
        except HttpResponseError as e:
            raise AssertionError(f"the queued run could not be canceled: {e.message}") from e
        deadline = time.monotonic() + 120
        while templates.get(RG, "follow").last_run_status.run_state == "Running":
            assert time.monotonic() < deadline
            time.sleep(0.5)
        assert templates.get(RG, "follow").last_run_status.run_state == "Canceled"
        assert queued(cluster).get(HOST_QUEUE, 0) == 0
    finally:
        server.stop()
