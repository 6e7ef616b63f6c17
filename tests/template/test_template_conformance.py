"""Microsoft's own templates and REST examples validate, and survive load -> dump -> load unchanged."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from template_support import aib, conformance_templates, filled, spec_examples

from kiln.errors import ValidationFailed
from kiln.template import dump_template, load_template, load_template_data
from kiln.template.model import ImageTemplate

# Listed at collection for one test per file; without the corpus there is one case, which skips
# (fails under CI) when it calls aib().
TEMPLATES = conformance_templates()


def test_the_corpus_is_there() -> None:
    # 20 standard + 10 nonstandard-type templates (INDEX.md); a missing corpus must not pass silently.
    aib()
    assert len(TEMPLATES) == 30


@pytest.mark.parametrize("path", TEMPLATES or [None], ids=lambda p: p.stem[:80] if p else "corpus-missing")
def test_conformance_template_validates_and_round_trips(path: Path | None) -> None:
    aib()
    assert path is not None
    data, parameters = filled(path)
    templates = load_template_data(data, file=path.name, parameters=parameters)
    assert templates, "every conformance file holds an image template"
    for t in templates:
        assert isinstance(t, ImageTemplate)
        assert t.distribute and t.source
        dumped = dump_template(t)
        json.dumps(dumped)  # plain JSON
        assert load_template_data(dumped) == (t,)


def test_conformance_windows_templates_are_windows() -> None:
    aib()
    windows = [p for p in TEMPLATES if "_Win" in p.name or "WVD" in p.name]
    assert len(windows) >= 10
    kinds = set()
    for path in windows:
        data, parameters = filled(path)
        for t in load_template_data(data, parameters=parameters):
            kinds |= {c.type for c in t.customize}
            if t.source.type == "PlatformImage":
                assert t.os_type == "Windows", path.name
    assert {"PowerShell", "WindowsRestart", "WindowsUpdate"} <= kinds


def test_old_spellings_are_folded_into_the_model() -> None:
    # 2019-05-01-preview SharedImage with replicationRegions -> target regions in the model.
    path = aib() / "templates_nonstandard_type" / (
        "deprecated__quickquickstarts__1_Creating_a_Custom_Linux_Shared_Image_Gallery_Image__helloImageTemplateforSIG.json")
    data, _ = filled(path)
    (t,) = load_template_data(data)
    assert t.api_version == "2019-05-01-preview"
    (target,) = t.distribute
    assert [r.name for r in target.target_regions] == ["westus2", "eastus"]
    assert dump_template(t)["properties"]["distribute"][0]["targetRegions"][0]["name"] == "westus2"


def test_arm_deployment_expressions_are_resolved() -> None:
    path = aib() / "templates" / "solutions__4_Using_ENV_Variables__devOpsEnvTemplate.json"
    data, parameters = filled(path)
    (t,) = load_template_data(data, parameters=parameters)
    assert t.name == "aibTemplate"
    assert t.location == "westus2"
    # variables('resourceid') = concat(parameters(...), parameters(...)); parameters('managedimagename')
    # is matched case-insensitively, as ARM does.
    assert t.distribute[0].image_id.endswith("/providers/Microsoft.Compute/images/aibImage")
    assert t.distribute[0].run_output_name == "aibImage"
    assert t.customize[1].inline[0] == "app_Packages=jq"
    # The sample misspells artifactTags as "aritfactTags"; apiVersion 2019-05-01-preview ignored unknown
    # properties, so kiln does too for that version (2024-02-01 and later reject them).
    assert t.distribute[0].artifact_tags == {}


def test_spec_examples_are_there() -> None:
    assert [p.name for p in sorted(spec_examples().glob("Create*Template*.json"))] == ["CreateImageTemplateLinux.json", "CreateImageTemplateWindows.json"]


def test_spec_linux_example_validates() -> None:
    (t,) = load_template(spec_examples() / "CreateImageTemplateLinux.json")
    assert t.name == "myImageTemplate"
    assert t.api_version == "2025-10-01"
    assert t.vm_profile.vnet_config and "{subscription-id}" in t.vm_profile.vnet_config.subnet_id
    assert load_template_data(dump_template(t)) == (t,)


def test_spec_windows_example_validates_apart_from_its_duplicate_step_name() -> None:
    # Microsoft's example names two different PowerShell steps identically
    # ("... Elevated Local System user Example", customize[4] and [5]). kiln requires unique step names
    # (they key the customization log), so that one problem is expected; with the name fixed the
    # body validates unchanged otherwise.
    path = spec_examples() / "CreateImageTemplateWindows.json"
    with pytest.raises(ValidationFailed) as caught:
        load_template(path)
    assert [p.path for p in caught.value.problems] == [".parameters.parameters.properties.customize[5].name"]
    data = json.loads(path.read_text())
    data["parameters"]["parameters"]["properties"]["customize"][5]["name"] += " (2)"
    (t,) = load_template_data(data)
    assert [c.type for c in t.customize].count("PowerShell") == 6
    assert t.customize[3].valid_exit_codes == (0, 1)
    assert load_template_data(dump_template(t)) == (t,)


# Defects in Microsoft's response examples that kiln reports (file, index) -> path of the one problem.
KNOWN_DEFECTS = {
    # "…/providers/Microsoft.Compute/gallery/baseimages/images/baseimage": 'gallery', not 'galleries'.
    ("ListImageTemplatesByRg.json", 1): ".properties.distribute[1].galleryImageId",
}


@pytest.mark.parametrize("name", ["GetImageTemplate.json", "ListImageTemplates.json", "ListImageTemplatesByRg.json"])
def test_templates_azure_returns_validate(name: str) -> None:
    # GET responses carry read-only fields (provisioningState, lastRunStatus, exactVersion...).
    body = json.loads((spec_examples() / name).read_text())["responses"]["200"]["body"]
    for i, resource in enumerate(body.get("value", [body])):
        if (name, i) in KNOWN_DEFECTS:
            with pytest.raises(ValidationFailed) as caught:
                load_template_data(resource)
            assert [p.path for p in caught.value.problems] == [KNOWN_DEFECTS[name, i]]
            continue
        (t,) = load_template_data(resource, file=f"{name}#{i}")
        assert load_template_data(dump_template(t)) == (t,)


@pytest.mark.parametrize("name", ["UpdateImageTemplateTags.json", "UpdateImageTemplateToRemoveIdentities.json",
                                  "UpdateImageTemplateVmProfile.json"])
def test_update_bodies_applied_to_a_template_validate(name: str) -> None:
    # PATCH bodies are partial; applied to the Linux example (top-level keys and properties.* replaced,
    # as the service does for the fields it lets you update) the result is a valid template.
    (base,) = load_template(spec_examples() / "CreateImageTemplateLinux.json")
    patch = json.loads((spec_examples() / name).read_text())["parameters"]["parameters"]
    merged = dump_template(base)
    for key, value in patch.items():
        if key == "properties":
            merged["properties"].update(value)
        else:
            merged[key] = value
    (t,) = load_template_data(merged)
    if "tags" in patch:
        assert t.tags == patch["tags"]
    if "identity" in patch:
        assert t.identity.type == "None" and not t.identity.user_assigned_identities
    if "properties" in patch:
        assert t.vm_profile.os_disk_size_gb == 127


def test_preview_api_spellings() -> None:
    # 2019-05-01-preview: the ISO source (written sourceURI in its samples), valid_exit_codes, names in any case.
    data = {
        "type": "Microsoft.VirtualMachineImages/imageTemplates", "apiVersion": "2019-05-01-preview",
        "location": "West US 2",
        "properties": {
            "source": {"type": "iso", "sourceURI": "https://example.com/rhel-7.5.iso", "sha256Checksum": "ab" * 32},
            "customize": [{"type": "PowerShell", "inline": ["echo"], "valid_exit_codes": [0, 5]}],
            "Distribute": [{"type": "vhd", "runOutputName": "rhel"}],
        },
    }
    (t,) = load_template_data(data)
    assert t.source.type == "ISO" and t.source.source_uri.endswith("rhel-7.5.iso")
    assert t.customize[0].valid_exit_codes == (0, 5)
    assert t.distribute[0].type == "VHD"
    assert load_template_data(dump_template(t)) == (t,)
    data["properties"]["source"]["sha256Checksum"] = "nope"
    with pytest.raises(ValidationFailed) as caught:
        load_template_data(data)
    # The path names the key as written.
    assert [p.path for p in caught.value.problems] == [".properties.source.sha256Checksum"]
    data["properties"]["Distribute"][0]["runOutputName"] = "bad name"
    with pytest.raises(ValidationFailed) as caught:
        load_template_data(data)
    assert ".properties.Distribute[0].runOutputName" in [p.path for p in caught.value.problems]
