"""`RqExecutor`: the API server's `Executor` when a cluster queue is configured.

`kiln serve` then enqueues each run of a template resource for the workers instead of starting
a child here. A thread per job follows the run's event stream and hands every event and the
child's exit code to the server's callbacks, exactly as `ChildProcessExecutor` does with a local
child's stdout, so the API's run state, log stream and cancel work unchanged wherever the build
runs. The child on the worker reads the template from the shared catalog by its id.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from kiln.api.executor import Job, OnDone, OnEvent
from kiln.cluster.engine import BuildRequest
from kiln.cluster.follow import follow
from kiln.cluster.routing import requirements, retries

if TYPE_CHECKING:
    from kiln.config import Config


class RqExecutor:
    def __init__(self, config: Config, on_event: OnEvent, on_done: OnDone) -> None:
        from kiln.cluster.connect import redis_from_url
        from kiln.cluster.rq_engine import RqEngine

        self.config = config
        self.engine = RqEngine(redis_from_url(config.cluster.queue), retries=config.cluster.retries)
        self.on_event, self.on_done = on_event, on_done
        self._jobs: dict[str, tuple[Job, str, threading.Thread]] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()

    def submit(self, job: Job) -> None:
        request = self._request(job)
        job_id = self.engine.enqueue(request, job_id=f"kiln-op-{job.op_id}")  # once per operation
        t = threading.Thread(target=self._follow, args=(job, job_id), daemon=True, name=f"kiln-follow-{job_id[:8]}")
        with self._lock:
            self._jobs[job.op_id] = (job, job_id, t)
        t.start()

    def _request(self, job: Job) -> BuildRequest:
        from kiln import ids
        from kiln.api.resources import Resources
        from kiln.store.store import Store

        rid = ids.parse(job.template_id, ids.IMAGE_TEMPLATE)
        with Store.open(self.config) as store:
            resource = Resources(store.catalog).get(rid)
        body: dict[str, Any] = resource.body if resource is not None else {}
        tags = {str(k): str(v) for k, v in (body.get("tags") or {}).items()}
        requires, host = requirements(tags)
        minutes = int((body.get("properties") or {}).get("buildTimeoutInMinutes") or 0) or 240
        return BuildRequest("api", rid.name, template_id=str(rid), timeout_minutes=minutes, requires=requires, host=host,
                            retries=retries(tags))

    def _follow(self, job: Job, job_id: str) -> None:
        ended = follow(self.engine.redis, job_id, lambda e: self.on_event(job, e), config=self.config,
                       stop=self._stopping.is_set)
        with self._lock:
            self._jobs.pop(job.op_id, None)
        if ended is not None:
            if ended.code and ended.message:
                job.stderr_tail.append(ended.message)
            self.on_done(job, ended.code)

    def cancel(self, op_id: str) -> bool:
        with self._lock:
            entry = self._jobs.get(op_id)
        if entry is None:
            return False
        job, job_id, _ = entry
        job.canceled = True
        return bool(self.engine.cancel(job_id))

    def shutdown(self, grace_s: float = 30.0) -> list[Job]:
        """Stop following. The builds go on on their workers: a server started again submits its
        runs again, and each is followed where it is (RqEngine.enqueue: one job per operation)."""
        with self._lock:
            entries = list(self._jobs.values())
        self._stopping.set()
        for _, _, t in entries:
            t.join(grace_s)
        return [job for job, _, _ in entries]
