"""AIB triggers of the API's image templates (`.../imageTemplates/{t}/triggers/{name}`).

A trigger remembers what it last saw of its template's source (`seen`: a gallery version, a
managed image's digest, a platform image's exact version), its AIB status (code, message, time),
and, once its source changed, the reason of the run it asked for (`pending`) until a server has
started that run (`last_operation`, `last_reason`). Whoever checks (`kiln trigger check` or the
server's own schedule) moves `seen` by compare-and-set under the write lock (`observe`), so one
new source version asks for exactly one run, however many checkers race.
"""

from __future__ import annotations

import builtins
from dataclasses import dataclass

from kiln import ids
from kiln.ids import ResourceId
from kiln.store.db import Catalog, Row, now

KINDS = ("SourceImage",)


@dataclass(frozen=True)
class Trigger:
    id: ResourceId
    template_id: ResourceId
    kind: str
    created_by: str
    created: float
    seen: str
    status_code: str
    status_message: str
    status_time: float
    pending: str  # the reason of a run asked for and not started yet ('' if none)
    last_operation: str  # the API operation of the last run it started
    last_reason: str


class Triggers:
    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog

    @staticmethod
    def _row(r: Row) -> Trigger:
        rid = ids.parse(r["id"])
        return Trigger(rid, rid.parent(), r["kind"], r["created_by"], r["created"], r["seen"], r["status_code"],
                       r["status_message"], r["status_time"], r["pending"], r["last_operation"], r["last_reason"])

    def get(self, rid: ResourceId) -> Trigger | None:
        r = self.catalog.one("SELECT * FROM api_triggers WHERE key = ?", (rid.key,))
        return None if r is None else self._row(r)

    def list(self, template: ResourceId | None = None) -> builtins.list[Trigger]:
        if template is None:
            rows = self.catalog.query("SELECT * FROM api_triggers ORDER BY key")
        else:
            rows = self.catalog.query("SELECT * FROM api_triggers WHERE template_key = ? ORDER BY key", (template.key,))
        return [self._row(r) for r in rows]

    def create(self, rid: ResourceId, kind: str, who: str, *, seen: str, status_code: str,
               status_message: str) -> tuple[bool, Trigger]:
        """Create the trigger (True), or return the one there is (False: a PUT of it again changes nothing)."""
        with self.catalog.write() as db:
            created = db.execute(
                "INSERT INTO api_triggers (key, id, template_key, kind, created_by, created, seen, status_code,"
                " status_message, status_time) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (key) DO NOTHING",
                (rid.key, str(rid), rid.parent().key, kind, who, now(), seen, status_code, status_message, now()),
            ).rowcount == 1
        got = self.get(rid)
        assert got is not None
        return created, got

    def delete(self, rid: ResourceId) -> bool:
        with self.catalog.write() as db:
            return db.execute("DELETE FROM api_triggers WHERE key = ?", (rid.key,)).rowcount == 1

    def delete_of_template(self, template: ResourceId) -> int:
        with self.catalog.write() as db:
            return db.execute("DELETE FROM api_triggers WHERE template_key = ?", (template.key,)).rowcount

    def observe(self, rid: ResourceId, was: str, now_seen: str, *, status_code: str, status_message: str,
                fire: str = "") -> bool:
        """Record what the source is now, if it still was `was` (False: another checker got there first).
        `fire` (a reason) asks for a run; one asked for already and not started stays asked for."""
        with self.catalog.write() as db:
            return db.execute(
                "UPDATE api_triggers SET seen = ?, status_code = ?, status_message = ?, status_time = ?,"
                " pending = CASE WHEN ? != '' THEN ? ELSE pending END WHERE key = ? AND seen = ?",
                (now_seen, status_code, status_message, now(), fire, fire, rid.key, was),
            ).rowcount == 1

    def set_status(self, rid: ResourceId, code: str, message: str) -> None:
        with self.catalog.write() as db:
            db.execute("UPDATE api_triggers SET status_code = ?, status_message = ?, status_time = ? WHERE key = ?",
                       (code, message, now(), rid.key))

    def pending(self) -> builtins.list[Trigger]:
        return [self._row(r) for r in self.catalog.query("SELECT * FROM api_triggers WHERE pending != '' ORDER BY status_time")]

    def started(self, rid: ResourceId, reason: str, operation: str, message: str) -> None:
        """The run asked for (`reason`) has started as `operation`. A newer request that came in
        meanwhile stays asked for (the run just started may predate what it saw)."""
        with self.catalog.write() as db:
            db.execute(
                "UPDATE api_triggers SET pending = CASE WHEN pending = ? THEN '' ELSE pending END, last_operation = ?,"
                " last_reason = ?, status_code = 'Healthy', status_message = ?, status_time = ? WHERE key = ?",
                (reason, operation, reason, message, now(), rid.key),
            )
