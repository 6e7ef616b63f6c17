"""What one build run carries from step to step.

A `BuildContext` is made once per run by the pipeline; each step reads the template and the
options, and fills in what it produced (the root tree, the disk, the boot report, the run outputs).
It owns the run's work directory, which lives in the state home so that publishing the finished
disk is a rename rather than a copy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kiln.config import Config
from kiln.events import Monitor
from kiln.ids import ResourceId
from kiln.template.model import ImageTemplate

KEEP_MARKER = ".kiln-keep"  # in a run's work directory: kept on purpose (errorHandling abort, --keep-work)


@dataclass(frozen=True, kw_only=True)
class BuildOptions:
    validate: bool = True  # False: --no-validate, skip the boot test (quick iteration)
    boot_timeout_s: float = 300.0
    keep_work: bool = False  # keep the work directory even on success (debugging)
    generalize: bool = True  # False: a specialized image, an exact copy (DevTest Labs' NonDeprovisioned)


@dataclass(kw_only=True)
class BuildContext:
    template: ImageTemplate
    template_id: ResourceId
    config: Config
    store: Any  # kiln.store.Store
    monitor: Monitor
    options: BuildOptions
    run_id: str
    work: Path
    log_path: Path
    os_type: str = "Linux"
    root: Path | None = None
    exact_version: str | None = None
    source_os_state: str = "Generalized"
    disk: Path | None = None
    disk_format: str = "raw"
    boot_report: Any = None
    known_digest: Any = None  # kiln.store.blobs.KnownDigest, computed during the boot test
    validation_failed: str | None = None
    outputs: list[Any] = field(default_factory=list)
    deadline: float | None = None  # time.monotonic() when buildTimeoutInMinutes runs out
    scratch: Any = None  # kiln.scratch.ScratchDir holding the root tree while it exists
