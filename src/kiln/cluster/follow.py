"""The submitter's side of a queued build: its events from Redis to a monitor, and how it ended.

`kiln build` (and the API's `RqExecutor`) read the run's stream from the start, so a follower
that comes late misses nothing, and hand each event to the same monitor a local build uses: the
user sees the same step lines. While it waits the follower also applies the "worker lost" rule
(`state.reap_lost`), so a build whose worker died ends here within the heartbeat timeout even
when no other worker is up. A build retried after its worker was lost goes on in the same stream
(a log event "worker lost; retrying (attempt 2 of 2): ..." between the attempts), so the follower
keeps following to the retry's end; the end record names the retry's run.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kiln.cluster import state

if TYPE_CHECKING:
    from redis import Redis

    from kiln.config import Config

BLOCK_MS = 1000
REAP_EVERY_S = 2.0


@dataclass(frozen=True)
class Ended:
    code: int  # the child's exit code: 0 ok, 1 build failed, 2 invalid input, 130 canceled
    message: str
    run_id: str


def follow(redis: Redis, job_id: str, on_event: Callable[[dict[str, Any]], None], *, config: Config | None = None,
           stop: Callable[[], bool] = lambda: False) -> Ended | None:
    """Hand every event of `job_id` to `on_event` until its end record (None if `stop()` said so first)."""
    import redis as redis_lib

    from kiln.errors import KilnError

    key = state.events_key(job_id)
    last = "0-0"
    next_reap = time.monotonic() + REAP_EVERY_S
    while not stop():
        try:
            batches: Any = redis.xread({key: last}, block=BLOCK_MS, count=500)  # [(stream, [(id, fields)])]
        except (redis_lib.exceptions.ConnectionError, redis_lib.exceptions.TimeoutError):
            time.sleep(1.0)  # Redis restarting: the stream is persisted, read on where we were
            continue
        for _stream, entries in batches or ():
            for entry_id, fields in entries:
                last = state._text(entry_id)
                f = {state._text(k): state._text(v) for k, v in fields.items()}
                if "end" in f:
                    d = json.loads(f["end"])
                    return Ended(int(d.get("code", 1)), str(d.get("message", "")), str(d.get("run_id", "")))
                try:
                    on_event(json.loads(f.get("event", "")))
                except ValueError:
                    continue
        if config is not None and time.monotonic() >= next_reap:
            next_reap = time.monotonic() + REAP_EVERY_S
            try:
                state.reap_lost(redis, config)
                _end_if_rq_failed(redis, job_id)
            except (redis_lib.exceptions.ConnectionError, redis_lib.exceptions.TimeoutError):
                pass
            except KilnError:  # the catalog unreachable: whoever can reach it fails the lost runs; ask again
                pass
    return None


def _end_if_rq_failed(redis: Redis, job_id: str) -> None:
    """A job RQ itself ended without kiln's end record (the job function failed early): end the stream."""
    from rq.exceptions import NoSuchJobError
    from rq.job import Job, JobStatus

    try:
        job = Job.fetch(state.current_rq_job(redis, job_id), connection=redis)  # the retry's, once retried
    except NoSuchJobError:
        return
    if job.get_status(refresh=False) in (JobStatus.FAILED, JobStatus.STOPPED, JobStatus.CANCELED) \
            and not state.ended(redis, job_id):
        result = job.latest_result()
        why = (result.exc_string or "").strip().splitlines()[-1:] if result is not None else []
        state.end_stream(redis, job_id, 1, f"the job failed on its worker: {why[0] if why else job.get_status()}")


def to_event(data: dict[str, Any]) -> Any:
    """A JSON event (as `JsonMonitor` wrote it) back into a `kiln.events.Event`."""
    from kiln.events import Event

    fields = {k: v for k, v in data.items() if k in Event.__dataclass_fields__}
    return Event(**fields)
