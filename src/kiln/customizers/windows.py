"""WindowsRestart and WindowsUpdate: Windows-only steps.

They need a running Windows guest. kiln cannot build Windows images on this host (no Windows
media is reachable), so on a Linux source they are refused up front by `check_supported`, with
the step named, before any bootstrap; their `run` is never reached on Linux.
"""

from __future__ import annotations

from typing import Any

from kiln.template.model import WindowsRestartStep, WindowsUpdateStep

from .base import COMMON_PROPERTIES, CustomizerFailed, CustomizerType, StepContext, register

RESTART_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "WindowsRestart customizer",
    "type": "object",
    "properties": {
        **COMMON_PROPERTIES,
        "type": {"const": "WindowsRestart"},
        "restartCommand": {"type": "string"},
        "restartCheckCommand": {"type": "string"},
        "restartTimeout": {"type": "string", "pattern": "^[0-9]+[smh]?$"},
    },
    "required": ["type"],
    "additionalProperties": False,
}

UPDATE_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "WindowsUpdate customizer",
    "type": "object",
    "properties": {
        **COMMON_PROPERTIES,
        "type": {"const": "WindowsUpdate"},
        "searchCriteria": {"type": "string"},
        "filters": {"type": "array", "items": {"type": "string"}},
        "updateLimit": {"type": "integer", "minimum": 0},
    },
    "required": ["type"],
    "additionalProperties": False,
}

HINT = "remove the step for Linux images, or build from a Windows source (not possible on this host)"


def _prepare(step: Any, ctx: StepContext) -> None:
    return None


def _run(step: WindowsRestartStep | WindowsUpdateStep, ctx: StepContext, prepared: None) -> None:
    raise CustomizerFailed(ctx.info, "needs a Windows image and a running Windows guest, which this host cannot provide",
                           hint=HINT)


register(CustomizerType("WindowsRestart", RESTART_SCHEMA, ("Windows",), _prepare, _run, unsupported_hint=HINT))
register(CustomizerType("WindowsUpdate", UPDATE_SCHEMA, ("Windows",), _prepare, _run, unsupported_hint=HINT))
