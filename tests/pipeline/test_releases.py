"""Every Debian release kiln maps (11, 12, 13) builds from its Azure URN and boots: the guest hook
and the disk layout work with each release's systemd and kernel (12 is covered by the samples)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .conftest import RG, SUB, Kiln
from .test_failures import last_run

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("release", ["11", "13"])
def test_debian_release_builds_and_boots(kiln: Kiln, tmp_path: Path, release: str) -> None:
    image_id = f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.Compute/images/debian{release}"
    template = {
        "type": "Microsoft.VirtualMachineImages/imageTemplates",
        "apiVersion": "2025-10-01",
        "location": "westus2",
        "properties": {
            "source": {"type": "PlatformImage", "publisher": "Debian", "offer": f"debian-{release}",
                       "sku": f"{release}-gen2", "version": "latest"},
            "customize": [{"type": "Shell", "name": "marker", "inline": [f"echo debian{release} > /etc/kiln-marker"]}],
            "validate": {"inVMValidations": [{"type": "Shell", "name": "release-in-guest", "inline": [
                f"grep -q debian{release} /etc/kiln-marker",
                f"grep -q 'VERSION_ID=\"{release}\"' /etc/os-release",
            ]}]},
            "distribute": [{"type": "ManagedImage", "imageId": image_id, "location": "westus2", "runOutputName": "out"}],
        },
    }
    path = tmp_path / f"debian{release}.json"
    path.write_text(json.dumps(template))
    proc = kiln("build", str(path), check=False)
    assert proc.returncode == 0, proc.stderr
    run = last_run(kiln)
    assert run["lastRunStatus"]["runState"] == "Succeeded"
    assert run["runOutputs"][0]["properties"]["provisioningState"] == "Succeeded"
    assert kiln.json("image", "show", image_id)["kiln"]["bootTested"] is True
