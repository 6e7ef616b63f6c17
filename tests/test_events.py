"""Events carry their run and step: runs that share one monitor stay apart (the API needs this)."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from kiln.events import JsonMonitor, RunMonitor
from monitors import Recorder
from templates import debian12_template


def test_steps_nest_and_log_lines_belong_to_the_innermost_open_step() -> None:
    seen = Recorder()
    run = RunMonitor(seen, "run-a")
    run.begin("build")
    run.step("customize", "2 step(s)")
    run.step("customize[0]", "hello (Shell)")
    run.log("output of the step", name="hello")  # a customizer labels its lines with its own name
    run.result("customize[0]")
    run.log("between steps")
    run.result("customize")
    run.log("after", name="validate")
    run.finish("build")
    got = [(e.kind, e.name, e.step_id) for e in seen.events]
    assert got == [
        ("begin", "build", "build"),
        ("step", "customize", "customize"),
        ("step", "customize[0]", "customize[0]"),
        ("log", "hello", "customize[0]"),
        ("result", "customize[0]", "customize[0]"),
        ("log", "", "customize"),
        ("result", "customize", "customize"),
        ("log", "validate", "validate"),
        ("finish", "build", "build"),
    ]
    assert {e.run_id for e in seen.events} == {"run-a"}


def test_parallel_runs_sharing_one_monitor_can_be_told_apart(tmp_path: Path) -> None:
    out = tmp_path / "events.jsonl"
    with out.open("w") as stream:
        shared = JsonMonitor(stream)
        barrier = threading.Barrier(2)

        def one_run(run_id: str) -> None:
            run = RunMonitor(shared, run_id)
            run.step("customize[0]")
            barrier.wait()  # both runs are inside their customize[0] at once
            for i in range(50):
                run.log(f"{run_id} line {i}")
            run.result("customize[0]")

        threads = [threading.Thread(target=one_run, args=(r,)) for r in ("run-a", "run-b")]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    events = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(events) == 2 * 52
    for e in events:
        assert e["step_id"] == "customize[0]"
        if e["kind"] == "log":
            assert e["message"].startswith(e["run_id"] + " ")
    assert {e["run_id"] for e in events} == {"run-a", "run-b"}


@pytest.mark.integration
def test_every_event_of_a_real_build_carries_its_run_id(tmp_path: Path) -> None:
    from debian_root import bootstrap_debian12
    from kiln.config import load_config
    from kiln.pipeline.build import build
    from kiln.pipeline.context import BuildOptions
    from kiln.store.store import Store
    from kiln.template.load import load_template

    cached = bootstrap_debian12(tmp_path)
    home = tmp_path / "home"
    home.mkdir()
    (home / "cache").symlink_to(cached.config.cache_dir)  # the build unpacks the cached root
    template = debian12_template(tmp_path, "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/images/events",
                                 name="events", customize=[{"type": "Shell", "name": "say", "inline": ["echo said-it"]}])
    config = load_config(home)
    seen = Recorder()
    with Store.open(config) as store:
        outcome = build(load_template(template)[0], config=config, store=store, monitor=seen,
                        options=BuildOptions(validate=False))
    assert outcome.state == "Succeeded"
    assert seen.events and {e.run_id for e in seen.events} == {outcome.run_id}
    said = [e for e in seen.events if e.kind == "log" and e.message == "said-it"]
    assert [e.step_id for e in said] == ["customize[0]"]
    assert {e.step_id for e in seen.events if e.kind == "step"} >= {"source", "customize", "customize[0]", "assemble",
                                                                    "distribute"}
