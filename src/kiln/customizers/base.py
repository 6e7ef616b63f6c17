"""The customizer registry and what every customizer gets.

Each customizer type lives in its own module and registers a `CustomizerType`: its AIB type name,
the JSON Schema of its options (declared beside its code, as osbuild's stages do), which OS
families it supports, and how to prepare it (fetch and verify what it needs, before any step
runs) and run it (in the isolated root). `run_customizers` (runner.py) walks the template's steps
in order through this registry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kiln.config import Config
from kiln.errors import BuildFailed
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
class CustomizerType:
    """One registered customizer type."""

    type: str
    schema: dict[str, Any]
    os_types: tuple[str, ...]  # the OS families it can run on
    prepare: Callable[[Any, StepContext], Any]  # fetch + verify; returns what `run` needs
    run: Callable[[Any, StepContext, Any], None]
    unsupported_hint: str = ""


REGISTRY: dict[str, CustomizerType] = {}


def register(kind: CustomizerType) -> CustomizerType:
    REGISTRY[kind.type] = kind
    return kind


# Options every step has, per AIB's ImageTemplateCustomizer.
COMMON_PROPERTIES: dict[str, Any] = {
    "type": {"type": "string"},
    "name": {"type": "string"},
}
