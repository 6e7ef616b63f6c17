"""The build: a template in, a boot-tested image published to its targets out.

`build()` reads like the pipeline in docs/architecture.md. Each step is a `verb_noun(ctx, ...)`
call that takes the products it needs (typed records from pipeline/context.py) and returns its
own, returns early when there is nothing to do, reports to the monitor, and moves the run's state as AIB does
(Queued → Building → Customizing → Validating → Distributing; Succeeded, PartiallySucceeded,
Failed, Canceled). The run's work directory is removed on success, failure, timeout and Ctrl-C
alike, unless `errorHandling` says `abort` for the failure that happened (then its path and a
ready-to-use command are printed).
"""

from __future__ import annotations

import shlex
import shutil
import signal
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from kiln.config import Config
from kiln.diskfull import build_places, explain_no_space, no_space_error
from kiln.errors import BuildFailed, Canceled, HostFailed, InvalidInput, KilnError
from kiln.events import LogFile, Monitor, Monitors, RunMonitor
from kiln.ids import ResourceId
from kiln.pipeline.context import (
    KEEP_MARKER,
    BuildContext,
    BuildOptions,
    BuildOutcome,
    Disk,
    SourceTree,
    Validation,
    Workspace,
)
from kiln.pipeline.recorder import RunRecorder
from kiln.store.blobs import KnownDigest
from kiln.template.model import (
    ImageTemplate,
    IsoSource,
    ManagedImageSource,
    PlatformImageSource,
    SharedImageVersionSource,
    Source,
)

if TYPE_CHECKING:
    from kiln.store.runs import RunOutput
    from kiln.store.store import Store
    from kiln.validate.boottest import GuestScript


class BuildTimeout(BuildFailed):
    pass


class ValidationError(BuildFailed):
    pass


def build(
    template: ImageTemplate,
    *,
    config: Config,
    store: Store,
    monitor: Monitor,
    options: BuildOptions | None = None,
    template_id: ResourceId | None = None,
) -> BuildOutcome:
    """Run one template end to end. Returns the run's outcome, or raises (Failed, Canceled)."""
    options = options or BuildOptions()
    template_id = template_id or template_resource_id(template)
    recorder = RunRecorder.start(store, template, template_id, config)
    log = LogFile(recorder.log_path)
    ctx = BuildContext(
        template=template,
        template_id=template_id,
        config=config,
        store=store,
        monitor=RunMonitor(Monitors(monitor, log), recorder.run_id),
        options=options,
        run_id=recorder.run_id,
        work=config.work_dir / recorder.run_id,
        log_path=recorder.log_path,
        deadline=time.monotonic() + template.timeout_minutes * 60,
    )
    space = Workspace(ctx.work)
    ctx.monitor.begin("build", f"{template.name} (run {ctx.run_id}, log {ctx.log_path})")
    keep_work = options.keep_work
    try:
        with deadline(template.timeout_minutes * 60):
            recorder.hold_work(ctx.work)  # the lock tells gc this directory is a live run's
            recorder.sub_state("Building")
            os_type = check_supported(ctx)
            tree = resolve_source(ctx, space, os_type)
            recorder.sub_state("Customizing")
            try:
                customize(ctx, tree)
                generalize(ctx, tree)
                disk = assemble_disk(ctx, space, tree)
            except (BuildFailed, HostFailed, InvalidInput) as e:
                keep_work = keep_work or abort_requested(ctx, space, template.error_handling.on_customizer_error, e)
                raise
            recorder.sub_state("Validating")
            checked = validate(ctx, disk)
            recorder.sub_state("Distributing")
            space.outputs = distribute(ctx, tree, disk, checked)
        state, message = outcome(checked, space.outputs)
        recorder.finish(state, message, space.outputs)
        ctx.monitor.finish("build", ok=state == "Succeeded", message=f"{state}{': ' + message if message else ''}")
        if state == "Failed":
            raise BuildFailed(message)
        return BuildOutcome(ctx.run_id, state, message, tuple(space.outputs))
    except KeyboardInterrupt:
        recorder.finish("Canceled", "canceled by the user", space.outputs)
        ctx.monitor.finish("build", ok=False, message="Canceled")
        raise Canceled("build canceled; nothing was published and the work directory was removed") from None
    except ValidationError as e:
        keep_work = keep_work or abort_requested(ctx, space, template.error_handling.on_validation_error, e)
        recorder.finish("Failed", e.message, space.outputs)
        ctx.monitor.finish("build", ok=False, message=f"Failed: {e.message}")
        raise
    except KilnError as e:
        explain_no_space(e, build_places(ctx.work, space.scratch, config))  # a tool that ran out of room: say where, before cleanup frees it
        if e.path and not e.file:
            e.file = template.file  # a JSON path means most to the user next to its file
        if not recorder.finished:
            recorder.finish("Failed", e.message, space.outputs)
            ctx.monitor.finish("build", ok=False, message=f"Failed: {e.message}")
        raise
    except BaseException as e:  # a bug: still record the run and clean up, then keep the traceback
        if (full := no_space_error(e, build_places(ctx.work, space.scratch, config))) is not None:  # the host's state, not a bug
            recorder.finish("Failed", full.message, space.outputs)
            raise full from e
        recorder.finish("Failed", f"internal error: {e!r}", space.outputs)
        raise
    finally:
        release(ctx, space, keep_work)
        log.close()


