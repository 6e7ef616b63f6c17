"""Builds through the queue on two `kiln worker`s: a build enqueued by `kiln build` runs on a worker
and publishes, both workers take work, status shows them, a template's local files reach the
worker through the shared blob store, and a cancel from the CLI stops a build running on the
other worker and leaves that host clean."""

from __future__ import annotations

import hashlib
import json

import pytest
from clusterlib import Cluster, image_id, kiln, processes_with, template, wait_done

from processes import eventually

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def two(cluster: Cluster) -> Cluster:
    cluster.start_worker("w1")
    cluster.start_worker("w2")
    return cluster


def published(c: Cluster, name: str) -> bool:
    return kiln(c.submitter, "image", "show", image_id(name), check=False).returncode == 0


def test_status_json_shows_both_workers_with_their_capabilities(two: Cluster) -> None:
    status = two.status()
    workers = {w["name"]: w for w in status["workers"]}
    assert set(workers) == {"w1", "w2"}
    for w in workers.values():
        assert w["alive"] is True
        assert w["capabilities"]["accel"] in ("kvm", "tcg")
        assert w["capabilities"]["arch"]
        assert w["capabilities"]["scratch_free"] > 0
        assert f"kiln.host.{w['name']}" in w["queues"] and "kiln.build.any" in w["queues"]
    assert workers["w1"]["capabilities"]["scratch"] != workers["w2"]["capabilities"]["scratch"]


def test_kiln_build_enqueues_and_a_worker_builds_and_publishes(two: Cluster, tmp_path) -> None:
    t = template(tmp_path / "first.json", "first", "echo hello-from-a-worker")
    code, out, err = wait_done(two.build(t))
    assert code == 0, err
    # The same step lines as a local build, although the build ran in another process on a worker.
    assert "▶ customize[0]: say (Shell)" in err and "✔ assemble" in err and "✔ build" in err
    assert ": Succeeded" in out and image_id("first") in out
    assert published(two, "first")
    (ran,) = [r for w in two.workers.values() for r in w.runs() if r[1] == "first"]
    assert ran[2] == "Succeeded" and ran[0] in out
    runs = kiln(two.submitter, "runs", "show", ran[0], "--json").stdout
    assert '"runState": "Succeeded"' in runs
    # The worker's log, with the customizer's own output, is copied to the submitter's state home.
    copy = two.submitter / "runs" / ran[0] / "worker-customization.log"
    assert f"log: {copy} (a copy of the worker's " in out
    worker_log = next(w for w in two.workers.values() if ran in w.runs()).home / "runs" / ran[0] / "customization.log"
    assert "hello-from-a-worker" in copy.read_text() and copy.read_text() == worker_log.read_text()


def test_two_workers_both_take_work(two: Cluster, tmp_path) -> None:
    builds = [two.build(template(tmp_path / f"pair{i}.json", f"pair{i}")) for i in range(2)]
    results = [wait_done(b) for b in builds]
    assert [r[0] for r in results] == [0, 0], [r[2] for r in results]
    took = {w.name: [r[1] for r in w.runs()] for w in two.workers.values()}
    assert {t for ts in took.values() for t in ts} >= {"pair0", "pair1"}
    assert all(any(t.startswith("pair") for t in ts) for ts in took.values()), took
    assert published(two, "pair0") and published(two, "pair1")


def test_a_templates_local_files_travel_with_its_job(two: Cluster, tmp_path) -> None:
    """A relative scriptUri (from where `kiln build` runs) and a file:// sourceUri of the submitter's
    host reach the worker through the shared blob store; the worker's process runs elsewhere."""
    here = tmp_path / "submitter-cwd"
    (here / "payload").mkdir(parents=True)
    script = here / "payload" / "hello.sh"
    script.write_text("#!/bin/sh\necho hello-from-the-submitters-script\n")
    motd = tmp_path / "motd.txt"
    motd.write_text("built with a file of the submitter's\n")
    path = template(tmp_path / "files.json", "files")
    doc = json.loads(path.read_text())
    doc["properties"]["customize"] = [
        {"type": "Shell", "name": "script", "scriptUri": "payload/hello.sh",
         "sha256Checksum": hashlib.sha256(script.read_bytes()).hexdigest()},
        {"type": "File", "name": "motd", "sourceUri": motd.as_uri(), "destination": "/etc/motd"},
        {"type": "Shell", "name": "show", "inline": ["echo \"motd: $(cat /etc/motd)\""]},
    ]
    path.write_text(json.dumps(doc))
    build = two.build(path, cwd=here)
    flight = two.run_in_flight("files")
    code, out, err = wait_done(build)
    assert code == 0, err
    log = (two.submitter / "runs" / flight["runId"] / "worker-customization.log").read_text()
    assert "hello-from-the-submitters-script" in log
    assert "motd: built with a file of the submitter's" in log
    # Each file was fetched from the worker's cache of the shared store, under the sha256 of its bytes.
    worker = two.workers[flight["worker"]]
    for uri, f in (("payload/hello.sh", script), (motd.as_uri(), motd)):
        digest = hashlib.sha256(f.read_bytes()).hexdigest()
        assert f"fetched {uri} (rewritten to {worker.home / 'cache' / 'job-files' / digest})" in log
        assert list(two.root.joinpath("shared-blobs").rglob(f"*{digest}*"))
    assert published(two, "files")


def test_cancel_from_the_cli_stops_a_build_on_the_other_worker_and_leaves_it_clean(two: Cluster, tmp_path) -> None:
    slow = two.build(template(tmp_path / "slow.json", "slow", "echo slow-started", "sleep 937"))
    flight = two.run_in_flight("slow")
    worker = two.workers[flight["worker"]]
    assert eventually(lambda: bool(processes_with("sleep 937")), timeout=300, interval=0.5)
    # Another host's CLI (the other worker's state home) asks; the build's own host stops it.
    other = next(w for w in two.workers.values() if w is not worker)
    said = kiln(other.home, "cluster", "cancel", flight["runId"])
    assert "cancel requested" in said.stdout
    code, out, err = wait_done(slow, timeout=300)
    assert code == 130, err
    assert "Canceled" in err
    assert eventually(lambda: ["slow"] == [r[1] for r in worker.runs() if r[1] == "slow"], timeout=60)
    assert [r[2] for r in worker.runs() if r[1] == "slow"] == ["Canceled"]
    assert not processes_with("sleep 937")
    assert not (worker.home / "work" / flight["runId"]).exists()
    assert eventually(lambda: not any(worker.scratch.iterdir()) if worker.scratch.exists() else True, timeout=60)
    assert not published(two, "slow")
    run = kiln(two.submitter, "runs", "show", flight["runId"], "--json").stdout
    assert '"runState": "Canceled"' in run
    assert two.status()["runsInFlight"] == []
