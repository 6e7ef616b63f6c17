"""What the cluster remembers in Redis beyond RQ's own keys, and the "worker lost" rule.

    kiln:workers                 set of worker names
    kiln:worker:<name>           hash: capabilities, queues, current job/run, heartbeat, lost_after
    kiln:inflight                hash: job id -> {run_id, template, worker, started, attempt, attempts, rq_job}
    kiln:run:<run id>            the job id of a run (cancel by run id)
    kiln:events:<job id>         stream: the child's events ("event"), then one "end" {code, message}
    kiln:cancel:<job id>         set when a cancel was asked for; the running worker polls it
    kiln:attempt:<job id>        the engine's job of a build's retry (set once: the claim to retry it)

A worker heartbeats every few seconds; one whose heartbeat is older than the `lost_after` it
declared is lost, and every run in flight on it is lost by whoever notices first (another
worker's heartbeat, `kiln cluster status`, a submitter following the run): `lose()` marks the
run Failed "worker lost" and ends the build's stream or, when the build may be retried
(`[cluster] retries = 1` or the template's `kiln.retries` tag), enqueues it once more.

A retry is a new run (a new run id, made by the child on the next worker) of the same build: the
job id, and so the event stream a submitter follows, the cancel flag and the in-flight entry,
stay the first attempt's. So `kiln runs list` shows both runs, the lost one Failed "worker lost;
retrying (attempt 2 of 2): ...", and the template's lastRunStatus (the API's operation follows
the run id of the events it gets) is the retry's. The pipeline publishes atomically and the
reaper killed the lost build, so a lost run never left half a version behind, and the retry
publishes the one image.
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


def attempt_key(job_id: str) -> str:
    return f"kiln:attempt:{job_id}"


def current_rq_job(r: Redis, job_id: str) -> str:
    """The engine's job running the build `job_id` now: its retry's, once it was retried."""
    return _text(r.get(attempt_key(job_id))) or job_id


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


def set_in_flight(r: Redis, job_id: str, *, run_id: str, template: str, worker: str, started: float,
                  attempt: int = 1, attempts: int = 1, rq_job: str = "") -> None:
    r.hset(INFLIGHT, job_id, json.dumps({"run_id": run_id, "template": template, "worker": worker, "started": started,
                                         "attempt": attempt, "attempts": attempts, "rq_job": rq_job or job_id}))
    if run_id:
        r.set(run_key(run_id), job_id, ex=STREAM_TTL_S)


def clear_in_flight(r: Redis, job_id: str) -> None:
    r.hdel(INFLIGHT, job_id)


def in_flight(r: Redis) -> list[RunInFlight]:
    runs = []
    for k, v in r.hgetall(INFLIGHT).items():
        d = json.loads(v)
        runs.append(RunInFlight(_text(k), d.get("run_id", ""), d.get("template", ""), d.get("worker", ""),
                                float(d.get("started", 0)), int(d.get("attempt", 1)), int(d.get("attempts", 1)),
                                d.get("rq_job", "")))
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
    """Lose every run in flight on a lost worker (`lose`); returns those runs."""
    alive = {w.name for w in workers(r) if w.alive}
    lost = [f for f in in_flight(r) if f.worker not in alive]
    if not lost:
        return []
    from kiln.store.store import Store

    with Store.open(config) as store:
        for f in lost:
            lose(r, store, f, f"{f.worker} stopped heartbeating mid-build")
    return lost


def lose(r: Redis, store: Any, f: RunInFlight, why: str) -> None:
    """A build whose worker is gone: enqueued once more if it may be retried, else failed "worker lost".

    The retry is claimed with one SET NX of `kiln:attempt:<job>`, so of several hosts noticing the
    same loss at once exactly one enqueues it, and a build is retried at most once (attempt 2 of 2
    that is lost in turn is failed)."""
    from dataclasses import asdict

    from kiln.events import Event

    if f.attempt < f.attempts:
        from kiln.cluster.rq_engine import RqEngine

        retry_job = f"{f.job_id}-attempt{f.attempt + 1}"
        if not r.set(attempt_key(f.job_id), retry_job, nx=True, ex=STREAM_TTL_S):
            return  # another host retried it
        note = f"{WORKER_LOST_MESSAGE}; retrying (attempt {f.attempt + 1} of {f.attempts}): {why}"
        if f.run_id:
            mark_run_lost(store, f.run_id, note)
        # A result, not a log line: a submitter's text monitor shows it between the two attempts' steps.
        add_event(r, f.job_id, json.dumps(asdict(Event("result", "cluster", note, ok=False, run_id=f.run_id))))
        clear_in_flight(r, f.job_id)  # before the retry can start and write its own entry
        if RqEngine(r).retry(f, retry_job):
            return
        why = f"{why}; its retry could not be enqueued (the job is gone from the queue)"
    message = f"{WORKER_LOST_MESSAGE}: {why}"
    if f.run_id:
        mark_run_lost(store, f.run_id, message)
    end_stream(r, f.job_id, 1, message, f.run_id)
    clear_in_flight(r, f.job_id)


def mark_run_lost(store: Any, run_id: str, message: str) -> bool:
    """Failed "worker lost", unless the run ended on its own (then what it recorded stands); True
    if this call marked it (of several reapers at once, exactly one does: `Runs.mark_lost`)."""
    return bool(store.runs.mark_lost(run_id, message))
