"""The forms an image template comes in, each reduced to plain image template resources.

- a bare resource: `{"type": "Microsoft.VirtualMachineImages/imageTemplates", "apiVersion", "location",
  "properties", ...}`; `az resource create` writes the type as `Microsoft.VirtualMachineImages`,
  and some samples leave it out;
- a REST request body (`{location, identity, tags, properties}`, the apiVersion is in the URL), and
  a GET response (the same, with read-only fields);
- an ARM deployment template whose `resources` hold one or more image templates, with parameters
  (from the caller, else `defaultValue`), variables and expressions (`kiln.template.arm`);
- the REST spec's example files: `{"parameters": {"parameters": BODY, "imageTemplateName", "api-version"}}`.

Each becomes a `RawTemplate` that remembers where in the file it sits (`base`), so problems found
later point into the file as written. ARM evaluation problems are reported here, and the paths
they spoil are returned as `unresolved`, so later stages do not report the same value again.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from kiln.template.arm import ArmError, Deployment, MissingValue, Scope, evaluate_string, evaluate_value
from kiln.template.paths import JsonPath
from kiln.template.schema import Finding

IMAGE_TEMPLATE_TYPES = ("microsoft.virtualmachineimages/imagetemplates", "microsoft.virtualmachineimages")


@dataclass
class RawTemplate:
    resource: dict[str, Any]
    base: JsonPath  # where the resource sits in the file
    name: str
    api_version: str | None  # from the surroundings (spec example), when the resource has none


@dataclass
class Forms:
    templates: list[RawTemplate] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)  # paths are absolute in the file
    unresolved: set[JsonPath] = field(default_factory=set)


def split(data: Any, *, name_hint: str, parameters: dict[str, str], deployment: Deployment) -> Forms:
    """Find the image templates in a parsed JSON document."""
    out = Forms()
    if not isinstance(data, dict):
        kind = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(type(data), "a number")
        out.findings.append(Finding((), f"an image template is a JSON object, this file holds {kind}",
                                    "start from one of the files in examples/"))
        return out
    if "resources" in data:
        _deployment(data, out, parameters, deployment)
    elif _is_spec_example(data):
        wrapper = data["parameters"]
        name = wrapper.get("imageTemplateName")
        api = wrapper.get("api-version")
        out.templates.append(RawTemplate(wrapper["parameters"], ("parameters", "parameters"),
                                         name if isinstance(name, str) and name else name_hint,
                                         api if isinstance(api, str) else None))
    else:
        declared = data.get("type")
        if declared is not None and (not isinstance(declared, str) or declared.lower() not in IMAGE_TEMPLATE_TYPES):
            out.findings.append(Finding(("type",), f"{json.dumps(declared)} is not an image template",
                                        "an image template has type Microsoft.VirtualMachineImages/imageTemplates"))
            return out
        if "properties" not in data and "location" not in data:
            out.findings.append(Finding((), "this is not an image template: it has no 'properties' and no 'resources'",
                                        "an image template is {\"location\": ..., \"properties\": {\"source\": ..., "
                                        "\"distribute\": [...]}}, or an ARM deployment template holding one"))
            return out
        name = data.get("name")
        out.templates.append(RawTemplate(data, (), name if isinstance(name, str) and name else name_hint, None))
    return out


def _is_spec_example(data: dict[str, Any]) -> bool:
    wrapper = data.get("parameters")
    return (isinstance(wrapper, dict) and isinstance(wrapper.get("parameters"), dict)
            and ("imageTemplateName" in wrapper or "api-version" in wrapper)
            and "properties" in wrapper["parameters"])


_TYPE_NAMES = {"string", "securestring", "int", "bool", "object", "secureobject", "array"}


def _coerce(text: str, kind: str) -> Any:
    """A `--parameters k=v` value as the parameter's declared type (raises ValueError)."""
    kind = kind.lower()
    if kind == "int":
        return int(text)
    if kind == "bool":
        if text.lower() not in ("true", "false"):
            raise ValueError("expected true or false")
        return text.lower() == "true"
    if kind in ("object", "secureobject", "array"):
        value = json.loads(text)
        if not isinstance(value, dict if "object" in kind else list):
            raise ValueError(f"expected a JSON {'object' if 'object' in kind else 'array'}")
        return value
    return text


