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
from kiln.jsonfile import read_json
from kiln.template import checks, forms, normalize, schema
from kiln.template.arm import Deployment
from kiln.template.convert import to_model
from kiln.template.model import ImageTemplate
from kiln.template.paths import JsonPath, render

DEFAULT_NAME = "image-template"


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
