"""A server killed (-9) with one build running and two queued behind it, then started again: the
running build is Failed, saying the server restarted, and its host is clean; the queued runs are
still queued and are built, in their order, to Succeeded. Builds skip the boot test
(`kiln serve --no-validate`): what is tested is the queue, not the image."""

from __future__ import annotations

import signal

import pytest
import requests
from kilnserve import API_VERSION, RG, SUB, start_server
from test_api_build import Built, P, assert_host_clean, debian12, runs_of, stream_until, wait_for

pytestmark = pytest.mark.integration


def image(name: str) -> str:
    return f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.Compute/images/{name}"


def test_queued_runs_survive_a_kill_and_the_running_one_is_failed(tmp_path) -> None:
    from debian_root import bootstrap_debian12

    cached = bootstrap_debian12(tmp_path)
    home = tmp_path / "home"
    home.mkdir()
    (home / "cache").symlink_to(cached.config.cache_dir)
    server = start_server(home, args=("--workers", "1", "--no-validate"))
    try:
        token = server.token("restarter", SUB)
        b = Built(server, token, server.client(token))
        for name, say in (("long", ["echo started-long", "sleep 900"]), ("first", ["echo first"]),
                          ("second", ["echo second"])):
            b.templates.begin_create_or_update(RG, name, debian12(image(f"restart-{name}"), *say)).result()
        b.templates.begin_run(RG, "long")
        (run,) = wait_for("the long run to start", lambda: runs_of(home, "long"), 120)
        stream_until(b, "long", run["runId"], "started-long")
        b.templates.begin_run(RG, "first")
        b.templates.begin_run(RG, "second")
        for name in ("first", "second"):
            status = b.templates.get(RG, name).properties.last_run_status
            assert (status.run_state, status.run_sub_state) == ("Running", "Queued")

        server.stop(signal.SIGKILL)  # no chance to clean up: the long build's child is orphaned
        server.start()

        status = b.templates.get(RG, "long").properties.last_run_status
        assert status.run_state == "Failed"
        assert "restarted" in status.message
        assert_host_clean(b, run["runId"])

        def ended(name: str) -> str:
            return b.templates.get(RG, name).properties.last_run_status.run_state not in ("Running", "Canceling") \
                and name
        wait_for("the queued runs to be built", lambda: ended("first") and ended("second"), 900)
        for name in ("first", "second"):
            status = b.templates.get(RG, name).properties.last_run_status
            assert status.run_state == "Succeeded", status.message
        # The same through REST, and in their original order: the first queued was built first.
        r = requests.get(f"{server.url}{P}/second", params={"api-version": API_VERSION},
                         headers={"Authorization": f"Bearer {token}"}, timeout=60)
        assert r.json()["properties"]["lastRunStatus"]["runState"] == "Succeeded"
        (first,), (second,) = runs_of(home, "first"), runs_of(home, "second")
        assert first["lastRunStatus"]["endTime"] <= second["lastRunStatus"]["startTime"]
        assert [o.name for o in b.templates.list_run_outputs(RG, "second")] == ["out"]
    finally:
        server.stop()
