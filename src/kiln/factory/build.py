"""Building golden images and saving them into the factory lab.

`build_golden_images` runs every golden image through the build pipeline (the same one
`kiln build` uses), up to N at once. Where a golden image says to distribute is not the factory's
concern: each build publishes one managed image in the factory lab's resource group (its
*staging image*), boot-tested like every kiln build, and hands back a `BuiltGoldenImage`: what
was built from which golden image, typed. Windows golden images are refused before anything starts.

Parallel builds run in threads. Each thread opens its own Store (a catalog connection is not shared
between threads) and waits for its own QEMU boot test, as QEMU is tied to the thread that starts it.
Off the main thread the pipeline cannot use its SIGALRM build timeout; the customizers' deadline
still bounds each build. With one job (the default) builds run on the main thread.
With a cluster queue each thread instead enqueues its golden image's build for the workers and
follows it (kiln.factory.queued): N threads, N builds in flight on the cluster at once.

`save_images` turns built golden images into the factory lab's custom images, named by the
factory's convention (kiln.factory.names). The bytes are the staging image's blob: nothing is
copied. The custom image records the staging image it came from, so a save killed between
publishing and removing the staging image is finished by saving again, without a duplicate.

A build and its save can be separate commands (`kiln factory build`, then `kiln factory save`), so
the record also survives in the catalog: the staging image carries it as tags (ImagePath, osState,
description, the kilnFactory marker), written by `BuiltGoldenImage.tags` and read back, once, by
`unsaved_golden_images`. Nothing else reads those tags.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from kiln import ids
from kiln.config import Config
from kiln.errors import BuildFailed, KilnError, Problem, ValidationFailed
from kiln.events import Monitor
from kiln.factory.config import Factory, GoldenImage
from kiln.factory.names import dated_name, unique_name
from kiln.ids import ResourceId
from kiln.store.images import ManagedImage
from kiln.store.labs import Lab
from kiln.template.model import ImageTemplate, ManagedImageTarget

if TYPE_CHECKING:
    from kiln.pipeline.context import BuildOptions
    from kiln.store.store import Store

STAGING_TAG = "kilnFactory"  # tag on staging images: value "golden"
IMAGE_PATH_TAG = "ImagePath"


def staging_tags(image_path: str, os_state: str, description: str) -> dict[str, str]:
    return {IMAGE_PATH_TAG: image_path, STAGING_TAG: "golden", "description": description, "osState": os_state}


@dataclass(frozen=True)
class BuiltGoldenImage:
    """A golden image built into its staging image, not yet saved into the factory lab."""

    image_path: str
    staging_image: ResourceId  # the managed image the build published
    digest: str
    os_type: str
    os_state: str  # Generalized, or Specialized (an exact copy)
    description: str
    boot_tested: bool
    created: float
    run_id: str = ""

    def tags(self) -> dict[str, str]:
        """The record as the staging image's tags, for a save in another process."""
        return staging_tags(self.image_path, self.os_state, self.description)

    @classmethod
    def from_staging_image(cls, image: ManagedImage) -> BuiltGoldenImage:
        return cls(image_path=image.tags.get(IMAGE_PATH_TAG, ""), staging_image=image.id, digest=image.digest,
                   os_type=image.os_type, os_state=image.tags.get("osState", "Generalized"),
                   description=image.tags.get("description", ""), boot_tested=image.boot_tested,
                   created=image.created)


@dataclass(frozen=True)
class BuildResult:
    image_path: str
    ok: bool
    run_id: str = ""
    built: BuiltGoldenImage | None = None
    error: str = ""

    @property
    def staging_image(self) -> str:
        return str(self.built.staging_image) if self.built else ""


@dataclass
class BuildReport:
    results: list[BuildResult] = field(default_factory=list)

    @property
    def failed(self) -> list[BuildResult]:
        return [r for r in self.results if not r.ok]

    @property
    def built(self) -> list[BuiltGoldenImage]:
        """What the builds made, oldest first (the order a save names them in)."""
        return sorted((r.built for r in self.results if r.built is not None),
                      key=lambda b: (b.created, b.staging_image.key))


def refuse_windows(factory: Factory, selected: tuple[GoldenImage, ...]) -> None:
    problems = [Problem("Windows images cannot be built here: no Windows installation media is reachable on this host",
                        "", str(g.file), "kiln factory validate still checks Windows golden images; build Linux ones here")
                for g in selected if g.os_type == "Windows"]
    if problems:
        raise ValidationFailed(problems)


def staging_id(lab: Lab, golden: GoldenImage, stamp: str) -> ResourceId:
    return ResourceId(lab.id.subscription, lab.id.resource_group, "Microsoft.Compute", ("images",),
                      (f"{golden.template.name}-{stamp}"[:80],))


def factory_template(golden: GoldenImage, location: str, image_id: ResourceId) -> ImageTemplate:
    """The golden image's template as the factory builds it: one staging image in the factory lab's region."""
    tags = staging_tags(golden.image_path, golden.os_state, golden.description)
    target = ManagedImageTarget(run_output_name="factory", image_id=str(image_id), location=location, artifact_tags=tags)
    return dataclasses.replace(golden.template, distribute=(target,), location=location)


