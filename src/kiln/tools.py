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

WHERE = ("host", "guest", "test")


@dataclass(frozen=True)
class Tool:
    program: str
    package: str
    purpose: str
    required: bool = True
    # host: kiln runs it on the build host (setup installs it, doctor checks it); guest: it runs
    # inside an image root or a booted guest, so the image brings it; test: only kiln's tests run it.
    where: str = "host"

    def __post_init__(self) -> None:
        if self.where not in WHERE:
            raise ValueError(f"tools.toml: {self.program}: where = {self.where!r}, not one of {WHERE}")


@cache
def table() -> tuple[Tool, ...]:
    data = tomllib.loads(resources.files("kiln").joinpath("tools.toml").read_text())
    return tuple(Tool(**entry) for entry in data.get("tool", []))


def host_tools() -> tuple[Tool, ...]:
    """The programs kiln itself runs on the build host (what `kiln doctor` checks)."""
    return tuple(t for t in table() if t.where == "host")


def package_for(program: str) -> str | None:
    """The Debian package that provides `program` (a name or a path), or None if it is not in the table.

    A host entry wins over a guest or test one: a missing program at run time is a host's problem."""
    name = program.rsplit("/", 1)[-1]
    entries = sorted((t for t in table() if t.program == name), key=lambda t: WHERE.index(t.where))
    return entries[0].package if entries else None


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