# ---------------------------------------------------------------- steps


def check_supported(ctx: BuildContext) -> str:
    """Fail fast, before any bootstrap, on what this host cannot build. Returns the source's OS type."""
    from kiln.customizers import check_supported as check_steps
    from kiln.sources import source_os_type

    os_type = source_os_type(ctx.template.source, ctx.config, disk_for=lambda s: source_disk(ctx, s))
    if os_type == "Windows":
        raise InvalidInput(
            f"template {ctx.template.name!r} has a Windows source; Windows images cannot be built on this host",
            hint="no Windows installation media is reachable here; `kiln validate` still checks Windows templates",
            path=".properties.source",
        )
    check_steps(ctx.template.customize, os_type)
    check_steps(ctx.template.validate.in_vm_validations, os_type)
    return os_type


def resolve_source(ctx: BuildContext, space: Workspace, os_type: str) -> SourceTree:
    from kiln import sources
    from kiln.scratch import ScratchDir

    description = describe_source(ctx.template)
    ctx.monitor.step("source", description)
    # The root tree lives in scratch space (RAM when there is room; see kiln/scratch.py), the
    # disk in the work directory next to the blobs.
    space.scratch = ScratchDir.create(ctx.work, ctx.run_id)
    tree = sources.resolve_source(
        ctx.template.source,
        config=ctx.config,
        work=space.scratch.path,
        monitor=ctx.monitor,
        disk_for=lambda s: source_disk(ctx, s),
    )
    space.root = tree.path
    ctx.monitor.result("source", message=f"{tree.path} ({tree.os_release.get('PRETTY_NAME', '?')}, version {tree.exact_version})")
    return SourceTree(tree.path, os_type, tree.exact_version, description)


def customize(ctx: BuildContext, tree: SourceTree) -> None:
    from kiln.customizers import run_customizers
    from kiln.sandbox.isolated import IsolatedRoot

    steps = ctx.template.customize
    if not steps or ctx.template.validate.source_validation_only:
        return
    ctx.monitor.step("customize", f"{len(steps)} step(s)")
    run_customizers(steps, IsolatedRoot(tree.root, monitor=ctx.monitor), config=ctx.config, monitor=ctx.monitor,
                    os_type=tree.os_type, deadline=ctx.deadline)
    ctx.monitor.result("customize")


def generalize(ctx: BuildContext, tree: SourceTree) -> None:
    from kiln.generalize.deprovision import generalize as deprovision

    if ctx.template.validate.source_validation_only or not ctx.options.generalize:
        return
    ctx.monitor.step("generalize", "deprovision (machine-id, ssh host keys, logs, caches)")
    deprovision(tree.root, ctx.monitor)
    ctx.monitor.result("generalize")


def assemble_disk(ctx: BuildContext, space: Workspace, tree: SourceTree) -> Disk:
    from kiln.disk.assemble import assemble_disk as assemble
    from kiln.disk.boot import prepare_boot

    size_gb = ctx.template.vm_profile.os_disk_size_gb
    ctx.monitor.step("assemble", f"hybrid GPT disk (UEFI and BIOS), {f'{size_gb} GiB' if size_gb else 'content + headroom'}")
    boot = prepare_boot(tree.root)
    space.disk = ctx.work / "disk.raw"
    layout = assemble(tree.root, space.disk, boot, size_bytes=size_gb * 1024**3 if size_gb else None,
                      monitor=ctx.monitor)
    # The tree is in the disk now: its reaper deletes it in the background, off the critical path.
    if space.scratch is not None:
        space.scratch.release()
    space.root = None
    ctx.monitor.result("assemble", message=f"{space.disk} ({layout.size_bytes / 1024**3:.2f} GiB virtual)")
    return Disk(space.disk, "raw", layout)


