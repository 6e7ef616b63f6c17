"""In-VM validations: the template's `inVMValidations` as the scripts the booted guest runs.

Each step type writes its own guest script (`CustomizerType.guest`), with what it fetches checked
here, on the host, before the boot: so a Shell validation runs the way a Shell step does, a
PowerShell one honours its validExitCodes, and a downloaded script keeps its `#!` line.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from .base import REGISTRY, GuestContext, StepInfo
from .registry import validator_types

if TYPE_CHECKING:
    from kiln.config import Config
    from kiln.events import Monitor
    from kiln.validate.boottest import GuestScript

WHERE = ".properties.validate.inVMValidations"


def in_vm_scripts(steps: Sequence[object], config: Config, monitor: Monitor) -> list[GuestScript]:
    """One guest script per validation step, in order (fetches and verifies what they name)."""
    from kiln.fetch import Fetcher
    from kiln.validate.boottest import GuestScript

    allowed = {kind.type for kind in validator_types()}
    fetcher = Fetcher(config, monitor)
    scripts = []
    for i, step in enumerate(steps):
        kind = step.type  # type: ignore[attr-defined]
        assert kind in allowed, f"{kind} is not an in-VM validation type (the template schema refuses it)"
        name = getattr(step, "name", "") or ""
        write = REGISTRY[kind].guest
        assert write is not None
        content = write(step, GuestContext(StepInfo(i, name, kind, WHERE), fetcher))
        scripts.append(GuestScript(name=name or f"{kind}-{i}", content=content))
    return scripts
