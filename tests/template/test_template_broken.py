"""A table of broken templates, one mistake each: each is rejected with the JSON path of the mistake.

Every case starts from a valid template (the Linux example, a Windows template, or a Microsoft
sample), makes one change, and expects exactly one problem, at that path, with a message and a hint.
A sample of them also goes through the real `kiln` command, which must exit 2.
"""

from __future__ import annotations

import copy
import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from template_support import GALLERY_IMAGE, IDENTITY, REPO, SUB, aib, example, filled

from kiln.errors import ValidationFailed
from kiln.template import load_template_data

DELETE = object()
IMAGE_ID = f"/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.Compute/images/img"
VERSION_LATEST = f"{GALLERY_IMAGE}/versions/latest"


def put(data: Any, path: str, value: Any) -> Any:
    """Set (or with DELETE, remove) the value at a dotted path like 'properties.customize.0.name'."""
    *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
    node = data
    for part in parents:
        node = node[part]
    if value is DELETE:
        del node[last]
    else:
        node[last] = value
    return data


def add_target(data: dict[str, Any], target: dict[str, Any]) -> dict[str, Any]:
    data["properties"]["distribute"].append(target)
    return data


def linux() -> dict[str, Any]:
    return example("debian12-managed-image.json")


def gallery() -> dict[str, Any]:
    return example("debian12-gallery.json")


def windows() -> dict[str, Any]:
    data = linux()
    data["properties"]["source"] = {"type": "PlatformImage", "publisher": "MicrosoftWindowsServer",
                                    "offer": "WindowsServer", "sku": "2022-datacenter", "version": "latest"}
    data["properties"]["customize"] = [
        {"type": "PowerShell", "name": "ps", "inline": ["echo hi"], "runElevated": True},
        {"type": "WindowsRestart", "name": "restart", "restartTimeout": "5m"},
        {"type": "WindowsUpdate", "name": "update"},
    ]
    del data["properties"]["validate"]
    return data


def sig_source(api: str) -> dict[str, Any]:
    data = linux()
    data["apiVersion"] = api
    data["properties"]["source"] = {"type": "SharedImageVersion", "imageVersionId": VERSION_LATEST}
    return data


def deployment(location: str = "[parameters('loc')]", **extra: Any) -> dict[str, Any]:
    resource = linux()
    resource["location"] = location
    return {"$schema": "https://schema.management.azure.com/schemas/2019-04-01/deploymentTemplate.json#",
            "contentVersion": "1.0.0.0",
            "parameters": {"loc": {"type": "string", "defaultValue": "westus2"}, **extra},
            "resources": [{"type": "Microsoft.ManagedIdentity/userAssignedIdentities", "name": "id",
                           "apiVersion": "2023-01-31", "location": "westus2"}, resource]}


def legacy_sig() -> dict[str, Any]:
    data, _ = filled(aib() / "templates_nonstandard_type" /
                     "quickquickstarts__1_Creating_a_Custom_Linux_Shared_Image_Gallery_Image__helloImageTemplateforSIG.json")
    return data


