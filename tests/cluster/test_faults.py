"""Faults of a cluster: a worker killed with -9 mid-build, and Redis restarted with builds queued."""

from __future__ import annotations

import json
import signal
import time

import pytest
from clusterlib import Cluster, image_id, kiln, processes_with, template, wait_done

from processes import alive, eventually

pytestmark = pytest.mark.integration

HEARTBEAT_TIMEOUT_S = 6.0  # the workers beat every 2 s (clusterlib) and are lost after 3 missed beats


def runs_of(c: Cluster, name: str) -> list[dict]:
    runs = json.loads(kiln(c.submitter, "runs", "list", "--json").stdout)
    return [r for r in runs if r["templateId"].endswith(f"/imageTemplates/{name}")]


def test_kill_9_of_a_worker_mid_build_fails_its_run_as_worker_lost_and_publishes_nothing(cluster: Cluster, tmp_path) -> None:
    victim = cluster.start_worker("victim", "--queues", "kiln.host.victim")
    cluster.start_worker("watcher", "--queues", "kiln.host.watcher")  # beats, and notices the victim's silence
    t = template(tmp_path / "doomed.json", "doomed", "echo doomed-started", "sleep 941", tags={"kiln.host": "victim"})
    submit = cluster.build(t)
    flight = cluster.run_in_flight("doomed")
    assert flight["worker"] == "victim"
    assert eventually(lambda: bool(processes_with("sleep 941")), timeout=300, interval=0.5)
    work = victim.home / "work" / flight["runId"]
    assert work.is_dir()

    assert victim.proc is not None
    victim.proc.send_signal(signal.SIGKILL)
    victim.proc.wait(10)
    killed = time.monotonic()
    # The reaper the worker left takes the build down with it: nothing goes on to publish.
    assert eventually(lambda: not processes_with("sleep 941"), timeout=30, interval=0.2)

    # Bounded by the follower's wait here, not by the job's 4-hour timeout (its time is printed, not asserted).
    code, out, err = wait_done(submit, timeout=120)
    noticed = time.monotonic() - killed
    assert code == 1, err
    assert "worker lost" in err and "Traceback" not in err
    (run,) = runs_of(cluster, "doomed")
    assert run["lastRunStatus"]["runState"] == "Failed"
    assert run["lastRunStatus"]["message"].startswith("worker lost")
    assert kiln(cluster.submitter, "image", "show", image_id("doomed"), check=False).returncode == 2
    assert cluster.status()["runsInFlight"] == []
    print(f"worker lost noticed {noticed:.1f}s after kill -9 (heartbeat timeout {HEARTBEAT_TIMEOUT_S}s)")

    # Started again, the worker reclaims the dead build's scratch space.
    assert work.is_dir()
    cluster.start_worker("victim", "--queues", "kiln.host.victim")
    assert any("reclaimed 1 work dir(s)" in line for line in victim.lines()), victim.lines()
    assert not work.exists()
    assert {w["name"]: w["alive"] for w in cluster.status()["workers"]}["victim"] is True


def test_redis_restarted_with_builds_queued_loses_none_and_runs_none_twice(cluster: Cluster, tmp_path) -> None:
    names = ["queued0", "queued1"]
    submits = [cluster.build(template(tmp_path / f"{n}.json", n, tags={"kiln.host": "late"})) for n in names]
    assert eventually(lambda: {q["name"]: q["queued"] for q in cluster.status()["queues"]}.get("kiln.host.late") == 2,
                      timeout=120, interval=0.5), cluster.status()

    cluster.redis.restart()  # SIGKILL: only what reached the append-only file survives

    assert {q["name"]: q["queued"] for q in cluster.status()["queues"]}["kiln.host.late"] == 2
    late = cluster.start_worker("late", "--queues", "kiln.host.late")
    results = [wait_done(s, timeout=900) for s in submits]  # the followers rode out the restart
    assert [r[0] for r in results] == [0, 0], [r[2] for r in results]
    assert eventually(lambda: len(late.runs()) >= 2, timeout=60)
    took = late.runs()
    assert sorted(r[1] for r in took) == names and len({r[0] for r in took}) == 2, took
    assert all(r[2] == "Succeeded" for r in took)
    for n in names:
        assert len(runs_of(cluster, n)) == 1
    assert {q["name"]: q["queued"] for q in cluster.status()["queues"]}["kiln.host.late"] == 0
    assert late.proc is not None and alive(late.proc.pid)
