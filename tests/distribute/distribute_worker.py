"""A separate process that builds (well: makes) disks and distributes them, for concurrency tests.

    python distribute_worker.py HOME WORKER_NUMBER COUNT

Each of COUNT rounds makes a distinct small disk in the work dir and distributes it to a
SharedImage target (Latest versioning, shared definition) and a ManagedImage target of its own.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: store_helpers and envcheck

from kiln import ids  # noqa: E402
from kiln.config import load_config  # noqa: E402
from kiln.distribute import BuiltArtifact, distribute  # noqa: E402
from kiln.store import Store  # noqa: E402
from kiln.template.model import ManagedImageTarget, SharedImageTarget, TargetRegion  # noqa: E402
from store_helpers import make_disk  # noqa: E402

SUB = "/subscriptions/0000/resourceGroups/rg/providers"
DEF = f"{SUB}/Microsoft.Compute/galleries/gal/images/web"
TPL = f"{SUB}/Microsoft.VirtualMachineImages/imageTemplates/t"


def main(home: Path, worker: int, count: int) -> None:
    config = load_config(home)
    with Store.open(config) as store:
        tid = ids.parse(f"{TPL}{worker}")
        store.runs.register_template(tid, {"worker": worker})
        for i in range(count):
            disk = make_disk(config.work_dir / f"w{worker}-{i}" / "disk.raw", 16, 1, seed=1000 * worker + i)
            run_id = store.runs.create(tid)
            targets = [
                SharedImageTarget(run_output_name="sig", gallery_image_id=DEF,
                                  target_regions=(TargetRegion(name="eastus"), TargetRegion(name="westus2"))),
                ManagedImageTarget(run_output_name="img", image_id=f"{SUB}/Microsoft.Compute/images/w{worker}",
                                   location="westus2"),
            ]
            outs = distribute(store, targets, BuiltArtifact(disk=disk, boot_tested=True), template_id=tid, run_id=run_id)
            assert all(o.provisioning_state == "Succeeded" for o in outs), outs
            store.runs.finish(run_id, "Succeeded")
            print(outs[0].artifact_id, flush=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]))
