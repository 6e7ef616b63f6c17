"""The SDK-driven API test (tests/api/test_api_build.py) with `kiln serve` enqueuing to a worker.

The same tests run against a server whose state home has a `[cluster]` queue, catalog
(PostgreSQL) and blob store: every build happens on a `kiln worker` with a state home of its own,
as on another host. Two things differ by design, and are tested here instead:

- The module's build is the one the server loses: `kiln serve` is killed with SIGKILL while the
  worker builds, and the server started again follows the run to its end. The shared tests then
  check what that run left (outputs, the copy of the worker's log, its events once each).
- A run in progress when the server dies is not failed (the build is on a worker, which outlives
  the server): the restarted server still shows it running and can cancel it there.
"""

from __future__ import annotations

import json
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from clusterlib import Cluster

from processes import eventually

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "api"))
import test_api_build as shared  # noqa: E402
from kilnserve import RG, SUB, start_server  # noqa: E402
from test_api_build import (  # noqa: E402
    IMAGE_ID,
    SLOW_IMAGE_ID,
    Built,
    assert_host_clean,
    debian12,
    runs_of,
    stream_until,
    wait_for,
)

pytestmark = pytest.mark.integration

# The shared tests, in their module's order (pytest runs a module's tests in the order they are bound).
test_the_run_succeeded = shared.test_the_run_succeeded
test_run_outputs_name_the_published_image = shared.test_run_outputs_name_the_published_image
test_the_log_endpoint_serves_the_runs_log = shared.test_the_log_endpoint_serves_the_runs_log
test_the_events_endpoint_serves_the_runs_events = shared.test_the_events_endpoint_serves_the_runs_events

WORKER = "apiw"


@pytest.fixture(scope="module")
def built(cluster: Cluster) -> Iterator[Built]:
    worker = cluster.start_worker(WORKER)
    server = start_server(cluster.submitter)
    token = server.token("builder", SUB)
    b = Built(server, token, server.client(token), builder=worker.home,
              builder_pids=frozenset({worker.proc.pid}) if worker.proc else frozenset())
    try:
        b.templates.begin_create_or_update(RG, "deb12", debian12(IMAGE_ID, "echo hello-from-the-api")).result()
        b.templates.begin_run(RG, "deb12")  # its poller dies with the server: the run is followed below
        assert cluster.run_in_flight("deb12")["worker"] == WORKER
        server.stop(signal.SIGKILL)  # the worker goes on building (bootstrap from cache, customize, boot test)
        server.start()
        assert eventually(lambda: b.templates.get(RG, "deb12").last_run_status.run_state != "Running",
                          timeout=3600, interval=2)
        yield b
    finally:
        server.stop()


def test_the_worker_built_the_run_once(built: Built, cluster: Cluster) -> None:
    worker = cluster.workers[WORKER]
    # The worker prints its line once the child has ended, which can be just after the catalog says Succeeded.
    assert eventually(lambda: any(r[1] == "deb12" for r in worker.runs()), timeout=120), worker.lines()
    (ran,) = [r for r in worker.runs() if r[1] == "deb12"]  # submitted again by the restarted server: run once
    (run,) = runs_of(built.server.home, "deb12")
    assert ran == [run["runId"], "deb12", "Succeeded"]
    assert (built.build_home / "runs" / run["runId"] / "customization.log").exists()  # its own log, on the worker
    assert not (built.server.home / "runs" / run["runId"] / "customization.log").exists()


def test_events_are_kept_once_though_the_restarted_server_followed_the_run_again(built: Built) -> None:
    (run,) = runs_of(built.server.home, "deb12")
    events = (built.server.home / "runs" / run["runId"] / "events.jsonl").read_text().splitlines()
    finishes = [e for e in map(json.loads, events) if e["kind"] == "finish"]
    assert len(finishes) == 1
    assert len(events) == len(set(events))


test_a_second_run_canceled_mid_build_ends_canceled_and_leaves_the_host_clean = \
    shared.test_a_second_run_canceled_mid_build_ends_canceled_and_leaves_the_host_clean
test_delete_leaves_the_distributed_image = shared.test_delete_leaves_the_distributed_image


def test_a_run_in_progress_when_the_server_dies_goes_on_on_its_worker(built: Built) -> None:
    built.templates.begin_create_or_update(RG, "slow", debian12(SLOW_IMAGE_ID, "echo started-slow", "sleep 900")).result()
    built.templates.begin_run(RG, "slow")
    run = wait_for("the run to start", lambda: [r for r in runs_of(built.server.home, "slow")
                                               if r["lastRunStatus"]["runState"] == "Running"], 120)[0]
    stream_until(built, "slow", run["runId"], "started-slow")
    built.server.stop(signal.SIGKILL)
    built.server.start()
    status = built.templates.get(RG, "slow").properties.last_run_status
    assert status.run_state == "Running", status.message
    stream_until(built, "slow", run["runId"], "started-slow")  # the restarted server's copy of the worker's log
    built.templates.begin_cancel(RG, "slow").result()  # reaches the build on the worker
    assert built.templates.get(RG, "slow").properties.last_run_status.run_state == "Canceled"
    assert_host_clean(built, run["runId"])
    built.templates.begin_delete(RG, "slow").result()
