"""What the API does, apart from HTTP: image template resources, their runs and operations.

`Service` is called by the routes (kiln.api.app) with plain values and answers plain JSON or raises
`ArmError`; it drives the same functions the CLI does (the template loader, `build()` in a child
process, the store) and sees the same events. Azure's rules live here:

- a PUT of an existing template with anything but the same body is refused (Azure does not
  update templates); tags, identity, distribute and vmProfile change through PATCH;
- one run at a time per template; a template whose build runs cannot be deleted until canceled;
- deleting a template leaves what its runs distributed; `autoRun` starts a run on create;
- after a restart (or a stop), a run whose build had started is Failed, saying why; runs still
  waiting for a worker stay queued and are submitted again, in their order, when the server starts.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import Any

from kiln import ids
from kiln.api.errors import ArmError, from_kiln_error, not_found
from kiln.api.executor import ChildProcessExecutor, Executor, Job
from kiln.api.resources import Operation, Resources, TemplateResource
from kiln.api.settings import ServeSettings
from kiln.api.templates import API_VERSION, WRITABLE, load_body
from kiln.config import Config
from kiln.errors import KilnError, NotFound
from kiln.events import Event, Monitor, NullMonitor
from kiln.ids import ResourceId
from kiln.store.blobs import alive_here
from kiln.store.runs import FINAL_STATES, Run
from kiln.store.store import Store

PROVIDER = "Microsoft.VirtualMachineImages"
READ_ONLY_PROPERTIES = ("provisioningState", "provisioningError", "lastRunStatus", "exactStagingResourceGroup")
RESTARTED = "the kiln server restarted while this run was in progress; nothing was published; run it again"
STOPPED = "the kiln server stopped while this run was in progress; nothing was published; run it again"


class Service:
    def __init__(self, config: Config, settings: ServeSettings, monitor: Monitor | None = None,
                 executor: Executor | None = None) -> None:
        self.config = config
        self.settings = settings
        self.monitor = monitor or NullMonitor()
        self._log_copies: dict[str, Any] = {}  # operation id -> its run's LogCopy (cluster builds)
        self._events_kept: set[str] = set()  # the runs whose events.jsonl this server has begun
        if executor is None and config.cluster.queue:  # builds go to the cluster's workers (kiln.cluster)
            from kiln.cluster.executor import RqExecutor
            executor = RqExecutor(config, self._on_event, self._on_done)
        self._local = threading.local()
        self._stores: list[Store] = []
        self._lock = threading.Lock()
        self.stopping = False
        queued = self.recover()
        self.executor = executor or ChildProcessExecutor(config.home, self._on_event, self._on_done, settings.workers,
                                                         child_args=() if settings.validate else ("--no-validate",))
        self._requeue(queued)

    # ------------------------------------------------------------------ plumbing

    def store(self) -> Store:
        """This thread's Store (a catalog connection is not shared between threads)."""
        store = getattr(self._local, "store", None)
        if store is None:
            store = self._local.store = Store.open(self.config)
            with self._lock:
                self._stores.append(store)
        return store

    def resources(self) -> Resources:
        return Resources(self.store().catalog)

    def close(self) -> None:
        """Stop the builds (each run whose build had started ends Failed, saying the server stopped);
        queued runs stay queued for the next start. A cluster's builds go on on their workers."""
        self.stopping = True
        self.executor.shutdown()
        for op in self.resources().in_progress():
            if op.kind != "run" or (self._started(op) and not self.config.cluster.queue):
                self._fail_left_over(op, STOPPED)
        with self._lock:
            for s in self._stores:
                s.close()

    def recover(self) -> list[Operation]:
        """At start-up: a run whose build a previous server had started is Failed (its build stopped
        first); the runs that were still queued are returned, oldest first, to be submitted again.
        With a cluster queue the builds run on workers, which outlive a server: every run is
        submitted again, and so followed where it is (queued or building)."""
        queued = []
        for op in self.resources().in_progress():
            if op.kind == "run" and (self.config.cluster.queue or not self._started(op)):
                queued.append(op)
            else:
                self._fail_left_over(op, RESTARTED)
        return queued

    def _requeue(self, queued: list[Operation]) -> None:
        res = self.resources()
        for op in queued:
            rec = res.get(ids.parse(op.template_key))
            if rec is None:  # cannot happen through the API (a building template cannot be deleted): say so anyway
                res.end_operation(op.id, "Failed", {"code": "ServerRestarted", "message": "its template is gone"})
            else:
                self.executor.submit(Job(op.id, str(rec.id)))

    def _started(self, op: Operation) -> str:
        """The run of an operation whose build has started, else "". The child's first event names
        it (op.run_id), but a server killed before that event arrived leaves a run the child created:
        the template's run started since the operation (one run at a time per template)."""
        if op.run_id:
            return op.run_id
        row = self.store().catalog.one("SELECT run_id FROM runs WHERE template_key = ? AND start_time >= ? "
                                       "ORDER BY start_time LIMIT 1", (op.template_key, op.created))
        if row is None:
            return ""
        self.resources().set_run(op.id, row["run_id"])
        return str(row["run_id"])

    def _fail_left_over(self, op: Operation, why: str) -> None:
        """End an operation a server left behind. A build still alive is stopped and its run Failed;
        one that ended on its own while no server watched keeps the state it recorded."""
        store, res = self.store(), self.resources()
        run_id = self._started(op) if op.kind == "run" else ""
        row = store.catalog.one("SELECT pid, pid_start, run_state FROM runs WHERE run_id = ?", (run_id,)) if run_id else None
        if row is None:
            res.end_operation(op.id, "Failed", {"code": "ServerRestarted", "message": why})
            return
        alive = bool(row["pid"]) and alive_here(row["pid"], row["pid_start"])  # never another host's pid
        if alive:
            _stop_group(row["pid"], row["pid_start"])
        if alive or row["run_state"] not in FINAL_STATES:
            store.runs.finish(run_id, "Failed", why)
            shutil.rmtree(self.config.work_dir / run_id, ignore_errors=True)
            res.end_operation(op.id, "Failed", {"code": "ServerRestarted", "message": why})
        elif row["run_state"] in ("Succeeded", "PartiallySucceeded"):
            res.end_operation(op.id, "Succeeded")
        else:
            run = store.runs.get(run_id)
            res.end_operation(op.id, run.run_state, {"code": run.run_state, "message": run.message})

    # ------------------------------------------------------------------ templates

    def get(self, rid: ResourceId, base: str) -> dict[str, Any]:
        return self.render(self._existing(rid), base)

    def put(self, rid: ResourceId, body: dict[str, Any], api_version: str, who: str, base: str) -> tuple[int, dict[str, Any], Operation | None]:
        """Create (201 and an operation) or confirm an identical template (200)."""
        clean = {k: body[k] for k in WRITABLE if k in body}
        if isinstance(clean.get("properties"), dict):  # read-only: what a GET answered, PUT back, is ignored
            clean["properties"] = {k: v for k, v in clean["properties"].items() if k not in READ_ONLY_PROPERTIES}
        clean["apiVersion"] = api_version
        self._check(clean, rid)
        res = self.resources()
        existing = res.get(rid)
        if existing is not None:
            if _comparable(existing.body) != _comparable(clean):
                changed = sorted(k for k in ("location", "tags", "identity", "properties")
                                 if existing.body.get(k) != clean.get(k))
                raise ArmError(409, "Conflict",
                               "Update/Upgrade of image templates is currently not supported; "
                               f"this PUT changes {', '.join(changed)}. Change the template's name, or delete it first"
                               + ("; tags change through PATCH" if changed == ["tags"] else ""))
            return 200, self.render(existing, base), None
        record = res.put(rid, clean, who)
        op = res.start_operation("create", rid)
        res.end_operation(op.id, "Succeeded")  # validated above: creating is recording it
        if (clean.get("properties", {}).get("autoRun") or {}).get("state") == "Enabled":
            self.run(rid)
        body_out = self.render(record, base)
        body_out["properties"]["provisioningState"] = "Creating"
        return 201, body_out, op

    def patch(self, rid: ResourceId, body: dict[str, Any], who: str, base: str) -> dict[str, Any]:
        existing = self._existing(rid)
        if self.building(rid):
            raise ArmError(409, "Conflict", f"image template {rid.name!r} has a build in progress; cancel it or wait")
        new = json.loads(json.dumps(existing.body))
        for key in ("tags", "identity"):
            if key in body:
                new[key] = body[key]
        props = body.get("properties") or {}
        if not isinstance(props, dict):
            raise ArmError(400, "InvalidRequestContent", "properties must be an object")
        unknown = sorted(set(props) - {"distribute", "vmProfile"})
        if unknown:
            raise ArmError(400, "InvalidRequestContent", f"PATCH cannot change properties {', '.join(unknown)}",
                           [{"code": "InvalidRequestContent", "target": f"properties.{k}", "message": "not updatable"}
                            for k in unknown])
        new.setdefault("properties", {}).update(props)
        self._check(new, rid)
        return self.render(self.resources().put(rid, new, who), base)

    def delete(self, rid: ResourceId) -> Operation | None:
        res = self.resources()
        if res.get(rid) is None:
            return None
        if self.building(rid):
            raise ArmError(409, "Conflict", f"image template {rid.name!r} has a build in progress; cancel it first "
                           "(POST .../cancel), then delete it")
        res.delete(rid)  # its runs' images, galleries' versions and VHDs stay where they were published
        op = res.start_operation("delete", rid)
        res.end_operation(op.id, "Succeeded")
        return op

    def building(self, rid: ResourceId) -> list[Operation]:
        """The template's run operations whose build has not ended (queued, or its run not final yet).
        A run whose child is still exiting has a final state already and blocks nothing."""
        store = self.store()
        return [op for op in self.resources().in_progress("run", rid)
                if not op.run_id or store.runs.get(op.run_id).run_state not in FINAL_STATES]

    def _existing(self, rid: ResourceId) -> TemplateResource:
        rec = self.resources().get(rid)
        if rec is None:
            raise not_found(ids.IMAGE_TEMPLATE, rid.name, rid.resource_group)
        return rec

    def _check(self, body: dict[str, Any], rid: ResourceId) -> None:
        try:
            load_body(body, rid, self.config)
        except KilnError as e:
            raise from_kiln_error(e) from None

    # ------------------------------------------------------------------ runs

    def run(self, rid: ResourceId) -> Operation:
        rec = self._existing(rid)
        res = self.resources()
        if self.building(rid):
            raise ArmError(409, "Conflict", f"image template {rid.name!r} has a run in progress already")
        op = res.start_operation("run", rid)
        self.executor.submit(Job(op.id, str(rec.id)))
        return op

    def cancel(self, rid: ResourceId) -> Operation:
        self._existing(rid)
        res = self.resources()
        running = self.building(rid)
        if not running:
            raise ArmError(409, "Conflict", f"image template {rid.name!r} has no run in progress to cancel")
        op = res.start_operation("cancel", rid)
        for r in running:
            if r.run_id:  # AIB's Canceling, unless the run has just ended on its own
                with self.store().catalog.write() as db:
                    db.execute("UPDATE runs SET run_state = 'Canceling' WHERE run_id = ? AND run_state = 'Running'",
                               (r.run_id,))
            if not self.executor.cancel(r.id):  # it ended meanwhile
                res.end_operation(op.id, "Succeeded")
        return op

    def _on_event(self, job: Job, data: dict[str, Any]) -> None:
        run_id = data.get("run_id") or ""
        if run_id and job.run_id != run_id:
            job.run_id = run_id
            self.resources().set_run(job.op_id, run_id)
        if run_id:  # kept beside the run's log, for GET .../runs/{runId}/events
            self.events_path(run_id).parent.mkdir(parents=True, exist_ok=True)  # a cluster's run logs on its worker
            # A restarted server follows a cluster run's stream again from its start: the file it
            # begins replaces the earlier server's, so each event is kept once.
            mode = "a" if run_id in self._events_kept else "w"
            self._events_kept.add(run_id)
            with self.events_path(run_id).open(mode, encoding="utf-8") as fh:
                fh.write(json.dumps(data) + "\n")
        if self.config.cluster.queue:  # the worker's log, copied here for GET .../runs/{runId}/log
            from kiln.cluster.runlog import LogCopy

            self._log_copies.setdefault(job.op_id, LogCopy(self.config.runs_dir))(data)
        fields = {k: v for k, v in data.items() if k in Event.__dataclass_fields__}
        try:
            self.monitor.emit(Event(**fields))
        except TypeError:
            pass

    def _on_done(self, job: Job, code: int) -> None:
        if (copy := self._log_copies.pop(job.op_id, None)) is not None:
            copy.close()
        res, store = self.resources(), self.store()
        op = res.operation(job.op_id)
        if op is None:
            return
        run = store.runs.get(op.run_id) if op.run_id else None
        if run is not None and run.run_state not in FINAL_STATES:  # killed before the pipeline could record it
            state = "Canceled" if job.canceled and not self.stopping else "Failed"
            store.runs.finish(run.run_id, state, "canceled" if state == "Canceled" else f"the build process ended ({code})")
            shutil.rmtree(self.config.work_dir / run.run_id, ignore_errors=True)
            run = store.runs.get(run.run_id)
        if self.stopping:
            if run is None:  # never started: it stays queued for the next start (Service.recover)
                return
            store.runs.finish(run.run_id, "Failed", STOPPED)
            res.end_operation(op.id, "Failed", {"code": "ServerStopped", "message": STOPPED})
        elif run is None:
            if job.canceled:
                res.end_operation(op.id, "Canceled", {"code": "Canceled", "message": "canceled before the build started"})
            else:
                tail = "\n".join(job.stderr_tail) or f"exit code {code}"
                res.end_operation(op.id, "Failed", {"code": "BuildFailed", "message": tail})
        elif run.run_state in ("Succeeded", "PartiallySucceeded"):
            res.end_operation(op.id, "Succeeded")
        elif run.run_state == "Canceled":
            res.end_operation(op.id, "Canceled", {"code": "Canceled", "message": run.message or "canceled"})
        else:
            res.end_operation(op.id, "Failed", {"code": "BuildFailed", "message": run.message})
        for c in res.in_progress("cancel", ids.parse(op.template_key)):
            res.end_operation(c.id, "Succeeded")

    def run_outputs(self, rid: ResourceId) -> list[dict[str, Any]]:
        rec = self._existing(rid)
        outs = [o for o in self.store().runs.outputs(rid) if o.created >= rec.created]
        return [drop_none({k: v for k, v in o.to_json().items() if k != "kiln"}) for o in outs]

    def run_output(self, rid: ResourceId, name: str) -> dict[str, Any]:
        for o in self.run_outputs(rid):
            if str(o["name"]).lower() == name.lower():
                return o
        raise ArmError(404, "ResourceNotFound", f"run output {name!r} of image template {rid.name!r} does not exist")

    def run_of(self, rid: ResourceId, run_id: str) -> Run:
        self._existing(rid)
        try:
            run = self.store().runs.get(run_id)
        except NotFound:
            run = None
        if run is None or run.template_id != rid:
            raise ArmError(404, "ResourceNotFound", f"image template {rid.name!r} has no run {run_id!r}")
        return run

    def log_path(self, run: Run) -> str:
        """The run's customization.log as this server reads it: with a cluster queue, the copy it
        keeps of a worker's log (kiln.cluster.runlog), unless the run left a log of its own here."""
        if self.config.cluster.queue:
            from kiln.cluster.runlog import copy_path

            copy = copy_path(self.config.runs_dir, run.run_id)
            if copy.exists() or not Path(run.log_path).is_relative_to(self.config.runs_dir):
                return str(copy)
        return run.log_path

    def events_path(self, run_id: str) -> Path:
        return self.config.runs_dir / run_id / "events.jsonl"

    def run_ended(self, run_id: str) -> bool:
        return self.store().runs.get(run_id).run_state in FINAL_STATES

    # ------------------------------------------------------------------ operations

    def operation(self, subscription: str, op_id: str, location: str) -> dict[str, Any]:
        op = self.resources().operation(op_id)
        if op is None or ids.parse(op.template_key).subscription.lower() != subscription.lower():
            raise ArmError(404, "ResourceNotFound", f"operation {op_id!r} does not exist")
        body: dict[str, Any] = {"id": operation_path(subscription, location, op_id), "name": op_id, "status": op.status,
                                "startTime": _iso(op.created), "endTime": _iso(op.ended)}
        if op.error:
            body["error"] = {"code": op.error.get("code", "Failed"), "message": op.error.get("message", ""), "details": []}
        return body

    def delete_done(self, subscription: str, op_id: str) -> bool:
        op = self.resources().operation(op_id)
        if op is None or op.kind != "delete" or ids.parse(op.template_key).subscription.lower() != subscription.lower():
            raise ArmError(404, "ResourceNotFound", f"operation {op_id!r} does not exist")
        return self.resources().get(ids.parse(op.template_key)) is None

    # ------------------------------------------------------------------ rendering

    def render(self, rec: TemplateResource, base: str) -> dict[str, Any]:
        rid = rec.id
        props = dict(rec.body.get("properties") or {})
        props["provisioningState"] = "Succeeded"
        if (status := self.last_run_status(rec, base)) is not None:
            props["lastRunStatus"] = {k: v for k, v in status.items() if v is not None}  # the spec's strings: no nulls
        short = hashlib.sha256(rid.key.encode()).hexdigest()[:8]
        props["exactStagingResourceGroup"] = f"/subscriptions/{rid.subscription}/resourceGroups/IT_{rid.resource_group}_{rid.name}_{short}"
        out: dict[str, Any] = {"id": str(rid), "name": rid.name, "type": ids.IMAGE_TEMPLATE}
        out.update({k: rec.body[k] for k in ("location", "tags", "identity") if k in rec.body})
        out.setdefault("identity", {"type": "None"})  # the spec requires one; kiln's builds use none
        out["properties"] = props
        out["systemData"] = {"createdBy": rec.created_by, "createdByType": "Application", "createdAt": _iso(rec.created),
                             "lastModifiedBy": rec.updated_by, "lastModifiedByType": "Application",
                             "lastModifiedAt": _iso(rec.updated)}
        return out

    def last_run_status(self, rec: TemplateResource, base: str) -> dict[str, Any] | None:
        op = self.resources().last_run(rec.id, rec.created)
        if op is None:
            return None
        if not op.run_id:
            if op.status == "InProgress":
                return {"runState": "Running", "runSubState": "Queued", "message": "", "startTime": _iso(op.created),
                        "endTime": None}
            return {"runState": "Canceled" if op.status == "Canceled" else "Failed", "runSubState": "Queued",
                    "message": (op.error or {}).get("message", ""), "startTime": _iso(op.created), "endTime": _iso(op.ended)}
        run = self.store().runs.get(op.run_id)
        message = run.message
        if run.run_state in ("Failed", "PartiallySucceeded"):
            message = f"{message} (log: {log_url(base, rec.id, run.run_id)})"
        return {"runState": run.run_state, "runSubState": run.run_sub_state, "message": message,
                "startTime": _iso(run.start_time), "endTime": _iso(run.end_time)}


