"""WindowsRestart and WindowsUpdate: Windows-only steps (not allowed as in-VM validations).

They need a running Windows guest. kiln cannot build Windows images on this host (no Windows
media is reachable), so on a Linux source they are refused up front by `check_supported`, with
the step named, before any bootstrap; their `run` is never reached on Linux.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .base import DEFS, CustomizerFailed, CustomizerType, StepContext, register, step_schema

if TYPE_CHECKING:
    from kiln.template.model import WindowsRestartStep, WindowsUpdateStep

RESTART_SCHEMA: dict[str, Any] = step_schema("WindowsRestart", "WindowsRestart step", {
    "restartCommand": {"type": "string", "description": "command that restarts the VM"},
    "restartCheckCommand": {"type": "string", "description": "command that checks the restart succeeded"},
    "restartTimeout": {"type": "string",
                       "description": "how long to wait, a magnitude and a unit such as '5m' or '2h'"},
})

UPDATE_SCHEMA: dict[str, Any] = step_schema("WindowsUpdate", "WindowsUpdate step", {
    "searchCriteria": {"type": "string", "description": "update search criteria"},
    "filters": {"type": "array", "items": {"type": "string"}, "description": "update filters"},
    "updateLimit": {"$ref": "#/$defs/int32", "minimum": 0,
                    "description": "maximum number of updates at a time (0: the default, 1000)"},
}, **{"$defs": DEFS})

HINT = "remove the step for Linux images, or build from a Windows source (not possible on this host)"


def _prepare(step: Any, ctx: StepContext) -> None:
    return None


def _run(step: WindowsRestartStep | WindowsUpdateStep, ctx: StepContext, prepared: None) -> None:
    raise CustomizerFailed(ctx.info, "needs a Windows image and a running Windows guest, which this host cannot provide",
                           hint=HINT)


register(CustomizerType("WindowsRestart", RESTART_SCHEMA, ("Windows",), _prepare, _run, unsupported_hint=HINT))
register(CustomizerType("WindowsUpdate", UPDATE_SCHEMA, ("Windows",), _prepare, _run, unsupported_hint=HINT))
