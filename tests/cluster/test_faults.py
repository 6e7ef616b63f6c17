"""Faults of a cluster: a worker killed with -9 mid-build (its run failed "worker lost", or retried
once on the other worker when the template says so), Redis restarted with builds queued, and the
PostgreSQL catalog stopped mid-build and at submit time."""

from __future__ import annotations

import json
import signal
import threading
import time
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest
from clusterlib import CatalogServer, Cluster, image_id, kiln, processes_with, template, wait_done

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


def images_named(c: Cluster, name: str) -> list[dict]:
    images = json.loads(kiln(c.submitter, "image", "list", "--json").stdout)
    return [i for i in images if i["id"].lower() == image_id(name).lower()]


def test_kill_9_of_a_worker_mid_build_retries_it_once_on_the_other_worker_when_the_template_says_so(
        cluster: Cluster, tmp_path) -> None:
    # The step is a script the workers fetch from a loopback HTTP server here: the first attempt
    # sleeps, and the test rewrites it before the retry, which then ends at once.
    served = tmp_path / "served"
    served.mkdir()
    step = served / "step.sh"
    step.write_text("echo first-attempt\nsleep 953\n")
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(SimpleHTTPRequestHandler, directory=str(served)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    t = template(tmp_path / "again.json", "again", tags={"kiln.retries": "1"})
    doc = json.loads(t.read_text())
    # A URL each attempt fetches on its worker (a local file would travel with the job, the same for both).
    doc["properties"]["customize"] = [{"type": "Shell", "name": "step",
                                       "scriptUri": f"http://127.0.0.1:{server.server_port}/step.sh"}]
    t.write_text(json.dumps(doc))
    first = cluster.start_worker("first", "--queues", "kiln.build.any")
    submit = cluster.build(t)
    flight = cluster.run_in_flight("again")
    assert flight["worker"] == "first"
    assert eventually(lambda: bool(processes_with("sleep 953")), timeout=300, interval=0.5)
    second = cluster.start_worker("second", "--queues", "kiln.build.any")
    step.write_text("echo second-attempt\n")

    assert first.proc is not None
    first.proc.send_signal(signal.SIGKILL)
    first.proc.wait(10)
    assert eventually(lambda: not processes_with("sleep 953"), timeout=30, interval=0.2)

    code, out, err = wait_done(submit, timeout=900)  # the submitter follows the build to its retry's end
    server.shutdown()
    assert code == 0, err
    assert "worker lost; retrying (attempt 2 of 2): first stopped heartbeating mid-build" in err
    assert "Traceback" not in err
    lost, retried = runs_of(cluster, "again")  # oldest first: two runs of one build
    assert lost["runId"] == flight["runId"]
    assert lost["lastRunStatus"]["runState"] == "Failed"
    assert lost["lastRunStatus"]["message"].startswith("worker lost; retrying (attempt 2 of 2)")
    assert lost["runOutputs"] == []
    assert retried["lastRunStatus"]["runState"] == "Succeeded"
    assert f"run {retried['runId']} " in out
    assert [r for r in second.runs() if r[1] == "again"] == [[retried["runId"], "again", "Succeeded", "(attempt", "2",
                                                              "of", "2)"]]
    assert [o["properties"]["provisioningState"] for o in retried["runOutputs"]] == ["Succeeded"]
    assert len(images_named(cluster, "again")) == 1  # published once, by the retry
    assert cluster.status()["runsInFlight"] == []
    assert kiln(cluster.submitter, "store", "check", "--quick", check=False).returncode == 0
    second.stop()


def test_the_catalog_stopped_mid_build_fails_the_run_cleanly_when_it_is_back_and_the_worker_goes_on(
        cluster: Cluster, catalog_server: CatalogServer, tmp_path) -> None:
    import redis

    pgw = cluster.start_worker("pgw", "--queues", "kiln.host.pgw")
    t = template(tmp_path / "cut.json", "cut", "echo cut-started", "sleep 29", tags={"kiln.host": "pgw"})
    submit = cluster.build(t)
    flight = cluster.run_in_flight("cut")
    assert eventually(lambda: bool(processes_with("sleep 29")), timeout=300, interval=0.5)
    catalog_server.pause()
    try:
        # The build's next catalog write fails: the child ends, and its worker waits for the catalog.
        assert eventually(lambda: any("the run's end is recorded when it answers again" in line for line in pgw.lines()),
                          timeout=600, interval=0.5), pgw.lines()
        assert not processes_with(f"kiln.cluster.child {pgw.home}")
        assert not (pgw.home / "work" / flight["runId"]).exists()
        assert submit.poll() is None  # still following

        # Submitting meanwhile: a clear error, and nothing queued.
        late = template(tmp_path / "late.json", "notqueued", tags={"kiln.host": "pgw"})
        p = kiln(cluster.submitter, "build", "--no-validate", str(late), check=False)
        assert p.returncode == 2, p.stderr
        assert f"cannot open the catalog {cluster.catalog}" in p.stderr and "[cluster] catalog" in p.stderr
        assert "Traceback" not in p.stderr
        r = redis.Redis(port=cluster.redis.port)
        assert r.llen("rq:queue:kiln.host.pgw") == 0
    finally:
        catalog_server.resume()

    code, out, err = wait_done(submit, timeout=600)
    assert code == 1, err
    assert f"the catalog {cluster.catalog} became unreachable mid-build" in err and "Traceback" not in err
    (run,) = runs_of(cluster, "cut")
    assert run["runId"] == flight["runId"]
    assert run["lastRunStatus"]["runState"] == "Failed"
    assert run["lastRunStatus"]["message"].startswith(f"the catalog {cluster.catalog} became unreachable mid-build")
    assert run["runOutputs"] == [] and images_named(cluster, "cut") == []  # no partial rows
    assert runs_of(cluster, "notqueued") == []
    assert kiln(cluster.submitter, "store", "check", "--quick", check=False).returncode == 0
    assert any(r == [flight["runId"], "cut", "Failed"] for r in pgw.runs()), pgw.lines()

    # The worker survived it and takes the next build.
    assert pgw.proc is not None and alive(pgw.proc.pid)
    code, out, err = wait_done(cluster.build(template(tmp_path / "next.json", "next", tags={"kiln.host": "pgw"})))
    assert code == 0, err
    assert [r[2] for r in pgw.runs() if r[1] == "next"] == ["Succeeded"]
    assert len(images_named(cluster, "next")) == 1