def _iso(t: float | None) -> str | None:
    return None if t is None else datetime.datetime.fromtimestamp(t, datetime.UTC).isoformat().replace("+00:00", "Z")


def drop_none(value: Any) -> Any:
    """ARM leaves out what has no value: a null where AIB's spec says string fails a strict reader."""
    if isinstance(value, dict):
        return {k: drop_none(v) for k, v in value.items() if v is not None}
    return value


def _comparable(body: dict[str, Any]) -> str:
    values = {k: body.get(k) for k in WRITABLE}
    if values["identity"] in (None, {"type": "None"}):  # what a GET answers for none: PUT back, it is the same
        values["identity"] = None
    return json.dumps(values, sort_keys=True)


def operation_path(subscription: str, location: str, op_id: str, kind: str = "operations") -> str:
    return f"/subscriptions/{subscription}/providers/{PROVIDER}/locations/{location}/{kind}/{op_id}"


def log_url(base: str, rid: ResourceId, run_id: str) -> str:
    return f"{base}{rid}/runs/{run_id}/log?api-version={API_VERSION}"


def _stop_group(pid: int, start: str, grace_s: float = 30.0) -> None:
    """A build a previous server left running: SIGTERM its group (it cleans up), SIGKILL if it lingers."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        return
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and alive_here(pid, start):
        time.sleep(0.2)
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
