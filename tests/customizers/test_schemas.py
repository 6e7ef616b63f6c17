"""Every registered customizer declares a valid JSON Schema, and it accepts what AIB templates write."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from kiln.customizers import REGISTRY, check_supported
from kiln.errors import ValidationFailed
from kiln.template.model import FileStep, PowerShellStep, ShellStep, WindowsRestartStep, WindowsUpdateStep


@pytest.mark.parametrize("kind", sorted(REGISTRY))
def test_schema_is_valid(kind: str) -> None:
    jsonschema.Draft202012Validator.check_schema(REGISTRY[kind].schema)


def test_every_model_step_type_is_registered() -> None:
    assert {c.type for c in (ShellStep, FileStep, PowerShellStep, WindowsRestartStep, WindowsUpdateStep)} == set(REGISTRY)


def test_conformance_steps_match_their_schemas(corpus: Path) -> None:
    seen = 0
    for path in sorted((corpus / "aib").rglob("*.json")):
        data = json.loads(path.read_text())
        for resource in [data, *data.get("resources", [])] if isinstance(data, dict) else []:
            props = resource.get("properties", {}) if isinstance(resource, dict) else {}
            steps = props.get("customize") if isinstance(props, dict) else None
            for step in steps if isinstance(steps, list) else []:
                if isinstance(step, dict) and step.get("type") in REGISTRY and "[" not in json.dumps(step):
                    jsonschema.validate(step, REGISTRY[step["type"]].schema)
                    seen += 1
    assert seen > 20


def test_windows_steps_refused_on_linux_naming_each() -> None:
    steps = (ShellStep(name="ok", inline=("true",)), WindowsRestartStep(name="reboot"), WindowsUpdateStep())
    with pytest.raises(ValidationFailed) as e:
        check_supported(steps, "Linux")
    problems = e.value.problems
    assert [p.path for p in problems] == [".properties.customize[1]", ".properties.customize[2]"]
    assert "'reboot' (WindowsRestart) needs a Windows image" in problems[0].message
    assert "WindowsUpdate step needs a Windows image" in problems[1].message
    assert e.value.exit_code == 2


def test_shell_refused_on_windows_and_powershell_allowed_on_linux() -> None:
    check_supported((PowerShellStep(inline=("Write-Host hi",)), FileStep(source_uri="x", destination="/x")), "Linux")
    with pytest.raises(ValidationFailed) as e:
        check_supported((ShellStep(inline=("true",)),), "Windows", where=".properties.validate.inVMValidations")
    assert e.value.problems[0].path == ".properties.validate.inVMValidations[0]"
