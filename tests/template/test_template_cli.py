"""`kiln validate` as a user runs it: the real console script, in a subprocess."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from template_support import EXAMPLES, REPO, aib

KILN = str(REPO / ".venv" / "bin" / "kiln")
DEVOPS_NAME = "solutions__4_Using_ENV_Variables__devOpsEnvTemplate.json"


def kiln(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([KILN, "--home", str(home), *args], capture_output=True, text=True, timeout=120)


def test_examples_are_valid(kiln_home: Path) -> None:
    result = kiln("validate", *map(str, sorted(EXAMPLES.glob("*.json"))), home=kiln_home)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 3 and all(line.startswith("OK ") for line in lines)
    assert "debian12-managed-image: PlatformImage Debian:debian-12:12-gen2:latest, 2 customizer(s), " \
           "targets ManagedImage(debian12-managed-image)" in result.stdout


def test_all_problems_of_all_files_at_once(tmp_path: Path, kiln_home: Path) -> None:
    a = json.loads((EXAMPLES / "debian12-vhd.json").read_text())
    a["location"] = "mars"
    a["properties"]["customize"][1]["name"] = a["properties"]["customize"][0]["name"]
    a["properties"]["buildTimeoutInMinutes"] = 10_000
    (tmp_path / "a.json").write_text(json.dumps(a))
    (tmp_path / "b.json").write_text('{"location": "westus2",\n "properties": {,}}')
    result = kiln("validate", str(tmp_path / "a.json"), str(tmp_path / "b.json"), str(EXAMPLES / "debian12-vhd.json"),
                  home=kiln_home)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert f"OK {EXAMPLES / 'debian12-vhd.json'}" in result.stdout
    for where in (".location", ".properties.customize[1].name", ".properties.buildTimeoutInMinutes", "line 2, column 17"):
        assert where in result.stderr, result.stderr
    assert "hint:" in result.stderr


def test_json_output_parses(tmp_path: Path, kiln_home: Path) -> None:
    bad = json.loads((EXAMPLES / "debian12-gallery.json").read_text())
    bad["properties"]["distribute"][0]["targetRegions"][0]["replicaCount"] = 0
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    result = kiln("validate", "--json", str(tmp_path / "bad.json"), home=kiln_home)
    assert result.returncode == 2
    problems = json.loads(result.stdout)
    assert problems == [{
        "file": str(tmp_path / "bad.json"),
        "path": ".properties.distribute[0].targetRegions[0].replicaCount",
        "message": "0 is less than the minimum 1",
        "hint": problems[0]["hint"],
    }]
    assert "replicas" in problems[0]["hint"]
    ok = kiln("validate", "--json", str(EXAMPLES / "debian12-gallery.json"), home=kiln_home)
    assert ok.returncode == 0 and json.loads(ok.stdout) == []


def test_deployment_parameters(tmp_path: Path, kiln_home: Path) -> None:
    DEVOPS = aib() / "templates" / DEVOPS_NAME
    missing = kiln("validate", str(DEVOPS), home=kiln_home)
    assert missing.returncode == 2
    assert ".parameters.svcLocation" in missing.stderr and "--parameters svcLocation=" in missing.stderr
    values = ["imageTemplateName=devops", "svcLocation=westeurope", "managedImageName=img", "packagesToInstall=jq",
              "targetOS=linux",
              "managedImageResGroupId=/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/images/"]
    ok = kiln("validate", str(DEVOPS), *[a for v in values for a in ("--parameters", v)], home=kiln_home)
    assert ok.returncode == 0, ok.stderr
    assert "devops: PlatformImage Canonical:UbuntuServer:18.04-LTS:latest, 2 customizer(s)" in ok.stdout
    params = tmp_path / "params.json"
    params.write_text(json.dumps({"parameters": {v.split("=")[0]: {"value": v.split("=", 1)[1]} for v in values}}))
    from_file = kiln("validate", str(DEVOPS), "--parameters", f"@{params}", home=kiln_home)
    assert from_file.returncode == 0, from_file.stderr


@pytest.mark.parametrize(("content", "words"), [
    (b"", "empty"),
    (b"\x00\x01\xff\xfe binary", "not UTF-8"),
    (b"[1, 2, 3]", "holds an array"),
    (b'{"a": NaN}', "not valid JSON"),
    (b'{"n": 1' + b"0" * 5000 + b"}", "not valid JSON"),
    (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    (b'{"properties": {"source": 1, "distribute": "x"}, "location": 5}', "expected"),
    (b'\xef\xbb\xbf{"type": "Microsoft.Compute/images"}', "not an image template"),
])
def test_bad_input_never_a_traceback(tmp_path: Path, kiln_home: Path, content: bytes, words: str) -> None:
    f = tmp_path / "t.json"
    f.write_bytes(content)
    result = kiln("validate", str(f), home=kiln_home)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert words in result.stderr


def test_directory_missing_file_and_bad_parameter(tmp_path: Path, kiln_home: Path) -> None:
    result = kiln("validate", str(tmp_path), str(tmp_path / "nope.json"), "--parameters", "novalue",
                  home=kiln_home)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "is a directory" in result.stderr and "no such file" in result.stderr and "NAME=VALUE" in result.stderr


def test_allowed_locations_come_from_the_config(kiln_home: Path) -> None:
    (kiln_home / "config.toml").write_text('[locations]\nallowed = ["westeurope", "northeurope"]\n')
    result = kiln("validate", "--json", str(EXAMPLES / "debian12-managed-image.json"), home=kiln_home)
    assert result.returncode == 2
    (problem,) = json.loads(result.stdout)
    assert problem["path"] == ".location" and "westus2" in problem["message"]
    assert "westeurope" in problem["hint"]
