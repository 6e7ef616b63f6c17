"""`kiln build` and `kiln runs`: run a template's pipeline and look at runs."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from kiln.cli import App, pass_app
from kiln.cli.common import make_monitor, open_store, print_json, print_table
from kiln.cli.validate_cmds import parse_parameters

if TYPE_CHECKING:
    from kiln.store.runs import Run


@click.command("build")
@click.argument("template", type=click.Path(path_type=Path))
@click.option("--parameters", "-p", multiple=True, help="ARM parameter NAME=VALUE or @params.json (repeatable).")
@click.option("--no-validate", is_flag=True, help="Skip the boot test (quick iteration; the image is marked unverified).")
@click.option("--boot-timeout", type=float, default=300.0, show_default=True, help="Seconds to wait for the guest to boot.")
@click.option("--keep-work", is_flag=True, help="Keep the run's work directory, even on success.")
@click.option("--json", "as_json", is_flag=True, help="Print the run and its outputs as JSON.")
@click.option("--local", is_flag=True, help="Build on this host even when a cluster queue is configured.")
@pass_app
def build_cmd(app: App, template: Path, parameters: tuple[str, ...], no_validate: bool, boot_timeout: float,
              keep_work: bool, as_json: bool, local: bool) -> None:
    """Build TEMPLATE: source, customize, generalize, assemble, boot-test, distribute."""
    from kiln.pipeline.build import build
    from kiln.pipeline.context import BuildOptions
    from kiln.template.load import load_template

    params = parse_parameters(parameters)
    templates = load_template(template, params, config=app.config)
    options = BuildOptions(validate=not no_validate, boot_timeout_s=boot_timeout, keep_work=keep_work)
    monitor = make_monitor(app, json_stream=sys.stdout)  # kiln build streams its JSON events on stdout (always has)
    if app.config.cluster.queue and not local:  # enqueue for the workers (kiln.cluster), follow, same output
        from kiln.cluster.jobfiles import leased, pack
        from kiln.cluster.runlog import copy_path
        from kiln.cluster.submit import engine, requests_for, run_queued
        from kiln.jsonfile import read_json

        requests = requests_for(template, read_json(template), templates, params, validate=not no_validate,
                                boot_timeout_s=boot_timeout, keep_work=keep_work)  # a bad kiln tag: exit 2 here
        rq = engine(app.config)  # unreachable: exit 2 before anything was queued or written
        files = pack(app.config, templates)  # the template's local files, for workers on other hosts
        with leased(app.config, files):
            for request in requests:
                run_id = run_queued(app.config, rq, dataclasses.replace(request, files=files), monitor)
                with open_store(app) as store:
                    print_run(store.runs.get(run_id), as_json, log_copy=copy_path(app.config.runs_dir, run_id))
        return
    with open_store(app) as store:
        for t in templates:
            ctx = build(t, config=app.config, store=store, monitor=monitor, options=options)
            run = store.runs.get(ctx.run_id)
            print_run(run, as_json)


def print_run(run: Run, as_json: bool, log_copy: Path | None = None) -> None:
    """`log_copy`: the submitter's copy of the log of a run built on a cluster's worker."""
    data = run.to_json()
    if log_copy is not None and log_copy.exists():
        data["kiln"] = {**data.get("kiln", {}), "logCopy": str(log_copy)}
    if as_json:
        print_json(data)
        return
    status = data["lastRunStatus"]
    click.echo(f"run {data['runId']} of {data['templateId']}: {status['runState']}"
               + (f" — {status['message']}" if status.get("message") else ""))
    print_table(("runOutputName", "provisioningState", "artifactId", "artifactUri"),
                [(o["name"], o["properties"]["provisioningState"], o["properties"].get("artifactId") or "",
                  o["properties"].get("artifactUri") or "") for o in data.get("runOutputs", [])],
                whole=("runOutputName", "artifactId", "artifactUri"))
    if log_copy is not None and log_copy.exists():
        click.echo(f"log: {log_copy} (a copy of the worker's {data.get('logPath', '')})")
    else:
        click.echo(f"log: {data.get('logPath', '')}")


@click.group("runs")
def runs_group() -> None:
    """Runs of image templates, with their states, timings and logs."""


@runs_group.command("list")
@click.option("--template", "template_id", default=None, help="Only runs of this image template id.")
@click.option("--json", "as_json", is_flag=True)
@pass_app
def runs_list(app: App, template_id: str | None, as_json: bool) -> None:
    """List runs, oldest first (the run id is what `kiln runs show` takes)."""
    with open_store(app) as store:
        runs = store.runs.list(template_id)
    if as_json:
        print_json([r.to_json() for r in runs])
        return
    rows = []
    for r in runs:
        seconds = f"{r.end_time - r.start_time:.1f}" if r.end_time else ""
        status = r.to_json()["lastRunStatus"]
        rows.append((r.run_id, r.template_id.name, r.run_state, r.run_sub_state, status["startTime"] or "", seconds,
                     r.log_path))
    print_table(("run", "template", "runState", "runSubState", "started", "seconds", "log"), rows, whole=("run",))


@runs_group.command("show")
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True)
@pass_app
def runs_show(app: App, run_id: str, as_json: bool) -> None:
    with open_store(app) as store:
        run = store.runs.get(run_id)
    print_run(run, as_json)


def register(cli: click.Group) -> None:
    cli.add_command(build_cmd)
    cli.add_command(runs_group)
