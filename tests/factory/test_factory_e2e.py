"""The whole factory for real: 3 Debian golden images (one AIB template, two DevTest Labs VM
templates with a Linux artifact from the test's artifact repository) built, boot-tested, saved and
distributed to 4 labs by `kiln factory run`, as a user would run it. The three builds share one
cached Debian 12 bootstrap (the session's shared cache)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from .conftest import PATHS, kiln, lab_id

pytestmark = pytest.mark.integration

EXPECTED = {
    "LabAll": set(PATHS),
    "LabDebian": {"Debian/base.json", "Debian/tools.json"},
    "LabSite": {"Web/site.json"},
    "LabMixed": {"Debian/base.json", "Web/site.json"},
}


def file_in_disk(disk: Path, inside: str) -> str:
    """Read one file from the image's root filesystem (partition 2 of kiln's GPT layout) with debugfs."""
    out = subprocess.run(["sgdisk", "-i", "2", str(disk)], capture_output=True, text=True, check=True).stdout
    first = int(next(line for line in out.splitlines() if line.startswith("First sector")).split(":")[1].split()[0])
    # debugfs reads the filesystem at that offset of the disk file; a missing file prints nothing on stdout.
    proc = subprocess.run(["debugfs", "-R", f"cat {inside}", f"{disk}?offset={first * 512}"],
                          capture_output=True, text=True)
    return proc.stdout


@pytest.fixture(scope="module")
def factory_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    import os

    from .conftest import CONFIG, TEST_CACHE

    home = tmp_path_factory.mktemp("factory-e2e") / "home"
    home.mkdir()
    shared = TEST_CACHE / "kiln-home" / "cache"
    shared.mkdir(parents=True, exist_ok=True)
    (home / "cache").symlink_to(shared)
    assert os.path.isdir(CONFIG)
    proc = kiln(home, "factory", "run", str(CONFIG), "--create-labs-in", "westeurope", "--images-to-save", "1")
    return home, proc


def test_factory_run_end_to_end(factory_run) -> None:
    home, proc = factory_run
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for name, paths in EXPECTED.items():
        images = json.loads(kiln(home, "lab", "image", "list", lab_id(name), "--json").stdout)
        assert {i["tags"]["ImagePath"] for i in images} == paths, name
        assert len(images) == len(paths), name
        for image in images:
            assert image["kiln"]["bootTested"] is True, image["id"]
            assert image["location"] == "westeurope"
            assert Path(image["kiln"]["path"]).exists()


def test_factory_images_hold_what_their_golden_definitions_say(factory_run) -> None:
    home, proc = factory_run
    assert proc.returncode == 0, proc.stderr
    images = json.loads(kiln(home, "lab", "image", "list", lab_id("LabAll"), "--json").stdout)
    by_path = {i["tags"]["ImagePath"]: i for i in images}
    site = by_path["Web/site.json"]
    assert site["properties"]["osState"] == "Specialized"
    assert site["properties"]["vm"]["linuxOsInfo"]["linuxOsState"] == "NonDeprovisioned"
    assert site["properties"]["description"] == "Debian 12 web site (DevTest Labs form, specialized)"
    assert by_path["Debian/base.json"]["properties"]["vm"]["linuxOsInfo"]["linuxOsState"] == "DeprovisionApplied"
    assert site["name"].startswith("Web_site-")
    # The artifact really ran inside the image (its script wrote the marker with the given parameter).
    assert file_in_disk(Path(by_path["Debian/tools.json"]["kiln"]["path"]), "/etc/kiln/artifact").strip() == "tools"
    assert file_in_disk(Path(site["kiln"]["path"]), "/etc/kiln/artifact").strip() == "site"
    assert file_in_disk(Path(by_path["Debian/base.json"]["kiln"]["path"]), "/etc/kiln/golden").strip() == "base"
    # Specialized is an exact copy (its SSH host keys stay); generalized ones were deprovisioned.
    assert file_in_disk(Path(site["kiln"]["path"]), "/etc/ssh/ssh_host_ed25519_key.pub").startswith("ssh-ed25519 ")
    assert file_in_disk(Path(by_path["Debian/base.json"]["kiln"]["path"]), "/etc/ssh/ssh_host_ed25519_key.pub") == ""


def test_rerun_of_distribute_skips_everything(factory_run) -> None:
    from .conftest import CONFIG

    home, proc = factory_run
    assert proc.returncode == 0, proc.stderr
    again = kiln(home, "factory", "distribute", str(CONFIG), "--json")
    assert again.returncode == 0, again.stderr
    report = json.loads(again.stdout)
    assert report["done"] == [] and report["failed"] == []
    assert len(report["skipped"]) == sum(len(p) for p in EXPECTED.values())
