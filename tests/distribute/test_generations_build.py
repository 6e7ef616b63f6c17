"""A real build for a hyperVGeneration V1 gallery definition: the boot test boots the disk with
SeaBIOS (GRUB from the BIOS boot partition), and the version records that its disk boots both
generations, as read from the published blob."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from debian_root import TEST_CACHE, missing_tools
from envcheck import unavailable
from kiln.disk.bios import boot_generations

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SUB = "/subscriptions/0000/resourceGroups/rg/providers"
GAL = f"{SUB}/Microsoft.Compute/galleries/gal"
DEF_V1 = f"{GAL}/images/legacy"
IMAGE = f"{SUB}/Microsoft.Compute/images/built"


def kiln(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KILN_HOME": str(home), "PYTHONPATH": str(REPO / "src")}
    return subprocess.run([sys.executable, "-m", "kiln", *args], capture_output=True, text=True, env=env, timeout=3600)


def test_a_v1_target_is_boot_tested_with_seabios_and_gets_a_hybrid_disk(tmp_path: Path) -> None:
    if why := missing_tools():
        unavailable(why)
    home = tmp_path / "home"
    home.mkdir()
    shared = TEST_CACHE / "kiln-home" / "cache"  # the Debian root bootstrapped once per machine
    shared.mkdir(parents=True, exist_ok=True)
    (home / "cache").symlink_to(shared)
    for args in (("gallery", "create", GAL),
                 ("gallery", "image-definition", "create", DEF_V1, "--publisher", "kiln", "--offer", "debian",
                  "--sku", "12-gen1", "--hyper-v-generation", "V1")):
        assert kiln(home, *args).returncode == 0
    template = tmp_path / "v1.json"
    template.write_text(json.dumps({
        "type": "Microsoft.VirtualMachineImages/imageTemplates", "apiVersion": "2022-07-01", "location": "westus2",
        "properties": {
            "source": {"type": "PlatformImage", "publisher": "Debian", "offer": "debian-12", "sku": "12-gen2",
                       "version": "latest"},
            "distribute": [
                {"type": "SharedImage", "galleryImageId": DEF_V1, "runOutputName": "v1", "targetRegions": []},
                {"type": "ManagedImage", "imageId": IMAGE, "location": "westus2", "runOutputName": "img"},
            ],
        },
    }))
    proc = kiln(home, "--progress", "text", "build", str(template))
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "boot in QEMU (SeaBIOS)" in proc.stdout + proc.stderr
    # The boot test's serial console: GRUB (not systemd-boot) started the kernel, by Debian's link.
    serials = list(home.rglob("serial.log"))
    assert serials, "the run kept no serial log"
    assert "BOOT_IMAGE=/vmlinuz " in serials[-1].read_text(errors="replace")
    version = json.loads(kiln(home, "gallery", "image-version", "show", f"{DEF_V1}/versions/latest", "--json").stdout)
    assert version["kiln"]["bootGenerations"] == ["V1", "V2"] and version["kiln"]["bootTested"] is True
    # Read the published bytes again, not kiln's record.
    assert boot_generations(Path(version["kiln"]["path"]), version["kiln"]["format"]) == ("V1", "V2")
    image = json.loads(kiln(home, "image", "show", IMAGE, "--json").stdout)
    assert image["properties"]["hyperVGeneration"] == "V2"  # the source's (a -gen2 SKU), as in AIB
    assert image["kiln"]["bootGenerations"] == ["V1", "V2"]
