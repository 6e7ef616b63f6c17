"""AIB's triggers: `PUT|GET|DELETE .../imageTemplates/{name}/triggers/{trigger}` and their list.

Shapes as AIB's 2025-10-01 spec has them (kind SourceImage, status code/message/time,
provisioningState). PUT answers 201 with `Azure-AsyncOperation` (creating is recording: the
operation has succeeded when the client first polls) or 200 for a trigger that exists; DELETE
answers 204. A template's triggers go with it: a trigger older than its template (deleted, then
made anew) is gone. What a trigger does is kiln.triggers; this module also runs its schedule in
the server: due runs are started every second, every trigger is checked every `interval_s`.
"""

from __future__ import annotations

import datetime
import logging
import re
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from kiln import ids, triggers
from kiln.api.errors import ArmError, from_kiln_error, not_found
from kiln.api.guard import api_version, authorize, json_object, listing
from kiln.api.resources import TemplateResource
from kiln.api.service import PROVIDER, Service, operation_path
from kiln.errors import KilnError
from kiln.ids import ResourceId
from kiln.store.triggers import KINDS, Trigger, Triggers
from kiln.template.normalize import API_VERSIONS

log = logging.getLogger("kiln.api.triggers")

TYPE = f"{ids.IMAGE_TEMPLATE}/triggers"
P = "/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.VirtualMachineImages/imageTemplates/{name}/triggers"
_NAME = re.compile(r"^[A-Za-z0-9-_.]{1,64}$")  # the spec's TriggerNameParameter
START_EVERY_S = 1.0


