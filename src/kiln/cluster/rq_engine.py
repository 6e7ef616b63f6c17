"""`JobEngine` on RQ: one RQ queue per capability set (see `routing`), kiln's own state beside it.

A job's timeout is the template's `buildTimeoutInMinutes` plus the grace a canceled build gets
to clean up (the pipeline stops itself at its deadline first; RQ's timeout is the backstop on the
worker). Jobs have no RQ `Retry`: RQ notices an abandoned job only when its started-registry entry
expires (the job timeout, hours), and would rerun every failure. kiln decides instead, within
the heartbeat timeout: a build whose worker was lost is enqueued once more only when
`[cluster] retries = 1` or its template's `kiln.retries` tag says so (`state.lose`, `retry`),
as a new job `<job id>-attempt2` of the same build; otherwise it is failed "worker lost".
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import TYPE_CHECKING

from kiln.cluster import state
from kiln.cluster.engine import BuildRequest, QueueInfo, RunInFlight, WorkerInfo
from kiln.cluster.routing import HOST_PREFIX, QUEUE_PREFIX, queue_for

if TYPE_CHECKING:
    from redis import Redis

JOB_FUNCTION = "kiln.cluster.runner.run_build"
KILL_GRACE_S = 60  # SIGTERM, then SIGKILL this much later (as the local executor)
RESULT_TTL_S = 24 * 3600
CANCEL_TTL_S = 7 * 24 * 3600


class RqEngine:
    def __init__(self, redis: Redis, retries: int = 0) -> None:
        self.redis = redis
        self.retries = retries  # a request's default when its template did not say ([cluster] retries)

    def enqueue(self, request: BuildRequest, job_id: str | None = None) -> str:
        """Queue a build; with `job_id`, once only: a job of that id already in Redis (queued, running
        or ended) is left as it is, so a restarted server that submits its runs again follows them."""
        from rq import Queue
        from rq.job import Job

        if job_id is not None and Job.exists(job_id, connection=self.redis):
            return job_id
        if request.retries is None:
            request = replace(request, retries=self.retries)
        q = Queue(queue_for(request.requires, request.host), connection=self.redis)
        job = q.enqueue(JOB_FUNCTION, request.to_json(), job_timeout=request.timeout_minutes * 60 + KILL_GRACE_S + 60,
                        result_ttl=RESULT_TTL_S, failure_ttl=RESULT_TTL_S, description=f"build {request.name}",
                        meta={"kiln.template": request.name, "kiln.enqueued": time.time()}, job_id=job_id)
        return str(job.id)

    def retry(self, lost: RunInFlight, job_id: str) -> bool:
        """Enqueue the build of `lost` once more, as job `job_id` (False: its job is gone from Redis)."""
        from rq.exceptions import NoSuchJobError
        from rq.job import Job

        try:
            job = Job.fetch(lost.rq_job or lost.job_id, connection=self.redis)
        except NoSuchJobError:
            return False
        request = BuildRequest.from_json(job.args[0])
        self.enqueue(replace(request, attempt=lost.attempt + 1, build=lost.job_id), job_id=job_id)
        return True

    def job_id_of(self, job_or_run_id: str) -> str:
        job_id = self.redis.get(state.run_key(job_or_run_id))
        return state._text(job_id) if job_id else job_or_run_id

    def cancel(self, job_or_run_id: str) -> bool:
        from rq.exceptions import InvalidJobOperation, NoSuchJobError
        from rq.job import Job, JobStatus

        job_id = self.job_id_of(job_or_run_id)
        try:
            job = Job.fetch(state.current_rq_job(self.redis, job_id), connection=self.redis)
        except NoSuchJobError:
            return False
        status = job.get_status(refresh=True)
        if status in (JobStatus.QUEUED, JobStatus.DEFERRED, JobStatus.SCHEDULED):
            try:
                job.cancel()
            except InvalidJobOperation:  # a worker took it meanwhile: ask that worker
                pass
            else:
                state.end_stream(self.redis, job_id, 130, "canceled while queued")
                return True
        if state.ended(self.redis, job_id) or job.get_status(refresh=True) not in (JobStatus.STARTED, JobStatus.QUEUED):
            return False
        self.redis.set(state.cancel_key(job_id), repr(time.time()), ex=CANCEL_TTL_S)
        return True

    def workers(self) -> list[WorkerInfo]:
        return state.workers(self.redis)

    def queues(self) -> list[QueueInfo]:
        from rq import Queue
        from rq.registry import StartedJobRegistry

        found = []
        for q in Queue.all(connection=self.redis):
            if q.name.startswith((QUEUE_PREFIX, HOST_PREFIX)):
                found.append(QueueInfo(q.name, q.count, StartedJobRegistry(queue=q).count))
        return sorted(found, key=lambda i: i.name)

    def in_flight(self) -> list[RunInFlight]:
        return state.in_flight(self.redis)
