"""Microsoft's Linux quick-start templates build, boot and distribute for real.

Each sample is taken from the conformance corpus unchanged except for its <placeholders>, its
checksums (recomputed for the stand-in scripts the local web server serves) and, for a few, an
inVMValidation that looks in the booted guest for what the customizers wrote. The samples chain
as in Microsoft's walkthrough: a gallery image from a platform image, a gallery image from that
gallery image, a managed image re-customized into the gallery, and a VHD.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from .conftest import RG, SUB, Kiln, gallery_ids, load_sample

pytestmark = pytest.mark.integration

SIG_SAMPLE = "quickquickstarts__1_Creating_a_Custom_Linux_Shared_Image_Gallery_Image__helloImageTemplateforSIG.json"
SIG_FROM_SIG = "quickquickstarts__2_Creating_a_Custom_Linux_Shared_Image_Gallery_Image_from_SIG__helloImageTemplateforSIGfromSIG.json"
RECUSTOMIZE = "quickquickstarts__3_Customize_a_Managed_Image_and_Import_into_SIG__helloImageTemplateforReCustomization.json"
VHD_SAMPLE = "quickquickstarts__4_Creating_a_Custom_Linux_Image_to_VHD__helloImageTemplateVHD.json"
TRIGGER_SAMPLE = "quickquickstarts__9_Setting_up_a_Trigger_with_a_Custom_Linux_Image__helloImageTemplate.json"
DEPRECATED_SIG = "deprecated__" + SIG_SAMPLE

GALLERY, DEFINITION = gallery_ids("kilnSamples", "helloDebian")


def guest_check(*commands: str) -> dict:
    return {"inVMValidations": [{"type": "Shell", "name": "markers-in-guest", "inline": list(commands)}]}


def write(tmp: Path, name: str, data: dict) -> Path:
    path = tmp / name
    path.write_text(json.dumps(data, indent=2))
    return path


def run_build(kiln: Kiln, template: Path, *extra: str) -> dict:
    proc = kiln("build", str(template), "--json", *extra)
    run = json.loads(proc.stdout)
    assert run["lastRunStatus"]["runState"] == "Succeeded", proc.stderr
    return run


def guest_output(run: dict) -> str:
    """What the in-VM validations printed in the booted guest: the run's log, where each line of a
    validation's output is a `guest:` line, whichever boot test ran (SSH login or serial)."""
    return Path(run["logPath"]).read_text(errors="replace")


@pytest.fixture(scope="module")
def gallery(kiln: Kiln) -> str:
    kiln("gallery", "create", GALLERY)
    kiln("gallery", "image-definition", "create", DEFINITION, "--publisher", "kiln", "--offer", "samples",
         "--sku", "debian12", "--os-type", "Linux", "--os-state", "Generalized", "--hyper-v-generation", "V2")
    return DEFINITION


def sig_values(run_output: str, **more: str) -> dict[str, str]:
    return {"subscriptionID": SUB, "rgName": RG, "region": "westus2", "region1": "westus2", "region2": "westeurope",
            "sharedImageGalName": "kilnSamples", "acgName": "kilnSamples", "imageDefName": "helloDebian",
            "imgBuilderId": f"/subscriptions/{SUB}/resourcegroups/{RG}/providers/Microsoft.ManagedIdentity/userAssignedIdentities/aibId",
            "runOutputName": run_output, "runOutputName1": run_output, **more}


