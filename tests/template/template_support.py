"""Shared data for the template tests: conformance files with their placeholders filled in.

Test modules import this by name (pytest puts tests/template on sys.path). The corpus is found when
a test runs (`aib()`, `spec_examples()`: skipped without it, see tests/corpus.py), never at import.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import corpus
from corpus import REPO

EXAMPLES = REPO / "examples"
SUB = "11111111-2222-3333-4444-555555555555"
IDENTITY = f"/subscriptions/{SUB}/resourcegroups/aibRG/providers/Microsoft.ManagedIdentity/userAssignedIdentities/aibIdentity"
GALLERY_IMAGE = f"/subscriptions/{SUB}/resourceGroups/aibRG/providers/Microsoft.Compute/galleries/aibGallery/images/aibDef"

# Every <placeholder> in the conformance templates, with a value of the right kind.
PLACEHOLDERS = {
    "<region>": "westus2",
    "<region1>": "westus2",
    "<region2>": "eastus",
    "<subscriptionID>": SUB,
    "<rgName>": "aibRG",
    "<imageName>": "aibImage",
    "<runOutputName>": "aibRunOutput",
    "<imageDefName>": "aibDef",
    "<sharedImageGalName>": "aibGallery",
    "<acgName>": "aibGallery",
    "<srcImageName>": "aibSourceImage",
    "<imgTemplateName>": "aibTemplate",
    "<imgBuilderId>": IDENTITY,
    "<sigDefImgVersionId>": f"{GALLERY_IMAGE}/versions/1.0.0",
    "<scriptUrl>": "https://example.com/script.sh",
    "<scriptFileUrl>": "https://example.com/script.sh",
    "<vnetName>": "aibVnet",
    "<subnetName>": "aibSubnet",
    "<vnetRgName>": "aibVnetRG",
}
# Values for the parameters the ARM deployment samples declare without a default.
DEPLOYMENT_PARAMETERS = {
    "imageTemplateName": "aibTemplate",
    "api-version": "2020-02-14",
    "svclocation": "westus2",
    "svcLocation": "westus2",
    "managedImageResGroupId": f"/subscriptions/{SUB}/resourceGroups/aibRG/providers/Microsoft.Compute/images/",
    "managedImageName": "aibImage",
    "packagesToInstall": "jq",
    "targetOS": "linux",
}


def aib() -> Path:
    """The corpus's Image Builder folder (the test is skipped, or fails under CI, without the corpus)."""
    return corpus.conformance() / "aib"


def spec_examples() -> Path:
    return aib() / "spec" / "2025-10-01" / "examples"


def conformance_templates() -> list[Path]:
    """For parametrizing at collection: the corpus's templates, or no file when it is missing (a
    directory listing only; the tests call `aib()` and so skip, or fail under CI, without it)."""
    where = corpus.conformance_dir() / "aib"
    return sorted([*(where / "templates").glob("*.json"), *(where / "templates_nonstandard_type").glob("*.json")])


def filled(path: Path) -> tuple[Any, dict[str, str]]:
    """The template with its placeholders substituted, and the parameters it declares."""
    text = path.read_text()
    for key, value in PLACEHOLDERS.items():
        text = text.replace(key, value)
    left = re.findall(r"<[A-Za-z][A-Za-z0-9]*>", text)
    assert not left, f"placeholders without a value in {path.name}: {left}"
    data = json.loads(text)
    declared = data.get("parameters", {}) if "resources" in data else {}
    return data, {k: v for k, v in DEPLOYMENT_PARAMETERS.items() if k in declared}


def example(name: str) -> dict[str, Any]:
    return json.loads((EXAMPLES / name).read_text())
