"""Azure's SDK builds, cancels and deletes through `kiln serve`: one real build with its boot test,
shared by the tests of this module, then a second run canceled mid-build, then a server restart.

tests/cluster/test_api_build_on_workers.py runs the same tests with `kiln serve` enqueuing to a
worker (a `Built` whose builds happen in the worker's state home)."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
from azure.mgmt.imagebuilder import ImageBuilderClient
from azure.mgmt.imagebuilder import models as m
from kilnserve import API_VERSION, RG, SUB, Server, kiln, processes_mentioning, start_server

pytestmark = pytest.mark.integration

IMAGE_ID = f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.Compute/images/api-deb12"
SLOW_IMAGE_ID = f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.Compute/images/api-slow"
P = f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.VirtualMachineImages/imageTemplates"


def debian12(image_id: str, *inline: str) -> m.ImageTemplate:
    return m.ImageTemplate(
        location="westus2",
        properties=m.ImageTemplateProperties(
            source=m.ImageTemplatePlatformImageSource(publisher="Debian", offer="debian-12", sku="12-gen2", version="latest"),
            customize=[m.ImageTemplateShellCustomizer(name="say", inline=list(inline))],
            distribute=[m.ImageTemplateManagedImageDistributor(run_output_name="out", image_id=image_id, location="westus2")],
        ),
    )


@dataclass
class Built:
    server: Server
    token: str
    client: ImageBuilderClient
    builder: Path | None = None  # the state home the builds run in (None: the server's own)
    builder_pids: frozenset[int] = frozenset()  # processes of that host that outlive a build (a worker)

    @property
    def build_home(self) -> Path:
        return self.builder or self.server.home

    @property
    def templates(self):
        return self.client.virtual_machine_image_templates


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Built]:
    from debian_root import bootstrap_debian12

    tmp = tmp_path_factory.mktemp("api-build")
    cached = bootstrap_debian12(tmp)
    home = tmp / "home"
    home.mkdir()
    (home / "cache").symlink_to(cached.config.cache_dir)  # the build unpacks the cached root
    server = start_server(home)
    token = server.token("builder", SUB)
    b = Built(server, token, server.client(token))
    b.templates.begin_create_or_update(RG, "deb12", debian12(IMAGE_ID, "echo hello-from-the-api")).result()
    b.templates.begin_run(RG, "deb12").result()  # the real build: bootstrap, customize, assemble, boot test, publish
    yield b
    server.stop()


def runs_of(home: Path, name: str) -> list[dict]:
    runs = json.loads(kiln(home, "runs", "list", "--json").stdout)
    return [r for r in runs if r["templateId"].lower() == f"{P}/{name}".lower()]


def wait_for(what: str, check, timeout_s: float = 300):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if got := check():
            return got
        time.sleep(0.5)
    raise AssertionError(f"gave up waiting for {what}")


def stream_until(b: Built, name: str, run_id: str, text: str) -> None:
    """Read the run's log as it is written (kiln's log endpoint) until `text` appears."""
    url = f"{b.server.url}{P}/{name}/runs/{run_id}/log"
    with requests.get(url, params={"api-version": API_VERSION}, headers={"Authorization": f"Bearer {b.token}"},
                      stream=True, timeout=300) as r:
        assert r.status_code == 200
        for line in r.iter_lines(decode_unicode=True):
            if text in line:
                return
    raise AssertionError(f"the log of run {run_id} ended without {text!r}")


def assert_host_clean(b: Built, run_id: str) -> None:
    """Nothing of the run is left where it was built: no process, no work dir, no shared memory."""
    keep = {b.server.proc.pid, *b.builder_pids}
    wait_for("the build's processes to end", lambda: not processes_mentioning(str(b.build_home), keep)
             and not processes_mentioning(f"kiln-{run_id}-", keep), 120)
    assert not (b.build_home / "work" / run_id).exists()
    assert not list(Path("/dev/shm").glob(f"kiln-{run_id}-*"))


def test_the_run_succeeded(built: Built) -> None:
    status = built.templates.get(RG, "deb12").properties.last_run_status
    assert status.run_state == "Succeeded", status.message
    assert status.start_time and status.end_time


def test_run_outputs_name_the_published_image(built: Built) -> None:
    outputs = list(built.templates.list_run_outputs(RG, "deb12"))
    assert [o.name for o in outputs] == ["out"]
    assert outputs[0].properties.artifact_id.lower() == IMAGE_ID.lower()
    assert outputs[0].properties.provisioning_state == "Succeeded"
    one = built.templates.get_run_output(RG, "deb12", "out")
    assert one.properties.artifact_id == outputs[0].properties.artifact_id
    image = json.loads(kiln(built.server.home, "image", "show", IMAGE_ID, "--json").stdout)
    assert image["kiln"]["bootTested"] is True


def test_the_log_endpoint_serves_the_runs_log(built: Built) -> None:
    (run,) = runs_of(built.server.home, "deb12")
    stream_until(built, "deb12", run["runId"], "hello-from-the-api")


def test_the_events_endpoint_serves_the_runs_events(built: Built) -> None:
    """The same events `kiln build --progress json` prints, each naming its run and step."""
    (run,) = runs_of(built.server.home, "deb12")
    r = requests.get(f"{built.server.url}{P}/deb12/runs/{run['runId']}/events", params={"api-version": API_VERSION},
                     headers={"Authorization": f"Bearer {built.token}"}, timeout=60)
    assert r.status_code == 200
    events = [json.loads(line) for line in r.text.splitlines()]
    assert events and {e["run_id"] for e in events} == {run["runId"]}
    assert all(e["step_id"] for e in events)
    assert {e["step_id"] for e in events if e["kind"] == "step"} >= {"source", "customize", "customize[0]", "assemble",
                                                                     "validate", "distribute"}
    said = [e for e in events if e["kind"] == "log" and "hello-from-the-api" in e["message"]]
    assert said and {e["step_id"] for e in said} == {"customize[0]"}
    assert events[-1]["kind"] == "finish" and events[-1]["ok"] is True


def test_a_second_run_canceled_mid_build_ends_canceled_and_leaves_the_host_clean(built: Built) -> None:
    built.templates.begin_create_or_update(RG, "slow", debian12(SLOW_IMAGE_ID, "echo started-slow", "sleep 900")).result()
    running = built.templates.begin_run(RG, "slow")
    (run,) = wait_for("the run to start", lambda: runs_of(built.server.home, "slow"), 120)
    stream_until(built, "slow", run["runId"], "started-slow")
    assert built.templates.get(RG, "slow").properties.last_run_status.run_state == "Running"
    # One build at a time: another template's run waits in the queue, and can be canceled there.
    queued = built.templates.begin_run(RG, "deb12")
    waiting = built.templates.get(RG, "deb12").properties.last_run_status
    assert (waiting.run_state, waiting.run_sub_state) == ("Running", "Queued")
    built.templates.begin_cancel(RG, "deb12").result()
    with pytest.raises(HttpResponseError):
        queued.result()
    assert built.templates.get(RG, "deb12").properties.last_run_status.run_state == "Canceled"
    with pytest.raises(HttpResponseError):  # a delete while it builds is refused until it is canceled
        built.templates.begin_delete(RG, "slow").result()
    built.templates.begin_cancel(RG, "slow").result()
    with pytest.raises(HttpResponseError):  # the run's own operation ends Canceled
        running.result()
    assert running.status().lower() == "canceled"
    status = built.templates.get(RG, "slow").properties.last_run_status
    assert status.run_state == "Canceled"
    assert_host_clean(built, run["runId"])
    assert not list(built.templates.list_run_outputs(RG, "slow"))


def test_delete_leaves_the_distributed_image(built: Built) -> None:
    built.templates.begin_delete(RG, "deb12").result()
    with pytest.raises(ResourceNotFoundError):
        built.templates.get(RG, "deb12")
    assert "deb12" not in [t.name for t in built.templates.list()]
    image = json.loads(kiln(built.server.home, "image", "show", IMAGE_ID, "--json").stdout)
    assert image["kiln"]["bootTested"] is True


def test_a_run_in_progress_when_the_server_dies_is_failed_after_the_restart(built: Built) -> None:
    built.templates.begin_run(RG, "slow")
    run = wait_for("the run to start", lambda: [r for r in runs_of(built.server.home, "slow")
                                               if r["lastRunStatus"]["runState"] == "Running"], 120)[0]
    stream_until(built, "slow", run["runId"], "started-slow")
    built.server.stop(signal.SIGKILL)  # no chance to clean up: its build child is orphaned
    built.server.start()
    status = built.templates.get(RG, "slow").properties.last_run_status
    assert status.run_state == "Failed"
    assert "restarted" in status.message
    assert_host_clean(built, run["runId"])
    built.templates.begin_delete(RG, "slow").result()