def validate(ctx: BuildContext, disk: Disk) -> Validation:
    """Boot the disk in QEMU; run inVMValidations in the guest. Failure stops distribution unless
    `continueDistributeOnFailure`; the run is Failed either way, as in AIB."""
    from kiln.distribute.targets import plan_generations
    from kiln.validate.boottest import boot_test

    if not ctx.options.validate:
        ctx.monitor.log("boot test skipped (--no-validate): the published image is marked unverified", name="validate")
        return Validation(ran=False)
    scripts = guest_scripts(ctx)
    firmware = plan_generations(ctx.store, ctx.template).firmware  # SeaBIOS when a target is hyperVGeneration V1
    ctx.monitor.step("validate", f"boot in QEMU ({'SeaBIOS' if firmware == 'bios' else 'UEFI'}), "
                                 f"{len(scripts)} in-VM validation(s)")
    # The guest boots from an overlay, so the disk cannot change: hash it for the store meanwhile,
    # and publishing later costs a rename and a footer. (QEMU stays on this thread: it is tied to it.)
    known_digest = None
    with ThreadPoolExecutor(1, thread_name_prefix="kiln-hash") as pool:
        hashing = pool.submit(KnownDigest.compute, disk.path)
        report = boot_test(
            disk.path,
            disk.format,
            scripts=scripts,
            timeout_s=ctx.options.boot_timeout_s,
            monitor=ctx.monitor,
            serial_log=ctx.serial_log,
            work_dir=ctx.work,
            firmware=firmware,
        )
        try:
            known_digest = hashing.result()
        except (OSError, RuntimeError) as e:  # publishing hashes it again
            ctx.monitor.log(f"disk hash during the boot test failed ({e}); it is hashed at publish time")
    failed = [r for r in report.results if r.exit_code != 0]
    if not report.ok or failed:
        if not report.marker_seen:
            why = report.message or f"the image did not boot to readiness within {ctx.options.boot_timeout_s:.0f} s"
        else:
            why = "; ".join(f"validation {r.name!r} exited {r.exit_code}: {r.output_tail.strip()[-300:]}" for r in failed)
        ctx.monitor.result("validate", ok=False, message=why)
        if not ctx.template.validate.continue_distribute_on_failure:
            raise ValidationError(f"validation failed: {why}", hint=f"serial console: {ctx.serial_log}")
        ctx.monitor.log("continueDistributeOnFailure is set: distributing the image anyway (run will be Failed)")
        return Validation(ran=True, failure=why, report=report, known_digest=known_digest)
    how = (f"ssh-login check: SSH at {report.login_seconds:.1f} s, cloud-init done at {report.ready_seconds:.1f} s"
           if report.check == "ssh-login" and report.login_seconds is not None and report.ready_seconds is not None
           else f"{report.check} check")
    ctx.monitor.result("validate", message=f"booted in {report.seconds:.1f} s ({how}), {len(scripts)} validation(s) passed")
    return Validation(ran=True, report=report, known_digest=known_digest)


def distribute(ctx: BuildContext, tree: SourceTree, disk: Disk, checked: Validation) -> list[RunOutput]:
    from kiln.distribute import BuiltArtifact
    from kiln.distribute import distribute as publish
    from kiln.distribute.targets import plan_generations

    ctx.monitor.step("distribute", f"{len(ctx.template.distribute)} target(s)")
    artifact = BuiltArtifact(
        disk=disk.path,
        os_type=tree.os_type,
        os_state="Generalized" if ctx.options.generalize else "Specialized",
        hyper_v_generation=plan_generations(ctx.store, ctx.template).image,  # the source's, as in AIB
        source_version=tree.exact_version,
        boot_tested=checked.passed,
        boot_test=checked.report.check if checked.passed and checked.report else "",
        description=f"built by kiln from template {ctx.template.name}",
        source_id=tree.description,
        known_digest=checked.known_digest,
    )
    outputs = publish(
        ctx.store, ctx.template.distribute, artifact, template_id=ctx.template_id, run_id=ctx.run_id, monitor=ctx.monitor
    )
    ok = sum(1 for o in outputs if o.provisioning_state == "Succeeded")
    ctx.monitor.result("distribute", ok=ok == len(outputs), message=f"{ok}/{len(outputs)} target(s) published")
    return outputs


# ---------------------------------------------------------------- helpers


def outcome(checked: Validation, outputs: Sequence[RunOutput]) -> tuple[str, str]:
    """AIB's final runState: any validation failure is Failed; some targets failing is PartiallySucceeded."""
    failed = [o for o in outputs if o.provisioning_state != "Succeeded"]
    if checked.failure:
        return "Failed", f"validation failed: {checked.failure}"
    if failed and len(failed) == len(outputs):
        return "Failed", "; ".join(f"{o.name}: {o.error}" for o in failed)
    if failed:
        return "PartiallySucceeded", "; ".join(f"{o.name}: {o.error}" for o in failed)
    return "Succeeded", ""


