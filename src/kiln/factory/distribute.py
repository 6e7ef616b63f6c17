"""Fan-out: every lab in Labs.json gets the factory lab's images its ImagePaths select.

The configuration is a `Factory` or, for `kiln factory distribute` alone, the lighter `FactoryLabs`
(Labs.json and which golden images exist). The plan is (lab × image) pairs: each factory custom
image that passed its boot test, for each lab whose ImagePaths select the image's ImagePath. A
pair the lab already holds (same name, same bytes) is *skipped*, so a rerun after an interruption
does only what is missing. The rest are *jobs*, which kiln.distribute.labs publishes, up to
`max_jobs` at once, many rows to a transaction: a kill at any point leaves each pair listed with
complete bytes or not listed, and a rerun publishes what is missing.

`progress` events count labs × images done, skipped and failed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from kiln.distribute.labs import FanOutOutcome, LabImageJob, publish_lab_images
from kiln.errors import InvalidInput, Problem, ValidationFailed
from kiln.events import Monitor
from kiln.store.labs import Lab

if TYPE_CHECKING:
    from kiln.factory.config import Factory, FactoryLabs
    from kiln.store.store import Store

Job = LabImageJob  # a (lab, factory image) pair to publish


@dataclass
class DistributionReport:
    total: int = 0
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    max_in_flight: int = 0
    transactions: int = 0  # catalog transactions that listed the done images

    def to_json(self) -> dict[str, Any]:
        return {"total": self.total, "done": self.done, "skipped": self.skipped,
                "failed": [{"image": i, "error": e} for i, e in self.failed], "maxInFlight": self.max_in_flight}


def target_labs(store: Store, factory: Factory | FactoryLabs, factory_lab: Lab, *, create_in: str | None = None) -> list[Lab]:
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


def plan(store: Store, factory: Factory | FactoryLabs, factory_lab: Lab, labs: list[Lab], *,
         include_unverified: bool = False) -> tuple[list[Job], list[str]]:
    """(jobs to run, pairs already there) for every lab × selected factory image."""
    images = [i for i in store.labs.images(factory_lab.id)
              if i.image_path and factory.has_golden(i.image_path) and (i.boot_tested or include_unverified)]
    specs = {s.id.key: s for s in factory.labs}
    jobs: list[Job] = []
    skipped: list[str] = []
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


def distribute_images(open_store: Callable[[], Store], store: Store, factory: Factory | FactoryLabs, factory_lab: Lab,
                      labs: list[Lab], *, monitor: Monitor, max_jobs: int = 20,
                      include_unverified: bool = False) -> DistributionReport:
    if max_jobs < 1:
        raise InvalidInput(f"--max-concurrent-jobs {max_jobs} must be at least 1")
    jobs, skipped = plan(store, factory, factory_lab, labs, include_unverified=include_unverified)
    report = DistributionReport(total=len(jobs) + len(skipped), skipped=skipped)

    def progress(outcome: FanOutOutcome) -> None:
        report.done, report.failed = outcome.done, outcome.failed
        finished = len(report.done) + len(report.skipped) + len(report.failed)
        monitor.progress("factory distribute", finished, report.total,
                         f"{len(report.done)} done, {len(report.skipped)} skipped, {len(report.failed)} failed")

    monitor.begin("factory distribute", f"{len(jobs)} job(s), {len(skipped)} already there, up to {max_jobs} at once")
    progress(FanOutOutcome())
    outcome = publish_lab_images(open_store, store, jobs, max_jobs=max_jobs, monitor=monitor,
                                 after_each=progress)
    report.done, report.failed = outcome.done, outcome.failed
    report.max_in_flight, report.transactions = outcome.max_in_flight, outcome.transactions
    monitor.finish("factory distribute", ok=not report.failed,
                   message=f"{len(report.done)} done, {len(report.skipped)} skipped, {len(report.failed)} failed")
    return report
