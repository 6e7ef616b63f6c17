"""Commands of one part of kiln (filled in by that part)."""

import click


def register(cli: click.Group) -> None:
    pass
