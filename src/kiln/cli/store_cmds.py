"""Commands for what the store holds: images, galleries, versions, run outputs, regions, gc.

    kiln image import DISK --id ID [--location R] [--os-type Linux|Windows]
    kiln image list | show ID | delete ID | export ID --format raw|vhd|vhd-dynamic|qcow2 -o FILE
    kiln gallery create ID | list | show ID | delete ID
    kiln gallery image-definition create ID --publisher P --offer O --sku S [...] | list | show | delete
    kiln gallery image-version create ID --disk FILE | --image ID [--target-region R ...] | list | show | delete
    kiln run-output list TEMPLATE_ID | show RUN_OUTPUT_ID
    kiln region list
    kiln gc
    kiln store check

Ids are Azure's and compared case-insensitively. Every list/show prints a table for people or JSON
with `--json`. Bad input exits 2 with a hint and leaves the store unchanged: every check happens
before the first write.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from kiln.cli import App, pass_app
from kiln.cli.common import Rows, emit, json_option, location_option, make_monitor, open_store, print_json
from kiln.errors import InvalidInput, KilnError


def _size(n: int) -> str:
    return f"{n / (1 << 30):.2f} GiB" if n >= 1 << 30 else f"{n / (1 << 20):.0f} MiB"


def _tags(values: tuple[str, ...]) -> dict[str, str]:
    out: dict[str, str] = {}
    for v in values:
        key, sep, value = v.partition("=")
        if not sep or not key:
            raise InvalidInput(f"--tag {v!r} is not KEY=VALUE", hint="e.g. --tag owner=team-a")
        out[key] = value
    return out


# ---------------------------------------------------------------- images


def _image_rows(images: list[Any]) -> Rows:
    return (("ID", "LOCATION", "OS", "STATE", "SIZE", "BOOT-TESTED", "DIGEST"),
            [(str(i.id), i.location, i.os_type, i.os_state, _size(i.disk.virtual_size), "yes" if i.boot_tested else "no",
              i.digest[:16]) for i in images])


KV = ("FIELD", "VALUE")  # a show command's table: every value whole


def _kv_rows(pairs: list[tuple[str, Any]]) -> Rows:
    return KV, [(k, v) for k, v in pairs]


def register_image(cli: click.Group) -> None:
    @cli.group("image")
    def image() -> None:
        """Managed images: import, list, show, delete, export."""

    @image.command("import")
    @click.argument("disk", type=click.Path(path_type=Path))
    @click.option("--id", "image_id", required=True, help="The image's resource id (.../Microsoft.Compute/images/NAME).")
    @location_option("Region to keep it in")
    @click.option("--os-type", default="Linux", show_default=True, help="Linux or Windows.")
    @click.option("--os-state", default="Generalized", show_default=True, help="Generalized or Specialized.")
    @click.option("--hyper-v-generation", default="V2", show_default=True, help="V1 or V2.")
    @click.option("--tag", "tags", multiple=True, metavar="KEY=VALUE", help="A tag (repeatable).")
    @json_option
    @pass_app
    def image_import(app: App, disk: Path, image_id: str, location: str | None, os_type: str, os_state: str,
                     hyper_v_generation: str, tags: tuple[str, ...], as_json: bool) -> None:
        """Import DISK (raw, qcow2 or VHD, recognised by content) as a managed image. DISK is not modified."""
        tag_map = _tags(tags)
        with open_store(app) as store:
            img = store.images.import_disk(disk, image_id, location or app.config.default_location, os_type, os_state=os_state,
                                           hyper_v_generation=hyper_v_generation, tags=tag_map, monitor=make_monitor(app))
            emit(as_json, img.to_json(), lambda: _image_rows([img]))

    @image.command("list")
    @json_option
    @pass_app
    def image_list(app: App, as_json: bool) -> None:
        """List managed images."""
        with open_store(app) as store:
            images = store.images.list()
            emit(as_json, [i.to_json() for i in images], lambda: _image_rows(images))

    @image.command("show")
    @click.argument("image_id")
    @json_option
    @pass_app
    def image_show(app: App, image_id: str, as_json: bool) -> None:
        """Show one managed image."""
        with open_store(app) as store:
            i = store.images.get(image_id)
            emit(as_json, i.to_json(), lambda: _kv_rows([
                ("id", i.id), ("location", i.location), ("osType", i.os_type), ("osState", i.os_state),
                ("hyperVGeneration", i.hyper_v_generation), ("size", _size(i.disk.virtual_size)),
                ("tags", json.dumps(i.tags)), ("bootTested", i.boot_tested),
                ("bootTest", i.boot_test or "none"),
                ("bootGenerations", ", ".join(i.boot_generations) or "unknown"), ("digest", i.digest),
                ("disk", f"{i.disk.path} ({i.disk.format})")]), whole=KV)

    @image.command("delete")
    @click.argument("image_id")
    @pass_app
    def image_delete(app: App, image_id: str) -> None:
        """Delete a managed image (its disk is freed by kiln gc once nothing else uses it)."""
        with open_store(app) as store:
            i = store.images.delete(image_id)
            click.echo(f"deleted {i.id}")

    @image.command("export")
    @click.argument("image_id")
    @click.option("--format", "fmt", type=click.Choice(["raw", "vhd", "vhd-dynamic", "qcow2"]), required=True)
    @click.option("-o", "--output", type=click.Path(path_type=Path), required=True, help="File to write (must not exist).")
    @pass_app
    def image_export(app: App, image_id: str, fmt: str, output: Path) -> None:
        """Write an image's disk to a file: raw, fixed VHD, dynamic VHD or qcow2 (all sparse).

        IMAGE_ID is a managed image or a gallery image version (or a definition's /versions/latest)."""
        from kiln import ids
        from kiln.store.export import export_disk

        with open_store(app) as store:
            rid = ids.try_parse(image_id)
            if rid is not None and rid.kind.lower() in (ids.GALLERY_IMAGE_VERSION.lower(), ids.GALLERY_IMAGE.lower()):
                disk = store.galleries.resolve_version(image_id).disk
            else:
                disk = store.images.get(image_id).disk
            export_disk(disk, fmt, output)
            click.echo(f"wrote {output} ({fmt})")


# ---------------------------------------------------------------- galleries


def _version_rows(versions: list[Any]) -> Rows:
    return (("ID", "REGIONS", "EXCLUDE-FROM-LATEST", "SIZE", "DIGEST"),
            [(str(v.id), ",".join(t.name for t in v.target_regions), "yes" if v.exclude_from_latest else "no",
              _size(v.disk.virtual_size), v.digest[:16]) for v in versions])


def _definition_rows(defs: list[Any]) -> Rows:
    return (("ID", "PUBLISHER", "OFFER", "SKU", "OS", "STATE", "GEN"),
            [(str(d.id), d.publisher, d.offer, d.sku, d.os_type, d.os_state, d.hyper_v_generation) for d in defs])


def register_gallery(cli: click.Group) -> None:
    @cli.group("gallery")
    def gallery() -> None:
        """Galleries, image definitions and versions."""

    @gallery.command("create")
    @click.argument("gallery_id")
    @location_option("Region")
    @click.option("--description", default="")
    @json_option
    @pass_app
    def gallery_create(app: App, gallery_id: str, location: str | None, description: str, as_json: bool) -> None:
        """Create a gallery (creating an existing one is a no-op)."""
        with open_store(app) as store:
            g = store.galleries.create(gallery_id, location or app.config.default_location, description)
            emit(as_json, g.to_json(), lambda: (("ID", "LOCATION"), [(str(g.id), g.location)]))

    @gallery.command("list")
    @json_option
    @pass_app
    def gallery_list(app: App, as_json: bool) -> None:
        """List galleries."""
        with open_store(app) as store:
            gs = store.galleries.list()
            emit(as_json, [g.to_json() for g in gs], lambda: (("ID", "LOCATION", "DESCRIPTION"),
                                                               [(str(g.id), g.location, g.description) for g in gs]))

    @gallery.command("show")
    @click.argument("gallery_id")
    @json_option
    @pass_app
    def gallery_show(app: App, gallery_id: str, as_json: bool) -> None:
        """Show a gallery and its image definitions."""
        with open_store(app) as store:
            g = store.galleries.get(gallery_id)
            defs = store.galleries.list_definitions(g.id)
            data = {**g.to_json(), "images": [d.to_json() for d in defs]}
            emit(as_json, data, lambda: _definition_rows(defs))

    @gallery.command("delete")
    @click.argument("gallery_id")
    @pass_app
    def gallery_delete(app: App, gallery_id: str) -> None:
        """Delete an empty gallery."""
        with open_store(app) as store:
            click.echo(f"deleted {store.galleries.delete(gallery_id).id}")

    @gallery.group("image-definition")
    def definition() -> None:
        """Image definitions (publisher/offer/sku, osType, osState, hyperVGeneration)."""

    @definition.command("create")
    @click.argument("definition_id")
    @click.option("--publisher", required=True)
    @click.option("--offer", required=True)
    @click.option("--sku", required=True)
    @click.option("--os-type", default="Linux", show_default=True)
    @click.option("--os-state", default="Generalized", show_default=True)
    @click.option("--hyper-v-generation", default="V2", show_default=True)
    @json_option
    @pass_app
    def definition_create(app: App, definition_id: str, publisher: str, offer: str, sku: str, os_type: str,
                          os_state: str, hyper_v_generation: str, as_json: bool) -> None:
        """Create an image definition in an existing gallery."""
        with open_store(app) as store:
            d = store.galleries.create_definition(definition_id, publisher=publisher, offer=offer, sku=sku,
                                                  os_type=os_type, os_state=os_state, hyper_v_generation=hyper_v_generation)
            emit(as_json, d.to_json(), lambda: _definition_rows([d]))

    @definition.command("list")
    @click.argument("gallery_id", required=False)
    @json_option
    @pass_app
    def definition_list(app: App, gallery_id: str | None, as_json: bool) -> None:
        """List image definitions (of one gallery, or all)."""
        with open_store(app) as store:
            defs = store.galleries.list_definitions(gallery_id)
            emit(as_json, [d.to_json() for d in defs], lambda: _definition_rows(defs))

    @definition.command("show")
    @click.argument("definition_id")
    @json_option
    @pass_app
    def definition_show(app: App, definition_id: str, as_json: bool) -> None:
        """Show an image definition and its versions."""
        with open_store(app) as store:
            d = store.galleries.get_definition(definition_id)
            versions = store.galleries.list_versions(d.id)
            latest = store.galleries.latest(d.id)
            data = {**d.to_json(), "latest": latest.version if latest else None, "versions": [v.version for v in versions]}
            emit(as_json, data, lambda: _version_rows(versions))

    @definition.command("delete")
    @click.argument("definition_id")
    @pass_app
    def definition_delete(app: App, definition_id: str) -> None:
        """Delete an image definition that has no versions."""
        with open_store(app) as store:
            click.echo(f"deleted {store.galleries.delete_definition(definition_id).id}")

    @gallery.group("image-version")
    def version() -> None:
        """Image versions (major.minor.patch), each replicated to its target regions."""

    @version.command("create")
    @click.argument("version_id")
    @click.option("--disk", type=click.Path(path_type=Path), help="A disk file (raw, qcow2, VHD) to publish.")
    @click.option("--image", "image_id", help="A managed image to publish instead of a file.")
    @click.option("--target-region", "regions", multiple=True, help="Region to replicate to (repeatable; default: the gallery's).")
    @click.option("--exclude-from-latest", is_flag=True)
    @json_option
    @pass_app
    def version_create(app: App, version_id: str, disk: Path | None, image_id: str | None, regions: tuple[str, ...],
                       exclude_from_latest: bool, as_json: bool) -> None:
        """Publish VERSION_ID (.../versions/x.y.z) from a disk file or a managed image.

        Publishing the same content under the same version again is a no-op, so an interrupted
        publish is finished by running the command again."""
        from kiln.distribute.galleries import publish_version_from

        with open_store(app) as store:
            v = publish_version_from(store, version_id, disk=disk, image_id=image_id, regions=regions,
                                     exclude_from_latest=exclude_from_latest, monitor=make_monitor(app))
            emit(as_json, v.to_json(), lambda: _version_rows([v]))

    @version.command("list")
    @click.argument("definition_id", required=False)
    @json_option
    @pass_app
    def version_list(app: App, definition_id: str | None, as_json: bool) -> None:
        """List image versions (of one image definition, or all)."""
        with open_store(app) as store:
            vs = store.galleries.list_versions(definition_id)
            emit(as_json, [v.to_json() for v in vs], lambda: _version_rows(vs))

    @version.command("show")
    @click.argument("version_id")
    @json_option
    @pass_app
    def version_show(app: App, version_id: str, as_json: bool) -> None:
        """Show a version (`.../versions/latest` or a definition id: its latest)."""
        with open_store(app) as store:
            v = store.galleries.resolve_version(version_id)
            emit(as_json, v.to_json(), lambda: _version_rows([v]))

    @version.command("delete")
    @click.argument("version_id")
    @pass_app
    def version_delete(app: App, version_id: str) -> None:
        """Delete a version (its disk is freed by kiln gc once nothing else uses it)."""
        from kiln import ids

        rid = ids.parse(version_id, ids.GALLERY_IMAGE_VERSION, what="image version id")
        if rid.name.lower() == "latest":
            raise InvalidInput("delete a version by its number, not 'latest'", hint="kiln gallery image-version list DEF_ID")
        with open_store(app) as store:
            click.echo(f"deleted {store.galleries.delete_version(rid).id}")


# ---------------------------------------------------------------- run outputs, regions, gc


def _output_rows(outs: list[Any]) -> Rows:
    return (("NAME", "TYPE", "STATE", "ARTIFACT", "RUN", "ERROR"),
            [(o.name, o.target_type, o.provisioning_state, o.artifact_id or o.artifact_uri, o.run_id, o.error)
             for o in outs])


OUTPUT_IDS = ("NAME", "ARTIFACT", "RUN")


def register_misc(cli: click.Group) -> None:
    @cli.group("run-output")
    def run_output() -> None:
        """Run outputs of image templates (AIB's runOutputs)."""

    @run_output.command("list")
    @click.argument("template_id")
    @json_option
    @pass_app
    def run_output_list(app: App, template_id: str, as_json: bool) -> None:
        """The run outputs of TEMPLATE_ID (for each runOutputName, the latest run's)."""
        with open_store(app) as store:
            outs = store.runs.outputs(template_id)
            emit(as_json, {"value": [o.to_json() for o in outs]}, lambda: _output_rows(outs), whole=OUTPUT_IDS)

    @run_output.command("show")
    @click.argument("run_output_id")
    @json_option
    @pass_app
    def run_output_show(app: App, run_output_id: str, as_json: bool) -> None:
        """Show one run output (.../imageTemplates/T/runOutputs/NAME)."""
        with open_store(app) as store:
            o = store.runs.output(run_output_id)
            emit(as_json, o.to_json(), lambda: _output_rows([o]), whole=OUTPUT_IDS)

    @cli.group("region")
    def region() -> None:
        """Regions: where images are replicated."""

    @region.command("list")
    @json_option
    @pass_app
    def region_list(app: App, as_json: bool) -> None:
        """List the configured regions."""
        regions = app.config.regions
        data = [{"name": r.name, "kind": r.kind, "path": r.path if r.kind == "folder" else "",
                 "container": r.container} for r in regions]
        emit(as_json, data, lambda: (("NAME", "KIND", "WHERE"),
                                      [(r.name, r.kind, r.path if r.kind == "folder" else r.container) for r in regions]),
             whole=("NAME", "WHERE"))

    @cli.command("gc")
    @json_option
    @pass_app
    def gc_cmd(app: App, as_json: bool) -> None:
        """Remove blobs and replicas nothing references (never one a live run uses), leftover temp files and
        the work directories of killed runs (unless they hold a .kiln-keep file)."""
        with open_store(app) as store:
            report = store.gc(make_monitor(app))
            if as_json:
                print_json(report.to_json())
            else:
                click.echo(f"removed {len(report.blobs)} blob(s), {len(report.replicas)} replica(s), "
                           f"{len(report.temp_files)} temporary file(s), {len(report.work_dirs)} work dir(s) of killed runs; "
                           f"freed {_size(report.bytes_freed)}")

    @cli.group("store")
    def store_group() -> None:
        """The state home itself."""

    @store_group.command("check")
    @click.option("--quick", is_flag=True, help="Do not re-hash blob contents.")
    @json_option
    @pass_app
    def store_check(app: App, quick: bool, as_json: bool) -> None:
        """Check the catalog against the blobs and regions: exit 1 if anything is inconsistent."""
        with open_store(app) as store:
            problems = store.check(verify_data=not quick)
        if as_json:
            print_json({"ok": not problems, "problems": problems})
        else:
            for p in problems:
                click.echo(p)
            click.echo("store is consistent" if not problems else f"{len(problems)} problem(s)", err=bool(problems))
        if problems:
            raise KilnError(f"the store has {len(problems)} integrity problem(s)", hint="see the lines above")


def register(cli: click.Group) -> None:
    register_image(cli)
    register_gallery(cli)
    register_misc(cli)

