"""The configuration folder: both golden image forms convert, and every mistake is reported at once
with its file and JSON path, exit 2, before anything is written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from kiln.config import load_config
from kiln.factory import load_factory
from kiln.template.model import FileStep, PlatformImageSource, ShellStep

from .conftest import CONFIG, kiln, lab_entry


def test_the_dtl_samples_validate_and_convert(kiln_home: Path, corpus: Path) -> None:
    samples = corpus / "dtl"
    proc = kiln(kiln_home, "factory", "validate", str(samples / "Configuration"), "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert {g["imagePath"] for g in data["goldenImages"]} == {
        "Win2012R2/VS2015 Enterprise with Azure SDK.json", "Win2016/Datacenter.json", "Win2016/SQLServer 2016 Express.json"}
    assert all(g["form"] == "dtl" and g["osType"] == "Windows" for g in data["goldenImages"])
    assert data["goldenImages"][1]["description"] == "Windows Server 2016 Datacenter"


def test_building_the_windows_samples_fails_fast_and_changes_nothing(kiln_home: Path, corpus: Path) -> None:
    samples = corpus / "dtl"
    proc = kiln(kiln_home, "factory", "build", str(samples / "Configuration"), timeout=60)
    assert proc.returncode == 2
    assert "Windows images cannot be built here" in proc.stderr
    assert "Datacenter.json" in proc.stderr and "Traceback" not in proc.stderr
    assert json.loads(kiln(kiln_home, "lab", "list", "--json").stdout) == []


def test_debian_config_converts_both_forms(kiln_home: Path) -> None:
    factory = load_factory(CONFIG, load_config(kiln_home))
    by_path = {g.image_path: g for g in factory.golden_images}
    assert by_path["Debian/base.json"].form == "aib"
    tools = by_path["Debian/tools.json"]
    assert tools.form == "dtl" and tools.description == "Debian 12 with tools (DevTest Labs form)"
    assert isinstance(tools.template.source, PlatformImageSource) and tools.template.source.offer == "debian-12"
    copy, run = tools.template.customize
    assert isinstance(copy, FileStep) and copy.destination == "/tmp/kiln-artifacts/kiln-marker/write-marker.sh"
    assert copy.sha256_checksum and len(copy.sha256_checksum) == 64
    assert isinstance(run, ShellStep) and "bash write-marker.sh file tools" in run.inline
    assert by_path["Web/site.json"].os_state == "Specialized"
    labs = {s.id.name: s for s in factory.labs}
    assert labs["LabMixed"].selects("Web/site.json") and labs["LabMixed"].selects("Debian/base.json")
    assert not labs["LabMixed"].selects("Debian/tools.json")


def _broken(tmp_path: Path) -> Path:
    cfg = tmp_path / "Configuration"
    shutil.copytree(CONFIG, cfg)
    (cfg / "GoldenImages" / "Debian" / "broken.json").write_text('{"resources": [\n  {"type": 1,}\n]}')
    tools = json.loads((cfg / "GoldenImages" / "Debian" / "tools.json").read_text())
    props = tools["resources"][0]["properties"]
    props["artifacts"][0]["parameters"].append({"name": "mode", "value": "banner"})
    props["artifacts"].append({"artifactId": "/artifactsources/repo/artifacts/windows-sysprep"})
    props["artifacts"].append({"artifactId": "/artifactsources/repo/artifacts/no-such-artifact"})
    (cfg / "GoldenImages" / "Debian" / "tools.json").write_text(json.dumps(tools))
    # A Windows artifact (kiln's own, shaped like the DevTest Labs sample's sysprep one).
    sysprep = cfg / "Artifacts" / "windows-sysprep"
    sysprep.mkdir(parents=True)
    (sysprep / "Artifactfile.json").write_text(json.dumps({
        "$schema": "https://raw.githubusercontent.com/Azure/azure-devtestlab/master/schemas/2016-11-28/dtlArtifacts.json",
        "title": "Sysprep", "publisher": "kiln tests", "targetOsType": "Windows", "parameters": {},
        "runCommand": {"commandToExecute": "powershell.exe -ExecutionPolicy bypass \"& ./OldSysprep.ps1\""},
    }, indent=2))
    (cfg / "Labs.json").write_text(json.dumps({"Labs": [
        lab_entry("LabA", "Debian"),
        lab_entry("laba", "Web"),
        lab_entry("LabB", "Nowhere/x.json", "../outside", "/etc"),
        {"SubscriptionId": "s", "LabName": "NoGroup", "ImagePaths": "Debian"},
    ]}))
    return cfg


def test_every_problem_at_once_with_file_and_path(kiln_home: Path, tmp_path: Path) -> None:
    cfg = _broken(tmp_path)
    proc = kiln(kiln_home, "factory", "validate", str(cfg), "--json")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    problems = json.loads(proc.stdout)["problems"]
    found = {(Path(p["file"]).name, p["path"], p["message"].split(" ")[0]) for p in problems}
    labs = "Labs.json"

    def has(file: str, path: str, text: str) -> bool:
        return any(Path(p["file"]).name == file and p["path"] == path and text in p["message"] for p in problems)

    assert any(Path(p["file"]).name == "broken.json" and "not valid JSON" in p["message"] for p in problems), found
    assert has(labs, ".Labs[1]", "duplicate lab"), found
    assert has(labs, ".Labs[2].ImagePaths[0]", "matches no golden image"), found
    assert has(labs, ".Labs[2].ImagePaths[1]", "outside the GoldenImages folder"), found
    assert has(labs, ".Labs[2].ImagePaths[2]", "outside the GoldenImages folder"), found
    assert has(labs, ".Labs[3].ResourceGroup", "must be a non-empty name"), found
    assert has(labs, ".Labs[3].ImagePaths", "array"), found
    assert has("tools.json", ".resources[0].properties.artifacts[0].parameters (mode)", "not allowed"), found
    assert has("tools.json", ".resources[0].properties.artifacts[1]", "Windows artifact; this image is Linux"), found
    assert has("tools.json", ".resources[0].properties.artifacts[2].artifactId", "not in the artifact repository"), found
    assert all(p["hint"] or "duplicate" not in p["message"] for p in problems)
    text = kiln(kiln_home, "factory", "validate", str(cfg))
    assert text.returncode == 2 and "Traceback" not in text.stderr and "hint:" in text.stderr


def test_missing_folder_and_empty_golden_images(kiln_home: Path, tmp_path: Path) -> None:
    proc = kiln(kiln_home, "factory", "validate", str(tmp_path / "nope"))
    assert proc.returncode == 2 and "does not exist" in proc.stderr
    (tmp_path / "cfg" / "GoldenImages").mkdir(parents=True)
    proc = kiln(kiln_home, "factory", "validate", str(tmp_path / "cfg"))
    assert proc.returncode == 2
    assert "no golden image" in proc.stderr and "Labs.json" in proc.stderr