Case = tuple[str, Callable[[], Any], str]
P = "properties"
CASES: list[Case] = [
    ("source type unknown", lambda: put(linux(), "properties.source.type", "Platform"), ".properties.source.type"),
    ("source type wrong case (2025 is case-sensitive)", lambda: put(linux(), "properties.source.type", "platformimage"),
     ".properties.source.type"),
    ("source missing", lambda: put(linux(), "properties.source", DELETE), ".properties.source"),
    ("publisher missing", lambda: put(linux(), "properties.source.publisher", DELETE), ".properties.source.publisher"),
    ("planInfo without planName", lambda: put(linux(), "properties.source.planInfo",
                                              {"planProduct": "p", "planPublisher": "q"}),
     ".properties.source.planInfo.planName"),
    ("distribute missing", lambda: put(linux(), "properties.distribute", DELETE), ".properties.distribute"),
    ("distribute empty", lambda: put(linux(), "properties.distribute", []), ".properties.distribute"),
    ("location missing", lambda: put(linux(), "location", DELETE), ".location"),
    ("location not a region", lambda: put(linux(), "location", "westus9"), ".location"),
    ("top-level type not an image template", lambda: put(linux(), "type", "Microsoft.Compute/images"), ".type"),
    ("apiVersion unknown", lambda: put(linux(), "apiVersion", "2018-01-01"), ".apiVersion"),
    ("tag value not a string", lambda: put(linux(), "tags.count", 3), ".tags.count"),
    ("customize not an array", lambda: put(linux(), "properties.customize", {"type": "Shell"}), ".properties.customize"),
    ("customizer type unknown", lambda: put(linux(), "properties.customize.0.type", "Bash"),
     ".properties.customize[0].type"),
    ("customizer property misspelled", lambda: put(linux(), "properties.customize.0.scirptUri", "https://x/y.sh"),
     ".properties.customize[0].scirptUri"),
    ("shell with scriptUri and inline", lambda: put(linux(), "properties.customize.0.scriptUri", "https://x/y.sh"),
     ".properties.customize[0].inline"),
    ("shell with neither scriptUri nor inline", lambda: put(linux(), "properties.customize.0.inline", DELETE),
     ".properties.customize[0]"),
    ("inline is a string", lambda: put(linux(), "properties.customize.0.inline", "echo hi"),
     ".properties.customize[0].inline"),
    ("inline holds a number", lambda: put(linux(), "properties.customize.0.inline.1", 42),
     ".properties.customize[0].inline[1]"),
    ("customizer names repeat", lambda: put(linux(), "properties.customize.1.name", "write-motd-marker"),
     ".properties.customize[1].name"),
    ("sha256Checksum not 64 hex digits",
     lambda: put(put(linux(), "properties.customize.0.inline", DELETE), "properties.customize.0",
                 {"type": "Shell", "name": "s", "scriptUri": "https://x/y.sh", "sha256Checksum": "abc123"}),
     ".properties.customize[0].sha256Checksum"),
    ("File step without destination",
     lambda: put(linux(), "properties.customize.0", {"type": "File", "sourceUri": "https://x/f"}),
     ".properties.customize[0].destination"),
    ("WindowsUpdate on a Linux source", lambda: put(linux(), "properties.customize.1", {"type": "WindowsUpdate"}),
     ".properties.customize[1].type"),
    ("WindowsRestart on a Linux source", lambda: put(linux(), "properties.customize.0", {"type": "WindowsRestart"}),
     ".properties.customize[0].type"),
    ("restartTimeout not a duration", lambda: put(windows(), "properties.customize.1.restartTimeout", "5 minutes"),
     ".properties.customize[1].restartTimeout"),
    ("runAsSystem without runElevated", lambda: put(put(windows(), "properties.customize.0.runElevated", False),
                                                    "properties.customize.0.runAsSystem", True),
     ".properties.customize[0].runAsSystem"),
    ("validExitCodes not integers", lambda: put(windows(), "properties.customize.0.validExitCodes", ["0"]),
     ".properties.customize[0].validExitCodes[0]"),
    ("updateLimit negative", lambda: put(windows(), "properties.customize.2.updateLimit", -1),
     ".properties.customize[2].updateLimit"),
    ("validator of a customizer-only type",
     lambda: put(linux(), "properties.validate.inVMValidations.0", {"type": "WindowsRestart"}),
     ".properties.validate.inVMValidations[0].type"),
    ("buildTimeoutInMinutes above 960", lambda: put(linux(), "properties.buildTimeoutInMinutes", 961),
     ".properties.buildTimeoutInMinutes"),
    ("buildTimeoutInMinutes negative", lambda: put(linux(), "properties.buildTimeoutInMinutes", -1),
     ".properties.buildTimeoutInMinutes"),
    ("buildTimeoutInMinutes a string", lambda: put(linux(), "properties.buildTimeoutInMinutes", "60"),
     ".properties.buildTimeoutInMinutes"),
    ("osDiskSizeGB beyond int32", lambda: put(linux(), "properties.vmProfile.osDiskSizeGB", 10**30),
     ".properties.vmProfile.osDiskSizeGB"),
    ("errorHandling value unknown", lambda: put(linux(), "properties.errorHandling", {"onCustomizerError": "ignore"}),
     ".properties.errorHandling.onCustomizerError"),
    ("autoRun state unknown", lambda: put(linux(), "properties.autoRun", {"state": "On"}), ".properties.autoRun.state"),
    ("data disk size negative", lambda: put(linux(), "properties.additionalDataDisks", [{"sizeGB": -1}]),
     ".properties.additionalDataDisks[0].sizeGB"),
    ("containerInstanceSubnetId without subnetId",
     lambda: put(linux(), "properties.vmProfile.vnetConfig", {"containerInstanceSubnetId": "/subscriptions/s/x"}),
     ".properties.vmProfile.vnetConfig.containerInstanceSubnetId"),
    ("runOutputName with a space", lambda: put(linux(), "properties.distribute.0.runOutputName", "my image"),
     ".properties.distribute[0].runOutputName"),
    ("runOutputName of 65 characters", lambda: put(linux(), "properties.distribute.0.runOutputName", "a" * 65),
     ".properties.distribute[0].runOutputName"),
    ("runOutputName repeated", lambda: add_target(linux(), {"type": "VHD", "runOutputName": "Debian12-Managed-Image"}),
     ".properties.distribute[1].runOutputName"),
    ("ManagedImage imageId malformed", lambda: put(linux(), "properties.distribute.0.imageId", "/subscriptions/x/images/y"),
     ".properties.distribute[0].imageId"),
    ("ManagedImage imageId of a gallery image", lambda: put(linux(), "properties.distribute.0.imageId", GALLERY_IMAGE),
     ".properties.distribute[0].imageId"),
    ("ManagedImage location missing", lambda: put(linux(), "properties.distribute.0.location", DELETE),
     ".properties.distribute[0].location"),
    ("distributor type unknown", lambda: put(linux(), "properties.distribute.0.type", "Vhd"),
     ".properties.distribute[0].type"),
    ("galleryImageId of a version", lambda: put(gallery(), "properties.distribute.0.galleryImageId",
                                                f"{GALLERY_IMAGE}/versions/1.0.0"),
     ".properties.distribute[0].galleryImageId"),
    ("replicaCount zero", lambda: put(gallery(), "properties.distribute.0.targetRegions.0.replicaCount", 0),
     ".properties.distribute[0].targetRegions[0].replicaCount"),
    ("target region unknown", lambda: put(gallery(), "properties.distribute.0.targetRegions.1.name", "moon"),
     ".properties.distribute[0].targetRegions[1].name"),
    ("storage account type unknown", lambda: put(gallery(), "properties.distribute.0.targetRegions.0.storageAccountType",
                                                 "Premium"),
     ".properties.distribute[0].targetRegions[0].storageAccountType"),
    ("targetRegions and replicationRegions", lambda: put(gallery(), "properties.distribute.0.replicationRegions",
                                                         ["westus2"]),
     ".properties.distribute[0].replicationRegions"),
    ("versioning scheme unknown", lambda: put(gallery(), "properties.distribute.0.versioning", {"scheme": "Newest"}),
     ".properties.distribute[0].versioning.scheme"),
    ("versioning Source with a major", lambda: put(gallery(), "properties.distribute.0.versioning",
                                                   {"scheme": "Source", "major": 2}),
     ".properties.distribute[0].versioning.major"),
    ("replicationMode unknown", lambda: put(gallery(), "properties.distribute.0.replicationMode", "Deep"),
     ".properties.distribute[0].replicationMode"),
    ("ManagedImage source id malformed", lambda: put(linux(), "properties.source",
                                                     {"type": "ManagedImage", "imageId": "my-image"}),
     ".properties.source.imageId"),
    ("gallery source without a version", lambda: put(linux(), "properties.source",
                                                     {"type": "SharedImageVersion", "imageVersionId": GALLERY_IMAGE}),
     ".properties.source.imageVersionId"),
    ("gallery source 'latest' in 2022-02-14", lambda: sig_source("2022-02-14"), ".properties.source.imageVersionId"),
    ("gallery source 'latest' in 2020-02-14", lambda: sig_source("2020-02-14"), ".properties.source.imageVersionId"),
    ("ISO source after the preview API", lambda: put(linux(), "properties.source",
                                                     {"type": "ISO", "sourceUri": "https://x/rhel.iso",
                                                      "sha256Checksum": "a" * 64}),
     ".properties.source.type"),
    ("two user-assigned identities", lambda: put(linux(), "identity", {"type": "UserAssigned", "userAssignedIdentities": {
        IDENTITY: {}, IDENTITY.replace("aibIdentity", "other"): {}}}), ".identity.userAssignedIdentities"),
    ("identity id malformed", lambda: put(linux(), "identity", {"type": "UserAssigned",
                                                                 "userAssignedIdentities": {"my-identity": {}}}),
     '.identity.userAssignedIdentities["my-identity"]'),
    ("identity type unknown", lambda: put(linux(), "identity.type", "SystemAssigned"), ".identity.type"),
    ("imageVersionID spelling in 2025 (case-sensitive)", lambda: put(sig_source("2025-10-01"), "properties.source",
                                                                     {"type": "SharedImageVersion",
                                                                      "imageVersionID": VERSION_LATEST}),
     ".properties.source.imageVersionID"),
    ("legacy spelling keeps its path", lambda: put(sig_source("2020-02-14"), "properties.source",
                                                   {"type": "SharedImageVersion", "imageVersionID": "nonsense"}),
     ".properties.source.imageVersionID"),
    ("legacy replicationRegions entry unknown", lambda: put(legacy_sig(), "properties.distribute.0.replicationRegions.1",
                                                            "atlantis"),
     ".properties.distribute[0].replicationRegions[1]"),
    ("deployment: parameter not declared", lambda: deployment(location="[parameters('region')]"), ".resources[1].location"),
    ("deployment: function not supported", lambda: deployment(location="[uniqueString('x')]"), ".resources[1].location"),
    ("deployment: parameter without value", lambda: deployment(tag={"type": "string"}), ".parameters.tag"),
    ("deployment: mistake inside the second resource",
     lambda: put(deployment(), "resources.1.properties.source.type", "Platform"), ".resources[1].properties.source.type"),
    ("deployment: bad expression syntax", lambda: deployment(location="[parameters('loc'"), ".resources[1].location"),
    ("spec example wrapper: mistake in the body",
     lambda: {"parameters": {"imageTemplateName": "t", "api-version": "2025-10-01",
                             "parameters": put(linux(), "properties.source.type", "X")}},
     ".parameters.parameters.properties.source.type"),
]