@pytest.fixture(scope="module")
def sig_run(kiln: Kiln, gallery: str, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Sample 1: Ubuntu (mapped to Debian 12) platform image → gallery image, five customizers."""
    data = load_sample(SIG_SAMPLE, **sig_values("sigOutput"))
    data["properties"]["validate"] = guest_check(
        "test -f /buildScripts/customizeScript.done",
        "test -f /buildScripts/customizeScript2.done",
        "grep -q 'kiln built this image' /buildArtifacts/index.html",
        "dpkg -s unattended-upgrades >/dev/null",
        "echo KILN-SAMPLE-MARKERS-OK",
    )
    return run_build(kiln, write(tmp_path_factory.mktemp("sig"), "sig.json", data))


def test_platform_image_to_gallery(kiln: Kiln, sig_run: dict) -> None:
    outputs = {o["name"]: o for o in sig_run["runOutputs"]}
    out = outputs["sigOutput"]["properties"]
    assert out["provisioningState"] == "Succeeded"
    assert out["artifactId"].lower().startswith(DEFINITION.lower() + "/versions/")
    assert "KILN-SAMPLE-MARKERS-OK" in guest_output(sig_run)
    versions = kiln.json("gallery", "image-version", "list", DEFINITION)
    assert any(v["id"].lower() == out["artifactId"].lower() for v in versions)


def test_gallery_image_from_gallery_image(kiln: Kiln, sig_run: dict, tmp_path: Path) -> None:
    source_version = sig_run["runOutputs"][0]["properties"]["artifactId"]
    data = load_sample(SIG_FROM_SIG, **sig_values("sigFromSig", sigDefImgVersionId=source_version))
    data["properties"]["validate"] = guest_check(
        "test -f /buildScripts/customizeScript.done",  # inherited from the source image
        "test -f /buildArtifacts3/imageBuilder.md",
    )
    run = run_build(kiln, write(tmp_path, "sig2.json", data))
    assert run["runOutputs"][0]["properties"]["provisioningState"] == "Succeeded"


def test_managed_image_recustomized_into_gallery(kiln: Kiln, sig_run: dict, tmp_path: Path) -> None:
    version = sig_run["runOutputs"][0]["properties"]["artifactId"]
    exported = tmp_path / "exported.vhd"
    kiln("image", "export", version, "--format", "vhd", "-o", str(exported))
    managed = f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.Compute/images/helloSource"
    kiln("image", "import", str(exported), "--id", managed, "--location", "westus2", "--os-type", "Linux")
    data = load_sample(RECUSTOMIZE, **sig_values("recustomized", srcImageName="helloSource"))
    data["properties"]["validate"] = guest_check("test -f /buildArtifacts2/imageBuilder.md")
    run = run_build(kiln, write(tmp_path, "recustomize.json", data))
    assert run["runOutputs"][0]["properties"]["provisioningState"] == "Succeeded"


def test_platform_image_to_vhd(kiln: Kiln, tmp_path: Path) -> None:
    data = load_sample(VHD_SAMPLE, **sig_values("vhdOutput"))
    run = run_build(kiln, write(tmp_path, "vhd.json", data))
    out = run["runOutputs"][0]["properties"]
    vhd = Path(out["artifactUri"].removeprefix("file://"))
    footer = vhd.read_bytes()[-512:] if vhd.stat().st_size < 64 * 1024**2 else _tail(vhd)
    assert footer[:8] == b"conectix"
    info = json.loads(subprocess.run(["qemu-img", "info", "-f", "vpc", "--output=json", str(vhd)],
                                     capture_output=True, text=True, check=True).stdout)
    assert info["virtual-size"] % (1024 * 1024) == 0


def test_trigger_sample_to_two_regions(kiln: Kiln, gallery: str, tmp_path: Path) -> None:
    data = load_sample(TRIGGER_SAMPLE, **sig_values("triggerOutput"))
    run = run_build(kiln, write(tmp_path, "trigger.json", data))
    version = kiln.json("gallery", "image-version", "show", run["runOutputs"][0]["properties"]["artifactId"])
    regions = {r["name"].lower() for r in version["properties"]["publishingProfile"]["targetRegions"]}
    assert regions == {"westus2", "westeurope"}


def test_preview_api_sample_builds(kiln: Kiln, gallery: str, tmp_path: Path) -> None:
    """The 2019-05-01-preview spelling (replicationRegions) builds and distributes too."""
    data = load_sample(DEPRECATED_SIG, **sig_values("previewOutput"))
    run = run_build(kiln, write(tmp_path, "preview.json", data))
    assert run["runOutputs"][0]["properties"]["provisioningState"] == "Succeeded"


def _tail(path: Path) -> bytes:
    with path.open("rb") as f:
        f.seek(-512, 2)
        return f.read()
