"""The HTTP face of kiln.api.service: AIB's REST paths, ARM's conventions.

Every request is authenticated first (a bearer token from `kiln token create`, scoped to
subscriptions; read-only tokens only GET), then needs an `api-version` kiln reads. Long-running
operations follow ARM's asynchronous pattern as azure-core's poller reads it: PUT answers 201 and
run/cancel 202 with `Azure-AsyncOperation` (a status resource: InProgress, then Succeeded, Failed
or Canceled) and `Retry-After: 1`; DELETE answers 202 with a `Location` that answers 202 until the
template is gone, then 204. Every error is ARM-shaped (kiln.api.errors). Lists answer pages with a
`nextLink` (kiln.api.guard.listing); a body past the server's limit is refused while it streams in
(ArmRequests, below).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kiln import ids
from kiln.api import identity, metadata
from kiln.api.errors import ArmError, from_kiln_error
from kiln.api.guard import authorize, json_object, listing
from kiln.api.quota import RunQuota
from kiln.api.service import PROVIDER, Service, operation_path
from kiln.errors import KilnError
from kiln.ids import ResourceId
from kiln.store.tokens import Token, Tokens
from kiln.template.normalize import API_VERSIONS

log = logging.getLogger("kiln.api")

P = "/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.VirtualMachineImages/imageTemplates"
OPS = "/subscriptions/{sub}/providers/Microsoft.VirtualMachineImages/locations/{loc}"
LOG_CHUNK = 64 * 1024
_CANONICAL = {w.lower(): w for w in ("subscriptions", "resourceGroups", "providers", PROVIDER, "imageTemplates",
                                     "runOutputs", "runs", "log", "run", "cancel", "locations", "operations",
                                     "operationResults", "Microsoft.Compute", "Microsoft.DevTestLab", "triggers", "customimages")}


def create_app(service: Service) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await run_in_threadpool(service.close)

    app = FastAPI(title="kiln", lifespan=lifespan, openapi_url=None, docs_url=None, redoc_url=None)
    max_body = service.settings.max_body
    keys = identity.keys_for(service.config.home)  # the managed-identity stand-in's JWTs (kiln.api.identity)
    quota = RunQuota(service.settings.max_runs_per_token, service.resources)
    app.include_router(identity.router(lambda: Tokens(service.store().catalog), keys))
    app.include_router(metadata.router(service.store, service.config, keys))

    # ---------------------------------------------------------------- errors, all ARM-shaped

    @app.exception_handler(ArmError)
    async def arm_error(request: Request, e: ArmError) -> JSONResponse:
        return JSONResponse(e.body(), status_code=e.status, headers=e.headers)

    @app.exception_handler(KilnError)
    async def kiln_error(request: Request, e: KilnError) -> JSONResponse:
        arm = from_kiln_error(e, code="InvalidRequestContent")
        return JSONResponse(arm.body(), status_code=arm.status)

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, e: RequestValidationError) -> JSONResponse:
        return JSONResponse(ArmError(400, "InvalidRequest", "the request is not valid").body(), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
        code = {404: "InvalidResourceType", 405: "MethodNotAllowed"}.get(e.status_code, "BadRequest")
        message = f"no such resource or method: {request.method} {request.url.path}"
        return JSONResponse(ArmError(e.status_code, code, message).body(), status_code=e.status_code)

    @app.exception_handler(Exception)
    async def bug(request: Request, e: Exception) -> JSONResponse:  # a bug in kiln, never the client's input
        log.exception("internal error on %s %s", request.method, request.url.path)
        return JSONResponse(ArmError(500, "InternalServerError", f"internal error: {type(e).__name__}").body(),
                            status_code=500)

    app.add_middleware(ArmRequests, max_body=max_body)

    # ---------------------------------------------------------------- the guard of every route

    def guard(request: Request, sub: str, *, write: bool = False) -> Token:
        token = authorize(service, request, sub, f"{PROVIDER}/imageTemplates/{'write' if write else 'read'}", write=write)
        version = request.query_params.get("api-version")
        if not version:
            raise ArmError(400, "MissingApiVersionParameter",
                           "The api-version query parameter (?api-version=) is required for all requests.")
        if version not in API_VERSIONS:
            raise ArmError(400, "InvalidApiVersionParameter",
                           f"The api-version '{version}' is invalid. The supported versions are '{','.join(API_VERSIONS)}'.")
        return token

    def template_id(sub: str, rg: str, name: str) -> ResourceId:
        try:
            return ids.parse(f"/subscriptions/{sub}/resourceGroups/{rg}/providers/{ids.IMAGE_TEMPLATE}/{name}",
                             ids.IMAGE_TEMPLATE)
        except KilnError as e:
            raise ArmError(400, "InvalidResourceName", e.message) from None

    def base(request: Request) -> str:
        return str(request.base_url).rstrip("/")

    def async_headers(request: Request, sub: str, location: str, op_id: str, kind: str) -> dict[str, str]:
        version = request.query_params["api-version"]
        url = f"{base(request)}{operation_path(sub, location, op_id, kind)}?api-version={version}"
        return {"Azure-AsyncOperation" if kind == "operations" else "Location": url, "Retry-After": "1"}

    def location_of(rid: ResourceId) -> str:
        rec = service.resources().get(rid)
        return "".join(str((rec.body if rec else {}).get("location", "global")).lower().split())

    # ---------------------------------------------------------------- image templates

    @app.get("/subscriptions/{sub}/providers/Microsoft.VirtualMachineImages/imageTemplates")
    def list_by_subscription(request: Request, sub: str) -> Response:
        guard(request, sub)
        return JSONResponse(listing(service, request, service.resources().templates(sub),
                                    lambda t: service.render(t, base(request))))

    @app.get(P)
    def list_by_resource_group(request: Request, sub: str, rg: str) -> Response:
        guard(request, sub)
        return JSONResponse(listing(service, request, service.resources().templates(sub, rg),
                                    lambda t: service.render(t, base(request))))

    @app.put(P + "/{name}")
    async def create_or_update(request: Request, sub: str, rg: str, name: str) -> Response:
        token = guard(request, sub, write=True)
        rid = template_id(sub, rg, name)
        body = await json_object(request)
        status, out, op = await run_in_threadpool(
            quota.put, token.name, body, service.resources().get(rid) is None,
            lambda: service.put(rid, body, request.query_params["api-version"], token.name, base(request)),
            lambda: service.building(rid))
        headers = async_headers(request, sub, location_of(rid), op.id, "operations") if op else {}
        return JSONResponse(out, status_code=status, headers=headers)

    @app.patch(P + "/{name}")
    async def update(request: Request, sub: str, rg: str, name: str) -> Response:
        token = guard(request, sub, write=True)
        rid = template_id(sub, rg, name)
        body = await json_object(request)
        return JSONResponse(await run_in_threadpool(service.patch, rid, body, token.name, base(request)))

    @app.get(P + "/{name}")
    def get(request: Request, sub: str, rg: str, name: str) -> Response:
        # The reads answer a JSONResponse of plain JSON: FastAPI's jsonable_encoder and response model
        # would walk the body again. They stay on the threadpool (sync routes): a read can wait on the
        # catalog's write lock (runs.reap() marks a dead run Failed), which must not stall the event loop.
        guard(request, sub)
        return JSONResponse(service.get(template_id(sub, rg, name), base(request)))

    @app.delete(P + "/{name}")
    def delete(request: Request, sub: str, rg: str, name: str) -> Response:
        guard(request, sub, write=True)
        rid = template_id(sub, rg, name)
        location = location_of(rid)
        op = service.delete(rid)
        if op is None:
            return Response(status_code=204)
        return Response(status_code=202, headers=async_headers(request, sub, location, op.id, "operationResults"))

    @app.post(P + "/{name}/run")
    def run(request: Request, sub: str, rg: str, name: str) -> Response:
        token = guard(request, sub, write=True)
        rid = template_id(sub, rg, name)
        op = quota.run(token.name, lambda: service.run(rid))
        return Response(status_code=202, headers=async_headers(request, sub, location_of(rid), op.id, "operations"))

    @app.post(P + "/{name}/cancel")
    def cancel(request: Request, sub: str, rg: str, name: str) -> Response:
        guard(request, sub, write=True)
        rid = template_id(sub, rg, name)
        op = service.cancel(rid)
        return Response(status_code=202, headers=async_headers(request, sub, location_of(rid), op.id, "operations"))

    @app.get(P + "/{name}/runOutputs")
    def run_outputs(request: Request, sub: str, rg: str, name: str) -> Response:
        guard(request, sub)
        return JSONResponse(listing(service, request, service.run_outputs(template_id(sub, rg, name)), lambda o: o))

    @app.get(P + "/{name}/runOutputs/{out}")
    def run_output(request: Request, sub: str, rg: str, name: str, out: str) -> Response:
        guard(request, sub)
        return JSONResponse(service.run_output(template_id(sub, rg, name), out))

    @app.get(P + "/{name}/runs/{run_id}/log")
    def run_log(request: Request, sub: str, rg: str, name: str, run_id: str) -> Response:
        """kiln's extension: the run's customization.log, followed until the run ends."""
        guard(request, sub)
        run = service.run_of(template_id(sub, rg, name), run_id)
        return StreamingResponse(_follow(service, run.run_id, service.log_path(run)), media_type="text/plain; charset=utf-8")

    @app.get(P + "/{name}/runs/{run_id}/events")
    def run_events(request: Request, sub: str, rg: str, name: str, run_id: str) -> Response:
        """kiln's extension: the run's events as JSON lines (each with its run_id and step_id), followed."""
        guard(request, sub)
        run = service.run_of(template_id(sub, rg, name), run_id)
        return StreamingResponse(_follow(service, run.run_id, str(service.events_path(run.run_id))),
                                 media_type="application/x-ndjson")

    # ---------------------------------------------------------------- operations

    @app.get(OPS + "/operations/{op_id}")
    def operation_status(request: Request, sub: str, loc: str, op_id: str) -> Response:
        guard(request, sub)
        status = service.operation(sub, op_id, loc)
        # The poller waits what Retry-After says, else 30 s: one second while the operation runs.
        return JSONResponse(status, headers={"Retry-After": "1"} if status["status"] == "InProgress" else {})

    @app.get(OPS + "/operationResults/{op_id}")
    def operation_result(request: Request, sub: str, loc: str, op_id: str) -> Response:
        guard(request, sub)
        if service.delete_done(sub, op_id):
            return Response(status_code=204)
        return Response(status_code=202, headers={"Location": str(request.url), "Retry-After": "1"})

    from kiln.api import compute, devtestlab, triggers  # Azure's read paths of kiln's catalog; AIB triggers

    for module in (compute, devtestlab, triggers):
        app.include_router(module.router(service))
    return app


class ArmRequests:
    """What every request goes through first, as a plain ASGI layer (no per-request task or copy):

    - ARM's paths are case-insensitive (`resourcegroups`, `microsoft.virtualmachineimages`): the
      path's known words are given their canonical case, so the routes match;
    - a body larger than `max_body` is refused with ARM's 413, on its Content-Length before it is
      read, and, without one (chunked), as soon as the bytes received pass the limit: no route reads
      more than the limit, whatever route it is (templates, triggers, PATCH, ...).
    """

    def __init__(self, app: ASGIApp, max_body: int) -> None:
        self.app = app
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        scope["path"] = "/".join(_CANONICAL.get(p.lower(), p) for p in scope["path"].split("/"))
        limit = self.max_body
        for name, value in scope["headers"]:
            if name == b"content-length" and (not value.isdigit() or int(value) > limit):
                e = _too_large(limit)
                await JSONResponse(e.body(), status_code=413, headers=e.headers)(scope, receive, send)
                return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise _too_large(limit)  # the route's read fails: ARM's 413 through the ArmError handler
            return message

        await self.app(scope, limited, send)


def _too_large(limit: int) -> ArmError:
    # Connection: close, so the server stops reading there (else uvicorn reads and drops the rest to keep it alive).
    return ArmError(413, "RequestEntityTooLarge", f"the request body is larger than this server's limit of {limit} bytes",
                    headers={"Connection": "close"})


def _follow(service: Service, run_id: str, path: str) -> Iterator[bytes]:
    """The log's bytes so far, then what is appended, until the run has ended and all is read."""
    pos = 0
    while True:
        ended = service.run_ended(run_id)  # read before the file: nothing written after it is missed
        try:
            with open(path, "rb") as fh:
                fh.seek(pos)
                while chunk := fh.read(LOG_CHUNK):
                    pos += len(chunk)
                    yield chunk
        except FileNotFoundError:
            pass
        if ended:
            return
        time.sleep(0.5)
