"""`kiln trigger check|list`: the SourceImage triggers of the API's image templates (kiln.triggers).

`check` looks at every trigger now and asks for a run of each template whose source got newer.
The runs are `kiln serve`'s to execute (they are API runs, seen by the SDK): a running server starts
them within a second, and `check` waits for that (`--wait`, default 10 s) to say which operation
each became. With no server running, a request stays asked for and the next server starts it.
"""

from __future__ import annotations

import time
from typing import Any

import click

from kiln.cli import App, pass_app
from kiln.cli.common import emit, json_option, open_store


def _trigger_json(t: Any) -> dict[str, Any]:
    return {"id": str(t.id), "templateId": str(t.template_id), "kind": t.kind,
            "status": {"code": t.status_code, "message": t.status_message},
            "seen": t.seen, "pendingRun": t.pending or None,
            "lastRun": {"operation": t.last_operation, "reason": t.last_reason} if t.last_operation else None}


@click.group("trigger")
def trigger_group() -> None:
    """SourceImage triggers of the API's image templates (made through `kiln serve`)."""


@trigger_group.command("check")
@click.option("--wait", "wait_s", type=click.FloatRange(0), default=10.0, show_default=True,
              help="Seconds to wait for a running kiln serve to start the runs asked for.")
@json_option
@pass_app
def trigger_check(app: App, wait_s: float, as_json: bool) -> None:
    """Check every trigger now; a template whose source got newer gets a run."""
    from kiln.store.triggers import Triggers
    from kiln.triggers import check

    with open_store(app) as store:
        outcomes = check(store, app.config)
        fired = [o for o in outcomes if o.fired]
        table = Triggers(store.catalog)
        deadline = time.monotonic() + wait_s
        while fired and time.monotonic() < deadline and any(_still_pending(table, o.trigger.id) for o in fired):
            time.sleep(0.2)
        now = {str(o.trigger.id): table.get(o.trigger.id) for o in outcomes}
    results = []
    for o in outcomes:
        t = now[str(o.trigger.id)]
        state = "fired" if o.fired else "unchanged"
        run = ""
        if o.fired:
            run = "queued: the next kiln serve starts it" if t is None or t.pending else f"started: operation {t.last_operation}"
        results.append({"id": str(o.trigger.id), "status": o.status_code, "message": o.message, "result": state,
                        "reason": o.fired or None, "run": run or None})
    emit(as_json, results, lambda: (("ID", "STATUS", "RESULT", "RUN"),
                                    [(r["id"], r["status"], r["result"], r["run"] or r["message"]) for r in results]))


def _still_pending(table: Any, rid: Any) -> bool:
    t = table.get(rid)
    return t is not None and bool(t.pending)


@trigger_group.command("list")
@json_option
@pass_app
def trigger_list(app: App, as_json: bool) -> None:
    """List every trigger, with its status and the last run it started."""
    from kiln.store.triggers import Triggers

    with open_store(app) as store:
        found = Triggers(store.catalog).list()
    data = [_trigger_json(t) for t in found]
    emit(as_json, data, lambda: (("ID", "STATUS", "MESSAGE"),
                                 [(d["id"], d["status"]["code"], d["status"]["message"]) for d in data]))


def register(cli: click.Group) -> None:
    cli.add_command(trigger_group)