def _deployment(data: dict[str, Any], out: Forms, given: dict[str, str], deployment: Deployment) -> None:
    declared = data.get("parameters", {})
    if not isinstance(declared, dict):
        out.findings.append(Finding(("parameters",), "'parameters' must be an object of parameter declarations"))
        declared = {}
    variables = data.get("variables", {})
    if not isinstance(variables, dict):
        out.findings.append(Finding(("variables",), "'variables' must be an object"))
        variables = {}
    values: dict[str, Any] = {}
    missing: set[str] = set()
    scope = Scope(values, variables, deployment)
    lowered = {k.lower(): k for k in given}
    for name, decl in declared.items():
        path: JsonPath = ("parameters", name)
        decl = decl if isinstance(decl, dict) else {}
        kind = decl.get("type", "string")
        kind = kind if isinstance(kind, str) and kind.lower() in _TYPE_NAMES else "string"
        if name.lower() in lowered:
            try:
                values[name] = _coerce(given[lowered.pop(name.lower())], kind)
            except ValueError as e:
                out.findings.append(Finding(path, f"the value given for parameter {name!r} is not a valid {kind}: {e}",
                                            f"pass --parameters {name}=<{kind}>"))
                missing.add(name)
                continue
        elif "defaultValue" in decl:
            scope.missing = frozenset(missing)
            try:
                values[name] = evaluate_value(decl["defaultValue"], scope)
            except ArmError as e:
                if not isinstance(e, MissingValue):
                    out.findings.append(Finding((*path, "defaultValue"), e.message, e.hint))
                missing.add(name)
                continue
        else:
            out.findings.append(Finding(path, f"parameter {name!r} has no value and no defaultValue",
                                        f"pass --parameters {name}=VALUE"))
            missing.add(name)
            continue
        allowed = decl.get("allowedValues")
        if isinstance(allowed, list) and values[name] not in allowed:
            out.findings.append(Finding(path, f"{json.dumps(values[name])} is not an allowed value of {name!r}",
                                        f"allowed: {', '.join(json.dumps(a) for a in allowed)}"))
    for extra in lowered.values():
        out.findings.append(Finding(("parameters",), f"parameter {extra!r} is not declared in the template",
                                    f"declared: {', '.join(declared) or 'none'}"))
    scope.missing = frozenset(missing)

    resources = data["resources"]
    if not isinstance(resources, list):
        out.findings.append(Finding(("resources",), "'resources' must be an array"))
        return
    for i, resource in enumerate(resources):
        if not isinstance(resource, dict):
            continue
        base: JsonPath = ("resources", i)
        kind = _evaluate(resource.get("type"), (*base, "type"), scope, out)
        if not isinstance(kind, str) or kind.lower() not in IMAGE_TEMPLATE_TYPES:
            continue
        if "copy" in resource:
            out.findings.append(Finding((*base, "copy"), "copy loops are not supported by kiln",
                                        "write one resource per image template"))
            continue
        if "condition" in resource and _evaluate(resource["condition"], (*base, "condition"), scope, out) is False:
            continue
        evaluated = _evaluate(resource, base, scope, out)
        name = evaluated.get("name")
        out.templates.append(RawTemplate(evaluated, base, name if isinstance(name, str) and name else f"resources-{i}",
                                         None))
    if not out.templates and not out.findings:
        out.findings.append(Finding(("resources",), "this deployment template holds no image template",
                                    "add a resource of type Microsoft.VirtualMachineImages/imageTemplates"))


def _evaluate(value: Any, path: JsonPath, scope: Scope, out: Forms) -> Any:
    """Evaluate every expression under `value`, reporting each failure at its own path."""
    if isinstance(value, str):
        try:
            return evaluate_string(value, scope)
        except MissingValue:
            out.unresolved.add(path)  # already reported where the parameter is declared
        except ArmError as e:
            out.findings.append(Finding(path, f"cannot evaluate {value!r}: {e.message}", e.hint))
            out.unresolved.add(path)
        except RecursionError:
            out.findings.append(Finding(path, "the expression is nested too deeply"))
            out.unresolved.add(path)
        return value
    if isinstance(value, list):
        return [_evaluate(v, (*path, i), scope, out) for i, v in enumerate(value)]
    if isinstance(value, dict):
        result: dict[str, Any] = {}
        for key, v in value.items():
            new_key = _evaluate(key, (*path, key), scope, out)
            new_key = new_key if isinstance(new_key, str) else json.dumps(new_key)
            result[new_key] = _evaluate(v, (*path, key), scope, out)
        return result
    return value
