"""The store's API on real small disks: import, dedupe, zero-copy publish, galleries, runs, gc."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from kiln.config import load_config
from kiln.disk import vhd
from kiln.distribute.galleries import publish_gallery_version
from kiln.errors import InvalidInput, NotFound
from kiln.store import RegionTarget, Store, VersionRule
from kiln.store.common import new_holder
from kiln.store.digest import CHUNK, disk_digest

SUB = "/subscriptions/0000/resourceGroups/rg/providers"
IMG = f"{SUB}/Microsoft.Compute/images/web"
GAL = f"{SUB}/Microsoft.Compute/galleries/gal"
DEF = f"{GAL}/images/web"


@pytest.fixture
def store(kiln_home: Path):
    with Store.open(load_config(kiln_home)) as s:
        yield s


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_digest_is_a_function_of_content_not_of_holes(tmp_path: Path) -> None:
    sparse, dense = tmp_path / "s", tmp_path / "d"
    with sparse.open("wb") as f:
        f.truncate(3 * CHUNK + 4096)
        f.seek(CHUNK + 7)
        f.write(b"data")
    content = bytearray(3 * CHUNK + 4096)
    content[CHUNK + 7: CHUNK + 11] = b"data"
    dense.write_bytes(bytes(content))  # the same bytes, all allocated
    assert disk_digest(sparse) == disk_digest(dense)
    content[5] = 1
    dense.write_bytes(bytes(content))
    assert disk_digest(sparse) != disk_digest(dense)
    # The definition, spelled out: sha256(prefix || size || sha256 of each 4 MiB chunk).
    data = sparse.read_bytes()
    outer = hashlib.sha256(b"kiln-disk-digest-v1\n" + len(data).to_bytes(8, "big"))
    for i in range(0, len(data), CHUNK):
        outer.update(hashlib.sha256(data[i:i + CHUNK]).digest())
    assert disk_digest(sparse) == outer.hexdigest()


def test_import_leaves_the_users_file_alone_and_qemu_reads_the_same_disk(store: Store, raw_disk: Path) -> None:
    before = (sha(raw_disk), raw_disk.stat().st_mtime_ns, raw_disk.stat().st_size)
    img = store.images.import_disk(raw_disk, IMG, "westus2", "Linux", tags={"team": "a"})
    assert (sha(raw_disk), raw_disk.stat().st_mtime_ns, raw_disk.stat().st_size) == before
    assert img.disk.format == "vpc" and img.disk.virtual_size == raw_disk.stat().st_size
    assert img.tags == {"team": "a"} and img.location == "westus2"
    cmp = subprocess.run(["qemu-img", "compare", "-f", "raw", "-F", img.disk.format, str(raw_disk), str(img.disk.path)],
                         capture_output=True, text=True)
    assert cmp.returncode == 0, cmp.stdout
    # The GPT is at a plain offset in the blob: sector 1 of the blob is the raw disk's sector 1.
    with img.disk.path.open("rb") as f:
        f.seek(512)
        assert f.read(8) == b"EFI PART"
    # Ids compare case-insensitively; importing the same disk again is a no-op.
    assert store.images.get(IMG.upper()).digest == img.digest
    assert store.images.import_disk(raw_disk, IMG.lower(), "westus2") == img
    assert store.check() == []


def test_same_content_is_stored_once_and_regions_get_hardlinks(store: Store, raw_disk: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy.raw"
    shutil.copyfile(raw_disk, copy)
    a = store.images.import_disk(raw_disk, IMG, "westus2")
    b = store.images.import_disk(copy, f"{SUB}/Microsoft.Compute/images/other", "westus2")
    assert a.digest == b.digest and a.disk.path == b.disk.path
    replica = Path(store.config.regions[1].path) / f"{a.digest}.vhd"
    assert store.config.regions[1].name == "westus2"
    assert replica.stat().st_ino == a.disk.path.stat().st_ino  # a hardlink: zero bytes
    assert oct(a.disk.path.stat().st_mode & 0o777) == "0o444"


def test_publishing_a_work_dir_disk_copies_nothing(store: Store, raw_disk: Path) -> None:
    work = store.config.work_dir / "build-1" / "disk.raw"
    work.parent.mkdir(parents=True)
    shutil.copyfile(raw_disk, work)
    inode = work.stat().st_ino
    holder = new_holder("test")
    blob = store.blobs.ingest(work, holder=holder, move=True)
    assert not work.exists()  # consumed
    assert blob.path.stat().st_ino == inode  # renamed, not copied
    assert store.blobs.live_leases() == {blob.digest}
    store.blobs.release_holder(holder)
    store.blobs.verify(blob)
    footer = vhd.read_trailing_footer(blob.path)
    assert footer is not None and footer.unique_id == bytes.fromhex(blob.digest)[:16]


def test_qcow2_and_dynamic_vhd_import_to_the_same_blob(store: Store, raw_disk: Path, tmp_path: Path) -> None:
    a = store.images.import_disk(raw_disk, IMG, "westus2")
    for i, (fmt, opts) in enumerate([("qcow2", []), ("vpc", ["-o", "subformat=dynamic,force_size"]),
                                     ("vpc", ["-o", "subformat=fixed,force_size"])]):
        out = tmp_path / f"d{i}"
        subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", fmt, *opts, str(raw_disk), str(out)], check=True)
        b = store.images.import_disk(out, f"{SUB}/Microsoft.Compute/images/f{i}", "westus2")
        assert b.digest == a.digest, fmt


def test_conflicts_and_bad_values(store: Store, raw_disk: Path, other_disk: Path) -> None:
    store.images.import_disk(raw_disk, IMG, "westus2")
    with pytest.raises(InvalidInput, match="already exists"):
        store.images.import_disk(other_disk, IMG, "westus2")
    with pytest.raises(InvalidInput, match="unknown region"):
        store.images.import_disk(other_disk, f"{SUB}/Microsoft.Compute/images/x", "atlantis")
    with pytest.raises(InvalidInput, match="os type"):
        store.images.import_disk(other_disk, f"{SUB}/Microsoft.Compute/images/x", "westus2", "Plan9")
    with pytest.raises(InvalidInput, match="malformed"):
        store.images.import_disk(other_disk, f"{SUB}/Microsoft.Compute/galleries/x", "westus2")
    with pytest.raises(NotFound):
        store.images.get(f"{SUB}/Microsoft.Compute/images/missing")


def test_gallery_versions_latest_and_resolve(store: Store, raw_disk: Path, other_disk: Path) -> None:
    store.galleries.create(GAL, "westus2")
    with pytest.raises(NotFound, match="does not exist"):
        store.galleries.create_definition(f"{SUB}/Microsoft.Compute/galleries/nope/images/x", publisher="p", offer="o", sku="s")
    store.galleries.create_definition(DEF, publisher="kiln", offer="debian", sku="12")
    with pytest.raises(InvalidInput, match="other properties"):
        store.galleries.create_definition(DEF, publisher="kiln", offer="debian", sku="12", os_type="Windows")
    holder = new_holder("test")
    a = store.blobs.ingest(raw_disk, holder=holder)
    b = store.blobs.ingest(other_disk, holder=holder)
    regions = [RegionTarget("eastus"), RegionTarget("westeurope", 2)]
    v1 = publish_gallery_version(store, DEF, a, target_regions=regions)
    v2 = publish_gallery_version(store, DEF, b, target_regions=regions)
    v3 = publish_gallery_version(store, DEF, a, rule=VersionRule("Latest", major=2))
    vx = publish_gallery_version(store, DEF, b, rule=VersionRule("Explicit", "2.5.0"), exclude_from_latest=True)
    assert [v.version for v in (v1, v2, v3, vx)] == ["1.0.0", "1.0.1", "2.0.0", "2.5.0"]
    assert publish_gallery_version(store, DEF, b, rule=VersionRule("Explicit", "2.5.0")).id == vx.id  # idempotent
    with pytest.raises(InvalidInput, match="already exists"):
        publish_gallery_version(store, DEF, a, rule=VersionRule("Explicit", "2.5.0"))
    assert publish_gallery_version(store, DEF, a, rule=VersionRule("Latest")).version == "2.5.1"
    # latest skips excludeFromLatest; a definition id and .../versions/latest both resolve to it.
    assert store.galleries.resolve_version(f"{DEF}/versions/latest").version == "2.5.1"
    assert store.galleries.resolve_version(DEF.upper()).version == "2.5.1"
    assert store.galleries.resolve_version(f"{DEF}/versions/1.0.1").digest == b.digest
    for region in ("eastus", "westeurope"):
        assert (Path(store.regions.get(region).path) / f"{a.digest}.vhd").exists()
    store.blobs.release_holder(holder)
    with pytest.raises(InvalidInput, match="still has"):
        store.galleries.delete_definition(DEF)
    assert store.check() == []


def test_gc_keeps_referenced_and_leased_blobs_and_removes_the_rest(store: Store, raw_disk: Path, other_disk: Path) -> None:
    keep = store.images.import_disk(raw_disk, IMG, "westus2")
    holder = new_holder("run")
    leased = store.blobs.ingest(other_disk, holder=holder)
    leftover = store.blobs.tmp_dir / ".import-999999999-dead.unverified"  # a killed process's temp file
    leftover.write_bytes(b"partial")
    report = store.gc()
    assert report.blobs == [] and leased.path.exists() and keep.disk.path.exists()
    assert str(leftover) in report.temp_files and not leftover.exists()
    store.blobs.release_holder(holder)
    report = store.gc()
    assert report.blobs == [leased.digest] and not leased.path.exists()
    store.images.delete(IMG)
    report = store.gc()
    assert report.blobs == [keep.digest] and not keep.disk.path.exists()
    assert not any(list(Path(r.path).glob("*.vhd")) for r in store.config.regions if Path(r.path).exists())
    assert store.check() == []


def test_a_dead_processes_lease_expires(store: Store, other_disk: Path) -> None:
    proc = subprocess.Popen(["sleep", "0"])
    proc.wait()
    blob = store.blobs.ingest(other_disk, holder="x")
    with store.catalog.write() as db:  # re-assign the lease to a process that has exited
        db.execute("UPDATE leases SET pid = ?", (proc.pid,))
    assert store.blobs.live_leases() == set()
    assert store.gc().blobs == [blob.digest]


def test_another_hosts_runs_and_leases_are_not_judged_by_this_hosts_pids(store: Store, other_disk: Path) -> None:
    """A shared catalog holds pids of other machines: a pid free here says nothing about them."""
    from kiln import ids
    from kiln.store.blobs import pid_space, process_start

    proc = subprocess.Popen(["sleep", "0"])
    proc.wait()  # a pid that is free on this host
    elsewhere = "1234567@00000000-0000-0000-0000-000000000000/4026531836"  # another boot's pid space
    assert pid_space() and process_start(os.getpid()).endswith("@" + pid_space())
    tid = ids.parse(f"{SUB}/Microsoft.VirtualMachineImages/imageTemplates/remote")
    store.runs.register_template(tid, {"properties": {"distribute": []}})
    remote, local = store.runs.create(tid), store.runs.create(tid)
    with store.catalog.write() as db:
        db.execute("UPDATE runs SET pid = ?, pid_start = ? WHERE run_id = ?", (proc.pid, elsewhere, remote))
        db.execute("UPDATE runs SET pid = ?, pid_start = ? WHERE run_id = ?",
                   (proc.pid, f"1234567@{pid_space()}", local))
    assert store.runs.get(remote).run_state == "Running"  # another host's build: not reaped here
    assert store.runs.get(local).run_state == "Failed"  # this host's dead build: reaped
    blob = store.blobs.ingest(other_disk, holder="x")
    with store.catalog.write() as db:  # the lease of a build on another host
        db.execute("UPDATE leases SET pid = ?, pid_start = ?", (proc.pid, elsewhere))
    assert store.blobs.live_leases() == {blob.digest}
    assert blob.digest not in store.gc().blobs


def test_runs_and_run_outputs(store: Store) -> None:
    from kiln import ids
    from kiln.store import RunOutput

    tid = ids.parse(f"{SUB}/Microsoft.VirtualMachineImages/imageTemplates/web")
    store.runs.register_template(tid, {"properties": {"distribute": []}})
    run = store.runs.create(tid)
    store.runs.update(run, run_sub_state="Building")
    store.runs.record_output(run, RunOutput("out1", tid, "ManagedImage", "Succeeded", artifact_id=IMG))
    store.runs.finish(run, "Succeeded")
    got = store.runs.get(run)
    assert (got.run_state, got.run_sub_state, got.outputs[0].artifact_id) == ("Succeeded", "Building", IMG)
    with pytest.raises(InvalidInput):
        store.runs.update(run, run_sub_state="Dancing")
    assert store.runs.output(f"{str(tid).upper()}/runOutputs/OUT1").artifact_id == IMG
    # A run whose process died is reported Failed, not Running forever.
    dead = store.runs.create(tid)
    with store.catalog.write() as db:
        db.execute("UPDATE runs SET pid_start = 'gone' WHERE run_id = ?", (dead,))
    assert store.runs.get(dead).run_state == "Failed"


def test_schema_is_migrated_once_and_versioned(kiln_home: Path) -> None:
    from alembic.script import ScriptDirectory

    from kiln.store.migrations import HERE

    for _ in range(2):
        Store.open(load_config(kiln_home)).close()
    with Store.open(load_config(kiln_home)) as store:
        rows = store.catalog.query("SELECT version_num FROM alembic_version")
        assert [r[0] for r in rows] == [ScriptDirectory(str(HERE)).get_current_head()]
        if store.catalog.dialect == "sqlite":
            assert store.catalog.one("PRAGMA journal_mode")[0] == "wal"
    assert os.access(kiln_home / "blobs", os.W_OK)
