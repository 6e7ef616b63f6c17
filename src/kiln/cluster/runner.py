"""The job a worker runs: one build in `python -m kiln.cluster.child`, its events to Redis.

The worker runs jobs in its own process (an RQ `SimpleWorker`), and the child is the leader of a
process group of its own, as the API's local executor starts it. A `kiln.reaper.Reaper` is told
that group: if the worker dies in any way, kill -9 included, the reaper kills the build at once,
so a lost worker never goes on to publish; its run is then failed "worker lost" by whoever sees
the heartbeat stop (`kiln.cluster.state.reap_lost`). A cancel request (a Redis key, polled here)
and RQ's job timeout both end in the same stop: SIGTERM to the group (the pipeline records the
run Canceled or timed out and removes its work directory), SIGKILL after a grace period.

The catalog unreachable mid-build (a PostgreSQL `[cluster] catalog` stopped or restarted): the
child's connection is gone, so its next catalog write fails and the build stops there, before
it could publish (publishing is one catalog transaction after the blob is complete); the child
says so naming the catalog (`kiln.cluster.child`) and removes its work directory. The worker
then waits for the catalog to answer again (`CATALOG_PATIENCE_S`, saying so in the run's
events), records the run Failed with that message if the child could not, ends the stream,
and takes its next job. A run is not resumed: its build process lost its transaction state
with the connection, and rebuilding behind the user's back is what `kiln.retries` is for.
"""

from __future__ import annotations

import collections
import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any

from kiln.cluster import state
from kiln.cluster.engine import BuildRequest
from kiln.reaper import Reaper
from kiln.run import spawn

if TYPE_CHECKING:
    from redis import Redis

    from kiln.config import Config
    from kiln.store.store import Store

POLL_S = 0.5
REDIS_PATIENCE_S = 600.0  # how long a build waits for Redis to come back before its worker gives it up
CATALOG_PATIENCE_S = 3600.0  # how long an ended build waits for the catalog to record how it ended
KILL_GRACE_S = 60.0


@dataclass
class WorkerContext:
    """What the job function needs from the worker running it (set by `kiln.cluster.worker`)."""

    name: str
    config: Config
    redis: Redis
    out: IO[str]
    kill_grace_s: float = KILL_GRACE_S
    current_job: str = ""
    current_run: str = ""


CURRENT: WorkerContext | None = None


def child_env() -> dict[str, str]:
    """The KILN_* settings of this host (scratch, QEMU, sandbox limits) reach the build."""
    return {k: v for k, v in os.environ.items() if k.startswith("KILN_")}


def run_build(payload: dict[str, Any]) -> dict[str, Any]:
    from rq import get_current_job

    ctx = CURRENT
    assert ctx is not None, "run_build runs inside `kiln worker`"
    job = get_current_job()
    assert job is not None
    request = BuildRequest.from_json(payload)
    return Build(ctx, request.build or str(job.id), request, rq_job=str(job.id)).run()


