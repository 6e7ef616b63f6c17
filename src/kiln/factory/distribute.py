"""Fan-out: every lab in Labs.json gets the factory lab's images its ImagePaths select.

The configuration is a `Factory` or, for `kiln factory distribute` alone, the lighter `FactoryLabs`
(Labs.json and which golden images exist). The plan is (lab × image) pairs: each factory custom image that passed its boot test, for each lab
whose ImagePaths select the image's ImagePath. A pair the lab already holds (same name, same bytes)
is *skipped*, so a rerun after an interruption does only what is missing. The rest are *jobs*, run
up to `max_jobs` at once in threads. A job is one lab image, published in two halves
(`Labs.prepare_image`, then `Labs.commit_images`): first the lab's region gets the blob (reflink
or hardlink, or a verified copy when the lab is in another region; jobs needing the same blob in
the same region take turns, so the bytes are copied once), then the job hands its row to a
`GroupCommit`, which lists it together with the rows other jobs have ready in one transaction. A
row is listed only after its own bytes are complete, each transaction is all or nothing, and a
job ends only once its row is committed: a kill at any point leaves each pair listed with complete
bytes or not listed, and a rerun publishes what is missing.

Every job reports a `step` event when it starts and a `result` when it ends, carrying the number of
jobs in flight, so the concurrency limit can be checked from the events alone; `progress` events
count labs × images done, skipped and failed.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from kiln.errors import InvalidInput, KilnError, Problem, ValidationFailed
from kiln.events import Monitor
from kiln.store.db import GroupCommit
from kiln.store.labs import Lab, LabCustomImage, PendingImage

if TYPE_CHECKING:
    from kiln.factory.config import Factory, FactoryLabs
    from kiln.store.blobs import Blob


@dataclass(frozen=True)
class Job:
    lab: Lab
    image: LabCustomImage  # the factory lab's image


@dataclass
class DistributionReport:
    total: int = 0
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    max_in_flight: int = 0
    transactions: int = 0  # catalog transactions that listed the done images

    def to_json(self) -> dict:
        return {"total": self.total, "done": self.done, "skipped": self.skipped,
                "failed": [{"image": i, "error": e} for i, e in self.failed], "maxInFlight": self.max_in_flight}


def target_labs(store, factory: Factory | FactoryLabs, factory_lab: Lab, *, create_in: str | None = None) -> list[Lab]:
    """The catalog labs behind Labs.json (created in `create_in` if missing, in one transaction;
    else all missing ones are an error)."""
    specs = [spec for spec in factory.labs if spec.id.key != factory_lab.id.key]
    known = {lab.id.key: lab for lab in store.labs.list()}
    missing = [spec for spec in specs if spec.id.key not in known]
    if missing and create_in:
        known.update((lab.id.key, lab) for lab in store.labs.create_many([spec.id for spec in missing], create_in))
    elif missing:
        raise ValidationFailed([Problem(f"lab {spec.id} does not exist", f".Labs[{spec.index}]",
                                        str(factory.root / "Labs.json"),
                                        f"kiln lab create {spec.id} --location REGION, or pass --create-labs-in REGION")
                                for spec in missing])
    return [known[spec.id.key] for spec in specs]


def plan(store, factory: Factory | FactoryLabs, factory_lab: Lab, labs: list[Lab], *,
         include_unverified: bool = False) -> tuple[list[Job], list[str]]:
    """(jobs to run, pairs already there) for every lab × selected factory image."""
    images = [i for i in store.labs.images(factory_lab.id)
              if i.image_path and factory.has_golden(i.image_path) and (i.boot_tested or include_unverified)]
    specs = {s.id.key: s for s in factory.labs}
    jobs, skipped = [], []
    for lab in labs:
        spec = specs[lab.id.key]
        have = {i.name.lower(): i for i in store.labs.images(lab.id)}
        for image in images:
            if not spec.selects(image.image_path):
                continue
            other = have.get(image.name.lower())
            if other is not None and other.digest == image.digest:
                skipped.append(f"{lab.id.name}/{image.name}")
            else:
                jobs.append(Job(lab, image))
    return jobs, skipped


def distribute_images(open_store: Callable[[], object], store, factory: Factory | FactoryLabs, factory_lab: Lab,
                      labs: list[Lab], *, monitor: Monitor, max_jobs: int = 20,
                      include_unverified: bool = False) -> DistributionReport:
    if max_jobs < 1:
        raise InvalidInput(f"--max-concurrent-jobs {max_jobs} must be at least 1")
    jobs, skipped = plan(store, factory, factory_lab, labs, include_unverified=include_unverified)
    report = DistributionReport(total=len(jobs) + len(skipped), skipped=skipped)
    blobs: dict[str, Blob] = {}
    for digest in {j.image.digest for j in jobs}:
        try:
            blobs[digest] = store.blobs.get(digest)
        except KilnError:
            pass  # the jobs of this image fail with that error, each on its own
    lock = threading.Lock()
    placing: defaultdict[tuple[str, str], threading.Lock] = defaultdict(threading.Lock)  # (region, digest) → turn
    commits: GroupCommit[PendingImage, KilnError | None] = GroupCommit()
    in_flight = 0
    local = threading.local()
    stores: list = []

    def progress() -> None:
        finished = len(report.done) + len(report.skipped) + len(report.failed)
        monitor.progress("factory distribute", finished, report.total,
                         f"{len(report.done)} done, {len(report.skipped)} skipped, {len(report.failed)} failed")

    def publish(job: Job) -> None:
        s = local.store
        image = job.image
        blob = blobs.get(image.digest) or s.blobs.get(image.digest)
        with lock:
            turn = placing[(job.lab.location.lower(), image.digest)]
        with turn:
            pending = s.labs.prepare_image(job.lab, image.name, blob, os_type=image.os_type, os_state=image.os_state,
                                           description=image.description, author=image.author,
                                           image_path=image.image_path, boot_tested=image.boot_tested,
                                           source=str(image.id), created=image.created)
        error = commits.submit(pending, s.labs.commit_images)
        if error is not None:
            raise error

    def run(job: Job) -> None:
        nonlocal in_flight
        label = f"{job.lab.id.name}/{job.image.name}"
        if not hasattr(local, "store"):
            local.store = open_store()
            with lock:
                stores.append(local.store)
        with lock:
            in_flight += 1
            report.max_in_flight = max(report.max_in_flight, in_flight)
            monitor.step(f"job {label}", "publish", job="start", in_flight=in_flight)
        ok, message = True, ""
        try:
            publish(job)
        except KilnError as e:
            ok, message = False, e.render()
        with lock:
            in_flight -= 1
            (report.done.append(label) if ok else report.failed.append((label, message)))
            monitor.result(f"job {label}", ok=ok, message=message, job="end", in_flight=in_flight)
            progress()

    monitor.begin("factory distribute", f"{len(jobs)} job(s), {len(skipped)} already there, up to {max_jobs} at once")
    progress()
    try:
        if jobs:
            with ThreadPoolExecutor(max_workers=min(max_jobs, len(jobs)), thread_name_prefix="distribute") as pool:
                for f in [pool.submit(run, j) for j in jobs]:
                    f.result()
    finally:
        for s in stores:
            s.close()
    report.transactions = commits.batches
    monitor.finish("factory distribute", ok=not report.failed,
                   message=f"{len(report.done)} done, {len(report.skipped)} skipped, {len(report.failed)} failed")
    return report
