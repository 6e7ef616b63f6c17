"""`kiln factory ...` (the DevTest Labs image factory) and `kiln lab ...` (labs and their images).

    kiln factory validate CONFIG_DIR
    kiln factory build CONFIG_DIR [--max-concurrent-jobs N] [--local]
    kiln factory save
    kiln factory distribute CONFIG_DIR [--max-concurrent-jobs 20] [--create-labs-in REGION]
    kiln factory retire CONFIG_DIR --images-to-save N [--dry-run]
    kiln factory cleanup [--dry-run]
    kiln factory run CONFIG_DIR [--local]             (all of the above, in order)
    kiln lab create ID --location R | list | show ID | delete ID [--with-images]
    kiln lab image list LAB | show ID | delete ID

The factory lab (where golden images are saved) is `--factory-lab ID` or $KILN_FACTORY_LAB,
created on first use in `--location` (default: the first configured region). The steps and
their order are kiln.factory.run's; this module parses options and prints. With `[cluster] queue`
configured, builds run as jobs on the cluster's workers (`--local`: in place, as without one).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from kiln.cli import App, pass_app
from kiln.cli.common import (
    F,
    emit,
    json_option,
    location_option,
    make_monitor,
    open_store,
    print_json,
    store_opener,
)

if TYPE_CHECKING:
    from kiln.factory.build import BuildReport, SavedImage
    from kiln.factory.config import Factory
    from kiln.factory.distribute import DistributionReport
    from kiln.factory.retention import CleanupReport, Retirement
    from kiln.factory.run import FactorySession
    from kiln.pipeline.context import BuildOptions


def _factory_lab_opt(f: F) -> F:
    from kiln.factory import DEFAULT_FACTORY_LAB

    f = location_option("Region of the factory lab when it is created")(f)
    return click.option("--factory-lab", envvar="KILN_FACTORY_LAB", default=DEFAULT_FACTORY_LAB, show_default=True,
                        help="The factory lab's id (golden images are saved there).")(f)


def _artifact_opt(f: F) -> F:
    return click.option("--artifact-repo", "artifact_repos", multiple=True, type=click.Path(path_type=Path),
                        help="A DevTest Labs artifact repository folder (default: CONFIG_DIR/Artifacts). Repeatable.")(f)


def _session(app: App, factory_lab: str, location: str | None) -> FactorySession:
    from kiln import ids
    from kiln.factory.run import FactorySession

    return FactorySession(app.config, store_opener(app), ids.parse(factory_lab, ids.LAB, what="factory lab id"),
                          location or app.config.default_location, make_monitor(app))


def _load(app: App, config_dir: Path, artifact_repos: tuple[Path, ...], session: FactorySession) -> Factory:
    from kiln.factory import load_factory

    return load_factory(config_dir, app.config, artifact_repos=tuple(p.absolute() for p in artifact_repos),
                        lab_name=session.factory_lab.name, location=session.location)


class Printer:
    """The factory's steps, shown as text lines (or, for a single step with --json, as JSON)."""

    def __init__(self, as_json: bool = False) -> None:
        self.as_json = as_json

    def built(self, report: BuildReport) -> None:
        for r in report.results:
            click.echo(f"{'built ' if r.ok else 'FAILED'} {r.image_path}  {r.staging_image or r.error.splitlines()[0]}")

    def saved(self, saved: list[SavedImage]) -> None:
        for s in saved:
            click.echo(f"saved {s.custom_image}  ({s.image_path}{'' if s.boot_tested else ', NOT boot-tested'})")

    def distributed(self, report: DistributionReport) -> None:
        if self.as_json:
            print_json(report.to_json())
            return
        click.echo(f"{len(report.done)} done, {len(report.skipped)} skipped, {len(report.failed)} failed "
                   f"(labs × images: {report.total}; at most {report.max_in_flight} job(s) at once)")
        for label, error in report.failed:
            click.echo(f"FAILED {label}: {error}")

    def retiring(self, plan: list[Retirement], dry_run: bool) -> None:
        if self.as_json:
            print_json({"dryRun": dry_run, "retire": [r.to_json() for r in plan]})
            return
        for r in plan:
            click.echo(f"{'would retire' if dry_run else 'retire'} {r.image.id}  ({r.reason})")
        if not plan:
            click.echo("nothing to retire")

    def cleaned(self, report: CleanupReport, dry_run: bool) -> None:
        if self.as_json:
            print_json({"dryRun": dry_run, **report.to_json()})
            return
        verb = "would remove" if dry_run else "removed"
        for w in report.work_dirs:
            click.echo(f"{verb} work dir {w}")
        for i in report.staging_images:
            click.echo(f"{verb} failed build {i}")
        for k in report.kept:
            click.echo(f"kept {k} (marked to keep)")
        click.echo(f"{report.bytes_freed / (1 << 20):.1f} MiB freed" if not dry_run else "dry run: nothing removed")


