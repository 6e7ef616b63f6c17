"""The image template resources the API was given, and its long-running operations.

A template resource keeps the body its client sent (location, tags, identity, properties), so a
GET answers with what was PUT plus the read-only fields, and a second PUT can be compared with
the first as Azure compares them. Its runs are the catalog's ordinary runs (`kiln runs list`
shows them too); an operation (`api_operations`) ties a run, cancel or create to the
`Azure-AsyncOperation` URL the client polls, and outlives a server restart.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

from kiln import ids
from kiln.ids import ResourceId
from kiln.store.db import Catalog, now

OPERATION_STATES = ("InProgress", "Succeeded", "Failed", "Canceled")


@dataclass(frozen=True)
class TemplateResource:
    id: ResourceId
    body: dict[str, Any]
    created_by: str
    created: float
    updated_by: str
    updated: float


@dataclass(frozen=True)
class Operation:
    id: str
    kind: str  # create | run | cancel | delete
    template_key: str
    status: str  # InProgress | Succeeded | Failed | Canceled
    run_id: str
    error: dict[str, Any] | None
    created: float
    ended: float | None


class Resources:
    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog

    # ------------------------------------------------------------------ templates

    def get(self, rid: ResourceId) -> TemplateResource | None:
        r = self.catalog.one("SELECT * FROM api_templates WHERE key = ?", (rid.key,))
        return None if r is None else self._template(r)

    def put(self, rid: ResourceId, body: dict[str, Any], who: str) -> TemplateResource:
        t = now()
        with self.catalog.write() as db:
            db.execute("INSERT INTO api_templates (key, id, body, created_by, created, updated_by, updated) "
                       "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (key) DO UPDATE SET body = excluded.body, "
                       "updated_by = excluded.updated_by, updated = excluded.updated",
                       (rid.key, str(rid), json.dumps(body, sort_keys=True), who, t, who, t))
        got = self.get(rid)
        assert got is not None
        return got

    def delete(self, rid: ResourceId) -> None:
        with self.catalog.write() as db:
            db.execute("DELETE FROM api_templates WHERE key = ?", (rid.key,))

    def templates(self, subscription: str, resource_group: str | None = None) -> list[TemplateResource]:
        prefix = f"/subscriptions/{subscription}/".lower()
        if resource_group is not None:
            prefix += f"resourcegroups/{resource_group}/".lower()
        rows = self.catalog.query("SELECT * FROM api_templates WHERE substr(key, 1, length(?)) = ? ORDER BY key",
                                  (prefix, prefix))
        return [self._template(r) for r in rows]

    @staticmethod
    def _template(r: Any) -> TemplateResource:
        return TemplateResource(ids.parse(r["id"]), json.loads(r["body"]), r["created_by"], r["created"],
                                r["updated_by"], r["updated"])

    # ------------------------------------------------------------------ operations

    def start_operation(self, kind: str, rid: ResourceId, *, status: str = "InProgress") -> Operation:
        op_id = uuid.uuid4().hex
        t = now()
        with self.catalog.write() as db:
            db.execute("INSERT INTO api_operations (id, kind, template_key, status, created, ended) VALUES (?, ?, ?, ?, ?, ?)",
                       (op_id, kind, rid.key, status, t, None if status == "InProgress" else t))
        return self.operation(op_id)  # type: ignore[return-value]

    def operation(self, op_id: str) -> Operation | None:
        r = self.catalog.one("SELECT * FROM api_operations WHERE id = ?", (op_id,))
        return None if r is None else self._operation(r)

    def set_run(self, op_id: str, run_id: str) -> None:
        with self.catalog.write() as db:
            db.execute("UPDATE api_operations SET run_id = ? WHERE id = ?", (run_id, op_id))

    def end_operation(self, op_id: str, status: str, error: dict[str, Any] | None = None) -> bool:
        """Move an operation in progress to its final status; False if it had ended already."""
        assert status in OPERATION_STATES[1:]
        with self.catalog.write() as db:
            return db.execute("UPDATE api_operations SET status = ?, error = ?, ended = ? WHERE id = ? AND status = 'InProgress'",
                              (status, json.dumps(error) if error else "", now(), op_id)).rowcount == 1

    def in_progress(self, kind: str | None = None, rid: ResourceId | None = None) -> list[Operation]:
        sql, args = "SELECT * FROM api_operations WHERE status = 'InProgress'", list[str]()
        if kind is not None:
            sql, args = sql + " AND kind = ?", [*args, kind]
        if rid is not None:
            sql, args = sql + " AND template_key = ?", [*args, rid.key]
        return [self._operation(r) for r in self.catalog.query(sql + " ORDER BY created", tuple(args))]

    def last_run(self, rid: ResourceId, since: float) -> Operation | None:
        r = self.catalog.one("SELECT * FROM api_operations WHERE kind = 'run' AND template_key = ? AND created >= ? "
                             "ORDER BY created DESC LIMIT 1", (rid.key, since))
        return None if r is None else self._operation(r)

    @staticmethod
    def _operation(r: Any) -> Operation:
        return Operation(r["id"], r["kind"], r["template_key"], r["status"], r["run_id"],
                         json.loads(r["error"]) if r["error"] else None, r["created"], r["ended"])
