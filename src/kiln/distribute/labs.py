"""Publishing into DevTest Labs: a stored blob becomes a lab's custom image, one or thousands at once.

Publishing never writes a byte twice: the blob is already in the store, and the lab's region gets
it through `Regions.replicate` (reflink or hardlink on one filesystem; a lab in another region gets
a verified replica there, which lifts Azure's same-region restriction). The catalog row is
written only after the region holds complete, verified bytes, so a lab never lists an incomplete
image and a killed publish is finished by publishing again.

A publish is two halves so that many can share one transaction: `prepare_lab_image` checks the
request and puts the bytes in the lab's region (the slow, parallel part); the store's
`Labs.commit_images` lists any number of prepared images in one write transaction (one fsync for
all of them). `publish_lab_image` is one of each. `publish_lab_images` runs many jobs in threads,
up to `max_jobs` at once: jobs needing the same blob in the same region take turns (so the bytes
are copied once), and each job hands its prepared row to a `GroupCommit`, which lists it together
with the rows other jobs have ready. A job ends only once its row is committed.

Every job reports a `step` event when it starts and a `result` when it ends, carrying the number of
jobs in flight, so a concurrency limit can be checked from the events alone.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypedDict, Unpack

from kiln.errors import KilnError
from kiln.events import Monitor, NullMonitor
from kiln.store.common import OS_STATES, OS_TYPES, choice
from kiln.store.db import GroupCommit, now
from kiln.store.labs import AUTHOR, Lab, LabCustomImage, PendingImage, check_image_name, image_taken

if TYPE_CHECKING:
    from kiln.ids import ResourceId
    from kiln.store import Store
    from kiln.store.blobs import Blob


def prepare_lab_image(
    store: Store,
    lab: str | ResourceId | Lab,
    name: str,
    blob: Blob,
    *,
    os_type: str = "Linux",
    os_state: str = "Generalized",
    description: str = "",
    author: str = AUTHOR,
    image_path: str = "",
    boot_tested: bool = False,
    source: str = "",
    tags: dict[str, str] | None = None,
    created: float | None = None,
    monitor: Monitor | None = None,
) -> PendingImage:
    """Check a publish and put `blob` in the lab's region (verified, never copied twice); the
    lab lists it only once `Labs.commit_images` has written its row. An image of that name with
    other content is refused here (and again, under the write lock, at commit)."""
    found = lab if isinstance(lab, Lab) else store.labs.get(lab)
    rid = found.id.child("customimages", check_image_name(name))
    pending = PendingImage(rid, found, blob.digest, choice(os_type, OS_TYPES, "os type"),
                           choice(os_state, OS_STATES, "os state"), description, author, image_path,
                           boot_tested, source, dict(tags or {}), created if created is not None else now())
    listed = store.labs.listed_digest(rid)
    if listed is not None:
        if listed != blob.digest:
            raise image_taken(rid)
        return pending  # listed already: commit has nothing to do, and the region has the bytes
    store.regions.replicate(blob, found.location, monitor or NullMonitor())
    return pending


class ImageDetails(TypedDict, total=False):
    """`prepare_lab_image`'s keyword arguments, as `publish_lab_image` passes them on."""

    os_type: str
    os_state: str
    description: str
    author: str
    image_path: str
    boot_tested: bool
    source: str
    tags: dict[str, str] | None
    created: float | None
    monitor: Monitor | None


def publish_lab_image(store: Store, lab: str | ResourceId | Lab, name: str, blob: Blob,
                      **details: Unpack[ImageDetails]) -> LabCustomImage:
    """Make the lab offer `blob` as custom image `name` (the details as `prepare_lab_image`'s).
    Publishing the same blob under the same name again is a no-op; another blob under a taken
    name is refused."""
    pending = prepare_lab_image(store, lab, name, blob, **details)
    (error,) = store.labs.commit_images([pending])
    if error is not None:
        raise error
    return store.labs.get_image(pending.id)


@dataclass(frozen=True)
class LabImageJob:
    """Publish `image` (a custom image elsewhere: its blob and details) into `lab` under its name."""

    lab: Lab
    image: LabCustomImage

    @property
    def label(self) -> str:
        return f"{self.lab.id.name}/{self.image.name}"


@dataclass
class FanOutOutcome:
    done: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    max_in_flight: int = 0
    transactions: int = 0  # catalog transactions that listed the done images


def publish_lab_images(open_store: Callable[[], Store], store: Store, jobs: Sequence[LabImageJob], *, max_jobs: int,
                       monitor: Monitor, after_each: Callable[[FanOutOutcome], None] = lambda o: None) -> FanOutOutcome:
    """Run every job, up to `max_jobs` at once, each thread with its own Store from `open_store`.
    A failing job fails alone (its error in `failed`); `after_each` sees the outcome after every job."""
    outcome = FanOutOutcome()
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
    stores: list[Store] = []

    def publish(job: LabImageJob) -> None:
        s = local.store
        image = job.image
        blob = blobs.get(image.digest) or s.blobs.get(image.digest)
        with lock:
            turn = placing[(job.lab.location.lower(), image.digest)]
        with turn:
            pending = prepare_lab_image(s, job.lab, image.name, blob, os_type=image.os_type, os_state=image.os_state,
                                        description=image.description, author=image.author,
                                        image_path=image.image_path, boot_tested=image.boot_tested,
                                        source=str(image.id), created=image.created)
        error = commits.submit(pending, s.labs.commit_images)
        if error is not None:
            raise error

    def run(job: LabImageJob) -> None:
        nonlocal in_flight
        if not hasattr(local, "store"):
            local.store = open_store()
            with lock:
                stores.append(local.store)
        with lock:
            in_flight += 1
            outcome.max_in_flight = max(outcome.max_in_flight, in_flight)
            monitor.step(f"job {job.label}", "publish", job="start", in_flight=in_flight)
        ok, message = True, ""
        try:
            publish(job)
        except KilnError as e:
            ok, message = False, e.render()
        with lock:
            in_flight -= 1
            (outcome.done.append(job.label) if ok else outcome.failed.append((job.label, message)))
            monitor.result(f"job {job.label}", ok=ok, message=message, job="end", in_flight=in_flight)
            after_each(outcome)

    try:
        if jobs:
            with ThreadPoolExecutor(max_workers=min(max_jobs, len(jobs)), thread_name_prefix="distribute") as pool:
                for f in [pool.submit(run, j) for j in jobs]:
                    f.result()
    finally:
        for s in stores:
            s.close()
    outcome.transactions = commits.batches
    return outcome