def _build_options(no_validate: bool, boot_timeout: float) -> BuildOptions:
    from kiln.pipeline.context import BuildOptions

    return BuildOptions(validate=not no_validate, boot_timeout_s=boot_timeout)


# ---------------------------------------------------------------- commands


def register_factory(cli: click.Group) -> None:
    @cli.group("factory")
    def factory() -> None:
        """The DevTest Labs image factory: golden images built, saved, distributed to labs, retired."""

    config_arg = click.argument("config_dir", type=click.Path(path_type=Path))
    jobs_opt = click.option("--max-concurrent-jobs", "jobs", type=click.IntRange(min=1), default=None,
                            help="How many jobs at once.")
    local_opt = click.option("--local", is_flag=True,
                             help="Build on this host even when a cluster queue is configured.")

    @factory.command("validate")
    @config_arg
    @_artifact_opt
    @_factory_lab_opt
    @json_option
    @pass_app
    def validate(app: App, config_dir: Path, artifact_repos: tuple[Path, ...], factory_lab: str, location: str | None,
                 as_json: bool) -> None:
        """Check CONFIG_DIR (golden images, artifacts, Labs.json): every problem at once, exit 2."""
        from kiln.errors import ValidationFailed

        try:
            f = _load(app, config_dir, artifact_repos, _session(app, factory_lab, location))
        except ValidationFailed as e:
            if as_json:
                print_json({"valid": False, "problems": [p.to_json() for p in e.problems]})
                raise click.exceptions.Exit(2) from e
            raise
        if as_json:
            print_json({"valid": True, "goldenImages": [
                {"imagePath": g.image_path, "form": g.form, "osType": g.os_type, "description": g.description,
                 "steps": len(g.template.customize)} for g in f.golden_images],
                "labs": [{"id": str(s.id), "imagePaths": list(s.image_paths)} for s in f.labs]})
            return
        click.echo(f"{config_dir}: {len(f.golden_images)} golden image(s), {len(f.labs)} lab(s): valid")
        for g in f.golden_images:
            click.echo(f"  {g.image_path}  [{g.form}, {g.os_type}, {len(g.template.customize)} step(s)]  {g.description}")

    @factory.command("build")
    @config_arg
    @jobs_opt
    @click.option("--no-validate", is_flag=True, help="Skip boot tests (images are saved as not boot-tested).")
    @click.option("--boot-timeout", type=float, default=300.0, show_default=True)
    @local_opt
    @_artifact_opt
    @_factory_lab_opt
    @pass_app
    def build(app: App, config_dir: Path, jobs: int | None, no_validate: bool, boot_timeout: float, local: bool,
              artifact_repos: tuple[Path, ...], factory_lab: str, location: str | None) -> None:
        """Build every golden image (default one at a time) into a staging image that `factory save` saves."""
        from kiln.factory.run import build_images, raise_for_build_failures

        session = _session(app, factory_lab, location)
        f = _load(app, config_dir, artifact_repos, session)
        report = build_images(session, f, jobs=jobs or 1, options=_build_options(no_validate, boot_timeout),
                              local=local)
        Printer().built(report)
        raise_for_build_failures(report)

    @factory.command("save")
    @_factory_lab_opt
    @pass_app
    def save(app: App, factory_lab: str, location: str | None) -> None:
        """Save built images into the factory lab as custom images (factory naming, no byte copied)."""
        from kiln.factory.run import save_built

        Printer().saved(save_built(_session(app, factory_lab, location)))

    @factory.command("distribute")
    @config_arg
    @jobs_opt
    @click.option("--create-labs-in", default=None, metavar="REGION", help="Create labs Labs.json lists but the catalog lacks.")
    @click.option("--include-unverified", is_flag=True, help="Also distribute images that were not boot-tested.")
    @_artifact_opt
    @_factory_lab_opt
    @json_option
    @pass_app
    def distribute(app: App, config_dir: Path, jobs: int | None, create_labs_in: str | None, include_unverified: bool,
                   artifact_repos: tuple[Path, ...], factory_lab: str, location: str | None, as_json: bool) -> None:
        """Publish each factory image into every lab whose ImagePaths select it (skips what labs have).

        Reads Labs.json and which golden images exist; the golden templates are not compiled (the
        images are built already), so --artifact-repo is accepted but not needed."""
        from kiln.factory.config import load_labs
        from kiln.factory.run import distribute_to_labs, raise_for_distribution_failures

        session = _session(app, factory_lab, location)
        report = distribute_to_labs(session, load_labs(config_dir), jobs=jobs or 20, create_in=create_labs_in,
                                    include_unverified=include_unverified)
        Printer(as_json).distributed(report)
        raise_for_distribution_failures(report)

    @factory.command("retire")
    @config_arg
    @click.option("--images-to-save", type=int, required=True, help="Boot-tested images to keep per lab and ImagePath.")
    @click.option("--dry-run", is_flag=True, help="Print exactly what would be retired; change nothing.")
    @_artifact_opt
    @_factory_lab_opt
    @json_option
    @pass_app
    def retire_cmd(app: App, config_dir: Path, images_to_save: int, dry_run: bool, artifact_repos: tuple[Path, ...],
                   factory_lab: str, location: str | None, as_json: bool) -> None:
        """Keep the newest N boot-tested images per ImagePath; retire the rest and orphans."""
        from kiln.factory.run import plan_retirement_of, retire_planned

        session = _session(app, factory_lab, location)
        plan = plan_retirement_of(session, _load(app, config_dir, artifact_repos, session), images_to_save)
        Printer(as_json).retiring(plan, dry_run)
        if not dry_run:
            retire_planned(session, plan)

    @factory.command("cleanup")
    @click.option("--dry-run", is_flag=True, help="Print what would be removed; change nothing.")
    @_factory_lab_opt
    @json_option
    @pass_app
    def cleanup_cmd(app: App, dry_run: bool, factory_lab: str, location: str | None, as_json: bool) -> None:
        """Remove leftover build work (dead runs' work dirs, failed builds), skipping what is marked to keep."""
        from kiln.factory.run import clean_up

        Printer(as_json).cleaned(clean_up(_session(app, factory_lab, location), dry_run=dry_run), dry_run)

    @factory.command("run")
    @config_arg
    @click.option("--max-concurrent-jobs", "jobs", type=click.IntRange(min=1), default=20, show_default=True,
                  help="Distribution jobs at once.")
    @click.option("--max-concurrent-builds", "builds", type=click.IntRange(min=1), default=1, show_default=True)
    @click.option("--images-to-save", type=int, default=2, show_default=True)
    @click.option("--create-labs-in", default=None, metavar="REGION")
    @click.option("--no-validate", is_flag=True)
    @click.option("--boot-timeout", type=float, default=300.0, show_default=True)
    @local_opt
    @_artifact_opt
    @_factory_lab_opt
    @pass_app
    def run(app: App, config_dir: Path, jobs: int, builds: int, images_to_save: int, create_labs_in: str | None,
            no_validate: bool, boot_timeout: float, local: bool, artifact_repos: tuple[Path, ...], factory_lab: str,
            location: str | None) -> None:
        """validate, build, save, distribute, retire, cleanup — in order."""
        from kiln.factory.run import RunOptions, run_factory

        session = _session(app, factory_lab, location)
        options = RunOptions(build_jobs=builds, distribute_jobs=jobs, images_to_save=images_to_save,
                             create_labs_in=create_labs_in, build=_build_options(no_validate, boot_timeout),
                             local=local)
        run_factory(session, _load(app, config_dir, artifact_repos, session), options, Printer())