def guest_scripts(ctx: BuildContext) -> list[GuestScript]:
    """inVMValidations as the scripts the guest runs, each written by its step type (kiln.customizers)."""
    from kiln.customizers.guest import in_vm_scripts

    return in_vm_scripts(ctx.template.validate.in_vm_validations, ctx.config, ctx.monitor)


def source_disk(ctx: BuildContext, source: Source) -> tuple[Path, str, str | None]:
    """The stored disk behind a ManagedImage or SharedImageVersion source: (path, format, version)."""
    if isinstance(source, ManagedImageSource):
        image = ctx.store.images.get(source.image_id)
        return image.disk.path, image.disk.format, None
    if isinstance(source, SharedImageVersionSource):
        version = ctx.store.galleries.resolve_version(source.image_version_id)
        return version.disk.path, version.disk.format, version.version
    raise ValueError(f"no stored disk for a {source.type} source")


def describe_source(t: ImageTemplate) -> str:
    match t.source:
        case PlatformImageSource() as s:
            return f"PlatformImage {s.publisher}:{s.offer}:{s.sku}:{s.version}"
        case ManagedImageSource() as s:
            return f"ManagedImage {s.image_id}"
        case SharedImageVersionSource() as s:
            return f"SharedImageVersion {s.image_version_id}"
        case IsoSource() as s:
            return f"ISO {s.source_uri}"


def template_resource_id(t: ImageTemplate) -> ResourceId:
    """The template's own id: subscription and resource group of its first distribute target."""
    from kiln import ids

    for target in t.distribute:
        rid = ids.try_parse(getattr(target, "image_id", "") or getattr(target, "gallery_image_id", ""))
        if rid:
            return ResourceId(rid.subscription, rid.resource_group, "Microsoft.VirtualMachineImages", ("imageTemplates",), (t.name,))
    return ResourceId(ids.NULL_SUBSCRIPTION, "kiln", "Microsoft.VirtualMachineImages", ("imageTemplates",), (t.name,))


def abort_requested(ctx: BuildContext, space: Workspace, mode: str, error: KilnError) -> bool:
    if mode != "abort":
        return False
    if space.scratch is not None and space.root is not None:  # the tree joins the kept work directory
        space.root = space.scratch.keep_in(ctx.work) / space.root.relative_to(space.scratch.path)
    hints = [f"errorHandling says abort: the work directory is kept at {ctx.work}"]
    if space.root is not None and space.root.exists():
        hints.append("enter the root (its own namespaces, no network): sudo bwrap --unshare-all --die-with-parent "
                     f"--bind {shlex.quote(str(space.root))} / --proc /proc --dev /dev --tmpfs /run /bin/bash")
    if space.disk is not None and space.disk.exists():
        from kiln.sandbox.vm import interactive_command  # the one QEMU command-line builder

        hints.append(f"boot the disk: {shlex.join(interactive_command(space.disk, space.disk_format))}")
    error.hint = "\n  ".join(filter(None, [error.hint, *hints]))
    return True


def release(ctx: BuildContext, space: Workspace, keep_work: bool) -> None:
    if space.scratch is not None:
        if keep_work:
            space.scratch.keep_in(ctx.work)
        space.scratch.remove()  # at once on failure; after assemble it is already the reaper's
    if keep_work:
        if ctx.work.exists():  # tells cleanup (kiln factory cleanup) this one was kept on purpose
            (ctx.work / KEEP_MARKER).write_text(f"run {ctx.run_id} of {ctx.template_id}: kept for inspection\n")
        ctx.monitor.log(f"work directory kept: {ctx.work}")
        return
    if ctx.work.exists():
        shutil.rmtree(ctx.work, ignore_errors=True)


@contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """buildTimeoutInMinutes: raise BuildTimeout in the main thread when the time is up.
    Subprocesses started with run() are killed by subprocess when the exception unwinds them.
    Off the main thread (a factory building in parallel) signals cannot be used; there the
    customizers' own deadline (ctx.deadline) still bounds the run."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum: int, frame: FrameType | None) -> None:
        raise BuildTimeout(
            f"build timed out after {seconds / 60:g} minute(s) (buildTimeoutInMinutes)",
            hint="raise buildTimeoutInMinutes (up to 960) or make the customizers faster",
        )

    old = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