def build_golden_images(factory: Factory, *, config: Config, open_store: Callable[[], Store], lab: Lab,
                        monitor: Monitor, max_jobs: int = 1, options: BuildOptions | None = None,
                        only: tuple[str, ...] = (), queue: Any = None) -> BuildReport:
    """Build every golden image (or those whose ImagePath is in `only`) into a staging image.

    With `queue` (a cluster JobEngine) each build is a job on the cluster's workers
    (kiln.factory.queued), followed here: the same step lines, the same staging image."""
    from kiln.pipeline.build import build
    from kiln.pipeline.context import BuildOptions

    selected = tuple(g for g in factory.golden_images if not only or g.image_path in only)
    refuse_windows(factory, selected)
    report = BuildReport()
    lock = threading.Lock()
    stamp = time.strftime("%Y%m%d%H%M%S")
    monitor.begin("factory build", f"{len(selected)} golden image(s), {max_jobs} at a time")

    def one(golden: GoldenImage) -> None:
        image_id = staging_id(lab, golden, stamp)
        store = open_store()
        try:
            # A Specialized golden image is an exact copy: it is not deprovisioned.
            golden_options = dataclasses.replace(options or BuildOptions(), generalize=golden.os_state != "Specialized")
            if queue is not None:
                from kiln.cluster.submit import run_queued
                from kiln.factory.queued import golden_request

                run_id = run_queued(config, queue, golden_request(factory, golden, lab, image_id, golden_options),
                                    monitor)
            else:
                run_id = build(factory_template(golden, lab.location, image_id), config=config, store=store,
                               monitor=monitor, options=golden_options).run_id
            image = store.images.get(image_id)
            built = BuiltGoldenImage(golden.image_path, image.id, image.digest, image.os_type, golden.os_state,
                                     golden.description, image.boot_tested, image.created, run_id)
            result = BuildResult(golden.image_path, True, run_id, built)
        except KilnError as e:
            result = BuildResult(golden.image_path, False, error=e.render())
        finally:
            store.close()
        with lock:
            report.results.append(result)
            monitor.progress("factory build", len(report.results), len(selected),
                             f"{len(report.failed)} failed" if report.failed else "")

    if max_jobs <= 1:
        for g in selected:
            one(g)
    else:
        with ThreadPoolExecutor(max_workers=max_jobs, thread_name_prefix="factory-build") as pool:
            for f in [pool.submit(one, g) for g in selected]:
                f.result()
    report.results.sort(key=lambda r: r.image_path)
    monitor.finish("factory build", ok=not report.failed,
                   message=f"{len(report.results) - len(report.failed)} built, {len(report.failed)} failed")
    return report


def raise_for_failures(report: BuildReport) -> None:
    if report.failed:
        raise BuildFailed("; ".join(f"{r.image_path}: {r.error.splitlines()[0] if r.error else 'failed'}"
                                    for r in report.failed),
                          hint="see kiln runs list and each run's customization.log")


# ---------------------------------------------------------------- save


@dataclass(frozen=True)
class SavedImage:
    staging_image: str
    custom_image: str
    image_path: str
    boot_tested: bool
    new: bool


def staging_images(store: Store, lab: Lab) -> list[ManagedImage]:
    """Managed images the factory built for this lab and has not saved yet, oldest first."""
    found = [i for i in store.images.list()
             if i.tags.get(STAGING_TAG) == "golden" and i.id.subscription.lower() == lab.id.subscription.lower()
             and i.id.resource_group.lower() == lab.id.resource_group.lower()]
    return sorted(found, key=lambda i: (i.created, i.id.key))


def unsaved_golden_images(store: Store, lab: Lab) -> list[BuiltGoldenImage]:
    """The built golden images of earlier builds (other processes) that no save has finished."""
    return [BuiltGoldenImage.from_staging_image(i) for i in staging_images(store, lab)]


def save_images(store: Store, lab: Lab, built: Sequence[BuiltGoldenImage], monitor: Monitor) -> list[SavedImage]:
    """Save each built golden image into the factory lab as a custom image, then drop its staging image."""
    from kiln.distribute.labs import publish_lab_image

    saved: list[SavedImage] = []
    monitor.begin("factory save", f"{len(built)} built image(s) into {lab.id.name}")
    for record in built:
        existing = {i.source.lower(): i for i in store.labs.images(lab.id)}
        done = existing.get(record.staging_image.key)
        new = done is None
        if done is None:
            taken = {i.name.lower() for i in existing.values()}
            name = unique_name(dated_name(record.image_path, record.created), taken)
            done = publish_lab_image(
                store, lab, name, store.blobs.get(record.digest), os_type=record.os_type, os_state=record.os_state,
                description=record.description, image_path=record.image_path, boot_tested=record.boot_tested,
                source=str(record.staging_image), created=record.created, monitor=monitor)
        if store.images.find(record.staging_image) is not None:
            store.images.delete(record.staging_image)
        saved.append(SavedImage(str(record.staging_image), str(done.id), done.image_path, done.boot_tested, new))
        monitor.log(f"saved {done.id.name} ({done.image_path}, {'boot-tested' if done.boot_tested else 'NOT boot-tested'})")
        monitor.progress("factory save", len(saved), len(built))
    monitor.finish("factory save", message=f"{sum(s.new for s in saved)} saved")
    return saved


def ensure_lab(store: Store, lab_id: str | ResourceId, location: str) -> Lab:
    rid = lab_id if isinstance(lab_id, ResourceId) else ids.parse(lab_id, ids.LAB, what="factory lab id")
    return store.labs.find(rid) or store.labs.create(rid, location)
