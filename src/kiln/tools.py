"""The external programs kiln runs, and the Debian packages they come from.

The table itself is `tools.toml` beside this module: data, so that `scripts/setup` can read it
with the system Python before kiln is installed. Everything else (the tool-table test, `kiln
doctor`, the error for a program that is missing at run time) reads it through here.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from functools import cache
from importlib import resources

from kiln.errors import KilnError


@dataclass(frozen=True)
class Tool:
    program: str
    package: str
    purpose: str
    required: bool = True


@cache
def table() -> tuple[Tool, ...]:
    data = tomllib.loads(resources.files("kiln").joinpath("tools.toml").read_text())
    return tuple(Tool(**entry) for entry in data.get("tool", []))


def package_for(program: str) -> str | None:
    """The Debian package that provides `program` (a name or a path), or None if it is not in the table."""
    name = program.rsplit("/", 1)[-1]
    return next((t.package for t in table() if t.program == name), None)


class ToolMissing(KilnError):
    """A program kiln runs is not installed on this host: the host's problem, not the user's input."""

    def __init__(self, program: str) -> None:
        package = package_for(program)
        install = f"apt-get install {package}" if package else "scripts/setup"
        super().__init__(
            f"{program}: not found on this host",
            hint=f"install it with `{install}` (or run scripts/setup); `kiln doctor` checks every tool kiln needs",
        )
        self.program = program
        self.package = package
