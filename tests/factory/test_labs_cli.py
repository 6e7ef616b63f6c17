"""`kiln lab ...`: labs as catalog resources, and mistakes that exit 2 and change nothing."""

from __future__ import annotations

import json
from pathlib import Path

from .conftest import kiln, lab_id, save_all, seed_staging


def test_lab_lifecycle(kiln_home: Path, disks: list[Path]) -> None:
    lab = lab_id("TeamLab")
    created = kiln(kiln_home, "lab", "create", lab, "--location", "westeurope", "--json")
    assert created.returncode == 0, created.stderr
    assert json.loads(created.stdout)["location"] == "westeurope"
    assert kiln(kiln_home, "lab", "create", lab.lower(), "--location", "westeurope").returncode == 0  # idempotent
    moved = kiln(kiln_home, "lab", "create", lab, "--location", "eastus")
    assert moved.returncode == 2 and "already exists in westeurope" in moved.stderr
    assert [x["name"] for x in json.loads(kiln(kiln_home, "lab", "list", "--json").stdout)] == ["TeamLab"]
    shown = json.loads(kiln(kiln_home, "lab", "show", lab.upper(), "--json").stdout)
    assert shown["id"] == lab and shown["kiln"]["customImages"] == 0
    assert json.loads(kiln(kiln_home, "lab", "image", "list", lab, "--json").stdout) == []
    assert kiln(kiln_home, "lab", "delete", lab).returncode == 0
    assert json.loads(kiln(kiln_home, "lab", "list", "--json").stdout) == []


def test_lab_mistakes_exit_2(kiln_home: Path) -> None:
    for args, text in ((["lab", "create", "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/images/x"], "malformed"),
                       (["lab", "create", lab_id("X"), "--location", "marsnorth"], "unknown region"),
                       (["lab", "show", lab_id("Nope")], "does not exist"),
                       (["lab", "image", "list", lab_id("Nope")], "does not exist")):
        proc = kiln(kiln_home, *args)
        assert proc.returncode == 2, (args, proc.stderr)
        assert text in proc.stderr and "hint:" in proc.stderr and "Traceback" not in proc.stderr
    assert json.loads(kiln(kiln_home, "lab", "list", "--json").stdout) == []


def test_deleting_a_lab_with_images_needs_with_images(kiln_home: Path, disks: list[Path]) -> None:
    seed_staging(kiln_home, disks[0], "Debian/base.json")
    save_all(kiln_home)
    from kiln.factory import DEFAULT_FACTORY_LAB

    refused = kiln(kiln_home, "lab", "delete", DEFAULT_FACTORY_LAB)
    assert refused.returncode == 2 and "still has 1 custom image" in refused.stderr
    image = json.loads(kiln(kiln_home, "lab", "image", "list", DEFAULT_FACTORY_LAB, "--json").stdout)[0]
    assert image["properties"]["vm"]["linuxOsInfo"]["linuxOsState"] == "DeprovisionApplied"
    assert image["tags"]["ImagePath"] == "Debian/base.json"
    assert kiln(kiln_home, "lab", "delete", DEFAULT_FACTORY_LAB, "--with-images").returncode == 0
    gc = json.loads(kiln(kiln_home, "gc", "--json").stdout)
    assert gc["blobs"] == [image["kiln"]["digest"]]  # the bytes go once nothing references them
