"""Running a template's customizers, in order, in the isolated root.

`check_supported` is called by the pipeline before anything is bootstrapped, so a template
whose steps cannot run on its OS fails in a second with every offending step named. Then
`run_customizers` prepares every step first (downloads and checksum checks, destination checks),
so a checksum mismatch in the last step means no step ran at all, and only then runs them one
by one inside the root, each visible as a monitor step with its timing.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from kiln.config import Config
from kiln.errors import Problem, ValidationFailed
from kiln.events import Monitor
from kiln.fetch import Fetcher
from kiln.sandbox.isolated import IsolatedRoot, SandboxTimeout
from kiln.template.model import Customizer

from . import registry  # noqa: F401  (registers the types)
from .base import REGISTRY, CustomizerFailed, StepContext, StepInfo


def check_supported(steps: Sequence[object], os_type: str, *, where: str = ".properties.customize") -> None:
    """Raise `ValidationFailed` naming every step that cannot run on `os_type` images."""
    problems = []
    for i, step in enumerate(steps):
        kind = getattr(step, "type", type(step).__name__)
        reg = REGISTRY.get(kind)
        name = getattr(step, "name", "") or ""
        label = f"step {name!r} ({kind})" if name else f"{kind} step"
        if reg is None:
            problems.append(Problem(f"{label}: unknown customizer type", f"{where}[{i}]",
                                    hint=f"known types: {', '.join(sorted(REGISTRY))}"))
        elif os_type not in reg.os_types:
            needs = " or ".join(reg.os_types)
            problems.append(Problem(f"{label} needs a {needs} image; this source is {os_type}", f"{where}[{i}]",
                                    hint=reg.unsupported_hint))
    if problems:
        raise ValidationFailed(problems)


def run_customizers(
    steps: Sequence[Customizer],
    root: IsolatedRoot,
    *,
    config: Config,
    monitor: Monitor,
    os_type: str = "Linux",
    deadline: float | None = None,
    where: str = ".properties.customize",
) -> None:
    """Run `steps` in template order inside `root`; raise `CustomizerFailed` naming a failing step.

    `deadline` (a `time.monotonic()` value) bounds the whole customization; a step still running
    then is killed with its namespace and `SandboxTimeout` is raised.
    """
    check_supported(steps, os_type, where=where)
    if not steps:
        return
    fetcher = Fetcher(config, monitor)
    config.work_dir.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix="customize-", dir=config.work_dir))
    try:
        contexts = []
        for i, step in enumerate(steps):
            info = StepInfo(i, getattr(step, "name", "") or "", step.type, where)
            ctx = StepContext(info, root, config, monitor, fetcher, stage, os_type)
            contexts.append((step, ctx, REGISTRY[step.type].prepare(step, ctx)))
        with root:
            for step, ctx, prepared in contexts:
                label = f"customize[{ctx.info.index}]"
                monitor.step(label, f"{ctx.info.name or '(unnamed)'} ({ctx.info.type})")
                if deadline is not None:
                    ctx.timeout = max(deadline - time.monotonic(), 1.0)
                try:
                    REGISTRY[step.type].run(step, ctx, prepared)
                except (CustomizerFailed, SandboxTimeout) as e:
                    monitor.result(label, ok=False, message=e.message.splitlines()[0])
                    raise
                monitor.result(label)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
