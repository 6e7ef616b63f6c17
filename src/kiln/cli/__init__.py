"""The `kiln` command line.

`main` is the only place that turns errors into exit codes: a `KilnError` is printed without a
traceback (all of its problems, or as JSON with `--json` where a command offers it) and exits with
its code (2 invalid input, 1 run failed, 130 interrupted); anything else is a bug and keeps its
traceback. Each part of kiln adds its commands from its own module (`register(group)`).
"""

from __future__ import annotations

import signal
import sys
from dataclasses import dataclass
from pathlib import Path

import click

from kiln import __version__
from kiln.config import Config, load_config
from kiln.errors import Canceled, KilnError


@dataclass
class App:
    """What every command gets: the state home's config and how to report progress."""

    home: Path | None
    debug: bool
    progress: str  # text | json | quiet
    _config: Config | None = None

    @property
    def config(self) -> Config:
        if self._config is None:
            self._config = load_config(self.home)
        return self._config


pass_app = click.make_pass_decorator(App)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="kiln")
@click.option("--home", type=click.Path(path_type=Path), envvar="KILN_HOME", help="State home (default: $XDG_DATA_HOME/kiln).")
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
@click.option("--progress", type=click.Choice(["text", "json", "quiet"]), default="text", show_default=True,
              help="How to show progress: step lines with timings, JSON lines, or nothing.")
@click.pass_context
def cli(ctx: click.Context, home: Path | None, debug: bool, progress: str) -> None:
    """kiln: build, boot-test and distribute VM images from Azure Image Builder templates."""
    ctx.obj = App(home=home, debug=debug, progress=progress)


def _register_all() -> None:
    from kiln.cli import (
        build_cmds,
        cluster_cmds,
        doctor_cmds,
        factory_cmds,
        serve_cmds,
        store_cmds,
        trigger_cmds,
        validate_cmds,
        vm_cmds,
    )

    # vm_cmds after factory_cmds: it adds `kiln lab vm` and `kiln factory save-vm` to their groups.
    for module in (validate_cmds, store_cmds, build_cmds, factory_cmds, doctor_cmds, serve_cmds, trigger_cmds,
                   vm_cmds, cluster_cmds):
        module.register(cli)


def _sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> None:
    _register_all()
    signal.signal(signal.SIGTERM, _sigterm)
    debug = "--debug" in (argv if argv is not None else sys.argv[1:])
    try:
        # Without standalone mode click returns (not raises) the code of a `click.exceptions.Exit`.
        code = cli.main(args=argv, prog_name="kiln", standalone_mode=False)
        if isinstance(code, int) and not isinstance(code, bool) and code:
            sys.exit(code)
    except click.exceptions.Abort:
        print("kiln: interrupted", file=sys.stderr)
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(2)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except KilnError as e:
        if debug:
            raise
        print(f"kiln: error: {e.render()}", file=sys.stderr)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        print("kiln: interrupted", file=sys.stderr)
        sys.exit(Canceled.exit_code)
    sys.exit(0)
