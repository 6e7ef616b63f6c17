"""JSON Schema validation of an image template, with messages a person can act on.

The schema (`imagetemplate.schema.json`, shipped in the package, Draft 2020-12) describes the
2025-10-01 REST shape. Every discriminated union (source, customizer, validator, distributor,
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
from typing import Any, cast

import jsonschema

from kiln.template.paths import JsonPath

SCHEMA_FILE = "imagetemplate.schema.json"


@dataclass(frozen=True)
class Finding:
    """A problem found in the normalized template, before its path is mapped back to the file."""

    path: JsonPath
    message: str
    hint: str = ""
    unknown_property: bool = False  # legacy apiVersions ignore unknown properties, as Azure did


@cache
def schema() -> dict[str, Any]:
    """The published JSON Schema of an image template."""
    text = resources.files("kiln.template").joinpath(SCHEMA_FILE).read_text()
    return cast(dict[str, Any], json.loads(text))


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
