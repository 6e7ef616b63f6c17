"""The submitter's copy of a worker's customization.log is the log the worker's own LogFile writes."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from kiln.cluster.runlog import LogCopy, copy_path
from kiln.events import Event, LogFile


def events() -> list[Event]:
    return [Event("log", "cluster", "picked up by w1"),  # before the run exists: no run id yet
            Event("begin", "build", "t (run r1)", run_id="r1"),
            Event("step", "customize", "customize[0]: say (Shell)", run_id="r1", step_id="customize"),
            Event("log", "say", "hello from the guest", run_id="r1", step_id="customize"),
            Event("finish", "build", "Succeeded", seconds=12.5, run_id="r1")]


def test_the_copy_has_the_workers_lines_and_a_new_follow_replaces_it(tmp_path: Path) -> None:
    worker = LogFile(tmp_path / "worker" / "customization.log")
    for e in events():
        worker.emit(e)
    worker.close()
    # What the submitter follows: the events as JSON, as they cross Redis.
    streamed = [json.loads(json.dumps(asdict(e), default=str)) for e in events()]
    for _ in range(2):  # a restarted server follows the stream again from its start
        copy = LogCopy(tmp_path / "runs")
        for data in streamed:
            copy(data)
        copy.close()
    assert copy.path == copy_path(tmp_path / "runs", "r1")
    text = copy.path.read_text()
    assert text == (tmp_path / "worker" / "customization.log").read_text()
    assert "hello from the guest" in text and text.count("picked up by w1") == 1


def test_a_stream_that_never_names_its_run_leaves_no_copy(tmp_path: Path) -> None:
    copy = LogCopy(tmp_path / "runs")
    copy({"kind": "log", "name": "cluster", "message": "refused before the run began"})
    copy.close()
    assert copy.path is None and not (tmp_path / "runs").exists()
