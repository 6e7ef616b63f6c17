"""kill -9 at random instants during import, replication and version publish.

Each round starts a real `kiln` command in a subprocess, kills it with SIGKILL after a random delay,
and checks the store: every row's blob exists and re-hashes to its name, every replica a row needs
is there and complete, no partial file sits under a final name. Then the same command is run again
and must finish the job. Two regions live on a tmpfs, so replication to them is a real sparse copy
(not a hardlink) that a kill can interrupt half-way. A CPU hog and an I/O hog run beside them
(the `load` fixture): on a busy machine the windows between the steps of a commit are wide.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest

from kiln.config import load_config
from kiln.store import Store
from store_helpers import KILN, REPO, kiln_cmd, make_disk

pytestmark = pytest.mark.integration

SUB = "/subscriptions/0000/resourceGroups/rg/providers"
GAL = f"{SUB}/Microsoft.Compute/galleries/gal"
DEF = f"{GAL}/images/web"
KILLS_WANTED = 50


def start(home: Path, args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "KILN_HOME": str(home), "PYTHONPATH": str(REPO / "src")}
    return subprocess.Popen([*KILN, "--progress", "quiet", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def test_kill_anywhere_then_rerun(tmp_path: Path, load: None) -> None:
    home = tmp_path / "home"
    far = tmp_path / "far"
    home.mkdir()
    far.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1g", "tmpfs", str(far)], check=True)
    try:
        (home / "config.toml").write_text(
            f'[regions.eastus]\n[regions.westus2]\n[regions.far1]\npath = "{far}/far1"\n[regions.far2]\npath = "{far}/far2"\n')
        disks = [make_disk(tmp_path / f"d{i}.raw", 64, 12, seed=100 + i) for i in range(6)]
        kiln_cmd(home, "gallery", "create", GAL, "--location", "eastus", check=True)
        kiln_cmd(home, "gallery", "image-definition", "create", DEF, "--publisher", "p", "--offer", "o", "--sku", "s",
                 check=True)
        rng = random.Random(20261121)
        kills = rounds = 0
        phases: dict[str, int] = {}
        # How long each kind of command takes when it runs to the end (the rerun below measures it):
        # kills are spread over that whole time, however fast the machine or kiln's start-up is.
        takes = {"import": 1.3, "version": 1.3, "replicate": 1.3}
        while kills < KILLS_WANTED and rounds < 3 * KILLS_WANTED:
            op = ("import", "version", "replicate")[rounds % 3]
            disk = disks[rounds % len(disks)]
            if op == "import":
                args = ["image", "import", str(disk), "--id", f"{SUB}/Microsoft.Compute/images/i{rounds}", "--location",
                        rng.choice(["far1", "westus2"])]
            elif op == "version":
                args = ["gallery", "image-version", "create", f"{DEF}/versions/1.0.{rounds}", "--disk", str(disk),
                        "--target-region", "far1", "--target-region", "far2", "--target-region", "eastus"]
            else:  # an existing image, replicated to the regions it is not in yet
                args = ["gallery", "image-version", "create", f"{DEF}/versions/2.0.{rounds}", "--image",
                        f"{SUB}/Microsoft.Compute/images/i{rounds - 2}", "--target-region", "far2", "--target-region", "far1"]
            proc = start(home, args)
            time.sleep(rng.uniform(0.02, takes[op]))
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            if proc.returncode == -signal.SIGKILL:
                kills += 1
                phases[op] = phases.get(op, 0) + 1
            with Store.open(load_config(home)) as store:
                assert store.check() == [], (rounds, args)
                leftovers = [p for p in store.config.blobs_dir.rglob("*.vhd") if ".unverified" in p.name]
                assert leftovers == []  # temporary names never end in .vhd: nothing partial looks like a blob
            t0 = time.monotonic()
            done = kiln_cmd(home, *args)
            takes[op] = max(0.1, time.monotonic() - t0)
            assert done.returncode == 0, (args, done.stderr)
            with Store.open(load_config(home)) as store:
                if op == "import":
                    assert store.images.get(args[4]).disk.path.exists()
                else:
                    v = store.galleries.get_version(args[3])
                    for region in args[args.index("--target-region") + 1::2]:
                        assert store.regions.get_replica(region, v.digest) is not None
                if rounds % 10 == 9:
                    store.gc()
                    assert store.check() == [], (rounds, args)
            rounds += 1
        assert kills >= KILLS_WANTED, f"only {kills} of {rounds} rounds were killed mid-way"
        assert set(phases) == {"import", "version", "replicate"}, phases
        with Store.open(load_config(home)) as store:
            report = store.gc()
            assert not list(store.config.blobs_dir.rglob("*.unverified")) and not list(far.rglob("*.unverified"))
            assert store.check() == [] and report is not None
    finally:
        subprocess.run(["umount", str(far)], check=True)


def test_kill_during_gc_then_rerun(tmp_path: Path, load: None) -> None:
    """gc forgets rows before it deletes bytes: a kill anywhere leaves at most files nothing
    references (which the next gc takes), never a row whose blob or replica is gone."""
    home = tmp_path / "home"
    far = tmp_path / "far"
    home.mkdir()
    far.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256m", "tmpfs", str(far)], check=True)
    try:
        (home / "config.toml").write_text(f'[regions.eastus]\n[regions.far1]\npath = "{far}/far1"\n')
        kept_disk = make_disk(tmp_path / "kept.raw", 16, 2, seed=7)
        with Store.open(load_config(home)) as store:
            kept = store.images.import_disk(kept_disk, f"{SUB}/Microsoft.Compute/images/kept", "far1")

        def files() -> int:
            return len(list(home.rglob("*.vhd"))) + len(list(far.rglob("*.vhd")))

        # Each gc is killed the instant its first file disappears: the moment a gc that deleted
        # bytes before committing their rows' deletion would leave rows without bytes.
        early = 0
        for rnd in range(6):
            disks = [make_disk(tmp_path / f"g{rnd}-{i}.raw", 16, 2, seed=1000 * rnd + i) for i in range(8)]
            with Store.open(load_config(home)) as store:
                for i, disk in enumerate(disks):
                    image = store.images.import_disk(disk, f"{SUB}/Microsoft.Compute/images/g{rnd}-{i}",
                                                     "far1" if i % 2 else "eastus")
                    store.regions.replicate(store.blobs.get(image.digest), "far1" if i % 2 == 0 else "eastus")
                    store.images.delete(image.id)
            for disk in disks:
                disk.unlink()
            before = files()
            proc = start(home, ["gc"])
            while proc.poll() is None and files() == before:
                pass
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            early += proc.returncode == -signal.SIGKILL and files() > 2
            with Store.open(load_config(home)) as store:
                assert store.check() == [], rnd
        assert early >= 3, f"only {early} of 6 gc runs were killed while deleting"
        assert kiln_cmd(home, "gc").returncode == 0
        with Store.open(load_config(home)) as store:
            assert store.check() == []
            blob_files = sorted(p.name for p in store.config.blobs_dir.rglob("*.vhd"))
            assert blob_files == [f"{kept.digest}.vhd"]  # every orphan a killed gc left is taken now
            assert sorted(p.name for p in (far / "far1").iterdir()) == [f"{kept.digest}.vhd"]
            assert [r.digest for r in store.images.list()] == [kept.digest]
    finally:
        subprocess.run(["umount", str(far)], check=True)
