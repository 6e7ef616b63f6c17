"""A run's record in the catalog, moved through AIB's states as the pipeline goes.

The pipeline only says what happened (`sub_state("Validating")`, `finish("Failed", why)`); this
module turns that into catalog updates, so `kiln runs list|show` (or another process) sees the
run's progress while it happens. Each run gets a folder under the state home's `runs/` holding
its customization.log and the serial console of its boot test.
"""

from __future__ import annotations

import os
import uuid
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from kiln.config import Config
from kiln.ids import ResourceId
from kiln.store import worklock
from kiln.template.model import ImageTemplate

if TYPE_CHECKING:
    from kiln.store.runs import RunOutput
    from kiln.store.store import Store


@dataclass
class RunRecorder:
    store: Store
    run_id: str
    log_path: Path
    finished: bool = field(default=False)

    @classmethod
    def start(cls, store: Store, template: ImageTemplate, template_id: ResourceId, config: Config) -> RunRecorder:
        from kiln.template.dump import dump_template

        run_id = uuid.uuid4().hex[:12]
        log_path = config.runs_dir / run_id / "customization.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        store.runs.register_template(template_id, dump_template(template))
        store.runs.create(template_id, log_path=str(log_path), run_sub_state="Queued", run_id=run_id)
        return cls(store, run_id, log_path)

    def hold_work(self, work: Path) -> None:
        """Create the run's work directory and lock it until this recorder (the build) is gone.

        The lock (kiln.store.worklock) is how `kiln gc` tells a killed run's leftover directory
        from a live one's, whatever happened to the pid.
        """
        fd = worklock.hold(work)
        weakref.finalize(self, os.close, fd)

    def sub_state(self, name: str) -> None:
        self.store.runs.update(self.run_id, run_sub_state=name)

    def finish(self, state: str, message: str, outputs: Sequence[RunOutput]) -> None:
        if self.finished:
            return
        self.store.runs.finish(self.run_id, state, message)
        self.finished = True
