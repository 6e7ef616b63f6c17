"""Distribution of a built disk to ManagedImage, SharedImage and VHD targets, sharing one blob."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kiln import ids
from kiln.config import load_config
from kiln.distribute import BuiltArtifact, distribute
from kiln.store import Store
from kiln.template.model import (
    ManagedImageTarget,
    SharedImageTarget,
    TargetRegion,
    Versioning,
    VhdTarget,
)

SUB = "/subscriptions/0000/resourceGroups/rg/providers"
GAL = f"{SUB}/Microsoft.Compute/galleries/gal"
DEF = f"{GAL}/images/web"
TPL = ids.parse(f"{SUB}/Microsoft.VirtualMachineImages/imageTemplates/web")
HERE = Path(__file__).resolve().parent


@pytest.fixture
def store(kiln_home: Path):
    with Store.open(load_config(kiln_home)) as s:
        s.galleries.create(GAL, "eastus")
        s.galleries.create_definition(DEF, publisher="kiln", offer="debian", sku="12")
        s.runs.register_template(TPL, {"name": "web"})
        yield s


def built(store: Store, disk: Path, **kw) -> BuiltArtifact:
    """A disk as the build leaves it: a raw file in the state home's work dir."""
    work = store.config.work_dir / f"run-{len(list(store.config.work_dir.iterdir()))}" / "disk.raw"
    work.parent.mkdir(parents=True)
    shutil.copyfile(disk, work)
    return BuiltArtifact(disk=work, boot_tested=True, **kw)


def test_all_targets_share_one_blob_and_each_gets_a_run_output(store: Store, raw_disk: Path, tmp_path: Path) -> None:
    artifact = built(store, raw_disk)
    inode = artifact.disk.stat().st_ino
    targets = [
        ManagedImageTarget(run_output_name="managed", image_id=f"{SUB}/Microsoft.Compute/images/web", location="westus2",
                           artifact_tags={"source": "kiln"}),
        SharedImageTarget(run_output_name="sig", gallery_image_id=DEF,
                          target_regions=(TargetRegion(name="eastus"), TargetRegion(name="westeurope", replica_count=2))),
        VhdTarget(run_output_name="vhd"),
        VhdTarget(run_output_name="vhd-here", uri=(tmp_path / "out.vhd").as_uri()),
    ]
    run_id = store.runs.create(TPL)
    outs = distribute(store, targets, artifact, template_id=TPL, run_id=run_id)
    assert [o.provisioning_state for o in outs] == ["Succeeded"] * 4, [o.error for o in outs]
    assert not artifact.disk.exists()  # consumed: renamed into the blob store
    image = store.images.get(outs[0].artifact_id)
    assert image.tags == {"source": "kiln"} and image.boot_tested
    version = store.galleries.get_version(outs[1].artifact_id)
    assert version.version == "1.0.0" and [t.name for t in version.target_regions] == ["eastus", "westeurope"]
    # One blob for all: the very inode the build wrote, now also the VHD outputs (no byte written twice).
    assert image.disk.path.stat().st_ino == inode and version.digest == image.digest
    vhd_path = Path(outs[2].artifact_uri.removeprefix("file://"))
    assert vhd_path.stat().st_ino == inode and vhd_path.is_relative_to(store.config.home / "vhds")
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", "-f", "vpc", str(vhd_path)],
                                     capture_output=True, text=True, check=True).stdout)
    assert info["virtual-size"] == raw_disk.stat().st_size and info["virtual-size"] % (1 << 20) == 0
    assert (tmp_path / "out.vhd").exists()
    # The run outputs, as AIB shows them.
    listed = {o.name: o.to_json() for o in store.runs.outputs(TPL)}
    assert listed["sig"]["properties"] == {"artifactId": str(version.id), "artifactUri": None, "provisioningState": "Succeeded"}
    assert listed["managed"]["id"] == f"{TPL}/runOutputs/managed"
    assert store.blobs.live_leases() == set()  # the run's lease is released
    assert store.check() == []


