"""Image templates and their runs, as AIB reports them.

The build engine registers a template by its id (`.../imageTemplates/{name}`, with its JSON),
creates a run, moves it through AIB's states and records one run output per distribute target.
`kiln runs` and `kiln run-output` read these tables. States are AIB's:

    runState     Running | Canceling | Succeeded | PartiallySucceeded | Failed | Canceled
    runSubState  Queued | Building | Customizing | Optimizing | Validating | Distributing

A run records the pid (and its start time) of the process running it, so a run whose process was
killed is reported as Failed rather than Running forever (`reap()`).
"""

from __future__ import annotations

import builtins
import datetime
import json
import os
import uuid
from dataclasses import dataclass
from typing import Any

from kiln import ids
from kiln.errors import InvalidInput, NotFound
from kiln.ids import ResourceId
from kiln.store.blobs import pid_alive, process_start
from kiln.store.db import Catalog, Row, now

RUN_STATES = ("Running", "Canceling", "Succeeded", "PartiallySucceeded", "Failed", "Canceled")
FINAL_STATES = ("Succeeded", "PartiallySucceeded", "Failed", "Canceled")
RUN_SUB_STATES = ("Queued", "Building", "Customizing", "Optimizing", "Validating", "Distributing")
PROVISIONING_STATES = ("Succeeded", "Failed")
REAPED_MESSAGE = "the kiln process running it exited without finishing it"  # reap()'s, when the pid is gone


def _iso(t: float | None) -> str | None:
    return None if t is None else datetime.datetime.fromtimestamp(t, datetime.UTC).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class RunOutput:
    """One distribute target's result, as AIB's `runOutputs` resource."""

    name: str  # runOutputName
    template_id: ResourceId
    target_type: str  # ManagedImage | SharedImage | VHD
    provisioning_state: str  # Succeeded | Failed
    artifact_id: str = ""
    artifact_uri: str = ""
    error: str = ""
    run_id: str = ""
    created: float = 0.0
    boot_test: str = ""  # the boot test that proved the artifact: ssh-login | serial ("" if none)

    @property
    def id(self) -> ResourceId:
        return self.template_id.child("runOutputs", self.name)

    @property
    def run_output_name(self) -> str:
        return self.name

    def to_json(self) -> dict[str, Any]:
        props: dict[str, Any] = {"artifactId": self.artifact_id or None, "artifactUri": self.artifact_uri or None,
                                 "provisioningState": self.provisioning_state}
        if self.error:
            props["error"] = self.error
        return {"id": str(self.id), "name": self.name, "type": ids.RUN_OUTPUT, "properties": props,
                "kiln": {"runId": self.run_id, "targetType": self.target_type, "created": _iso(self.created),
                         "bootTest": self.boot_test or None}}


@dataclass(frozen=True)
class TemplateRecord:
    id: ResourceId
    template: dict[str, Any]
    created: float
    updated: float


@dataclass(frozen=True)
class Run:
    run_id: str
    template_id: ResourceId
    run_state: str
    run_sub_state: str
    message: str
    start_time: float
    end_time: float | None
    log_path: str
    outputs: tuple[RunOutput, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"runId": self.run_id, "templateId": str(self.template_id), "lastRunStatus": {
            "runState": self.run_state, "runSubState": self.run_sub_state, "message": self.message,
            "startTime": _iso(self.start_time), "endTime": _iso(self.end_time)},
            "logPath": self.log_path, "runOutputs": [o.to_json() for o in self.outputs]}


def _template_id(value: str | ResourceId) -> ResourceId:
    if isinstance(value, ResourceId):
        return value
    return ids.parse(value, ids.IMAGE_TEMPLATE, what="image template id")


