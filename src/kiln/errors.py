"""Errors that reach the user.

A `KilnError` is a user's mistake or a failed run, never a bug: the CLI prints it without a
traceback and exits with its `exit_code`. Bugs stay ordinary exceptions and keep their traceback.
Library code raises; only the CLI decides to exit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    """One thing wrong with an input, located by file and JSON path (`.properties.customize[2].name`)."""

    message: str
    path: str = ""
    file: str = ""
    hint: str = ""

    def render(self) -> str:
        where = ":".join(p for p in (self.file, self.path) if p)
        text = f"{where}: {self.message}" if where else self.message
        return f"{text}\n  hint: {self.hint}" if self.hint else text

    def to_json(self) -> dict[str, str]:
        return {"file": self.file, "path": self.path, "message": self.message, "hint": self.hint}


class KilnError(Exception):
    """Base of every error meant for the user. Exit code 1: the run failed."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str = "", path: str = "", file: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.path = path
        self.file = file

    @property
    def problems(self) -> tuple[Problem, ...]:
        return (Problem(self.message, self.path, self.file, self.hint),)

    def render(self) -> str:
        return "\n".join(p.render() for p in self.problems)


class InvalidInput(KilnError):
    """The user's input is wrong (template, config, id, file): exit code 2, nothing was changed."""

    exit_code = 2


class ValidationFailed(InvalidInput):
    """Many problems found at once (all of them, not just the first)."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.found = tuple(problems)
        first = self.found[0].message if self.found else "invalid input"
        super().__init__(f"{len(self.found)} problem(s); first: {first}")

    @property
    def problems(self) -> tuple[Problem, ...]:
        return self.found


class NotFound(InvalidInput):
    """A named resource (image, gallery, lab, region, run) does not exist."""


class BuildFailed(KilnError):
    """A run started and failed (a customizer failed, the boot test failed, a target failed)."""


class HostFailed(KilnError):
    """kiln's own work failed on this host (one of its tools exited non-zero, firmware is missing):
    neither the user's input nor the user's build is at fault. Exit code 1, like a failed run, but
    the message says whose problem it is, so nobody goes looking for the mistake in a template."""


class Canceled(KilnError):
    """The run was interrupted (Ctrl-C, SIGTERM): exit 130."""

    exit_code = 130