def test_the_table_is_big_enough() -> None:
    assert len(CASES) >= 40
    assert len({name for name, _, _ in CASES}) == len(CASES)


@pytest.mark.parametrize(("name", "make", "path"), CASES, ids=[c[0] for c in CASES])
def test_broken_template_is_rejected_at_its_path(name: str, make: Callable[[], Any], path: str) -> None:
    data = make()
    original = copy.deepcopy(data)
    with pytest.raises(ValidationFailed) as caught:
        load_template_data(data, file="broken.json")
    problems = caught.value.problems
    assert [p.path for p in problems] == [path], "\n".join(p.render() for p in problems)
    (problem,) = problems
    assert problem.file == "broken.json"
    assert problem.message and problem.hint
    assert data == original, "loading must not change the caller's data"


CLI_SAMPLE = [c for i, c in enumerate(CASES) if i % 6 == 0]


def test_cli_reports_the_sample_at_once_and_exits_2(tmp_path: Path, kiln_home: Path) -> None:
    files = []
    for i, (_, make, _) in enumerate(CLI_SAMPLE):
        f = tmp_path / f"case{i:02}.json"
        f.write_text(json.dumps(make()))
        files.append(str(f))
    result = subprocess.run([str(REPO / ".venv" / "bin" / "kiln"), "validate", "--json", *files],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    reported = {(p["file"], p["path"]) for p in json.loads(result.stdout)}
    assert reported == {(f, path) for f, (_, _, path) in zip(files, CLI_SAMPLE, strict=True)}
    assert not list(kiln_home.iterdir()), "validate writes nothing into the state home"
