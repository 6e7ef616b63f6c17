"""`kiln serve` with a cluster queue: Azure's SDK runs a template and the build happens on a worker
(with its boot test), its events reach the server, a kill -9 of the server mid-build neither stops
the build nor runs it twice; a cancel through the API stops a build there."""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

import pytest
import requests
from clusterlib import Cluster, processes_with

from processes import eventually

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "api"))
from kilnserve import API_VERSION, RG, SUB, start_server  # noqa: E402

pytestmark = pytest.mark.integration

IMAGES = f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.Compute/images"


def debian12(name: str, *inline: str):
    from azure.mgmt.imagebuilder import models as m

    return m.ImageTemplate(
        location="westus2", tags={"kiln.host": "apiw"},
        properties=m.ImageTemplateProperties(
            source=m.ImageTemplatePlatformImageSource(publisher="Debian", offer="debian-12", sku="12-gen2", version="latest"),
            customize=[m.ImageTemplateShellCustomizer(name="say", inline=list(inline))],
            distribute=[m.ImageTemplateManagedImageDistributor(run_output_name="out", image_id=f"{IMAGES}/{name}",
                                                               location="westus2")]))


def test_the_sdk_runs_a_template_on_a_worker_and_cancels_one(cluster: Cluster) -> None:
    worker = cluster.start_worker("apiw", "--queues", "kiln.host.apiw")
    server = start_server(cluster.submitter)
    try:
        token = server.token("builder", SUB)
        templates = server.client(token).virtual_machine_image_templates
        templates.begin_create_or_update(RG, "viaq", debian12("viaq", "echo hello-through-the-queue")).result()
        templates.begin_run(RG, "viaq")  # bootstrap from cache, customize, assemble, boot test, publish
        cluster.run_in_flight("viaq")
        # The server dies while the worker builds: the build goes on, and the server started again
        # follows it to its end (the run is submitted again, as the same job: it runs once).
        server.stop(signal.SIGKILL)
        server = start_server(cluster.submitter)
        templates = server.client(token).virtual_machine_image_templates
        assert eventually(lambda: templates.get(RG, "viaq").last_run_status.run_state != "Running",
                          timeout=3600, interval=2)
        got = templates.get(RG, "viaq")
        assert got.last_run_status.run_state == "Succeeded", got.last_run_status
        (out,) = list(templates.list_run_outputs(RG, "viaq"))
        assert out.artifact_id.lower() == f"{IMAGES}/viaq".lower()
        # The worker prints its line once the child has ended, which can be just after the catalog says Succeeded.
        assert eventually(lambda: any(r[1] == "viaq" for r in worker.runs()), timeout=120), worker.lines()
        (ran,) = [r for r in worker.runs() if r[1] == "viaq"]
        assert ran[2] == "Succeeded"
        events = [json.loads(line) for line in (cluster.submitter / "runs" / ran[0] / "events.jsonl").read_text().splitlines()]
        assert any(e["kind"] == "step" and e["name"] == "validate" for e in events)  # the worker's events, at the server
        # kiln's log stream of the run serves the server's copy of the worker's log, customizer output included.
        log = requests.get(f"{server.url}/subscriptions/{SUB}/resourceGroups/{RG}/providers/"
                           f"Microsoft.VirtualMachineImages/imageTemplates/viaq/runs/{ran[0]}/log",
                           params={"api-version": API_VERSION}, headers={"Authorization": f"Bearer {token}"}, timeout=60)
        assert log.status_code == 200 and "hello-through-the-queue" in log.text, log.text[-2000:]
        assert "[finish] build ok=True" in log.text

        templates.begin_create_or_update(RG, "slowq", debian12("slowq", "echo slow", "sleep 947")).result()
        poller = templates.begin_run(RG, "slowq")
        flight = cluster.run_in_flight("slowq")
        assert flight["worker"] == "apiw"
        assert eventually(lambda: bool(processes_with("sleep 947")), timeout=300, interval=0.5)
        templates.begin_cancel(RG, "slowq").result()
        with pytest.raises(Exception):  # noqa: B017 - the run's operation ends Canceled (the SDK raises)
            poller.result()
        assert templates.get(RG, "slowq").last_run_status.run_state == "Canceled"
        assert eventually(lambda: not processes_with("sleep 947"), timeout=60)
        assert not (worker.home / "work" / flight["runId"]).exists()
    finally:
        server.stop()
