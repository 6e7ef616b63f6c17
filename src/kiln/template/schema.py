"""JSON Schema validation of an image template, with messages a person can act on.

The schema (Draft 2020-12) describes the 2025-10-01 REST shape. It is built from two places: the
step types' own schemas, declared beside their code and registered in `kiln.customizers` (the
items of `customize` and `inVMValidations`), and `imagetemplate.base.json`, everything else. The
whole is published as `imagetemplate.schema.json` (shipped in the package, for editors and other
tools); `write_published()` rewrites it after a step's schema changes (`.venv/bin/python -c
"from kiln.template.schema import write_published; write_published()"`), and a test checks it is
what validation uses. Every discriminated union (source, customizer, validator, distributor,
versioning) lists its allowed `type` values and picks its subschema with `if`/`then`, so a Shell
step with a typo is reported at `.customize[2].scirptUri`, not as "is not valid under any of the
given schemas". All errors are collected (`iter_errors`), each turned into a `Finding`: a path into
the normalized template, a message, and a hint (the property's description from the schema, or a
close match for a misspelled name).
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema

from kiln.customizers.base import CustomizerType
from kiln.customizers.registry import step_types, validator_types
from kiln.template.paths import JsonPath

SCHEMA_FILE = "imagetemplate.schema.json"  # published: the built schema, written by `write_published`
BASE_FILE = "imagetemplate.base.json"  # the template without its steps


@dataclass(frozen=True)
class Finding:
    """A problem found in the normalized template, before its path is mapped back to the file."""

    path: JsonPath
    message: str
    hint: str = ""
    unknown_property: bool = False  # legacy apiVersions ignore unknown properties, as Azure did


@cache
def schema() -> dict[str, Any]:
    """The JSON Schema of an image template: the base file with the registered step types put in."""
    base = json.loads(resources.files("kiln.template").joinpath(BASE_FILE).read_text())
    base.pop("$comment", None)
    kinds = step_types()
    steps = {
        "Customizer": _union("a customization step", kinds),
        **{_def_name(k): _step_def(k) for k in kinds},
        "InVMValidator": _union("an in-VM validation step", validator_types()),
    }
    defs: dict[str, Any] = {}
    for name, sub in base["$defs"].items():
        if name == "Distributor":  # where the steps' definitions sit in the published file
            defs.update(steps)
        defs[name] = sub
    return {**base, "$defs": defs}


def _def_name(kind: CustomizerType) -> str:
    return f"{kind.type}Step"


def _step_def(kind: CustomizerType) -> dict[str, Any]:
    # A step schema is a document of its own (its "$defs" say what "#/$defs/int32" is); inside the
    # template schema the same references resolve to the template's own $defs.
    return {k: v for k, v in kind.schema.items() if k not in ("$schema", "$defs")}


def _union(what: str, kinds: tuple[CustomizerType, ...]) -> dict[str, Any]:
    """A list item that picks its step type's schema by `type` (if/then: errors point inside the step)."""
    names = [k.type for k in kinds]
    description = f"{what}: {', '.join(names[:-1])} or {names[-1]}"
    return {
        "type": "object",
        "description": description,
        "required": ["type"],
        "properties": {"type": {"enum": names, "description": description}},
        "allOf": [
            {"if": {"properties": {"type": {"const": k.type}}, "required": ["type"]},
             "then": {"$ref": f"#/$defs/{_def_name(k)}"}}
            for k in kinds
        ],
    }


def published_text() -> str:
    """The built schema as `imagetemplate.schema.json` holds it."""
    return json.dumps(schema(), indent=1) + "\n"


def write_published() -> Path:
    """Rewrite the shipped `imagetemplate.schema.json` from the built schema (a source checkout only)."""
    path = Path(__file__).with_name(SCHEMA_FILE)
    path.write_text(published_text())
    return path


@cache
def _validator() -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(schema())


_JSON_TYPES = {bool: "boolean", int: "integer", float: "number", str: "string", list: "array", dict: "object"}


def _json_type(value: Any) -> str:
    return "null" if value is None else _JSON_TYPES.get(type(value), type(value).__name__)


def _show(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 60 else text[:57] + "..."


def _close(word: Any, choices: list[str]) -> str:
    if not isinstance(word, str):
        return ""
    lowered = {c.lower(): c for c in choices}
    if word.lower() in lowered:
        return f"did you mean {lowered[word.lower()]!r}? (names are case-sensitive)"
    match = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f"did you mean {match[0]!r}?" if match else ""


def _description(subschema: Any) -> str:
    if not isinstance(subschema, dict):
        return ""
    if "description" in subschema:
        return str(subschema["description"])
    ref = subschema.get("$ref", "")
    if ref.startswith("#/$defs/"):
        return _description(schema()["$defs"].get(ref.removeprefix("#/$defs/"), {}))
    return ""


def _findings(error: jsonschema.ValidationError) -> list[Finding]:
    path: JsonPath = tuple(error.absolute_path)
    kind, value, sub = error.validator, error.instance, error.schema
    # The stubs allow "unset" for errors built by hand; iter_errors always sets both. A bool
    # subschema (`true`/`false`) has no properties.
    rule: Any = error.validator_value
    props: Mapping[str, Any] = sub.get("properties", {}) if isinstance(sub, Mapping) else {}
    if kind == "additionalProperties" and isinstance(value, dict):
        known = list(props)
        extra = [k for k in value if k not in known]
        return [
            Finding(
                (*path, k),
                f"unknown property {k!r}",
                _close(k, known) or f"allowed here: {', '.join(known)}",
                unknown_property=True,
            )
            for k in extra
        ]
    if kind == "required" and isinstance(value, dict):
        return [
            Finding((*path, name), f"required property {name!r} is missing",
                    _description(props.get(name)) or f"add {name!r}")
            for name in rule
            if name not in value
        ]
    if kind == "type":
        want = rule
        want_text = " or ".join(want) if isinstance(want, list) else str(want)
        return [Finding(path, f"expected {want_text}, got {_json_type(value)} {_show(value)}",
                        _description(sub) or f"write a JSON {want_text} here")]
    if kind in ("enum", "const"):
        allowed = rule if kind == "enum" else [rule]
        choices = [a for a in allowed if isinstance(a, str)]
        hint = _close(value, choices) or f"one of: {', '.join(map(str, allowed))}"
        return [Finding(path, f"{_show(value)} is not allowed here", hint)]
    if kind == "pattern":
        return [Finding(path, f"{_show(value)} does not match {rule}",
                        _description(sub) or f"match the pattern {rule}")]
    if kind in ("minimum", "maximum"):
        word = "less than the minimum" if kind == "minimum" else "more than the maximum"
        bound = f"use a value of at {'least' if kind == 'minimum' else 'most'} {rule}"
        return [Finding(path, f"{_show(value)} is {word} {rule}",
                        f"{_description(sub)}; {bound}" if _description(sub) else bound)]
    if kind == "minLength":
        return [Finding(path, "must not be empty", _description(sub))]
    return [Finding(path, error.message, _description(sub))]


def validate(data: Any) -> list[Finding]:
    """All schema violations of one normalized template (empty when it conforms)."""
    found: list[Finding] = []
    for error in _validator().iter_errors(data):
        found.extend(_findings(error))
    # `imageVersionID` given for `imageVersionId`: one problem (the misspelling), not two.
    misspelled = {(f.path[:-1], str(f.path[-1]).lower()) for f in found if f.unknown_property}
    return [f for f in found
            if not (f.message.startswith("required property") and (f.path[:-1], str(f.path[-1]).lower()) in misspelled)]
