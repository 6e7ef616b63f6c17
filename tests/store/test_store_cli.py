"""The CLI end to end, and the bad-input matrix: every mistake is a clear error (exit 2, or 1 for
a full disk) with a hint and no traceback, and the state home is byte-for-byte what it was."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from store_helpers import kiln_cmd, make_disk, snapshot

SUB = "/subscriptions/0000/resourceGroups/rg/providers"
IMG = f"{SUB}/Microsoft.Compute/images/web"
GAL = f"{SUB}/Microsoft.Compute/galleries/gal"
DEF = f"{GAL}/images/web"
TPL = f"{SUB}/Microsoft.VirtualMachineImages/imageTemplates/t1"


@pytest.fixture
def populated(kiln_home: Path, raw_disk: Path) -> Path:
    kiln_cmd(kiln_home, "image", "import", str(raw_disk), "--id", IMG, "--location", "westus2", check=True)
    kiln_cmd(kiln_home, "gallery", "create", GAL, check=True)
    kiln_cmd(kiln_home, "gallery", "image-definition", "create", DEF, "--publisher", "kiln", "--offer", "debian",
             "--sku", "12", check=True)
    kiln_cmd(kiln_home, "gallery", "image-version", "create", f"{DEF}/versions/1.0.0", "--image", IMG,
             "--target-region", "eastus", "--target-region", "westeurope", check=True)
    return kiln_home


def test_cli_round_trip(populated: Path, raw_disk: Path, tmp_path: Path) -> None:
    home = populated
    images = json.loads(kiln_cmd(home, "image", "list", "--json", check=True).stdout)
    assert [i["id"] for i in images] == [IMG]
    shown = json.loads(kiln_cmd(home, "image", "show", IMG.upper(), "--json", check=True).stdout)
    assert shown["properties"]["storageProfile"]["osDisk"]["osType"] == "Linux"
    latest = json.loads(kiln_cmd(home, "gallery", "image-version", "show", f"{DEF}/versions/latest", "--json", check=True).stdout)
    assert latest["name"] == "1.0.0"
    assert [t["name"] for t in latest["properties"]["publishingProfile"]["targetRegions"]] == ["eastus", "westeurope"]
    table = kiln_cmd(home, "image", "list", check=True).stdout
    assert IMG in table and "westus2" in table
    regions = json.loads(kiln_cmd(home, "region", "list", "--json", check=True).stdout)
    assert {r["name"] for r in regions} >= {"eastus", "westus2"}
    for fmt in ("raw", "vhd", "vhd-dynamic", "qcow2"):
        out = tmp_path / f"export.{fmt}"
        kiln_cmd(home, "image", "export", IMG, "--format", fmt, "-o", str(out), check=True)
        qfmt = {"raw": "raw", "vhd": "vpc", "vhd-dynamic": "vpc", "qcow2": "qcow2"}[fmt]
        cmp = subprocess.run(["qemu-img", "compare", "-f", "raw", "-F", qfmt, str(raw_disk), str(out)], capture_output=True)
        assert cmp.returncode == 0, fmt
    assert "store is consistent" in kiln_cmd(home, "store", "check", check=True).stdout
    assert kiln_cmd(home, "image", "delete", IMG).returncode == 0
    gc = json.loads(kiln_cmd(home, "gc", "--json", check=True).stdout)
    assert gc["blobs"] == []  # the gallery version still uses the blob, not its westus2 replica
    assert [r.split("/")[0] for r in gc["replicas"]] == ["westus2"]
    kiln_cmd(home, "gallery", "image-version", "delete", f"{DEF}/versions/1.0.0", check=True)
    gc = json.loads(kiln_cmd(home, "gc", "--json", check=True).stdout)
    assert len(gc["blobs"]) == 1 and len(gc["replicas"]) == 2


BAD = [
    (["image", "import", "/etc/hostname", "--id", f"{SUB}/Microsoft.Compute/images/x"], "not a disk image"),
    (["image", "import", "{disk}", "--id", "/subscriptions/x/images/y"], "malformed"),
    (["image", "import", "{disk}", "--id", f"{SUB}/Microsoft.Compute/images/x", "--location", "atlantis"], "unknown region"),
    (["image", "import", "{disk}", "--id", f"{SUB}/Microsoft.Compute/images/x", "--os-type", "BeOS"], "os type"),
    (["image", "import", "{other}", "--id", IMG], "already exists"),
    (["image", "show", f"{SUB}/Microsoft.Compute/images/nope"], "does not exist"),
    (["image", "delete", f"{SUB}/Microsoft.Compute/galleries/g"], "malformed"),
    (["image", "export", IMG, "--format", "vhd", "-o", "/etc/hostname"], "already exists"),
    (["gallery", "image-definition", "create", f"{SUB}/Microsoft.Compute/galleries/none/images/d", "--publisher", "p",
      "--offer", "o", "--sku", "s"], "does not exist"),
    (["gallery", "image-version", "create", f"{GAL}/images/missing/versions/1.0.0", "--disk", "{disk}"],
     "image definition"),
    (["gallery", "image-version", "create", f"{DEF}/versions/1.0.1", "--disk", "{disk}", "--target-region", "mars"],
     "unknown region"),
    (["gallery", "image-version", "create", f"{DEF}/versions/1.x", "--disk", "{disk}"], "major.minor.patch"),
    (["gallery", "image-version", "create", f"{DEF}/versions/1.0.0", "--disk", "{other}"], "already exists"),
    (["gallery", "delete", GAL], "still has"),
    (["run-output", "list", f"{SUB}/Microsoft.Compute/images/x"], "malformed"),
    (["run-output", "show", f"{TPL}/runOutputs/none"], "does not exist"),
]


def test_bad_input_is_a_clear_error_and_changes_nothing(populated: Path, raw_disk: Path, other_disk: Path) -> None:
    before = snapshot(populated)
    for args, expected in BAD:
        args = [a.replace("{disk}", str(raw_disk)).replace("{other}", str(other_disk)) for a in args]
        p = kiln_cmd(populated, *args)
        assert p.returncode == 2, (args, p.stdout, p.stderr)
        assert expected in p.stderr and "hint:" in p.stderr and "Traceback" not in p.stderr, (args, p.stderr)
        assert snapshot(populated) == before, args


def test_a_full_disk_is_a_clear_error_and_changes_nothing(tmp_path: Path, raw_disk: Path) -> None:
    home = tmp_path / "tiny"
    home.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12m", "tmpfs", str(home)], check=True)
    try:
        kiln_cmd(home, "gallery", "create", GAL, check=True)  # the catalog exists, a few KiB
        big = make_disk(tmp_path / "big.raw", 64, 24, seed=7)
        before = snapshot(home)
        p = kiln_cmd(home, "image", "import", str(big), "--id", IMG, "--location", "westus2")
        assert p.returncode == 1, p.stderr
        assert "no space left" in p.stderr and "hint:" in p.stderr and "Traceback" not in p.stderr
        assert snapshot(home) == before
        # The small disk still fits: the failure left nothing behind that would get in the way.
        kiln_cmd(home, "image", "import", str(raw_disk), "--id", IMG, "--location", "westus2", check=True)
        kiln_cmd(home, "store", "check", check=True)
    finally:
        subprocess.run(["umount", str(home)], check=True)
