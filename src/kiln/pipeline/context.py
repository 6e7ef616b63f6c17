"""What one build run carries from step to step, as typed records.

A run has three kinds of state, kept apart so that each step's inputs and outputs are visible in
its signature:
- `BuildContext`: what every step reads and nobody changes (the template, the store, the monitor
  that stamps every event with the run's id, the deadline). Frozen, made once by `build()`.
- the steps' products, each a frozen record handed to the steps that need it: `SourceTree` (the
  root tree and what the source said about itself), `Disk` (the assembled disk and its layout),
  `Validation` (what the boot test proved).
- `Workspace`: the run's places on disk (its work directory, the scratch space holding the root
  tree) and what they hold right now, so that the end of the run knows what to remove or keep.
  It is the one mutable part, owned by `build()`.

The work directory lives in the state home so that publishing the finished disk is a rename
rather than a copy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from kiln.config import Config
from kiln.events import Monitor
from kiln.ids import ResourceId
from kiln.store.worklock import KEEP_MARKER
from kiln.template.model import ImageTemplate

if TYPE_CHECKING:
    from kiln.disk.assemble import DiskLayout
    from kiln.scratch import ScratchDir
    from kiln.store.blobs import KnownDigest
    from kiln.store.runs import RunOutput
    from kiln.store.store import Store
    from kiln.validate.boottest import BootReport

__all__ = ["KEEP_MARKER", "BuildContext", "BuildOptions", "BuildOutcome", "Disk", "SourceTree", "Validation",
           "Workspace"]


@dataclass(frozen=True, kw_only=True)
class BuildOptions:
    validate: bool = True  # False: --no-validate, skip the boot test (quick iteration)
    boot_timeout_s: float = 300.0
    keep_work: bool = False  # keep the work directory even on success (debugging)
    generalize: bool = True  # False: a specialized image, an exact copy (DevTest Labs' NonDeprovisioned)


@dataclass(frozen=True, kw_only=True)
class BuildContext:
    """What every step of one run reads; fixed when the run starts."""

    template: ImageTemplate
    template_id: ResourceId
    config: Config
    store: Store
    monitor: Monitor  # a RunMonitor: every event carries run_id and step_id
    options: BuildOptions
    run_id: str
    work: Path
    log_path: Path
    deadline: float  # time.monotonic() when buildTimeoutInMinutes runs out

    @property
    def serial_log(self) -> Path:
        return self.log_path.with_name("serial.log")


@dataclass(frozen=True)
class SourceTree:
    """The source step's product: a root tree to customize, and what the source says of itself."""

    root: Path
    os_type: str  # Linux (Windows sources fail before any bootstrap)
    exact_version: str | None  # the source image's version, x.y.z, as AIB's exactVersion
    description: str  # "PlatformImage publisher:offer:sku:version" and the like, for records


@dataclass(frozen=True)
class Disk:
    """The assemble step's product: a raw disk in the work directory."""

    path: Path
    format: str
    layout: DiskLayout


@dataclass(frozen=True)
class Validation:
    """What the validate step proved about the disk."""

    ran: bool  # False with --no-validate: the image is published unverified
    failure: str | None = None  # why it failed (continueDistributeOnFailure lets such a disk through)
    report: BootReport | None = None
    known_digest: KnownDigest | None = None  # the disk's digest, computed during the boot

    @property
    def passed(self) -> bool:
        return self.ran and self.failure is None


@dataclass(frozen=True)
class BuildOutcome:
    """What `build()` returns: the run's final state as AIB reports it, and its outputs."""

    run_id: str
    state: str  # Succeeded | PartiallySucceeded (Failed and Canceled raise)
    message: str
    outputs: tuple[RunOutput, ...] = ()


@dataclass
class Workspace:
    """The run's places on disk and what they hold now; `build()` cleans or keeps them at the end."""

    work: Path
    scratch: ScratchDir | None = None
    root: Path | None = None  # the root tree while it exists (in scratch space, or kept in `work`)
    disk: Path | None = None
    disk_format: str = "raw"
    outputs: list[RunOutput] = field(default_factory=list)
