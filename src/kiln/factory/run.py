"""The factory's run order: build → save → distribute → retire → cleanup, as one function.

    session = FactorySession(config, open_store, factory_lab_id, location, monitor)
    run_factory(session, load_factory(CONFIG_DIR, config), RunOptions(...), reporter)

Each step is also a function of its own (`build_images`, `save_built`, `distribute_to_labs`,
`plan_retirement_of`/`retire_planned`, `clean_up`), which is what the single-step commands (`kiln
factory build`, `save`, ...) call, so a step does the same whether it runs alone or in a run. A
step opens its own Store (builds and distribution open one more per worker thread) and makes sure
the factory lab exists. What a step produced goes to the `Reporter` as soon as the step ends, so a
user sees each step's outcome before the next one starts; the reporter only shows, it decides
nothing. A step that fails stops the run (after its report), like the factory's own scripts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from kiln import ids
from kiln.errors import BuildFailed
from kiln.events import Monitor

if TYPE_CHECKING:
    from kiln.config import Config
    from kiln.factory.build import BuildReport, BuiltGoldenImage, SavedImage
    from kiln.factory.config import Factory, FactoryLabs
    from kiln.factory.distribute import DistributionReport
    from kiln.factory.retention import CleanupReport, Retirement
    from kiln.pipeline.context import BuildOptions
    from kiln.store import Store
    from kiln.store.labs import Lab


@dataclass(frozen=True)
class FactorySession:
    """Where the factory works: the state home, its factory lab (created in `location` on first use)."""

    config: Config
    open_store: Callable[[], Store]
    factory_lab: ids.ResourceId
    location: str
    monitor: Monitor

    def lab(self, store: Store) -> Lab:
        return store.labs.ensure(self.factory_lab, self.location)


@dataclass(frozen=True)
class RunOptions:
    build_jobs: int = 1
    distribute_jobs: int = 20
    images_to_save: int = 2
    create_labs_in: str | None = None
    build: BuildOptions | None = None  # the pipeline's options for every golden image
    local: bool = False  # build in place even when a cluster queue is configured


class Reporter(Protocol):
    """Shows each step's outcome (the CLI prints it); called once per step, right after it."""

    def built(self, report: BuildReport) -> None: ...
    def saved(self, saved: list[SavedImage]) -> None: ...
    def distributed(self, report: DistributionReport) -> None: ...
    def retiring(self, plan: list[Retirement], dry_run: bool) -> None: ...
    def cleaned(self, report: CleanupReport, dry_run: bool) -> None: ...


def run_factory(session: FactorySession, factory: Factory, options: RunOptions, reporter: Reporter) -> None:
    """validate (done: `factory` loaded cleanly), build, save, distribute, retire, cleanup — in order."""
    check_labs(session, factory, create_in=options.create_labs_in)  # before the long builds: fails in a second
    earlier = unsaved(session)  # built by an earlier `kiln factory build` whose save never ran
    report = build_images(session, factory, jobs=options.build_jobs, options=options.build, local=options.local)
    reporter.built(report)
    raise_for_build_failures(report)
    reporter.saved(save_built(session, [*earlier, *report.built]))
    distributed = distribute_to_labs(session, factory, jobs=options.distribute_jobs,
                                     create_in=options.create_labs_in)
    reporter.distributed(distributed)
    raise_for_distribution_failures(distributed)
    plan = plan_retirement_of(session, factory, options.images_to_save)
    reporter.retiring(plan, False)
    retire_planned(session, plan)
    reporter.cleaned(clean_up(session), False)


# ---------------------------------------------------------------- the steps


def check_labs(session: FactorySession, factory: Factory | FactoryLabs, *, create_in: str | None) -> None:
    """Every lab Labs.json names exists (or is created in `create_in`)."""
    from kiln.factory.distribute import target_labs

    with session.open_store() as store:
        target_labs(store, factory, session.lab(store), create_in=create_in)


def build_images(session: FactorySession, factory: Factory, *, jobs: int = 1,
                 options: BuildOptions | None = None, local: bool = False) -> BuildReport:
    """Build the golden images: on the cluster's workers when `[cluster] queue` is set (unless `local`)."""
    from kiln.factory.build import build_golden_images, refuse_windows

    refuse_windows(factory, factory.golden_images)  # before the factory lab is created: a refusal changes nothing
    queue = None
    if session.config.cluster.queue and not local:
        from kiln.cluster.submit import engine

        queue = engine(session.config)  # unreachable Redis: a clear error before anything is created
    with session.open_store() as store:
        lab = session.lab(store)
    return build_golden_images(factory, config=session.config, open_store=session.open_store, lab=lab,
                               monitor=session.monitor, max_jobs=jobs, options=options, queue=queue)


def raise_for_build_failures(report: BuildReport) -> None:
    from kiln.factory.build import raise_for_failures

    raise_for_failures(report)


def unsaved(session: FactorySession) -> list[BuiltGoldenImage]:
    from kiln.factory.build import unsaved_golden_images

    with session.open_store() as store:
        return unsaved_golden_images(store, session.lab(store))


def save_built(session: FactorySession, built: Sequence[BuiltGoldenImage] | None = None) -> list[SavedImage]:
    """Save `built` (default: every built golden image no save has finished) into the factory lab."""
    from kiln.factory.build import save_images, unsaved_golden_images

    with session.open_store() as store:
        lab = session.lab(store)
        return save_images(store, lab, unsaved_golden_images(store, lab) if built is None else built, session.monitor)


def distribute_to_labs(session: FactorySession, factory: Factory | FactoryLabs, *, jobs: int = 20,
                       create_in: str | None = None, include_unverified: bool = False) -> DistributionReport:
    from kiln.factory.distribute import distribute_images, target_labs

    with session.open_store() as store:
        lab = session.lab(store)
        labs = target_labs(store, factory, lab, create_in=create_in)
        return distribute_images(session.open_store, store, factory, lab, labs, monitor=session.monitor,
                                 max_jobs=jobs, include_unverified=include_unverified)


def raise_for_distribution_failures(report: DistributionReport) -> None:
    if report.failed:
        raise BuildFailed(f"{len(report.failed)} of {report.total} lab image(s) could not be published",
                          hint="rerun kiln factory distribute: what is there already is skipped")


def plan_retirement_of(session: FactorySession, factory: Factory, images_to_save: int) -> list[Retirement]:
    from kiln.factory.retention import plan_retirement

    with session.open_store() as store:
        return plan_retirement(store, factory, session.lab(store), images_to_save)


def retire_planned(session: FactorySession, plan: list[Retirement]) -> None:
    from kiln.factory.retention import retire

    with session.open_store() as store:
        retire(store, plan, session.monitor)


def clean_up(session: FactorySession, *, dry_run: bool = False) -> CleanupReport:
    """Build leftovers; the factory lab is looked up, not created (cleanup changes nothing it need not)."""
    from kiln.factory.retention import cleanup

    with session.open_store() as store:
        return cleanup(store, store.labs.find(session.factory_lab), session.monitor, dry_run=dry_run)
