"""`kiln worker` and `kiln cluster`: builds on many hosts through the `[cluster] queue` (kiln.cluster)."""

from __future__ import annotations

import time

import click

from kiln.cli import App, pass_app
from kiln.cli.common import json_option, print_json, print_table
from kiln.errors import InvalidInput


def _need_queue(app: App) -> None:
    if not app.config.cluster.queue:
        raise InvalidInput("no cluster queue is configured", file=str(app.config.home / "config.toml"),
                           path="cluster.queue", hint='add [cluster] queue = "redis://HOST:PORT/0" to config.toml')


@click.command("worker")
@click.option("--name", default=None, help="This worker's name (default: HOSTNAME-PID); also its host queue's.")
@click.option("--queues", default="", help="Comma-separated queues to serve (default: every queue this host's capabilities serve).")
@click.option("--max-builds", type=click.IntRange(min=1), default=None, help="Stop after this many builds.")
@click.option("--burst", is_flag=True, help="Stop once the queues are empty.")
@click.option("--heartbeat", "heartbeat_s", type=click.FloatRange(min=0.2), default=5.0, show_default=True,
              help="Seconds between heartbeats; 3 missed ones and the worker is lost.")
@click.option("--kill-grace", "kill_grace_s", type=click.FloatRange(min=0), default=60.0, show_default=True,
              help="Seconds a canceled build gets to clean up after SIGTERM, before SIGKILL.")
@pass_app
def worker_cmd(app: App, name: str | None, queues: str, max_builds: int | None, burst: bool, heartbeat_s: float,
               kill_grace_s: float) -> None:
    """Run builds from the cluster queue: one line per run it takes and ends (run id, template, result)."""
    from kiln.cluster.worker import WorkerOptions, default_name, work

    _need_queue(app)
    wanted = tuple(q.strip() for q in queues.split(",") if q.strip())
    work(app.config, WorkerOptions(name or default_name(), wanted, max_builds, burst, heartbeat_s, kill_grace_s))


@click.group("cluster")
def cluster_group() -> None:
    """The build cluster: workers, queues, runs in flight."""


@cluster_group.command("status")
@json_option
@pass_app
def cluster_status(app: App, as_json: bool) -> None:
    """Workers (capabilities, current run, last heartbeat), queue lengths and the runs in flight."""
    from kiln.cluster import state
    from kiln.cluster.submit import engine

    _need_queue(app)
    rq = engine(app.config)
    state.reap_lost(rq.redis, app.config)
    workers, queues, runs = rq.workers(), rq.queues(), rq.in_flight()
    if as_json:
        print_json({"workers": [{"name": w.name, "capabilities": w.capabilities, "queues": list(w.queues),
                                 "currentJob": w.current_job or None, "currentRun": w.current_run or None,
                                 "lastHeartbeat": w.last_heartbeat, "alive": w.alive} for w in workers],
                    "queues": [{"name": q.name, "queued": q.queued, "started": q.started} for q in queues],
                    "runsInFlight": [{"jobId": f.job_id, "runId": f.run_id or None, "template": f.template,
                                      "worker": f.worker, "started": f.started} for f in runs]})
        return
    now = time.time()
    click.echo("workers:")
    print_table(("name", "accel", "arch", "scratch free", "version", "current run", "heartbeat"),
                [(w.name, w.capabilities.get("accel", ""), w.capabilities.get("arch", ""),
                  f"{int(w.capabilities.get('scratch_free', 0)) / 2**30:.1f} GiB", w.capabilities.get("version", ""),
                  w.current_run or w.current_job or "-", f"{now - w.last_heartbeat:.0f}s ago" + ("" if w.alive else " (lost)"))
                 for w in workers], whole=("name", "current run"))
    click.echo("queues:")
    print_table(("queue", "queued", "started"), [(q.name, q.queued, q.started) for q in queues], whole=("queue",))
    click.echo("runs in flight:")
    print_table(("run", "job", "template", "worker", "running"),
                [(f.run_id or "-", f.job_id, f.template, f.worker, f"{now - f.started:.0f}s") for f in runs],
                whole=("run", "job"))


@cluster_group.command("cancel")
@click.argument("run_or_job_id")
@pass_app
def cluster_cancel(app: App, run_or_job_id: str) -> None:
    """Cancel a queued or running build on whatever worker runs it (the run id, or the job id)."""
    from kiln.cluster.submit import engine

    _need_queue(app)
    if not engine(app.config).cancel(run_or_job_id):
        raise InvalidInput(f"no build {run_or_job_id} is queued or running in the cluster",
                           hint="kiln cluster status lists the runs in flight")
    click.echo(f"cancel requested for {run_or_job_id}")


def register(cli: click.Group) -> None:
    cli.add_command(worker_cmd)
    cli.add_command(cluster_group)
