"""Where the server's builds run: a queue and a pool of workers, each build in a child process.

`Executor` is the small interface the API needs (submit, cancel, shutdown); `ChildProcessExecutor`
is the in-process implementation: `workers` threads (default 1: one build at a time) take jobs in
order and run each as `python -m kiln.api.child` in a process group of its own. Canceling signals
that group (SIGTERM, SIGKILL after a grace period), so the build and every program it started
end and the host is left clean. What a child reports (its events on stdout, its exit) goes to
the callbacks the server gives; the executor itself keeps no state a restart would need.
"""

from __future__ import annotations

import collections
import json
import os
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol

from kiln.run import spawn

KILL_AFTER_S = 60.0  # SIGTERM first (the pipeline cleans up), then SIGKILL


@dataclass
class Job:
    op_id: str
    template_id: str
    canceled: bool = False
    pid: int | None = None
    run_id: str = ""  # once the child's first event names it
    stderr_tail: collections.deque[str] = field(default_factory=lambda: collections.deque(maxlen=40))


class Executor(Protocol):
    def submit(self, job: Job) -> None: ...
    def cancel(self, op_id: str) -> bool: ...
    def shutdown(self) -> list[Job]: ...


OnEvent = Callable[[Job, dict[str, Any]], None]
OnDone = Callable[[Job, int], None]


class ChildProcessExecutor:
    def __init__(self, home: Path, on_event: OnEvent, on_done: OnDone, workers: int = 1,
                 child_args: tuple[str, ...] = ()) -> None:
        self.home = home
        self.child_args = child_args  # kiln.api.child's options (--no-validate)
        self.on_event = on_event
        self.on_done = on_done
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        self._stopping = False
        self._threads = [threading.Thread(target=self._work, name=f"kiln-build-{i}", daemon=True) for i in range(workers)]
        for t in self._threads:
            t.start()

    def submit(self, job: Job) -> None:
        with self._lock:
            self._jobs[job.op_id] = job
        self._queue.put(job)

    def cancel(self, op_id: str) -> bool:
        """Cancel a queued or running job; False if it is not (or no longer) here."""
        with self._lock:
            job = self._jobs.get(op_id)
            if job is None:
                return False
            job.canceled = True
            pid = job.pid
            if pid is None:  # still queued: it ends now, and its worker will skip it
                del self._jobs[op_id]
        if pid is None:
            self.on_done(job, -signal.SIGTERM)
        else:
            _signal_group(pid, signal.SIGTERM)
            timer = threading.Timer(KILL_AFTER_S, self._kill_if_running, (job,))
            timer.daemon = True  # a stopping server must not wait out the grace period of a build that ended
            timer.start()
        return True

    def _kill_if_running(self, job: Job) -> None:
        with self._lock:  # only while it runs: once it ended its pid may be another process's
            if self._jobs.get(job.op_id) is job and job.pid is not None:
                _signal_group(job.pid, signal.SIGKILL)

    def shutdown(self, grace_s: float = 30.0) -> list[Job]:
        """Stop every build (SIGTERM, then SIGKILL after `grace_s`); returns the jobs that were here."""
        with self._lock:
            self._stopping = True
            jobs = list(self._jobs.values())
        for job in jobs:
            job.canceled = True
            if job.pid is not None:
                _signal_group(job.pid, signal.SIGTERM)
        for _ in self._threads:
            self._queue.put(None)
        for t in self._threads:
            t.join(grace_s)
        for job in jobs:
            if job.pid is not None:
                _signal_group(job.pid, signal.SIGKILL)
        return jobs

    # ------------------------------------------------------------------ workers

    def _work(self) -> None:
        while (job := self._queue.get()) is not None:
            try:
                self._run(job)
            finally:
                with self._lock:
                    self._jobs.pop(job.op_id, None)

    def _run(self, job: Job) -> None:
        with self._lock:
            if job.canceled and self._jobs.get(job.op_id) is not job:
                return  # canceled while queued: ended already
            if job.canceled or self._stopping:
                start = False
            else:
                start = True
                proc = spawn([sys.executable, "-m", "kiln.api.child", str(self.home), job.template_id,
                              "--parent", str(os.getpid()), *self.child_args],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, session=True)
                job.pid = proc.pid
        if not start:
            self.on_done(job, -signal.SIGTERM)
            return
        errors = threading.Thread(target=_tail, args=(proc.stderr, job.stderr_tail), daemon=True)
        errors.start()
        assert proc.stdout is not None
        for line in proc.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            self.on_event(job, event)
        code = proc.wait()
        assert code is not None  # wait() without a timeout returns only once the child has exited
        errors.join(5)
        # The group's leader is gone; anything it left behind in its group goes with it.
        _signal_group(proc.pid, signal.SIGKILL)
        self.on_done(job, code)


def _tail(stream: IO[str], into: collections.deque[str]) -> None:
    for line in stream:
        into.append(line.rstrip("\n"))


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass
