"""Retention and cleanup: what the factory deletes, decided from a configuration that loaded cleanly.

`plan_retirement` looks at the factory lab and every lab in Labs.json (labs not listed there are
never touched, nor images without an ImagePath: those are not the factory's). Per lab and
ImagePath it keeps the newest N images that passed their boot test; an image that failed or was
never boot-tested counts for nothing: it never takes one of the N places and never pushes a good
image out, and it goes once a newer good image exists. It also retires images whose golden
definition was removed, and images in labs that no longer list their path. The plan depends only
on the catalog and the configuration, and deleting part of it does not change the rest, so a
retire killed halfway is finished by running it again, ending where an uninterrupted run would.

`cleanup` removes build leftovers: work directories of runs that are no longer running (unless the
directory holds the keep marker, `kiln.store.worklock.KEEP_MARKER`, which the pipeline writes
when it keeps a run's work on purpose: errorHandling `abort`, `--keep-work`; a user can drop one
in by hand), staging images of runs that failed, then unreferenced bytes (`kiln gc`).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kiln.errors import InvalidInput
from kiln.events import Monitor
from kiln.factory.build import staging_images
from kiln.factory.config import Factory, LabSpec
from kiln.store.labs import Lab, LabCustomImage
from kiln.store.worklock import KEEP_MARKER

if TYPE_CHECKING:
    from kiln.store.store import Store


@dataclass(frozen=True)
class Retirement:
    image: LabCustomImage
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {"id": str(self.image.id), "lab": self.image.lab_id.name, "name": self.image.name,
                "imagePath": self.image.image_path, "bootTested": self.image.boot_tested, "reason": self.reason}


def plan_retirement(store: Store, factory: Factory, factory_lab: Lab, images_to_save: int) -> list[Retirement]:
    if images_to_save < 1:
        raise InvalidInput(f"--images-to-save {images_to_save} must be at least 1",
                           hint="keeping no image would empty every lab; give 1 or more")
    labs: list[tuple[Lab, LabSpec | None]] = [(factory_lab, None)]
    for listed in factory.labs:
        found = store.labs.find(listed.id)
        if found is not None and found.id != factory_lab.id:
            labs.append((found, listed))
    out: list[Retirement] = []
    for lab, spec in labs:
        groups: dict[str, list[LabCustomImage]] = {}
        for image in store.labs.images(lab.id):
            if not image.image_path:
                continue  # not made by the factory
            if factory.golden(image.image_path) is None:
                out.append(Retirement(image, f"its golden image {image.image_path} was removed"))
            elif spec is not None and not spec.selects(image.image_path):
                out.append(Retirement(image, f"lab {lab.id.name} no longer lists {image.image_path}"))
            else:
                groups.setdefault(image.image_path.lower(), []).append(image)
        for images in groups.values():
            newest_first = sorted(images, key=lambda i: (i.created, i.id.key), reverse=True)
            good = [i for i in newest_first if i.boot_tested]
            kept = good[:images_to_save]
            for image in good[images_to_save:]:
                out.append(Retirement(image, f"older than the {images_to_save} newest boot-tested image(s)"))
            if kept:
                newest_good = kept[0]
                for image in newest_first:
                    if not image.boot_tested and image.created < newest_good.created:
                        out.append(Retirement(image, "not boot-tested, and a newer boot-tested image exists"))
    return sorted(out, key=lambda r: (r.image.lab_id.key, r.image.image_path.lower(), r.image.created))


def retire(store: Store, plan: list[Retirement], monitor: Monitor, *, collect_garbage: bool = True) -> None:
    monitor.begin("factory retire", f"{len(plan)} image(s)")
    for n, r in enumerate(plan, 1):
        if store.labs.find_image(r.image.id) is not None:
            store.labs.delete_image(r.image.id)
        monitor.log(f"retired {r.image.id} ({r.reason})")
        monitor.progress("factory retire", n, len(plan))
    if collect_garbage and plan:
        store.gc(monitor)
    monitor.finish("factory retire", message=f"{len(plan)} retired")


# ---------------------------------------------------------------- cleanup


@dataclass
class CleanupReport:
    work_dirs: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    staging_images: list[str] = field(default_factory=list)
    bytes_freed: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"workDirs": self.work_dirs, "kept": self.kept, "stagingImages": self.staging_images,
                "bytesFreed": self.bytes_freed}


def _kept(work: Path) -> bool:
    return (work / KEEP_MARKER).exists()


def _size(path: Path) -> int:
    total = 0
    for p in [path, *path.rglob("*")] if path.is_dir() else [path]:
        try:
            st = p.lstat()
            total += st.st_blocks * 512 if st.st_nlink == 1 or p.is_dir() else 0
        except OSError:
            pass
    return total


def cleanup(store: Store, factory_lab: Lab | None, monitor: Monitor, *, dry_run: bool = False) -> CleanupReport:
    report = CleanupReport()
    monitor.begin("factory cleanup", "dry run" if dry_run else "")
    runs = {r.run_id: r for r in store.runs.list()}  # list() marks runs of killed processes Failed first
    running = any(r.run_state in ("Running", "Canceling") for r in runs.values())
    work_root = store.config.work_dir
    for entry in sorted(work_root.iterdir()) if work_root.is_dir() else []:
        run = runs.get(entry.name)
        if run is not None:
            if run.run_state in ("Running", "Canceling"):
                continue
            if _kept(entry):
                report.kept.append(str(entry))
                continue
        elif running or _kept(entry):
            # Not a run's folder (a customizer's staging area, a VM's scratch): only when no build is live.
            if _kept(entry):
                report.kept.append(str(entry))
            continue
        report.bytes_freed += _size(entry)
        report.work_dirs.append(str(entry))
        if not dry_run:
            shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink(missing_ok=True)
    if factory_lab is not None:
        # Staging images of runs that failed (continueDistributeOnFailure publishes them unverified).
        failed = {o.artifact_id.lower() for r in runs.values() if r.run_state == "Failed" for o in r.outputs}
        for image in staging_images(store, factory_lab):
            if str(image.id).lower() in failed and not image.boot_tested:
                report.staging_images.append(str(image.id))
                if not dry_run:
                    store.images.delete(image.id)
    if not dry_run:
        report.bytes_freed += store.gc(monitor).bytes_freed
    monitor.finish("factory cleanup", message=f"{len(report.work_dirs)} work dir(s), {len(report.staging_images)} "
                                              f"failed build(s), {len(report.kept)} kept")
    return report
