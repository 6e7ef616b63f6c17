"""What every command module shares: opening the store, the monitor, and printing a table or JSON.

Command modules import only click and this module at start-up; everything a command needs beyond
that (the store, the template loader, the factory, rich) is imported inside the command's function,
so `kiln --help` or `kiln factory distribute` loads only what it uses. Helpers here follow the same
rule: `open_store` imports the store when it is called, `print_table` imports rich when it prints.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TextIO

import click

from kiln.cli import App

if TYPE_CHECKING:
    from kiln.events import Monitor
    from kiln.store import Store

json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")

Rows = tuple[Sequence[str], list[Sequence[Any]]]


@contextmanager
def open_store(app: App) -> Iterator[Store]:
    """The state home's store, closed when the block ends (however it ends)."""
    from kiln.store import Store

    with Store.open(app.config) as store:
        yield store


def store_opener(app: App) -> Callable[[], Store]:
    """A function opening one more Store on the same state home (one per worker thread)."""
    from kiln.store import Store

    return lambda: Store.open(app.config)


def make_monitor(app: App, json_stream: TextIO | None = None) -> Monitor:
    """The monitor `--progress` asks for: text lines on stderr, JSON lines (on stderr unless the
    command prints its JSON events on stdout, as `kiln build` does), or nothing."""
    from kiln.events import JsonMonitor, NullMonitor, TextMonitor

    if app.progress == "json":
        return JsonMonitor(json_stream or sys.stderr)
    return TextMonitor(sys.stderr) if app.progress == "text" else NullMonitor()


def print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def print_table(columns: Sequence[str], rows: Sequence[Sequence[Any]], *, min_width: int = 240) -> None:
    """A borderless table with bold headers, at least `min_width` columns wide so ids are never cut."""
    from rich.console import Console
    from rich.table import Table

    table = Table(*columns, box=None, header_style="bold")
    for row in rows:
        table.add_row(*[str(c) for c in row])
    Console(width=max(min_width, Console().width)).print(table)


def emit(as_json: bool, data: Any, rows: Callable[[], Rows], *, min_width: int = 240) -> None:
    """JSON (`--json`) or a table; `rows` is called only for the table."""
    if as_json:
        print_json(data)
        return
    columns, body = rows()
    print_table(columns, body, min_width=min_width)
