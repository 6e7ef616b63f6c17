"""The step registry and what every step gets.

Each step type lives in its own module and registers a `CustomizerType`: its AIB type name, the
JSON Schema of its options (declared beside its code, as osbuild's stages do, and the one the
template schema is built from), which OS families it supports, how to prepare it (fetch and
verify what it needs, before any step runs) and run it (in the isolated root), and, for the types
AIB allows in `inVMValidations`, how to run it in a booted guest (`guest`: the script the guest
runs). `run_customizers` (runner.py) and `in_vm_scripts` (guest.py) walk a template's steps in
order through this registry.

This module and the step modules stay cheap to import (no sandbox, no HTTP client): the template
loader imports them for their schemas. What only running needs is imported where it runs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kiln.errors import BuildFailed

if TYPE_CHECKING:
    from kiln.config import Config
    from kiln.events import Monitor
    from kiln.fetch import Fetcher
    from kiln.sandbox.isolated import IsolatedRoot


class CustomizerFailed(BuildFailed):
    """A customizer step failed: names the step (name and index), its exit code and output tail."""

    def __init__(self, step: StepInfo, message: str, *, returncode: int | None = None, tail: str = "",
                 hint: str = "") -> None:
        self.step = step
        self.returncode = returncode
        self.tail = tail
        head = f"customizer {step.label} failed"
        if returncode is not None:
            head += f" with exit code {returncode}"
        text = f"{head}: {message}" if message else head
        if tail.strip():
            text += "\n" + "\n".join(tail.strip().splitlines()[-20:])
        super().__init__(text, hint=hint, path=step.path)


@dataclass(frozen=True)
class StepInfo:
    """Where a step is: its index, name, type and JSON path, for messages."""

    index: int
    name: str
    type: str
    where: str = ".properties.customize"

    @property
    def path(self) -> str:
        return f"{self.where}[{self.index}]"

    @property
    def label(self) -> str:
        return f"{self.path} {self.name!r} ({self.type})" if self.name else f"{self.path} ({self.type})"


@dataclass
class StepContext:
    """What a customizer sees while it runs."""

    info: StepInfo
    root: IsolatedRoot
    config: Config
    monitor: Monitor
    fetcher: Fetcher
    stage: Path  # a host folder, visible read-only at /run/kiln inside the root
    os_type: str
    timeout: float | None = None  # seconds left for the whole build, if limited


@dataclass(frozen=True)
class GuestContext:
    """What a step sees while kiln writes its script for the booted guest (host side)."""

    info: StepInfo
    fetcher: Fetcher


@dataclass(frozen=True)
class CustomizerType:
    """One registered step type."""

    type: str
    schema: dict[str, Any]
    os_types: tuple[str, ...]  # the OS families it can run on
    prepare: Callable[[Any, StepContext], Any]  # fetch + verify; returns what `run` needs
    run: Callable[[Any, StepContext, Any], None]
    unsupported_hint: str = ""
    # The script the booted guest runs for this step as an in-VM validation (fetched and checked
    # here, on the host); None for the types AIB does not allow in `inVMValidations`.
    guest: Callable[[Any, GuestContext], bytes] | None = None


REGISTRY: dict[str, CustomizerType] = {}


def register(kind: CustomizerType) -> CustomizerType:
    REGISTRY[kind.type] = kind
    return kind


def step_schema(kind: str, title: str, properties: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """A step type's options schema: `type` and `name` (every step has them, per AIB), then `properties`.

    Descriptions are the hints a user sees for a wrong value. Exactly one of inline/scriptUri, a
    checksum's form and a restart timeout's form are not said here but in template/checks.py,
    which words them better than a JSON Schema keyword could (and lets an empty checksum mean
    "not checked", as AIB does).
    """
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": title,
        "type": "object",
        "properties": {
            "type": {"const": kind},
            "name": {"type": "string", "description": "friendly name of the step, unique in its list"},
            **properties,
        },
        "required": ["type"],
        "additionalProperties": False,
        **extra,
    }


# Options several step types share, worded once.
INT32: dict[str, Any] = {"type": "integer", "minimum": -2147483648, "maximum": 2147483647}
DEFS: dict[str, Any] = {"int32": INT32}  # a step schema's "#/$defs/int32"; the template schema has the same
SCRIPT_URI: dict[str, Any] = {
    "type": "string", "description": "URI of the script (https, or a file path kiln can read); give this or 'inline'"}
SHA256: dict[str, Any] = {
    "type": "string",
    "description": "SHA256 checksum (64 hex digits) of the file at the URI; empty means not checked"}
INLINE: dict[str, Any] = {
    "type": "array", "items": {"type": "string"}, "description": "commands to run; give this or 'scriptUri'"}


def valid_exit_codes(step: Any) -> tuple[int, ...]:
    """The exit codes that count as success for a script step, in the root and in the guest alike."""
    return tuple(getattr(step, "valid_exit_codes", ()) or (0,))