class Runs:
    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog

    # ------------------------------------------------------------------ templates

    def register_template(self, template_id: str | ResourceId, template: dict[str, Any] | str) -> TemplateRecord:
        """Record (or replace) the template JSON under its id."""
        rid = _template_id(template_id)
        text = template if isinstance(template, str) else json.dumps(template, sort_keys=True)
        t = now()
        with self.catalog.write() as db:
            db.execute("INSERT INTO image_templates (key, id, template_json, created, updated) VALUES (?, ?, ?, ?, ?) "
                       "ON CONFLICT (key) DO UPDATE SET id = excluded.id, template_json = excluded.template_json, "
                       "updated = excluded.updated", (rid.key, str(rid), text, t, t))
        return self.get_template(rid)

    def get_template(self, template_id: str | ResourceId) -> TemplateRecord:
        rid = _template_id(template_id)
        r = self.catalog.one("SELECT * FROM image_templates WHERE key = ?", (rid.key,))
        if r is None:
            raise NotFound(f"image template {rid} is not registered", hint="kiln build registers a template when it runs it")
        return TemplateRecord(ids.parse(r["id"]), json.loads(r["template_json"]), r["created"], r["updated"])

    def list_templates(self) -> list[TemplateRecord]:
        return [TemplateRecord(ids.parse(r["id"]), json.loads(r["template_json"]), r["created"], r["updated"])
                for r in self.catalog.query("SELECT * FROM image_templates ORDER BY key")]

    # ------------------------------------------------------------------ runs

    def create(self, template_id: str | ResourceId, *, log_path: str = "", run_sub_state: str = "Queued",
               run_id: str | None = None) -> str:
        """Start a run of `template_id` in state Running/`run_sub_state`, owned by this process."""
        rid = _template_id(template_id)
        _check(run_sub_state, RUN_SUB_STATES, "runSubState")
        run_id = run_id or uuid.uuid4().hex
        pid = os.getpid()
        with self.catalog.write() as db:
            db.execute("INSERT INTO runs (run_id, template_key, run_state, run_sub_state, message, start_time, log_path,"
                       " pid, pid_start) VALUES (?, ?, 'Running', ?, '', ?, ?, ?, ?)",
                       (run_id, rid.key, run_sub_state, now(), log_path, pid, process_start(pid)))
        return run_id

    def update(self, run_id: str, *, run_state: str | None = None, run_sub_state: str | None = None,
               message: str | None = None, log_path: str | None = None) -> None:
        sets: list[str] = []
        args: list[object] = []
        for col, value, allowed in (("run_state", run_state, RUN_STATES), ("run_sub_state", run_sub_state, RUN_SUB_STATES),
                                    ("message", message, None), ("log_path", log_path, None)):
            if value is not None:
                if allowed:
                    _check(value, allowed, col)
                sets.append(f"{col} = ?")
                args.append(value)
        if not sets:
            return
        with self.catalog.write() as db:
            if db.execute(f"UPDATE runs SET {', '.join(sets)} WHERE run_id = ?", (*args, run_id)).rowcount == 0:
                raise NotFound(f"run {run_id} does not exist", hint="kiln runs list shows the runs")

    def finish(self, run_id: str, state: str, message: str = "") -> None:
        _check(state, FINAL_STATES, "final runState")
        with self.catalog.write() as db:
            if db.execute("UPDATE runs SET run_state = ?, message = ?, end_time = ? WHERE run_id = ?",
                          (state, message, now(), run_id)).rowcount == 0:
                raise NotFound(f"run {run_id} does not exist", hint="kiln runs list shows the runs")

    def record_output(self, run_id: str, output: RunOutput) -> RunOutput:
        _check(output.provisioning_state, PROVISIONING_STATES, "provisioningState")
        t = now()
        with self.catalog.write() as db:
            db.execute("INSERT INTO run_outputs (run_id, name, template_key, target_type, artifact_id,"
                       " artifact_uri, provisioning_state, error, created, boot_test) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                       " ON CONFLICT (run_id, name) DO UPDATE SET template_key = excluded.template_key,"
                       " target_type = excluded.target_type, artifact_id = excluded.artifact_id,"
                       " artifact_uri = excluded.artifact_uri, provisioning_state = excluded.provisioning_state,"
                       " error = excluded.error, created = excluded.created, boot_test = excluded.boot_test",
                       (run_id, output.name, output.template_id.key, output.target_type, output.artifact_id,
                        output.artifact_uri, output.provisioning_state, output.error, t, output.boot_test))
        return RunOutput(output.name, output.template_id, output.target_type, output.provisioning_state,
                         output.artifact_id, output.artifact_uri, output.error, run_id, t, output.boot_test)

    def _outputs(self, rows: list[Row]) -> tuple[RunOutput, ...]:
        tids = {r["template_key"]: self._template_key_id(r["template_key"]) for r in rows}
        return tuple(RunOutput(r["name"], tids[r["template_key"]], r["target_type"], r["provisioning_state"],
                               r["artifact_id"], r["artifact_uri"], r["error"], r["run_id"], r["created"],
                               r["boot_test"]) for r in rows)

    def _template_key_id(self, key: str) -> ResourceId:
        r = self.catalog.one("SELECT id FROM image_templates WHERE key = ?", (key,))
        return ids.parse(r["id"] if r else key)

    def _run(self, r: Row) -> Run:
        outputs = self._outputs(self.catalog.query("SELECT * FROM run_outputs WHERE run_id = ? ORDER BY name", (r["run_id"],)))
        return Run(r["run_id"], self._template_key_id(r["template_key"]), r["run_state"], r["run_sub_state"], r["message"],
                   r["start_time"], r["end_time"], r["log_path"], outputs)

    def get(self, run_id: str) -> Run:
        self.reap()
        r = self.catalog.one("SELECT * FROM runs WHERE run_id = ?", (run_id,))
        if r is None:
            raise NotFound(f"run {run_id} does not exist", hint="kiln runs list shows the runs")
        return self._run(r)

    def list(self, template_id: str | ResourceId | None = None) -> list[Run]:
        self.reap()
        if template_id is None:
            rows = self.catalog.query("SELECT * FROM runs ORDER BY start_time")
        else:
            rows = self.catalog.query("SELECT * FROM runs WHERE template_key = ? ORDER BY start_time",
                                      (_template_id(template_id).key,))
        return [self._run(r) for r in rows]

    def outputs(self, template_id: str | ResourceId) -> builtins.list[RunOutput]:  # `list` is a method here
        """The template's run outputs as AIB shows them: for each runOutputName, the latest run's."""
        rid = _template_id(template_id)
        rows = self.catalog.query(
            "SELECT * FROM run_outputs o WHERE template_key = ? AND created = "
            "(SELECT max(created) FROM run_outputs p WHERE p.template_key = o.template_key AND p.name = o.name) ORDER BY name",
            (rid.key,))
        return list(self._outputs(rows))

    def output(self, run_output_id: str | ResourceId) -> RunOutput:
        rid = run_output_id if isinstance(run_output_id, ResourceId) else ids.parse(run_output_id, ids.RUN_OUTPUT, what="run output id")
        for o in self.outputs(rid.parent()):
            if o.name.lower() == rid.name.lower():
                return o
        raise NotFound(f"run output {rid} does not exist", hint=f"kiln run-output list {rid.parent()} shows its run outputs")

    def reap(self) -> int:
        """Mark runs whose process is gone (killed) as Failed; returns how many this call marked.

        Every `kiln runs list` reaps, so many processes may find the same dead run at once: each
        claims the candidates with `FOR UPDATE SKIP LOCKED` (PostgreSQL; SQLite's write lock makes
        the claims one at a time), so a run is marked, and counted, by exactly one of them, and no
        reaper waits for another."""
        dead = [r["run_id"] for r in self.catalog.query("SELECT run_id, pid, pid_start FROM runs WHERE run_state IN ('Running', 'Canceling')")
                if r["pid"] is not None and not pid_alive(r["pid"], r["pid_start"])]
        if not dead:
            return 0
        marks = ", ".join("?" * len(dead))
        with self.catalog.write() as db:
            claimed = [r["run_id"] for r in db.execute(
                f"SELECT run_id FROM runs WHERE run_id IN ({marks}) AND run_state IN ('Running', 'Canceling')"
                f" ORDER BY run_id{self.catalog.claim_lock()}", dead)]
            for run_id in claimed:
                db.execute("UPDATE runs SET run_state = 'Failed', message = ?, end_time = ? WHERE run_id = ?",
                           (REAPED_MESSAGE, now(), run_id))
        return len(claimed)

    def mark_lost(self, run_id: str, message: str) -> bool:
        """Fail a run whose worker was lost (another host noticed); True if this call marked it.

        The run's row is locked (FOR UPDATE) while its state is decided, so of two reapers at once
        the second waits and then finds the run ended: one marks it. A run that ended on its own
        keeps what it recorded; one this host's `reap()` marked (its local pid gone) gets the
        worker-lost message instead."""
        with self.catalog.write() as db:
            row = db.execute(f"SELECT run_state, message FROM runs WHERE run_id = ?{self._row_lock()}", (run_id,)).fetchone()
            if row is None:
                return False
            if row["run_state"] not in ("Running", "Canceling") and not (
                    row["run_state"] == "Failed" and row["message"] == REAPED_MESSAGE):
                return False
            db.execute("UPDATE runs SET run_state = 'Failed', message = ?, end_time = ? WHERE run_id = ?",
                       (message, now(), run_id))
        return True

    def _row_lock(self) -> str:
        return "" if self.catalog.dialect == "sqlite" else " FOR UPDATE"


def _check(value: str, allowed: tuple[str, ...], what: str) -> None:
    if value not in allowed:
        raise InvalidInput(f"{what} {value!r} is not one of {', '.join(allowed)}")
