"""Every registered step type declares a valid JSON Schema, it accepts what AIB templates write, and
the template schema is built from exactly these schemas."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from kiln.customizers import REGISTRY, check_supported
from kiln.errors import ValidationFailed
from kiln.template.model import FileStep, PowerShellStep, ShellStep, WindowsRestartStep, WindowsUpdateStep
from kiln.template.schema import schema, validate


@pytest.mark.parametrize("kind", sorted(REGISTRY))
def test_schema_is_valid(kind: str) -> None:
    jsonschema.Draft202012Validator.check_schema(REGISTRY[kind].schema)


def test_schema_stands_alone() -> None:
    """A step schema is a document of its own: its references resolve without the template schema."""
    ps = REGISTRY["PowerShell"].schema
    jsonschema.validate({"type": "PowerShell", "inline": ["exit 3"], "validExitCodes": [0, 3]}, ps)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"type": "PowerShell", "inline": [], "validExitCodes": [2**31]}, ps)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"type": "WindowsUpdate", "updateLimit": -1}, REGISTRY["WindowsUpdate"].schema)


def test_template_schema_holds_exactly_the_registered_types() -> None:
    defs = schema()["$defs"]
    validators = [kind for kind, t in REGISTRY.items() if t.guest is not None]
    assert validators == ["Shell", "PowerShell", "File"]  # AIB's in-VM validation types
    for union, kinds in (("Customizer", list(REGISTRY)), ("InVMValidator", validators)):
        assert defs[union]["properties"]["type"]["enum"] == kinds
        branches = defs[union]["allOf"]
        assert [b["if"]["properties"]["type"]["const"] for b in branches] == kinds
        for kind, branch in zip(kinds, branches, strict=True):
            used = defs[branch["then"]["$ref"].removeprefix("#/$defs/")]
            assert used == {k: v for k, v in REGISTRY[kind].schema.items() if k not in ("$schema", "$defs")}


@pytest.mark.parametrize("kind", sorted(REGISTRY))
@pytest.mark.parametrize("where", ["customize", "inVMValidations"])
def test_template_validation_uses_the_registered_schema(kind: str, where: str) -> None:
    step = {"type": kind, "zzz": 1}
    props: dict = {"customize": [step]} if where == "customize" else {"validate": {"inVMValidations": [step]}}
    found = validate({"location": "westus2", "properties": props})
    base = ("properties", "customize", 0) if where == "customize" else ("properties", "validate", "inVMValidations", 0)
    if where == "inVMValidations" and REGISTRY[kind].guest is None:
        assert [f.path for f in found if f.path[:len(base)] == base] == [(*base, "type")]
        return
    (unknown,) = [f for f in found if f.path == (*base, "zzz")]
    assert unknown.hint == "allowed here: " + ", ".join(REGISTRY[kind].schema["properties"])


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