def test_a_failing_target_leaves_the_others_published(store: Store, raw_disk: Path) -> None:
    targets = [
        SharedImageTarget(run_output_name="nodef", gallery_image_id=f"{GAL}/images/missing", target_regions=(TargetRegion(name="eastus"),)),
        ManagedImageTarget(run_output_name="ok", image_id=f"{SUB}/Microsoft.Compute/images/web", location="westus2"),
        ManagedImageTarget(run_output_name="badregion", image_id=f"{SUB}/Microsoft.Compute/images/x", location="moon"),
        ManagedImageTarget(run_output_name="badid", image_id="/subscriptions/nope", location="westus2"),
    ]
    run_id = store.runs.create(TPL)
    outs = distribute(store, targets, built(store, raw_disk), template_id=TPL, run_id=run_id)
    states = {o.name: o.provisioning_state for o in outs}
    assert states == {"nodef": "Failed", "ok": "Succeeded", "badregion": "Failed", "badid": "Failed"}
    errors = {o.name: o.error for o in outs}
    assert "does not exist" in errors["nodef"] and ".properties.distribute[0].galleryImageId" in errors["nodef"]
    assert "unknown region 'moon'" in errors["badregion"] and "malformed" in errors["badid"]
    assert store.images.get(f"{SUB}/Microsoft.Compute/images/web")
    assert [o.provisioning_state for o in store.runs.get(run_id).outputs] == ["Failed", "Failed", "Failed", "Succeeded"]


def test_versioning_latest_major_and_source(store: Store, raw_disk: Path, other_disk: Path) -> None:
    run_id = store.runs.create(TPL)

    def publish(disk: Path, versioning: Versioning | None, **kw) -> str:
        t = SharedImageTarget(run_output_name="sig", gallery_image_id=DEF, versioning=versioning,
                              target_regions=(TargetRegion(name="eastus"),), **kw.pop("target", {}))
        out = distribute(store, [t], built(store, disk, **kw), template_id=TPL, run_id=run_id)[0]
        assert out.provisioning_state == "Succeeded", out.error
        return store.galleries.get_version(out.artifact_id).version

    assert publish(raw_disk, None) == "1.0.0"
    assert publish(other_disk, Versioning(scheme="Latest", major=3)) == "3.0.0"
    assert publish(raw_disk, Versioning(scheme="Latest", major=1)) == "1.0.1"
    assert publish(raw_disk, Versioning(scheme="Source"), source_version="7.1.4") == "7.1.4"
    assert publish(other_disk, Versioning(scheme="Latest"), target={"exclude_from_latest": True}) == "7.1.5"
    assert store.galleries.resolve_version(DEF).version == "7.1.4"
    t = SharedImageTarget(run_output_name="s2", gallery_image_id=DEF, versioning=Versioning(scheme="Source"))
    out = distribute(store, [t], built(store, raw_disk), template_id=TPL, run_id=run_id)[0]
    assert out.provisioning_state == "Failed" and "Source needs a source image" in out.error


def test_os_type_must_match_the_definition(store: Store, raw_disk: Path) -> None:
    t = SharedImageTarget(run_output_name="sig", gallery_image_id=DEF, target_regions=(TargetRegion(name="eastus"),))
    out = distribute(store, [t], built(store, raw_disk, os_type="Windows"), template_id=TPL, run_id=store.runs.create(TPL))[0]
    assert out.provisioning_state == "Failed" and "is for Linux" in out.error


def test_concurrent_distributions_lose_nothing_and_never_repeat_a_version(store: Store) -> None:
    workers, count = 4, 3
    procs = [subprocess.Popen([sys.executable, str(HERE / "distribute_worker.py"), str(store.config.home), str(w), str(count)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for w in range(workers)]
    results = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, results, strict=True):
        assert p.returncode == 0, err
    published = [line for out, _ in results for line in out.split()]
    versions = {str(v.id): v for v in store.galleries.list_versions(DEF)}
    assert len(published) == len(set(published)) == workers * count
    assert sorted(v.version for v in versions.values()) == sorted(f"1.0.{i}" for i in range(workers * count))
    assert set(versions) == set(published)
    assert len({v.digest for v in versions.values()}) == workers * count  # each distinct disk has its own version
    for w, (out, _) in enumerate(results):  # each worker's managed image holds its last disk: no lost update
        last = out.split()[-1]
        assert store.images.get(f"{SUB}/Microsoft.Compute/images/w{w}").digest == versions[last].digest
    assert store.check() == []
