"""`kiln validate FILE... [--json] [--parameters k=v ...]`: check templates as Azure would, better worded.

Every file is read and every problem of every file is reported in one go (text on stderr, or one
JSON array of {file, path, message, hint} on stdout with `--json`); exit 2 if there was any,
0 otherwise, with one OK line per valid image template.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import click

from kiln.cli import App, pass_app
from kiln.cli.common import print_json
from kiln.errors import InvalidInput, Problem, ValidationFailed

if TYPE_CHECKING:
    from kiln.template.model import ImageTemplate


def parse_parameters(values: tuple[str, ...]) -> dict[str, str]:
    """`k=v` pairs, or `@file.json` (an ARM parameters file: {"parameters": {"k": {"value": v}}})."""
    out: dict[str, str] = {}
    for item in values:
        if item.startswith("@"):
            from kiln.jsonfile import read_json

            data = read_json(Path(item[1:]))
            params = data.get("parameters") if isinstance(data, dict) else None
            if not isinstance(params, dict):
                raise InvalidInput("an ARM parameters file holds {\"parameters\": {\"name\": {\"value\": ...}}}",
                                   file=item[1:], path=".parameters")
            for key, entry in params.items():
                value = entry.get("value") if isinstance(entry, dict) else None
                out[key] = value if isinstance(value, str) else json.dumps(value)
            continue
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InvalidInput(f"--parameters {item!r} is not NAME=VALUE", hint="e.g. --parameters location=westus2")
        out[key] = value
    return out


def describe(t: ImageTemplate) -> str:
    """One line: name, source, number of customizers, targets."""
    from kiln.template.model import PlatformImageSource

    src = t.source
    if isinstance(src, PlatformImageSource):
        source = f"{src.type} {src.publisher}:{src.offer}:{src.sku}:{src.version}"
    else:
        source = src.type
    targets = ", ".join(f"{d.type}({d.run_output_name})" for d in t.distribute) or "none"
    return f"{t.name}: {source}, {len(t.customize)} customizer(s), targets {targets}"


def register(cli: click.Group) -> None:
    @cli.command("validate")
    @click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
    @click.option("--json", "as_json", is_flag=True, help="Print the problems as a JSON array.")
    @click.option("--parameters", "-p", "params", multiple=True, metavar="NAME=VALUE",
                  help="A deployment template parameter (repeatable), or @params.json.")
    @pass_app
    def validate(app: App, files: tuple[Path, ...], as_json: bool, params: tuple[str, ...]) -> None:
        """Validate image templates (bare, REST body or ARM deployment) and report every problem."""
        from kiln.template.load import load_template

        problems: list[Problem] = []
        try:
            parameters = parse_parameters(params)
        except InvalidInput as e:
            problems += e.problems
            parameters = {}
        config = app.config
        for path in files:
            try:
                templates = load_template(path, parameters, config=config)
            except InvalidInput as e:
                problems += e.problems
                continue
            if not as_json:
                for t in templates:
                    click.echo(f"OK {path}: {describe(t)}")
        if as_json:
            print_json([p.to_json() for p in problems])
            if problems:
                raise click.exceptions.Exit(ValidationFailed.exit_code)
            return
        if problems:
            raise ValidationFailed(problems)
