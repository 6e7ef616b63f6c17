"""hyperVGeneration: a V1 (BIOS) image or gallery definition never receives a disk that cannot
boot with BIOS, whether the disk is imported, published from a managed image or built; what a
disk boots is read from its bytes and recorded; the build's targets choose the boot test's firmware.

The disks are small and made here (sfdisk; GRUB written as kiln's assemble writes it): not
bootable operating systems, but their boot structures are the real ones. tests/disk/test_bios.py
boots the real thing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from envcheck import unavailable
from kiln import ids
from kiln.config import load_config
from kiln.disk import bios
from kiln.disk.boot import BootConfig
from kiln.distribute import BuiltArtifact, distribute
from kiln.distribute.targets import plan_generations
from kiln.run import run
from kiln.store import Store
from kiln.template.model import (
    ImageTemplate,
    ManagedImageSource,
    ManagedImageTarget,
    PlatformImageSource,
    SharedImageTarget,
    VhdTarget,
)
from store_helpers import kiln_cmd, snapshot

MiB = 1024 * 1024
ESP = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
LINUX = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
SUB = "/subscriptions/0000/resourceGroups/rg/providers"
GAL = f"{SUB}/Microsoft.Compute/galleries/gal"
DEF_V1 = f"{GAL}/images/legacy"
DEF_V2 = f"{GAL}/images/modern"
IMAGE = f"{SUB}/Microsoft.Compute/images/imported"
TPL = ids.parse(f"{SUB}/Microsoft.VirtualMachineImages/imageTemplates/gen")
BOOT = BootConfig("0b3a3c52-43b7-4fd2-a2b3-2d3d6f3c9d10", "1234ABCD", "root=UUID=0b3a3c52-43b7-4fd2-a2b3-2d3d6f3c9d10 ro")


@pytest.fixture(scope="module")
def disks(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    for tool in ("sfdisk", "grub-mkimage"):
        if shutil.which(tool) is None:
            unavailable(f"{tool} is not installed (run scripts/setup)")
    if not (bios.GRUB_PC / "boot.img").is_file():
        unavailable("grub-pc-bin is not installed (run scripts/setup)")
    d = tmp_path_factory.mktemp("gen-disks")

    def gpt(name: str, *parts: tuple[int, int, str]) -> Path:
        path = d / name
        with open(path, "wb") as f:
            f.truncate(32 * MiB)
        lines = "".join(f"start={s * 2048}, size={n * 2048}, type={t}\n" for s, n, t in parts)
        run(["sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", path], input=f"label: gpt\n{lines}", capture=True)
        return path

    # What a user imports from a UEFI-only (generation 2) VM: an ESP, a root, no BIOS boot code.
    uefi = gpt("uefi-only.raw", (1, 8, ESP), (9, 16, LINUX))
    hybrid = gpt("hybrid.raw", (1, 1, bios.BIOS_BOOT_TYPE), (2, 8, ESP), (10, 16, LINUX))
    bios.install_bios_boot(hybrid, MiB, MiB, bios.make_core_image(bios.grub_config(d, BOOT, "6.1.0-0-amd64"), d))
    assert bios.boot_generations(uefi, "raw") == ("V2",) and bios.boot_generations(hybrid, "raw") == ("V1", "V2")
    return {"uefi": uefi, "hybrid": hybrid}


def gallery(home: Path) -> None:
    kiln_cmd(home, "gallery", "create", GAL, check=True)
    for definition, generation in ((DEF_V1, "V1"), (DEF_V2, "V2")):
        kiln_cmd(home, "gallery", "image-definition", "create", definition, "--publisher", "kiln", "--offer", "debian",
                 "--sku", generation.lower(), "--hyper-v-generation", generation, check=True)


def assert_refused(proc, *, unchanged: tuple, home: Path) -> None:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    out = proc.stdout + proc.stderr
    assert "Traceback" not in out
    assert "cannot boot with BIOS" in out and ".properties.hyperVGeneration" in out and "hint:" in out, out
    assert snapshot(home) == unchanged


def test_v1_import_of_a_uefi_only_disk_is_refused_and_nothing_is_stored(kiln_home: Path, disks: dict[str, Path]) -> None:
    kiln_cmd(kiln_home, "image", "list", check=True)  # the catalog exists: "unchanged" is about it
    before = snapshot(kiln_home)
    proc = kiln_cmd(kiln_home, "image", "import", str(disks["uefi"]), "--id", IMAGE, "--hyper-v-generation", "V1")
    assert_refused(proc, unchanged=before, home=kiln_home)
    assert str(disks["uefi"]) in proc.stdout + proc.stderr  # which file
    assert "boots only with UEFI (V2)" in proc.stdout + proc.stderr
    # As V2 it is fine, and the image says what its disk boots.
    kiln_cmd(kiln_home, "image", "import", str(disks["uefi"]), "--id", IMAGE, check=True)
    shown = json.loads(kiln_cmd(kiln_home, "image", "show", IMAGE, "--json", check=True).stdout)
    assert shown["properties"]["hyperVGeneration"] == "V2" and shown["kiln"]["bootGenerations"] == ["V2"]


def test_v1_gallery_version_of_a_uefi_only_disk_or_image_is_refused(kiln_home: Path, disks: dict[str, Path]) -> None:
    gallery(kiln_home)
    kiln_cmd(kiln_home, "image", "import", str(disks["uefi"]), "--id", IMAGE, check=True)
    before = snapshot(kiln_home)
    proc = kiln_cmd(kiln_home, "gallery", "image-version", "create", f"{DEF_V1}/versions/1.0.0", "--disk", str(disks["uefi"]))
    assert_refused(proc, unchanged=before, home=kiln_home)
    # The stored image's recorded generations say the same: refused, nothing published.
    proc = kiln_cmd(kiln_home, "gallery", "image-version", "create", f"{DEF_V1}/versions/1.0.0", "--image", IMAGE)
    assert_refused(proc, unchanged=before, home=kiln_home)
    assert IMAGE in proc.stdout + proc.stderr
    listed = json.loads(kiln_cmd(kiln_home, "gallery", "image-version", "list", DEF_V1, "--json", check=True).stdout)
    assert listed == []
    # The V2 definition takes it.
    kiln_cmd(kiln_home, "gallery", "image-version", "create", f"{DEF_V2}/versions/1.0.0", "--image", IMAGE, check=True)


def test_a_hybrid_disk_goes_to_v1_and_its_generations_are_recorded(kiln_home: Path, disks: dict[str, Path]) -> None:
    gallery(kiln_home)
    kiln_cmd(kiln_home, "image", "import", str(disks["hybrid"]), "--id", IMAGE, "--hyper-v-generation", "V1", check=True)
    shown = json.loads(kiln_cmd(kiln_home, "image", "show", IMAGE, "--json", check=True).stdout)
    assert shown["properties"]["hyperVGeneration"] == "V1" and shown["kiln"]["bootGenerations"] == ["V1", "V2"]
    for definition in (DEF_V1, DEF_V2):
        kiln_cmd(kiln_home, "gallery", "image-version", "create", f"{definition}/versions/1.0.0", "--image", IMAGE,
                 check=True)
        version = json.loads(kiln_cmd(kiln_home, "gallery", "image-version", "show", f"{definition}/versions/1.0.0",
                                      "--json", check=True).stdout)
        assert version["kiln"]["bootGenerations"] == ["V1", "V2"]


@pytest.fixture
def store(kiln_home: Path):
    with Store.open(load_config(kiln_home)) as s:
        s.galleries.create(GAL, "eastus")
        s.galleries.create_definition(DEF_V1, publisher="kiln", offer="debian", sku="v1", hyper_v_generation="V1")
        s.galleries.create_definition(DEF_V2, publisher="kiln", offer="debian", sku="v2", hyper_v_generation="V2")
        s.runs.register_template(TPL, {"name": "gen"})
        yield s


def built(store: Store, disk: Path, **kw) -> BuiltArtifact:
    work = store.config.work_dir / f"run-{len(list(store.config.work_dir.iterdir()))}" / "disk.raw"
    work.parent.mkdir(parents=True)
    shutil.copyfile(disk, work)
    return BuiltArtifact(disk=work, boot_tested=True, **kw)


def test_build_targets_refuse_a_generation_the_disk_cannot_boot(store: Store, disks: dict[str, Path]) -> None:
    targets = [
        SharedImageTarget(run_output_name="v1", gallery_image_id=DEF_V1),
        ManagedImageTarget(run_output_name="img", image_id=IMAGE, location="westus2"),
        SharedImageTarget(run_output_name="v2", gallery_image_id=DEF_V2),
    ]
    run_id = store.runs.create(TPL)
    outs = {o.name: o for o in distribute(store, targets, built(store, disks["uefi"], hyper_v_generation="V1"),
                                          template_id=TPL, run_id=run_id)}
    assert outs["v1"].provisioning_state == "Failed" and "cannot boot with BIOS" in outs["v1"].error
    assert ".properties.distribute[0].galleryImageId" in outs["v1"].error
    assert outs["img"].provisioning_state == "Failed" and ".properties.distribute[1].imageId" in outs["img"].error
    assert store.galleries.list_versions(DEF_V1) == [] and store.images.find(IMAGE) is None
    assert outs["v2"].provisioning_state == "Succeeded"
    assert store.galleries.list_versions(DEF_V2)[0].boot_generations == ("V2",)

    run_id = store.runs.create(TPL)
    outs = {o.name: o for o in distribute(store, targets, built(store, disks["hybrid"], hyper_v_generation="V1"),
                                          template_id=TPL, run_id=run_id)}
    assert all(o.provisioning_state == "Succeeded" for o in outs.values()), outs
    assert store.galleries.list_versions(DEF_V1)[0].boot_generations == ("V1", "V2")
    image = store.images.get(IMAGE)
    assert image.hyper_v_generation == "V1" and image.boot_generations == ("V1", "V2")


def template(source, *targets) -> ImageTemplate:
    return ImageTemplate(name="gen", api_version="2022-07-01", location="westus2", source=source, distribute=targets)


def test_the_targets_choose_the_generation_and_the_boot_tests_firmware(store: Store, disks: dict[str, Path]) -> None:
    debian = PlatformImageSource(publisher="Debian", offer="debian-12", sku="12-gen2")
    vhd = VhdTarget(run_output_name="vhd")
    to_v1 = SharedImageTarget(run_output_name="v1", gallery_image_id=DEF_V1)
    to_v2 = SharedImageTarget(run_output_name="v2", gallery_image_id=DEF_V2)
    managed = ManagedImageTarget(run_output_name="img", image_id=IMAGE, location="westus2")
    assert plan_generations(store, template(debian, vhd)).firmware == "uefi"  # V2 stays the default
    assert plan_generations(store, template(debian, to_v2, managed)).firmware == "uefi"
    plan = plan_generations(store, template(debian, to_v1, to_v2))
    assert plan.firmware == "bios" and plan.targets == {"V1", "V2"} and plan.image == "V2"
    gen1 = PlatformImageSource(publisher="Canonical", offer="ubuntu-24_04-lts", sku="server-gen1")
    plan = plan_generations(store, template(gen1, managed))
    assert plan.image == "V1" and plan.firmware == "bios"
    # A ManagedImage source passes its generation on to ManagedImage targets, as in AIB.
    source_id = f"{SUB}/Microsoft.Compute/images/legacy-source"
    store.images.import_disk(disks["hybrid"], source_id, "westus2", hyper_v_generation="V1")
    plan = plan_generations(store, template(ManagedImageSource(image_id=source_id), managed))
    assert plan.image == "V1" and plan.firmware == "bios"
    # A missing definition does not decide anything (its target fails on its own).
    missing = SharedImageTarget(run_output_name="x", gallery_image_id=f"{GAL}/images/nope")
    assert plan_generations(store, template(debian, missing)).firmware == "uefi"