def _iso(t: float) -> str:
    return datetime.datetime.fromtimestamp(t, datetime.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def trigger_json(t: Trigger) -> dict[str, Any]:
    return {
        "id": str(t.id), "name": t.id.name, "type": TYPE,
        "properties": {"kind": t.kind,
                       "status": {"code": t.status_code, "message": t.status_message, "time": _iso(t.status_time)},
                       "provisioningState": "Succeeded"},
        "systemData": {"createdBy": t.created_by, "createdByType": "Application", "createdAt": _iso(t.created)},
    }


class Schedule:
    """The server's trigger loop, in a thread of its own (with its own catalog connection)."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="kiln-triggers", daemon=True)

    def _loop(self) -> None:
        try:
            every = triggers.interval_s(self.service.config)
        except KilnError as e:
            log.error("triggers are not checked on a schedule: %s", e.render())
            every = float("inf")
        next_check = time.monotonic()
        while not self.stop.is_set():
            try:
                if time.monotonic() >= next_check:
                    next_check = time.monotonic() + every
                    triggers.check(self.service.store(), self.service.config)
                if not self.service.stopping:
                    triggers.start_pending(self.service)
            except Exception:  # a bug: logged, and the schedule goes on
                log.exception("trigger check failed")
            self.stop.wait(START_EVERY_S)


def router(service: Service) -> APIRouter:
    schedule = Schedule(service)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        schedule.thread.start()
        yield
        schedule.stop.set()
        await run_in_threadpool(schedule.thread.join, 30)

    r = APIRouter(lifespan=lifespan)

    def allow(request: Request, sub: str, *, write: bool = False) -> str:
        action = f"{PROVIDER}/imageTemplates/triggers/{'write' if write else 'read'}"
        token = authorize(service, request, sub, action, write=write)
        api_version(request, API_VERSIONS[-1], API_VERSIONS)
        return token.name

    def template_of(sub: str, rg: str, name: str) -> TemplateResource:
        rid = ids.try_parse(f"/subscriptions/{sub}/resourceGroups/{rg}/providers/{ids.IMAGE_TEMPLATE}/{name}")
        rec = service.resources().get(rid) if rid is not None else None
        if rec is None:
            raise not_found(ids.IMAGE_TEMPLATE, name, rg)
        return rec

    def live(template: TemplateResource, t: Trigger | None) -> Trigger | None:
        if t is not None and t.created < template.created:  # the template's predecessor's trigger
            Triggers(service.store().catalog).delete(t.id)
            return None
        return t

    def trigger_id(template: TemplateResource, name: str) -> ResourceId:
        return template.id.child("triggers", name)

    @r.get(P)
    def list_triggers(request: Request, sub: str, rg: str, name: str) -> dict[str, Any]:
        allow(request, sub)
        template = template_of(sub, rg, name)
        found = [live(template, t) for t in Triggers(service.store().catalog).list(template.id)]
        return listing(service, request, [t for t in found if t is not None], trigger_json)

    @r.get(P + "/{trigger}")
    def get_trigger(request: Request, sub: str, rg: str, name: str, trigger: str) -> dict[str, Any]:
        allow(request, sub)
        template = template_of(sub, rg, name)
        t = live(template, Triggers(service.store().catalog).get(trigger_id(template, trigger)))
        if t is None:
            raise not_found(TYPE, f"{name}/triggers/{trigger}", rg)
        return trigger_json(t)

    @r.put(P + "/{trigger}")
    async def put_trigger(request: Request, sub: str, rg: str, name: str, trigger: str) -> Response:
        who = allow(request, sub, write=True)
        body = await json_object(request)
        return await run_in_threadpool(create, request, sub, rg, name, trigger, body, who)

    def create(request: Request, sub: str, rg: str, name: str, trigger: str, body: dict[str, Any], who: str) -> Response:
        if not _NAME.match(trigger):
            raise ArmError(400, "InvalidResourceName", f"trigger name {trigger!r} is not valid",
                           [{"code": "InvalidResourceName", "target": "name",
                             "message": "1-64 letters, digits, '-', '_' or '.'"}])
        kind = _kind(body)
        template = template_of(sub, rg, name)
        store = service.store()
        try:
            source = triggers.template_source(store, service.config, template.id)
        except KilnError as e:
            raise from_kiln_error(e) from None
        assert source is not None  # template_of found the template
        if why := triggers.unsupported(source):
            raise ArmError(400, "InvalidTriggerSource", f"a SourceImage trigger cannot follow this template's source: {why}",
                           [{"code": "InvalidTriggerSource", "target": "properties.source", "message": why}])
        rid = trigger_id(template, trigger)
        live(template, Triggers(store.catalog).get(rid))
        seen, code, message = triggers.initial_state(store, service.config, source)
        created, t = Triggers(store.catalog).create(rid, kind, who, seen=seen, status_code=code, status_message=message)
        if not created:
            return JSONResponse(trigger_json(t), status_code=200)
        op = service.resources().start_operation("trigger", template.id)
        service.resources().end_operation(op.id, "Succeeded")
        location = "".join(str(template.body.get("location", "global")).lower().split())
        version = request.query_params["api-version"]
        url = f"{str(request.base_url).rstrip('/')}{operation_path(sub, location, op.id)}?api-version={version}"
        return JSONResponse(trigger_json(t), status_code=201, headers={"Azure-AsyncOperation": url, "Retry-After": "1"})

    @r.delete(P + "/{trigger}")
    def delete_trigger(request: Request, sub: str, rg: str, name: str, trigger: str) -> Response:
        allow(request, sub, write=True)
        template = template_of(sub, rg, name)
        Triggers(service.store().catalog).delete(trigger_id(template, trigger))
        return Response(status_code=204)

    return r


def _kind(body: dict[str, Any]) -> str:
    props = body.get("properties")
    kind = props.get("kind") if isinstance(props, dict) else None
    for k in KINDS:
        if isinstance(kind, str) and kind.lower() == k.lower():
            return k
    raise ArmError(400, "InvalidRequestContent", f"properties.kind must be one of {', '.join(KINDS)}, not {kind!r}",
                   [{"code": "InvalidRequestContent", "target": "properties.kind",
                     "message": f"one of {', '.join(KINDS)}"}])
