"""What the cluster remembers in Redis beyond RQ's own keys, and the "worker lost" rule.

    kiln:workers                 set of worker names
    kiln:worker:<name>           hash: capabilities, queues, current job/run, heartbeat, lost_after
    kiln:inflight                hash: job id -> {run_id, template, worker, started} while a build runs
    kiln:run:<run id>            the job id of a run (cancel by run id)
    kiln:events:<job id>         stream: the child's events ("event"), then one "end" {code, message}
    kiln:cancel:<job id>         set when a cancel was asked for; the running worker polls it

A worker heartbeats every few seconds; one whose heartbeat is older than the `lost_after` it
declared is lost, and every run in flight on it is marked Failed "worker lost" by whoever notices
first (another worker's heartbeat, `kiln cluster status`, a submitter following the run). The
pipeline publishes atomically, so a lost run never left half a version behind.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

from kiln.cluster.engine import RunInFlight, WorkerInfo

if TYPE_CHECKING:
    from redis import Redis

    from kiln.config import Config

WORKERS = "kiln:workers"
INFLIGHT = "kiln:inflight"
STREAM_MAXLEN = 20000  # events kept per run (a build makes a few hundred; verbose logs more)
STREAM_TTL_S = 7 * 24 * 3600  # an ended run's events stay this long for late followers
WORKER_LOST_MESSAGE = "worker lost"


def worker_key(name: str) -> str:
    return f"kiln:worker:{name}"


def events_key(job_id: str) -> str:
    return f"kiln:events:{job_id}"


def cancel_key(job_id: str) -> str:
    return f"kiln:cancel:{job_id}"


def run_key(run_id: str) -> str:
    return f"kiln:run:{run_id}"


def _text(v: bytes | str | None) -> str:
    return v.decode() if isinstance(v, bytes) else (v or "")


# ---------------------------------------------------------------------- workers


def register_worker(r: Redis, name: str, caps: dict[str, Any], queues: list[str], lost_after_s: float) -> None:
    r.sadd(WORKERS, name)
    r.hset(worker_key(name), mapping={"capabilities": json.dumps(caps), "queues": json.dumps(queues),
                                      "current_job": "", "current_run": "", "heartbeat": repr(time.time()),
                                      "lost_after": repr(lost_after_s), "started": repr(time.time())})


def heartbeat(r: Redis, name: str, **fields: str) -> None:
    mapping: dict[str | bytes, str | bytes] = {"heartbeat": repr(time.time())}
    mapping.update(fields)
    r.hset(worker_key(name), mapping=mapping)  # type: ignore[arg-type]  # redis-py's mapping type is invariant


def unregister_worker(r: Redis, name: str) -> None:
    r.srem(WORKERS, name)
    r.delete(worker_key(name))


def workers(r: Redis) -> list[WorkerInfo]:
    found = []
    now = time.time()
    for raw in sorted(r.smembers(WORKERS)):
        name = _text(raw)
        h = {_text(k): _text(v) for k, v in r.hgetall(worker_key(name)).items()}
        if not h:
            continue
        beat, lost_after = float(h.get("heartbeat") or 0), float(h.get("lost_after") or 30)
        found.append(WorkerInfo(name, json.loads(h.get("capabilities") or "{}"), tuple(json.loads(h.get("queues") or "[]")),
                                h.get("current_job", ""), h.get("current_run", ""), beat, lost_after,
                                alive=now - beat <= lost_after))
    return found


# ---------------------------------------------------------------------- runs in flight


def set_in_flight(r: Redis, job_id: str, *, run_id: str, template: str, worker: str, started: float) -> None:
    r.hset(INFLIGHT, job_id, json.dumps({"run_id": run_id, "template": template, "worker": worker, "started": started}))
    if run_id:
        r.set(run_key(run_id), job_id, ex=STREAM_TTL_S)


def clear_in_flight(r: Redis, job_id: str) -> None:
    r.hdel(INFLIGHT, job_id)


def in_flight(r: Redis) -> list[RunInFlight]:
    runs = []
    for k, v in r.hgetall(INFLIGHT).items():
        d = json.loads(v)
        runs.append(RunInFlight(_text(k), d.get("run_id", ""), d.get("template", ""), d.get("worker", ""),
                                float(d.get("started", 0))))
    return sorted(runs, key=lambda x: x.started)


# ---------------------------------------------------------------------- event streams


def add_event(r: Redis, job_id: str, line: str) -> None:
    r.xadd(events_key(job_id), {"event": line}, maxlen=STREAM_MAXLEN, approximate=True)


def end_stream(r: Redis, job_id: str, code: int, message: str = "", run_id: str = "") -> None:
    """The last record of a run's stream: followers stop here (written once: a second end is ignored)."""
    if r.set(f"kiln:ended:{job_id}", "1", nx=True, ex=STREAM_TTL_S):
        key = events_key(job_id)
        r.xadd(key, {"end": json.dumps({"code": code, "message": message, "run_id": run_id})})
        r.expire(key, STREAM_TTL_S)


def ended(r: Redis, job_id: str) -> bool:
    return bool(r.exists(f"kiln:ended:{job_id}"))


# ---------------------------------------------------------------------- lost workers


def reap_lost(r: Redis, config: Config) -> list[RunInFlight]:
    """Mark every run in flight on a lost worker Failed "worker lost"; returns those runs."""
    alive = {w.name for w in workers(r) if w.alive}
    lost = [f for f in in_flight(r) if f.worker not in alive]
    if not lost:
        return []
    from kiln.store.store import Store

    with Store.open(config) as store:
        for f in lost:
            message = f"{WORKER_LOST_MESSAGE}: {f.worker} stopped heartbeating mid-build"
            if f.run_id:
                mark_run_lost(store, f.run_id, message)
            end_stream(r, f.job_id, 1, message, f.run_id)
            clear_in_flight(r, f.job_id)
    return lost


def mark_run_lost(store: Any, run_id: str, message: str) -> bool:
    """Failed "worker lost", unless the run ended on its own (then what it recorded stands); True
    if this call marked it (of several reapers at once, exactly one does: `Runs.mark_lost`)."""
    return bool(store.runs.mark_lost(run_id, message))
