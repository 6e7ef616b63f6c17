"""Fixtures for the image factory tests.

`factory_home` is a fresh state home whose `cache` is the shared test cache (so every build in the
session reuses one Debian 12 bootstrap). `seeded` fills a home for distribution and retention tests
without building: small real disks (GPT + ext4, made by the store tests' helper) imported as the
factory's staging images and saved into the factory lab, as `kiln factory build` + `save` would.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kiln.config import load_config
from kiln.events import Event, NullMonitor
from kiln.factory import DEFAULT_FACTORY_LAB, ensure_lab, save_images, unsaved_golden_images
from kiln.factory.build import staging_tags
from kiln.ids import ResourceId
from kiln.store import Store
from store_helpers import make_disk

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
DATA = HERE / "data"
CONFIG = DATA / "Configuration"
TEST_CACHE = Path(os.environ.get("KILN_TEST_CACHE", "/var/tmp/kiln-test-cache"))
SUB = "11111111-0000-0000-0000-000000000001"
PATHS = ("Debian/base.json", "Debian/tools.json", "Web/site.json")


def lab_id(name: str, rg: str = "labs-rg") -> str:
    return f"/subscriptions/{SUB}/resourceGroups/{rg}/providers/Microsoft.DevTestLab/labs/{name}"


def kiln(home: Path, *args: str, timeout: float = 3600) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KILN_HOME": str(home), "PYTHONPATH": str(REPO / "src")}
    return subprocess.run([sys.executable, "-m", "kiln", *args], env=env, text=True, capture_output=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)



def max_overlap(events: list[Event]) -> int:
    """The most jobs running at one instant, from the start/end times of the job events."""
    marks = sorted((e.time, 1 if e.data.get("job") == "start" else -1) for e in events if e.data.get("job"))
    # Ends sort before starts at the same instant (-1 < 1), so touching jobs do not count as overlapping.
    current = peak = 0
    for _, delta in marks:
        current += delta
        peak = max(peak, current)
    return peak


@pytest.fixture
def factory_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "kiln-home"
    home.mkdir()
    shared = TEST_CACHE / "kiln-home" / "cache"
    shared.mkdir(parents=True, exist_ok=True)
    (home / "cache").symlink_to(shared)
    monkeypatch.setenv("KILN_HOME", str(home))
    return home


def config_dir(tmp: Path, labs: list[dict] | None = None) -> Path:
    """A copy of the test configuration, with another Labs.json when given."""
    dst = tmp / "Configuration"
    shutil.copytree(CONFIG, dst)
    if labs is not None:
        (dst / "Labs.json").write_text(json.dumps({"Labs": labs}, indent=2))
    return dst


def lab_entry(name: str, *paths: str) -> dict:
    return {"SubscriptionId": SUB, "ResourceGroup": "labs-rg", "LabName": name, "ImagePaths": list(paths)}


@pytest.fixture(scope="session")
def disks(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    d = tmp_path_factory.mktemp("factory-disks")
    return [make_disk(d / f"golden-{i}.raw", size_mib=48, data_mib=3, seed=100 + i) for i in range(4)]


def seed_staging(home: Path, disk: Path, image_path: str, *, boot_tested: bool = True, name: str = "") -> str:
    """Import `disk` as a staging image of golden `image_path` (what a factory build leaves)."""
    config = load_config(home)
    with Store.open(config) as store:
        lab = ensure_lab(store, DEFAULT_FACTORY_LAB, "eastus")
        rid = ResourceId(lab.id.subscription, lab.id.resource_group, "Microsoft.Compute", ("images",),
                         (name or f"{image_path.replace('/', '_').replace('.', '_')}-{disk.stem}",))
        store.images.import_disk(disk, rid, lab.location, "Linux", boot_tested=boot_tested,
                                 tags=staging_tags(image_path, "Generalized", image_path))
        return str(rid)


def save_all(home: Path) -> None:
    with Store.open(load_config(home)) as store:
        lab = ensure_lab(store, DEFAULT_FACTORY_LAB, "eastus")
        save_images(store, lab, unsaved_golden_images(store, lab), NullMonitor())


def lab_state(home: Path) -> set[tuple[str, str, str, str, bool]]:
    """What every lab lists: (lab, image name, ImagePath, digest, boot-tested)."""
    with Store.open(load_config(home)) as store:
        return {(i.lab_id.name, i.name, i.image_path, i.digest, i.boot_tested) for i in store.labs.all_images()}


def check_labs_complete(home: Path) -> None:
    """No lab lists an image whose bytes are not complete and verified in the lab's region."""
    with Store.open(load_config(home)) as store:
        for image in store.labs.all_images():
            assert image.disk.path.exists(), f"{image.id} is listed but {image.disk.path} is missing"
            store.blobs.verify_file(image.disk.path, image.digest, image.disk.virtual_size)
        assert store.check(verify_data=False) == []
