"""Saving, distribution, retention and cleanup on a real store, without builds: small real disks are
imported as the factory's staging images (what `kiln factory build` leaves) and the real commands
run on them, in-process (to read their events) or as `kiln` subprocesses (to kill -9 them)."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kiln.config import load_config
from kiln.factory import DEFAULT_FACTORY_LAB, distribute_images, ensure_lab, load_factory, target_labs
from kiln.store import Store
from kiln.store.worklock import KEEP_MARKER
from monitors import Recorder

from .conftest import (
    PATHS,
    REPO,
    check_labs_complete,
    config_dir,
    kiln,
    lab_entry,
    lab_state,
    max_overlap,
    save_all,
    seed_staging,
)


def seeded_home(home: Path, disks: list[Path]) -> None:
    for disk, path in zip(disks, PATHS, strict=False):
        seed_staging(home, disk, path)
    save_all(home)


def twenty_labs() -> list[dict]:
    return [lab_entry(f"Lab{i:02d}", "Debian" if i % 2 else "Web", *(["Debian/base.json"] if i % 2 == 0 else []))
            for i in range(20)]


def test_save_names_images_by_the_factory_convention(factory_home: Path, disks: list[Path]) -> None:
    seed_staging(factory_home, disks[0], "Debian/base.json")
    seed_staging(factory_home, disks[1], "Debian/base.json")
    seed_staging(factory_home, disks[2], "Web/site.json", boot_tested=False)
    proc = kiln(factory_home, "factory", "save")
    assert proc.returncode == 0, proc.stderr
    images = json.loads(kiln(factory_home, "lab", "image", "list", DEFAULT_FACTORY_LAB, "--json").stdout)
    day = time.localtime()
    date = f"{time.strftime('%b', day)}-{day.tm_mday}-{day.tm_year}"
    assert [i["name"] for i in images] == [f"Debian_base-{date}", f"Debian_base-{date}-2", f"Web_site-{date}"]
    assert [i["kiln"]["bootTested"] for i in images] == [True, True, False]
    assert json.loads(kiln(factory_home, "image", "list", "--json").stdout) == []  # staging images consumed
    # Nothing left to save: a second save changes nothing.
    assert kiln(factory_home, "factory", "save").returncode == 0
    assert len(json.loads(kiln(factory_home, "lab", "image", "list", DEFAULT_FACTORY_LAB, "--json").stdout)) == 3


def test_twenty_labs_twenty_jobs_no_byte_twice(factory_home: Path, disks: list[Path], tmp_path: Path) -> None:
    seeded_home(factory_home, disks)
    cfg = config_dir(tmp_path, twenty_labs())
    config = load_config(factory_home)
    recorder = Recorder()
    with Store.open(config) as store:
        factory = load_factory(cfg, config)
        lab = ensure_lab(store, DEFAULT_FACTORY_LAB, "eastus")
        labs = target_labs(store, factory, lab, create_in="eastus")
        report = distribute_images(lambda: Store.open(config), store, factory, lab, labs, monitor=recorder, max_jobs=20)
    assert report.failed == [] and len(report.done) == report.total == 10 * 2 + 10 * 2
    overlap = max_overlap(recorder.events)
    assert 1 < overlap <= 20, overlap
    assert report.max_in_flight <= 20
    progress = [e for e in recorder.events if e.kind == "progress"]
    assert progress[-1].done == progress[-1].total == 40 and "40 done, 0 skipped, 0 failed" in progress[-1].message
    # Every lab image is the blob itself (one inode), so no image byte was written twice.
    with Store.open(config) as store:
        images = store.labs.all_images()
        assert len(images) == 40 + 3
        for image in images:
            assert os.stat(image.disk.path).st_ino == os.stat(store.blobs.path_for(image.digest)).st_ino
        unique = sum(os.stat(store.blobs.path_for(d)).st_blocks * 512 for d in {i.digest for i in images})
    # `du` counts each inode once: the blobs and every lab region together use no more than the unique bytes.
    du = subprocess.run(["du", "-s", "-c", "-B1", str(factory_home / "blobs"), str(factory_home / "regions")],
                        capture_output=True, text=True, check=True).stdout.splitlines()
    total = int(du[-1].split()[0])
    assert unique <= total <= unique + (1 << 20), (total, unique)
    check_labs_complete(factory_home)


def test_concurrency_limit_holds_for_small_limits(factory_home: Path, disks: list[Path], tmp_path: Path) -> None:
    seeded_home(factory_home, disks)
    cfg = config_dir(tmp_path, twenty_labs())
    proc = kiln(factory_home, "--progress", "json", "factory", "distribute", str(cfg), "--max-concurrent-jobs", "3",
                "--create-labs-in", "westeurope")
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(line) for line in proc.stderr.splitlines() if line.startswith("{")]
    jobs = sorted((e["time"], 1 if e["data"]["job"] == "start" else -1) for e in events if e["data"].get("job"))
    peak = current = 0
    for _, d in jobs:
        current += d
        peak = max(peak, current)
    assert 1 <= peak <= 3
    assert "40 done, 0 skipped, 0 failed" in proc.stdout
    check_labs_complete(factory_home)  # another region: verified copies, one per region and blob
    with Store.open(load_config(factory_home)) as store:
        inodes = {os.stat(i.disk.path).st_ino for i in store.labs.all_images() if i.location == "westeurope"}
        assert len(inodes) == 3


def test_missing_labs_are_an_error_listing_each(factory_home: Path, disks: list[Path], tmp_path: Path) -> None:
    seeded_home(factory_home, disks)
    cfg = config_dir(tmp_path)
    before = lab_state(factory_home)
    proc = kiln(factory_home, "factory", "distribute", str(cfg))
    assert proc.returncode == 2
    assert proc.stderr.count("does not exist") == 4 and ".Labs[3]" in proc.stderr
    assert lab_state(factory_home) == before


def _kill_and_rerun(home: Path, reference: Path, args: list[str], rounds: int, seed: int) -> None:
    env = {**os.environ, "KILN_HOME": str(home), "PYTHONPATH": str(REPO / "src")}
    rng = random.Random(seed)
    for _ in range(rounds):
        proc = subprocess.Popen([sys.executable, "-m", "kiln", "--progress", "quiet", *args], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.3, 1.6))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        check_labs_complete(home)
    final = kiln(home, *args)
    assert final.returncode == 0, final.stderr
    check_labs_complete(home)
    assert lab_state(home) == lab_state(reference)


@pytest.mark.usefixtures("load")  # on a busy machine, as in CI: the windows between commit steps are wider
def test_kill_during_distribute_then_rerun(factory_home: Path, disks: list[Path], tmp_path: Path) -> None:
    seeded_home(factory_home, disks)
    cfg = config_dir(tmp_path, twenty_labs())
    args = ["factory", "distribute", str(cfg), "--max-concurrent-jobs", "20", "--create-labs-in", "westeurope"]
    reference = tmp_path / "reference"
    shutil.copytree(factory_home, reference, symlinks=True)
    assert kiln(reference, *args).returncode == 0
    assert len(lab_state(reference)) == 43
    _kill_and_rerun(factory_home, reference, args, rounds=10, seed=5)


def _history(home: Path, disks: list[Path]) -> None:
    """Three days of factory output: two good builds per path, a newer failed one for base."""
    for disk, path in [(disks[0], "Debian/base.json"), (disks[1], "Debian/tools.json"), (disks[2], "Web/site.json"),
                       (disks[3], "Debian/base.json"), (disks[2], "Debian/tools.json"), (disks[1], "Web/site.json")]:
        seed_staging(home, disk, path, name=f"{path.replace('/', '_').replace('.', '_')}-{disk.stem}-{time.time_ns()}")
    seed_staging(home, disks[1], "Debian/base.json", boot_tested=False, name="failed-base")
    save_all(home)


def test_retire_keeps_the_newest_good_images(factory_home: Path, disks: list[Path], tmp_path: Path) -> None:
    _history(factory_home, disks)
    cfg = config_dir(tmp_path, [lab_entry("LabA", "Debian"), lab_entry("LabB", "Web")])
    assert kiln(factory_home, "factory", "distribute", str(cfg), "--create-labs-in", "eastus",
                "--include-unverified").returncode == 0
    before = lab_state(factory_home)
    dry = kiln(factory_home, "factory", "retire", str(cfg), "--images-to-save", "1", "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    planned = {(r["lab"], r["name"]) for r in json.loads(dry.stdout)["retire"]}
    assert lab_state(factory_home) == before  # a dry run changes nothing
    proc = kiln(factory_home, "factory", "retire", str(cfg), "--images-to-save", "1")
    assert proc.returncode == 0, proc.stderr
    after = lab_state(factory_home)
    assert {(lab, name) for lab, name, *_ in before - after} == planned
    for lab in ("ImageFactory", "LabA", "LabB"):
        mine = [s for s in after if s[0] == lab]
        good = {}
        for _, name, path, _, tested in mine:
            good.setdefault(path, []).append((name, tested))
        for path, names in good.items():
            # One good image per path; the failed base image was newest, so it stays beside it.
            tested = [n for n, t in names if t]
            assert len(tested) == 1, (lab, path, names)
            assert tested[0].endswith("-2"), (lab, path, names)  # the newer of the two good ones
    assert ("ImageFactory", "failed-base") not in {(lab, n) for lab, n, *_ in after}  # named by the factory instead
    assert any(not t for lab, n, p, d, t in after if lab == "ImageFactory" and p == "Debian/base.json")
    check_labs_complete(factory_home)


def test_retire_removes_orphans_and_unlisted_paths(factory_home: Path, disks: list[Path], tmp_path: Path) -> None:
    seeded_home(factory_home, disks)
    cfg = config_dir(tmp_path, [lab_entry("LabA", "Debian", "Web")])
    assert kiln(factory_home, "factory", "distribute", str(cfg), "--create-labs-in", "eastus").returncode == 0
    (cfg / "GoldenImages" / "Web" / "site.json").unlink()
    shutil.rmtree(cfg / "GoldenImages" / "Web")
    (cfg / "Labs.json").write_text(json.dumps({"Labs": [lab_entry("LabA", "Debian/base.json")]}))
    proc = kiln(factory_home, "factory", "retire", str(cfg), "--images-to-save", "3")
    assert proc.returncode == 0, proc.stderr
    assert "was removed" in proc.stdout and "no longer lists Debian/tools.json" in proc.stdout
    state = lab_state(factory_home)
    assert {(lab, p) for lab, _, p, *_ in state} == {("ImageFactory", "Debian/base.json"),
                                                      ("ImageFactory", "Debian/tools.json"), ("LabA", "Debian/base.json")}
    check_labs_complete(factory_home)


@pytest.mark.parametrize("breakage", ["malformed golden", "duplicate lab", "no golden images", "path matches nothing"])
def test_bad_configuration_never_deletes_anything(factory_home: Path, disks: list[Path], tmp_path: Path,
                                                  breakage: str) -> None:
    seeded_home(factory_home, disks)
    cfg = config_dir(tmp_path, [lab_entry("LabA", "Debian", "Web")])
    assert kiln(factory_home, "factory", "distribute", str(cfg), "--create-labs-in", "eastus").returncode == 0
    if breakage == "malformed golden":
        (cfg / "GoldenImages" / "Web" / "site.json").write_text("{ not json")
    elif breakage == "duplicate lab":
        (cfg / "Labs.json").write_text(json.dumps({"Labs": [lab_entry("LabA", "Debian"), lab_entry("LABA", "Web")]}))
    elif breakage == "no golden images":
        shutil.rmtree(cfg / "GoldenImages")
        (cfg / "GoldenImages").mkdir()
    else:
        (cfg / "Labs.json").write_text(json.dumps({"Labs": [lab_entry("LabA", "Debian/bsae.json")]}))
    with Store.open(load_config(factory_home)) as store:
        dump = store.catalog.dump()
    blobs = sorted(p.name for p in (factory_home / "blobs").rglob("*.vhd"))
    for args in (["retire", str(cfg), "--images-to-save", "1"], ["distribute", str(cfg)], ["run", str(cfg)]):
        proc = kiln(factory_home, "factory", *args)
        assert proc.returncode == 2, (args, proc.stdout, proc.stderr)
        assert "Traceback" not in proc.stderr
    with Store.open(load_config(factory_home)) as store:
        assert store.catalog.dump() == dump
    assert sorted(p.name for p in (factory_home / "blobs").rglob("*.vhd")) == blobs


@pytest.mark.usefixtures("load")
def test_kill_during_retire_then_rerun(factory_home: Path, disks: list[Path], tmp_path: Path) -> None:
    _history(factory_home, disks)
    cfg = config_dir(tmp_path, [lab_entry(f"Lab{i:02d}", "Debian", "Web") for i in range(12)])
    assert kiln(factory_home, "factory", "distribute", str(cfg), "--create-labs-in", "eastus",
                "--include-unverified").returncode == 0
    args = ["factory", "retire", str(cfg), "--images-to-save", "1"]
    reference = tmp_path / "reference"
    shutil.copytree(factory_home, reference, symlinks=True)
    assert kiln(reference, *args).returncode == 0
    assert len(lab_state(reference)) < len(lab_state(factory_home))
    _kill_and_rerun(factory_home, reference, args, rounds=10, seed=11)


def test_cleanup_removes_dead_work_but_keeps_marked(factory_home: Path, disks: list[Path]) -> None:
    from kiln.ids import parse

    config = load_config(factory_home)
    with Store.open(config) as store:
        tid = parse("/subscriptions/s/resourceGroups/rg/providers/Microsoft.VirtualMachineImages/imageTemplates/t")
        store.runs.register_template(tid, {})
        dead = store.runs.create(tid, run_id="deadrun00001", log_path=str(factory_home / "dead.log"))
        kept = store.runs.create(tid, run_id="keptrun00001")
        live = store.runs.create(tid, run_id="liverun00001")
        for r in (dead, kept):
            store.catalog.conn.execute("UPDATE runs SET pid = 1, pid_start = 'gone' WHERE run_id = ?", (r,))
    # The dead run's log says its work was kept, but only the marker in the work dir counts (the
    # pipeline writes one when it keeps a run's work; the log is for people).
    (factory_home / "dead.log").write_text(f"x work directory kept: {config.work_dir / dead}\n")
    for r in (dead, kept, live, "orphan-dir"):
        (config.work_dir / r).mkdir(parents=True)
        (config.work_dir / r / "disk.raw").write_bytes(b"x" * 4096)
    (config.work_dir / kept / KEEP_MARKER).write_text(f"run {kept}: kept for inspection\n")
    (config.work_dir / "marked").mkdir()
    (config.work_dir / "marked" / KEEP_MARKER).touch()
    dry = kiln(factory_home, "factory", "cleanup", "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    assert json.loads(dry.stdout)["workDirs"] == [str(config.work_dir / dead)]  # a build is live: orphans wait
    assert (config.work_dir / dead).exists()
    with Store.open(config) as store:
        store.runs.finish(live, "Succeeded")
    proc = kiln(factory_home, "factory", "cleanup", "--json")
    report = json.loads(proc.stdout)
    assert sorted(report["workDirs"]) == sorted(str(config.work_dir / r) for r in (dead, live, "orphan-dir"))
    assert sorted(report["kept"]) == sorted(str(config.work_dir / r) for r in (kept, "marked"))
    assert sorted(p.name for p in config.work_dir.iterdir()) == sorted([kept, "marked"])
