"""What every command module shares: opening the store, the monitor, and printing a table or JSON.

Command modules import only click and this module at start-up; everything a command needs beyond
that (the store, the template loader, the factory, rich) is imported inside the command's function,
so `kiln --help` or `kiln factory distribute` loads only what it uses. Helpers here follow the same
rule: `open_store` imports the store when it is called.

Every table a command prints goes through `print_table`, which never cuts an id: people copy ids
out of `list` to feed them to `show`, and an id with an ellipsis is no id. Columns named in
`whole` (by default "ID") are printed whole; when the terminal is too narrow the other columns
wrap, and when even that does not fit, each row is printed as a block of `FIELD  value` lines
(the id still on one line, however long). General-purpose table libraries shrink every column
to fit the terminal, ids included, which is why this one is kiln's own.
"""

from __future__ import annotations

import json
import os
import sys
import textwrap
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TextIO

import click

from kiln.cli import App

if TYPE_CHECKING:
    from kiln.events import Monitor
    from kiln.store import Store

json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")

DEFAULT_LOCATION_HELP = "the first configured region"  # kiln.config.Config.default_location


def location_option(what: str = "Region"):
    """`--location`, with the one documented default (None here; `location or config.default_location`)."""
    return click.option("--location", default=None, help=f"{what} (default: {DEFAULT_LOCATION_HELP}).")

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


GAP = 2  # spaces between columns
MIN_WRAP = 8  # narrowest a wrapped column gets (or its header, if longer)


def terminal_width() -> int | None:
    """Columns to fit: $COLUMNS, else the terminal's; None (no limit) when stdout is not a terminal."""
    if (env := os.environ.get("COLUMNS", "")).isdigit() and int(env) > 0:
        return int(env)
    try:
        return os.get_terminal_size(sys.stdout.fileno()).columns if sys.stdout.isatty() else None
    except (OSError, ValueError):
        return None


def print_table(columns: Sequence[str], rows: Sequence[Sequence[Any]], *, whole: Sequence[str] = ("ID",),
                width: int | None = None) -> None:
    """A borderless table with bold headers whose `whole` columns (ids) are never cut or wrapped."""
    click.echo(render_table(columns, rows, whole=whole, width=width if width is not None else terminal_width()),
               nl=False)


def render_table(columns: Sequence[str], rows: Sequence[Sequence[Any]], *, whole: Sequence[str] = ("ID",),
                 width: int | None = None) -> str:
    cells = [[str(c) for c in row] for row in rows]
    kept = [c in whole for c in columns]
    natural = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(columns)]
    if width is None or _total(natural) <= width or all(kept):
        return _lines(columns, cells, natural, kept)
    fixed = sum(n for n, k in zip(natural, kept, strict=True) if k)
    floors = [n if k else min(n, max(MIN_WRAP, len(h))) for n, k, h in zip(natural, kept, columns, strict=True)]
    if _total(floors) > width:
        return _stacked(columns, cells)
    # Share what the ids leave among the other columns, in proportion to what each would like.
    room = width - GAP * (len(columns) - 1) - fixed
    wants = [n - f for n, f, k in zip(natural, floors, kept, strict=True) if not k]
    spare = room - sum(f for f, k in zip(floors, kept, strict=True) if not k)
    extra = iter(_share(spare, wants))
    widths = [n if k else f + next(extra) for n, f, k in zip(natural, floors, kept, strict=True)]
    return _lines(columns, cells, widths, kept)


def _total(widths: Sequence[int]) -> int:
    return sum(widths) + GAP * (len(widths) - 1)


def _share(spare: int, wants: list[int]) -> list[int]:
    total = sum(wants)
    if total <= spare:
        return wants
    got = [spare * w // total for w in wants]
    for i in sorted(range(len(wants)), key=lambda i: wants[i] - got[i], reverse=True)[: spare - sum(got)]:
        got[i] += 1
    return got


def _lines(columns: Sequence[str], cells: list[list[str]], widths: list[int], kept: list[bool]) -> str:
    bold = sys.stdout.isatty() and "NO_COLOR" not in os.environ
    header = (" " * GAP).join(h.ljust(w) for h, w in zip(columns, widths, strict=True)).rstrip()
    out = [click.style(header, bold=True) if bold else header]
    for row in cells:
        parts = [[c] if k or len(c) <= w else textwrap.wrap(c, w, break_on_hyphens=False) or [""]
                 for c, w, k in zip(row, widths, kept, strict=True)]
        for n in range(max(len(p) for p in parts)):
            line = [(p[n] if n < len(p) else "").ljust(w) for p, w in zip(parts, widths, strict=True)]
            out.append((" " * GAP).join(line).rstrip())
    return "".join(f"{line}\n" for line in out)


def _stacked(columns: Sequence[str], cells: list[list[str]]) -> str:
    """One block per row: `FIELD  value` lines, values whole, a blank line between rows."""
    pad = max(len(c) for c in columns)
    blocks = ["".join(f"{h.ljust(pad)}  {v}".rstrip() + "\n" for h, v in zip(columns, row, strict=True))
              for row in cells]
    return "\n".join(blocks) if cells else " ".join(columns) + "\n"


def emit(as_json: bool, data: Any, rows: Callable[[], Rows], *, whole: Sequence[str] = ("ID",)) -> None:
    """JSON (`--json`) or a table; `rows` is called only for the table."""
    if as_json:
        print_json(data)
        return
    columns, body = rows()
    print_table(columns, body, whole=whole)
