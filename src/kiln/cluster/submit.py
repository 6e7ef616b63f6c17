"""`kiln build` with a cluster queue: enqueue each template, follow its run, end as a local build ends."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from kiln.cluster.engine import BuildRequest
from kiln.cluster.routing import requirements, retries
from kiln.errors import BuildFailed, Canceled, InvalidInput, KilnError

if TYPE_CHECKING:
    from kiln.config import Config
    from kiln.events import Monitor
    from kiln.template.model import ImageTemplate


def engine(config: Config) -> Any:
    """The configured job engine (RQ on the `[cluster] queue` Redis), reachable or a clear error, as is
    the shared catalog: nothing is queued for a cluster whose catalog does not answer."""
    from kiln.cluster.connect import redis_from_url
    from kiln.cluster.rq_engine import RqEngine

    rq = RqEngine(redis_from_url(config.cluster.queue), retries=config.cluster.retries)
    if config.cluster.catalog:
        check_catalog(config.cluster.catalog)
    return rq


def check_catalog(url: str) -> None:
    """One connection to the shared catalog, or the store's InvalidInput ("cannot open the catalog ...")."""
    from kiln.store.db import Catalog

    Catalog(url).close()


def requests_for(file: Path, document: Any, templates: tuple[ImageTemplate, ...], parameters: dict[str, str], *,
                 validate: bool, boot_timeout_s: float, keep_work: bool) -> list[BuildRequest]:
    out = []
    for i, t in enumerate(templates):
        requires, host = requirements(t.tags, file=str(file))
        out.append(BuildRequest("document", t.name, document=document, file=str(file.absolute()), parameters=parameters,
                                index=i, validate=validate, boot_timeout_s=boot_timeout_s, keep_work=keep_work,
                                timeout_minutes=t.timeout_minutes, requires=requires, host=host,
                                retries=retries(t.tags, file=str(file))))
    return out


def run_queued(config: Config, rq: Any, request: BuildRequest, monitor: Monitor) -> str:
    """Enqueue, follow until the end; returns the run id, or raises as a local build would.

    The run's log is copied into this state home as it is followed (`kiln.cluster.runlog`)."""
    from kiln.cluster.follow import follow, to_event
    from kiln.cluster.runlog import LogCopy

    job_id = rq.enqueue(request)
    monitor.log(f"queued {request.name} as job {job_id}", name="cluster")
    log = LogCopy(config.runs_dir)

    def on_event(e: dict[str, Any]) -> None:
        log(e)
        monitor.emit(to_event(e))

    try:
        try:
            ended = follow(rq.redis, job_id, on_event, config=config)
        except KeyboardInterrupt:  # Ctrl-C of the submitter cancels its build, wherever it runs
            rq.cancel(job_id)
            ended = follow(rq.redis, job_id, on_event, config=config)
    finally:
        log.close()
    assert ended is not None
    if ended.code == 0:
        return ended.run_id
    message = ended.message or f"the build on the worker ended with code {ended.code}"
    error: KilnError
    if ended.code == 130:
        error = Canceled(message)
    elif ended.code == 2:
        error = InvalidInput(message)
    else:
        error = BuildFailed(message)
    raise error