class Build:
    def __init__(self, ctx: WorkerContext, job_id: str, request: BuildRequest, rq_job: str = "") -> None:
        """`job_id`: the build's (its first attempt's job id: the stream's key); `rq_job`: this attempt's."""
        self.ctx, self.job_id, self.request = ctx, job_id, request
        self.rq_job = rq_job or job_id
        self.attempts = 1 + (request.retries or 0)
        self.r = ctx.redis
        self.run_id = ""
        self.started = time.time()
        self.stop = threading.Event()
        self.canceled = False
        self.errors: collections.deque[str] = collections.deque(maxlen=40)

    def run(self) -> dict[str, Any]:
        ctx, r = self.ctx, self.r
        if r.exists(state.cancel_key(self.job_id)):
            return self._end(130, "canceled before it started")
        work = ctx.config.work_dir
        work.mkdir(parents=True, exist_ok=True)
        job_file = work / f"job-{self.job_id}.json"
        job_file.write_text(json.dumps(self.request.to_json()))
        self._in_flight("")
        ctx.current_job = self.job_id
        state.heartbeat(r, ctx.name, current_job=self.job_id, current_run="")
        proc = spawn([sys.executable, "-m", "kiln.cluster.child", str(ctx.config.home), "--job", str(job_file)],
                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, session=True, env=child_env(), cwd="/")
        reaper = Reaper([job_file], name="kiln-worker-reaper")
        reaper.kill_group(proc.pid)
        watchdog = threading.Thread(target=self._watch, args=(proc.pid,), daemon=True, name="kiln-cancel-watch")
        errors = threading.Thread(target=self._tail, args=(proc.popen.stderr,), daemon=True)
        watchdog.start()
        errors.start()
        code: int | None = None
        try:
            assert proc.popen.stdout is not None
            for line in proc.popen.stdout:
                self._event(line)
            code = proc.popen.wait()
        finally:  # also when RQ's job timeout interrupts us: the build goes with the job
            self.stop.set()
            if code is None:
                _stop_group(proc.pid, ctx.kill_grace_s, proc.popen)
            _signal_group(proc.pid, signal.SIGKILL)  # whatever the leader left in its group
            errors.join(5)
            _sweep_work(ctx.config, self.run_id)
            reaper.dismiss()
            job_file.unlink(missing_ok=True)
            ctx.current_job = ctx.current_run = ""
            state.heartbeat(r, ctx.name, current_job="", current_run="")
            if code is None:
                self._end(1, "the worker's job timeout ended the build")
        return self._end(130 if self.canceled and code else code, self._error_message())

    # ------------------------------------------------------------------ child output

    def _event(self, line: str) -> None:
        try:
            event = json.loads(line)
        except ValueError:
            return
        run_id = str(event.get("run_id") or "")
        if run_id and not self.run_id:
            self.run_id = self.ctx.current_run = run_id
            _retrying(lambda: self._in_flight(run_id))
            _retrying(lambda: state.heartbeat(self.r, self.ctx.name, current_run=run_id))
        _retrying(lambda: state.add_event(self.r, self.job_id, line.rstrip("\n")))

    def _in_flight(self, run_id: str) -> None:
        state.set_in_flight(self.r, self.job_id, run_id=run_id, template=self.request.name, worker=self.ctx.name,
                            started=self.started, attempt=self.request.attempt, attempts=self.attempts,
                            rq_job=self.rq_job)

    def _tail(self, stream: IO[str] | None) -> None:
        for line in stream or ():
            self.errors.append(line.rstrip("\n"))

    def _error_message(self) -> str:
        for line in reversed(self.errors):
            try:
                data = json.loads(line)
            except ValueError:
                continue
            if isinstance(data, dict) and data.get("kind") == "error":
                return str(data.get("message", ""))
        return "\n".join(list(self.errors)[-5:])

    # ------------------------------------------------------------------ cancel

    def _watch(self, pgid: int) -> None:
        import redis

        while not self.stop.wait(POLL_S):
            try:
                asked = self.r.exists(state.cancel_key(self.job_id))
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
                continue  # Redis restarting: ask again
            if asked:
                self.canceled = True
                _signal_group(pgid, signal.SIGTERM)
                if not self.stop.wait(self.ctx.kill_grace_s):
                    _signal_group(pgid, signal.SIGKILL)
                return

    # ------------------------------------------------------------------ the end

    def _end(self, code: int, message: str) -> dict[str, Any]:
        result = self._result(code, message)
        _retrying(lambda: state.end_stream(self.r, self.job_id, code, message, self.run_id))
        _retrying(lambda: state.clear_in_flight(self.r, self.job_id))
        attempt = f" (attempt {self.request.attempt} of {self.attempts})" if self.request.attempt > 1 else ""
        print(f"run {self.run_id or '-'} {self.request.name} {result}{attempt}", file=self.ctx.out, flush=True)
        return {"run_id": self.run_id, "code": code, "result": result, "message": message}

    def _result(self, code: int, message: str) -> str:
        """The run's state as the catalog recorded it (what `kiln runs show` will say). A failed child
        that could not record its end (the catalog was unreachable) has it recorded here, once the
        catalog answers again."""
        if not self.run_id:
            return "Canceled" if code == 130 else "Failed"
        from kiln.store.runs import FINAL_STATES, REAPED_MESSAGE

        with self._store() as store:
            run = store.runs.get(self.run_id)
            if code and (run.run_state not in FINAL_STATES or run.message == REAPED_MESSAGE):
                final = "Canceled" if code == 130 else "Failed"
                store.runs.finish(self.run_id, final, message or f"the build ended with code {code}")
                run = store.runs.get(self.run_id)
            return str(run.run_state)

    def _store(self) -> Store:
        """The catalog, waited for while it is unreachable (CATALOG_PATIENCE_S), saying so once."""
        from kiln.errors import InvalidInput
        from kiln.store.store import Store

        deadline = time.monotonic() + CATALOG_PATIENCE_S
        said = False
        while True:
            try:
                return Store.open(self.ctx.config)
            except InvalidInput as e:  # kiln.store.db: "cannot open the catalog ..."
                if time.monotonic() > deadline:
                    raise
                if not said:
                    said = True
                    note = f"{e.message}; the run's end is recorded when it answers again"
                    print(f"worker {self.ctx.name}: {note}", file=self.ctx.out, flush=True)
                    line = json.dumps({"kind": "log", "name": "cluster", "message": note, "run_id": self.run_id})
                    _retrying(functools.partial(state.add_event, self.r, self.job_id, line))
                time.sleep(2.0)


def _sweep_work(config: Config, run_id: str) -> None:
    """The build ended: its work directory goes, unless kept on purpose (the pipeline removes it
    itself; this is for a child that could not, e.g. one killed at the end of the grace period)."""
    from kiln.store import worklock

    work = config.work_dir / run_id
    if not run_id or not work.is_dir() or (work / worklock.KEEP_MARKER).exists():
        return
    fd = worklock.try_take(work)
    if fd is None and (work / worklock.LOCK_NAME).exists():
        return  # someone still holds it: not ours to remove
    try:
        shutil.rmtree(work, ignore_errors=True)
    finally:
        if fd is not None:
            os.close(fd)


def _retrying(call: Callable[[], object], patience_s: float = REDIS_PATIENCE_S) -> None:
    """`call()`, again while Redis is unreachable (a restart must not end the builds running)."""
    import redis

    deadline = time.monotonic() + patience_s
    while True:
        try:
            call()
            return
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def _stop_group(pgid: int, grace_s: float, popen: subprocess.Popen[str]) -> None:
    _signal_group(pgid, signal.SIGTERM)
    try:
        popen.wait(grace_s)
    except subprocess.TimeoutExpired:
        _signal_group(pgid, signal.SIGKILL)
        popen.wait()


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass
