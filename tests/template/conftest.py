"""Fixtures for the template tests: valid templates to break, one mistake at a time."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from template_support import GALLERY_IMAGE, IDENTITY, example


@pytest.fixture
def linux() -> dict[str, Any]:
    """A valid 2025-10-01 Linux template (the managed-image example) to break."""
    return copy.deepcopy(example("debian12-managed-image.json"))


@pytest.fixture
def windows() -> dict[str, Any]:
    """A valid 2025-10-01 Windows template with every Windows customizer."""
    return {
        "type": "Microsoft.VirtualMachineImages/imageTemplates",
        "apiVersion": "2025-10-01",
        "name": "win2022",
        "location": "westeurope",
        "identity": {"type": "UserAssigned", "userAssignedIdentities": {IDENTITY: {}}},
        "properties": {
            "source": {"type": "PlatformImage", "publisher": "MicrosoftWindowsServer", "offer": "WindowsServer",
                       "sku": "2022-datacenter-azure-edition", "version": "latest"},
            "customize": [
                {"type": "PowerShell", "name": "mkdir", "inline": ["mkdir c:\\buildActions"], "runElevated": True,
                 "runAsSystem": True, "validExitCodes": [0, 3010]},
                {"type": "WindowsRestart", "restartTimeout": "10m"},
                {"type": "WindowsUpdate", "searchCriteria": "IsInstalled=0", "filters": ["include:$true"],
                 "updateLimit": 20},
            ],
            "distribute": [{"type": "SharedImage", "runOutputName": "win2022", "galleryImageId": GALLERY_IMAGE,
                            "targetRegions": [{"name": "westeurope"}, {"name": "northeurope", "replicaCount": 2}]}],
        },
    }
