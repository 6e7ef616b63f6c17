"""What every command module shares: opening the store, the monitor, and printing a table or JSON.

Command modules import only click and this module at start-up; everything a command needs beyond
that (the store, the template loader, the factory) is imported inside the command's function,
so `kiln --help` or `kiln factory distribute` loads only what it uses. Helpers here follow the same
rule: `open_store` imports the store when it is called.

Every table a command prints goes through `print_table`, which never cuts an id: people copy ids
out of `list` to feed them to `show`, and an id with an ellipsis is no id. Columns named in
`whole` (by default "ID") are printed whole; when the terminal is too narrow the other columns
wrap at spaces, then the last of them are left out (a line under the table names them), and
when the ids alone leave no room, each row is printed as a block of `FIELD  value` lines (the id
still on one line, however long). General-purpose table libraries shrink every column to fit
the terminal, ids included, which is why this one is kiln's own. Piped output (no terminal, no
$COLUMNS) is never fitted: one line per row.
"""

from __future__ import annotations

import json
import os
import sys
import textwrap
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TextIO, TypeVar

import click

from kiln.cli import App

if TYPE_CHECKING:
    from kiln.events import Monitor
    from kiln.store import Store

F = TypeVar("F", bound=Callable[..., Any])  # a command function, typed as it was through a decorator

json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")

DEFAULT_LOCATION_HELP = "the first configured region"  # kiln.config.Config.default_location


def location_option(what: str = "Region") -> Callable[[F], F]:
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
MIN_WRAP = 20  # narrowest a value of a stacked row is wrapped to


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
    # A column wraps at spaces only (a path or a name broken in two is as useless as a cut id), so
    # the narrowest it gets is its longest word. Too narrow even then: leave out the last of the
    # other columns, one at a time, while one is left; then, rather than show ids alone, one block
    # per row.
    floors = [n if k else max([len(h), *(len(w) for r in cells for w in r[i].split())])
              for i, (n, k, h) in enumerate(zip(natural, kept, columns, strict=True))]
    shown = list(range(len(columns)))
    while _total([floors[i] for i in shown]) > width:
        others = [i for i in shown if not kept[i]]
        if len(others) <= 1:
            return _stacked(columns, cells, kept, width)
        shown.remove(others[-1])
    table = _wrapped([columns[i] for i in shown], [[r[i] for i in shown] for r in cells],
                     [natural[i] for i in shown], [floors[i] for i in shown], [kept[i] for i in shown], width)
    left_out = [c for i, c in enumerate(columns) if i not in shown]
    return table + (f"({', '.join(left_out)}: not shown in {width} columns; --json has everything)\n" if left_out else "")


def _wrapped(columns: list[str], cells: list[list[str]], natural: list[int], floors: list[int], kept: list[bool],
             width: int) -> str:
    """The ids at full width, the other columns sharing what is left (see `_share`)."""
    room = width - GAP * (len(columns) - 1) - sum(n for n, k in zip(natural, kept, strict=True) if k)
    wants = [n - f for n, f, k in zip(natural, floors, kept, strict=True) if not k]
    spare = room - sum(f for f, k in zip(floors, kept, strict=True) if not k)
    extra = iter(_share(spare, wants))
    widths = [n if k else f + next(extra) for n, f, k in zip(natural, floors, kept, strict=True)]
    return _lines(columns, cells, widths, kept)


def _total(widths: Sequence[int]) -> int:
    return sum(widths) + GAP * (len(widths) - 1)


def _share(spare: int, wants: list[int]) -> list[int]:
    """Split `spare` columns among wants: the smallest wants are met first (a short value then fits
    whole), what is left goes evenly to the rest."""
    got = [0] * len(wants)
    order = sorted(range(len(wants)), key=lambda i: wants[i])
    for n, i in enumerate(order):
        got[i] = min(wants[i], spare // (len(order) - n))
        spare -= got[i]
    return got


def _wrap(text: str, width: int) -> list[str]:
    if len(text) <= width:
        return [text]
    return textwrap.wrap(text, width, break_long_words=False, break_on_hyphens=False) or [""]


def _lines(columns: Sequence[str], cells: list[list[str]], widths: list[int], kept: list[bool]) -> str:
    bold = sys.stdout.isatty() and "NO_COLOR" not in os.environ
    header = (" " * GAP).join(h.ljust(w) for h, w in zip(columns, widths, strict=True)).rstrip()
    out = [click.style(header, bold=True) if bold else header]
    for row in cells:
        parts = [[c] if k else _wrap(c, w) for c, w, k in zip(row, widths, kept, strict=True)]
        for n in range(max(len(p) for p in parts)):
            line = [(p[n] if n < len(p) else "").ljust(w) for p, w in zip(parts, widths, strict=True)]
            out.append((" " * GAP).join(line).rstrip())
    return "".join(f"{line}\n" for line in out)


def _stacked(columns: Sequence[str], cells: list[list[str]], kept: list[bool], width: int) -> str:
    """One block per row: `FIELD  value` lines (ids whole, other values wrapped), a blank line between rows."""
    pad = max(len(c) for c in columns) + GAP
    blocks = []
    for row in cells:
        lines = []
        for h, v, k in zip(columns, row, kept, strict=True):
            for n, part in enumerate([v] if k else _wrap(v, max(MIN_WRAP, width - pad))):
                lines.append(f"{(h if n == 0 else '').ljust(pad)}{part}".rstrip() + "\n")
        blocks.append("".join(lines))
    return "\n".join(blocks) if cells else "  ".join(columns) + "\n"


def emit(as_json: bool, data: Any, rows: Callable[[], Rows], *, whole: Sequence[str] = ("ID",)) -> None:
    """JSON (`--json`) or a table; `rows` is called only for the table."""
    if as_json:
        print_json(data)
        return
    columns, body = rows()
    print_table(columns, body, whole=whole)
