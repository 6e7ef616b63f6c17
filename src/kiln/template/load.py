"""Loading an image template: file -> forms -> ARM expressions -> normalize -> schema -> checks -> model.

This is the one entry point the rest of kiln uses (`load_template`, `load_template_data`). It
never stops at the first mistake: every problem of every image template in the file is collected
and raised together as one `ValidationFailed`, each with the file, the JSON path of the value as
the user wrote it (`.resources[0].properties.source.type` in a deployment template) and a hint.
Nothing here writes anywhere.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kiln.config import Config
from kiln.errors import Problem, ValidationFailed
from kiln.template import checks, forms, normalize, schema
from kiln.template.arm import Deployment
from kiln.template.convert import to_model
from kiln.template.model import ImageTemplate
from kiln.template.paths import JsonPath, render

MAX_FILE_BYTES = 16 * 1024 * 1024  # image templates are a few KiB; anything this big is a mistake
DEFAULT_NAME = "image-template"


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def read_json(path: Path) -> Any:
    """Parse a JSON file, turning every way it can fail into one Problem (raised as ValidationFailed)."""
    file = str(path)

    def fail(message: str, hint: str = "") -> ValidationFailed:
        return ValidationFailed([Problem(message, "", file, hint)])

    try:
        if path.is_dir():
            raise fail("is a directory, not a template file", "pass the template's JSON file")
        if not path.exists():
            raise fail("no such file", "check the path")
        if path.stat().st_size > MAX_FILE_BYTES:
            raise fail(f"the file is larger than {MAX_FILE_BYTES // (1024 * 1024)} MiB; not an image template")
        raw = path.read_bytes()
    except OSError as e:
        raise fail(f"cannot read the file: {e.strerror or e}") from e
    try:
        text = raw.decode("utf-8-sig")  # templates saved on Windows often start with a BOM
    except UnicodeDecodeError as e:
        raise fail(f"not UTF-8 text (byte {e.start}); is this a binary file?", "an image template is a JSON file") from e
    if not text.strip():
        raise fail("the file is empty", "an image template is a JSON object")
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as e:
        raise ValidationFailed([Problem(f"not valid JSON: {e.msg}",
                                        f"line {e.lineno}, column {e.colno}", file,
                                        "check for a missing comma, quote or bracket near there")]) from e
    except RecursionError as e:
        raise fail("the JSON is nested too deeply") from e
    except ValueError as e:  # NaN/Infinity, integers with thousands of digits
        raise fail(f"not valid JSON: {e}") from e


def load_template(
    path: Path,
    parameters: dict[str, str] | None = None,
    *,
    config: Config | None = None,
    deployment: Deployment | None = None,
) -> tuple[ImageTemplate, ...]:
    """Every image template in the file at `path`, validated (raises ValidationFailed with all problems)."""
    path = Path(path)
    data = read_json(path)
    return load_template_data(data, file=str(path), parameters=parameters, config=config, deployment=deployment,
                              name_hint=path.stem)


def load_template_data(
    data: Any,
    *,
    file: str = "",
    parameters: dict[str, str] | None = None,
    config: Config | None = None,
    deployment: Deployment | None = None,
    name_hint: str = "",
) -> tuple[ImageTemplate, ...]:
    """Every image template in an already parsed JSON document (raises ValidationFailed with all problems)."""
    try:
        templates, problems = _load(data, file, dict(parameters or {}), config, deployment or Deployment(),
                                    name_hint or (Path(file).stem if file else DEFAULT_NAME))
    except RecursionError as e:
        raise ValidationFailed([Problem("the template is nested too deeply", "", file)]) from e
    if problems:
        raise ValidationFailed(problems)
    return templates


def _load(
    data: Any, file: str, parameters: dict[str, str], config: Config | None, deployment: Deployment, name_hint: str
) -> tuple[tuple[ImageTemplate, ...], list[Problem]]:
    found = forms.split(data, name_hint=name_hint, parameters=parameters, deployment=deployment)
    reported: dict[JsonPath, Problem] = {}

    for f in found.findings:
        reported.setdefault(f.path, Problem(f.message, render(f.path), file, f.hint))

    def report(path: JsonPath, message: str, hint: str) -> None:
        if any(path[:cut] in found.unresolved for cut in range(len(path) + 1)):
            return  # the value is an expression that could not be evaluated: said already
        reported.setdefault(path, Problem(message, render(path), file, hint))

    templates: list[ImageTemplate] = []
    for raw in found.templates:
        before = len(reported)
        api, api_path = raw.resource.get("apiVersion"), (*raw.base, "apiVersion")
        if api is None and raw.api_version is not None:
            api, api_path = raw.api_version, ("parameters", "api-version")
        if api is None:
            api = normalize.LATEST_API
        if not isinstance(api, str) or api not in normalize.API_VERSIONS:
            report(api_path, f"unknown apiVersion {json.dumps(api)}",
                   f"kiln reads {', '.join(normalize.API_VERSIONS)}")
            api = normalize.LATEST_API
        norm = normalize.normalize(raw.resource, api)
        findings = list(norm.findings)
        legacy = normalize.is_legacy(api)
        findings += [f for f in schema.validate(norm.data) if not (legacy and f.unknown_property)]
        findings += checks.check(norm.data, api, config)
        for f in findings:
            report((*raw.base, *norm.origin.original(f.path)), f.message, f.hint)
        if len(reported) == before and not found.findings:
            templates.append(to_model(norm.data, name=raw.name, api_version=api, file=file))
    return tuple(templates), list(reported.values())
