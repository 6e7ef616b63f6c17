"""`kiln worker`: takes builds from the cluster queue and runs them on this host.

An RQ `SimpleWorker`: RQ's forking worker would put each job in a work horse that calls
setsid(), and a horse outlives a worker killed with -9, so a "lost" worker would go on building
and publish. Here the job runs in the worker process itself and the build is already a process
group of its own with a reaper watching the worker (`kiln.cluster.runner`): cancel, timeout and
worker death all stop the same group. A heartbeat thread writes the worker's hash every
`heartbeat_s` and fails the runs of workers that stopped beating (`state.reap_lost`).

On start a worker reclaims its scratch space: the work directories of builds that died with a
previous worker on this state home (their lock is free), and loses that worker's runs
(`state.lose`: failed "worker lost", or retried once when the build may be).
"""

from __future__ import annotations

import os
import shutil
import sys
import threading
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING

from kiln.cluster import runner, state
from kiln.cluster.connect import redis_from_url
from kiln.cluster.routing import capabilities, queues_for
from kiln.store import worklock
from kiln.store.worklock import KEEP_MARKER

if TYPE_CHECKING:
    from redis import Redis

    from kiln.config import Config

HEARTBEAT_S = 5.0
LOST_AFTER_BEATS = 3  # a worker that missed this many heartbeats is lost


@dataclass(frozen=True)
class WorkerOptions:
    name: str
    queues: tuple[str, ...] = ()  # () = every queue this host's capabilities serve
    max_builds: int | None = None
    burst: bool = False  # stop when the queues are empty (tests, batch hosts)
    heartbeat_s: float = HEARTBEAT_S
    kill_grace_s: float = runner.KILL_GRACE_S


def default_name() -> str:
    return f"{os.uname().nodename}-{os.getpid()}"


def reclaim_scratch(config: Config) -> list[str]:
    """Remove the work directories whose build is dead (not kept on purpose); returns them."""
    removed = []
    for work, fd in worklock.dead_work_dirs(config.work_dir):
        try:  # holding the dead build's lock, as gc does
            if not (work / KEEP_MARKER).exists():
                shutil.rmtree(work, ignore_errors=True)
                removed.append(str(work))
        finally:
            os.close(fd)
    for stale in config.work_dir.glob("job-*.json") if config.work_dir.is_dir() else ():
        stale.unlink(missing_ok=True)
    return removed


class Heartbeat(threading.Thread):
    def __init__(self, redis: Redis, name: str, config: Config, every_s: float) -> None:
        super().__init__(name="kiln-heartbeat", daemon=True)
        self.redis, self.worker, self.config, self.every_s = redis, name, config, every_s
        self.stopping = threading.Event()

    def run(self) -> None:
        import redis

        while not self.stopping.wait(self.every_s):
            try:
                state.heartbeat(self.redis, self.worker)
                state.reap_lost(self.redis, self.config)
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
                continue  # Redis restarting: beat again when it is back
            except Exception as e:  # noqa: BLE001 - a daemon thread: say it, keep beating
                print(f"kiln worker {self.worker}: heartbeat: {e!r}", file=sys.stderr, flush=True)


def work(config: Config, options: WorkerOptions, out: IO[str] = sys.stdout) -> int:
    """Run builds until stopped (or `max_builds` done, or the queues are empty with `burst`)."""
    from rq import SimpleWorker

    url = config.cluster.queue
    conn = redis_from_url(url)
    name = options.name
    caps = capabilities(config)
    queues = list(options.queues) or queues_for(caps, name)
    lost_after = options.heartbeat_s * LOST_AFTER_BEATS
    # A worker of this name that was running builds died: its runs are lost, its scratch is ours.
    for f in state.in_flight(conn):
        if f.worker == name:  # failed "worker lost", or enqueued once more when it may be retried
            from kiln.store.store import Store

            with Store.open(config) as store:
                state.lose(conn, store, f, f"{name} restarted mid-build")
    reclaimed = reclaim_scratch(config)
    state.register_worker(conn, name, caps, queues, lost_after)
    print(f"worker {name}: {caps['accel']} {caps['arch']}, queues {', '.join(queues)}"
          + (f"; reclaimed {len(reclaimed)} work dir(s)" if reclaimed else ""), file=out, flush=True)
    runner.CURRENT = runner.WorkerContext(name, config, conn, out, kill_grace_s=options.kill_grace_s)
    beat = Heartbeat(conn, name, config, options.heartbeat_s)
    beat.start()
    rq_worker = SimpleWorker(queues, connection=conn, name=f"kiln-{name}-{os.getpid()}")  # RQ keeps a killed worker's name a while
    try:
        rq_worker.work(burst=options.burst, max_jobs=options.max_builds, logging_level="WARNING",
                       with_scheduler=False)
    finally:
        beat.stopping.set()
        runner.CURRENT = None
        try:
            state.unregister_worker(conn, name)
        except Exception:  # noqa: BLE001 - Redis gone at exit: its hash just ages out as lost
            pass
    return 0