def register_lab(cli: click.Group) -> None:
    @cli.group("lab")
    def lab() -> None:
        """DevTest Labs labs (in a region) and their custom images."""

    @lab.command("create")
    @click.argument("lab_id")
    @location_option("Region")
    @json_option
    @pass_app
    def create(app: App, lab_id: str, location: str | None, as_json: bool) -> None:
        """Create the lab LAB_ID (.../Microsoft.DevTestLab/labs/NAME)."""
        with open_store(app) as store:
            found = store.labs.create(lab_id, location or app.config.default_location)
        if as_json:
            print_json(found.to_json(0))
        else:
            click.echo(f"created {found.id} in {found.location}")

    @lab.command("list")
    @json_option
    @pass_app
    def list_(app: App, as_json: bool) -> None:
        """List labs."""
        with open_store(app) as store:
            labs = [(lab, len(store.labs.images(lab.id))) for lab in store.labs.list()]
        emit(as_json, [lab.to_json(n) for lab, n in labs],
             lambda: (("ID", "LOCATION", "IMAGES"), [(str(lab.id), lab.location, n) for lab, n in labs]))

    @lab.command("show")
    @click.argument("lab_id")
    @json_option
    @pass_app
    def show(app: App, lab_id: str, as_json: bool) -> None:
        """Show one lab."""
        with open_store(app) as store:
            found = store.labs.get(lab_id)
            count = len(store.labs.images(found.id))
        data = found.to_json(count)
        emit(as_json, data, lambda: (("FIELD", "VALUE"), [("id", found.id), ("location", found.location),
                                                          ("custom images", count),
                                                          ("created", data["properties"]["createdDate"])]),
             whole=("FIELD", "VALUE"))

    @lab.command("delete")
    @click.argument("lab_id")
    @click.option("--with-images", is_flag=True, help="Also delete the lab's custom images.")
    @pass_app
    def delete(app: App, lab_id: str, with_images: bool) -> None:
        """Delete a lab (refused while it has custom images, unless --with-images)."""
        with open_store(app) as store:
            found = store.labs.delete(lab_id, with_images=with_images)
        click.echo(f"deleted {found.id}")

    @lab.group("image")
    def image() -> None:
        """A lab's custom images."""

    @image.command("list")
    @click.argument("lab_id")
    @json_option
    @pass_app
    def image_list(app: App, lab_id: str, as_json: bool) -> None:
        """List the custom images of LAB_ID, oldest first."""
        with open_store(app) as store:
            images = store.labs.images(lab_id)
        emit(as_json, [i.to_json() for i in images],
             lambda: (("ID", "IMAGE PATH", "OS", "STATE", "BOOT-TESTED", "CREATED", "DIGEST"),
                      [(str(i.id), i.image_path, i.os_type, i.os_state_detail, "yes" if i.boot_tested else "no",
                        i.to_json()["properties"]["creationDate"], i.digest[:16]) for i in images]))

    @image.command("show")
    @click.argument("image_id")
    @pass_app
    def image_show(app: App, image_id: str) -> None:
        """Show one custom image as JSON."""
        with open_store(app) as store:
            print_json(store.labs.get_image(image_id).to_json())

    @image.command("delete")
    @click.argument("image_id")
    @pass_app
    def image_delete(app: App, image_id: str) -> None:
        """Delete one custom image (its bytes go with the next kiln gc if nothing else uses them)."""
        with open_store(app) as store:
            found = store.labs.delete_image(image_id)
        click.echo(f"deleted {found.id}")


def register(cli: click.Group) -> None:
    register_factory(cli)
    register_lab(cli)
