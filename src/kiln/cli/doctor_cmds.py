"""`kiln doctor [--json]`: can a build run on this host? Every tool, KVM or TCG, the firmware, free
space, the Debian mirror and the optional parts, each with a hint when something is wrong.

Exit 0 when a build can run (optional parts may be missing), 1 otherwise. The checks themselves
are `kiln.doctor`, so the API can run them too.
"""

from __future__ import annotations

import click

from kiln.cli import App, pass_app
from kiln.cli.common import json_option, print_json


def register(cli: click.Group) -> None:
    @cli.command("doctor")
    @json_option
    @click.option("--no-mirror", is_flag=True, help="Do not contact the Debian mirror.")
    @pass_app
    def doctor(app: App, as_json: bool, no_mirror: bool) -> None:
        """Check this host for what a build needs, with a hint per problem."""
        from kiln.doctor import diagnose

        report = diagnose(app.config, mirror=not no_mirror)
        if as_json:
            print_json(report.to_json())
        else:
            width = max(len(c.name) for c in report.checks)
            for c in report.checks:
                status = "ok" if c.ok else "FAIL" if c.required else "--"
                click.echo(f"{status:<5} {c.kind:<9} {c.name:<{width}}  {c.detail}")
                if c.hint and (not c.ok or c.kind == "accel"):
                    click.echo(f"{'':<16}{'':<{width}}  hint: {c.hint}")
            if report.ready:
                click.echo("kiln doctor: a build can run here")
            else:
                names = ", ".join(c.name for c in report.problems)
                click.echo(f"kiln doctor: {len(report.problems)} problem(s), a build cannot run here: {names}", err=True)
        if not report.ready:
            raise click.exceptions.Exit(1)
