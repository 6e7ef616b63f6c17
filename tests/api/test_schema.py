"""Property-based tests of `kiln serve` against AIB's own spec (2025-10-01, Swagger 2.0), with schemathesis.

For each imageTemplates operation (and the triggers under them), schemathesis generates requests
from the spec (valid ones, then invalid ones), sends them to a live `kiln serve` with a token, and
checks every answer: no 5xx, a status code the spec lists, JSON, and a body that conforms to the
spec's schema for that status (errors: ARM's ErrorResponse). A bounded number of examples keeps it
well under two minutes.

The spec's `$ref`s into Azure's shared `common-types` (Resource, TrackedResource, ProxyResource,
systemData, ErrorResponse and three parameters) are not in the conformance corpus: the ones below
are kiln-written, after ARM's documented shapes.

Where kiln and the spec must differ, and why:
- `subscriptionId`, `resourceGroupName` and `api-version` are fixed to the values the token and
  kiln serve (a random subscription is only ever 403, a random api-version only ever 400).
- `POST .../run` is not generated, and generated bodies carry no `autoRun`: a run is a real
  build (minutes of bootstrap and a QEMU boot), not something to start hundreds of times. run and
  cancel are checked once each, below, on a template whose build fails at once (a Windows source).
- `GET /providers/Microsoft.VirtualMachineImages/operations` (the provider's operation list) is
  not served by kiln: it describes Azure's RBAC actions, which kiln's tokens do not have.
"""

from __future__ import annotations

import collections
import copy
import json
import time
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kilnserve import API_VERSION, RG, SUB
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from corpus import conformance

SPEC = "aib/spec/2025-10-01/imagebuilder.json"  # in the conformance corpus
COMMON = "../../../../../../common-types/resource-management/"


def json_if_any_body(ctx: Any, response: Any, case: Any) -> bool | None:
    """The body is JSON; a 202/204 without a body needs no Content-Type (HTTP has none for no content)."""
    if not response.content:
        return None
    return content_type_conformance(ctx, response, case)


CHECKS = [not_a_server_error, status_code_conformance, json_if_any_body, response_schema_conformance]
EXAMPLES = 40  # per operation
P = f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.VirtualMachineImages/imageTemplates"

# kiln-written stand-ins for the common-types definitions the spec refers to (ARM's shapes).
_SYSTEM_DATA = {
    "type": "object", "readOnly": True,
    "properties": {k: {"type": "string"} for k in ("createdBy", "createdByType", "lastModifiedBy", "lastModifiedByType")}
    | {k: {"type": "string", "format": "date-time"} for k in ("createdAt", "lastModifiedAt")},
}
_RESOURCE = {
    "type": "object", "x-ms-azure-resource": True,
    "properties": {"id": {"type": "string", "readOnly": True}, "name": {"type": "string", "readOnly": True},
                   "type": {"type": "string", "readOnly": True}, "systemData": {"$ref": "#/definitions/common_systemData"}},
}
_ERROR_DETAIL = {
    "type": "object",
    "properties": {"code": {"type": "string", "readOnly": True}, "message": {"type": "string", "readOnly": True},
                   "target": {"type": "string", "readOnly": True},
                   "details": {"type": "array", "readOnly": True, "items": {"$ref": "#/definitions/common_ErrorDetail"}},
                   "additionalInfo": {"type": "array", "readOnly": True, "items": {"type": "object"}}},
}
COMMON_DEFINITIONS = {
    "common_systemData": _SYSTEM_DATA,
    "common_Resource": _RESOURCE,
    "common_TrackedResource": {
        "type": "object", "required": ["location"], "allOf": [{"$ref": "#/definitions/common_Resource"}],
        "properties": {"tags": {"type": "object", "additionalProperties": {"type": "string"}},
                       "location": {"type": "string"}},
    },
    "common_ProxyResource": {"type": "object", "allOf": [{"$ref": "#/definitions/common_Resource"}]},
    "common_ErrorDetail": _ERROR_DETAIL,
    "common_ErrorResponse": {"type": "object", "properties": {"error": {"$ref": "#/definitions/common_ErrorDetail"}}},
}
COMMON_PARAMETERS = {
    "common_ApiVersionParameter": {"name": "api-version", "in": "query", "required": True, "type": "string",
                                   "minLength": 1},
    "common_SubscriptionIdParameter": {"name": "subscriptionId", "in": "path", "required": True, "type": "string",
                                       "format": "uuid"},
    "common_ResourceGroupNameParameter": {"name": "resourceGroupName", "in": "path", "required": True,
                                          "type": "string", "minLength": 1, "maxLength": 90,
                                          "pattern": "^[-\\w\\._\\(\\)]+$"},
}
FIXED = {"path_parameters": {"subscriptionId": SUB, "resourceGroupName": RG}, "query": {"api-version": API_VERSION}}
GENERATED = [
    ("GET", "/subscriptions/{subscriptionId}/providers/Microsoft.VirtualMachineImages/imageTemplates"),
    ("GET", "{P}"),
    ("PUT", "{P}/{imageTemplateName}"),
    ("PATCH", "{P}/{imageTemplateName}"),
    ("GET", "{P}/{imageTemplateName}"),
    ("DELETE", "{P}/{imageTemplateName}"),
    ("POST", "{P}/{imageTemplateName}/cancel"),
    ("GET", "{P}/{imageTemplateName}/runOutputs"),
    ("GET", "{P}/{imageTemplateName}/runOutputs/{runOutputName}"),
    ("GET", "{P}/{imageTemplateName}/triggers"),
    ("GET", "{P}/{imageTemplateName}/triggers/{triggerName}"),
    ("PUT", "{P}/{imageTemplateName}/triggers/{triggerName}"),
    ("DELETE", "{P}/{imageTemplateName}/triggers/{triggerName}"),
]
EXISTING = "schema-existing"
TRIGGER = "source"
# A template kiln accepts, whose source is a gallery definition's latest version (none exists: a
# trigger on it resolves nothing and fetches nothing).
EXISTING_BODY = {"location": "westus2", "properties": {
    "source": {"type": "SharedImageVersion", "imageVersionId": f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/"
               "Microsoft.Compute/galleries/schema/images/base/versions/latest"},
    "customize": [{"type": "Shell", "name": "hello", "inline": ["echo hello"]}],
    "distribute": [{"type": "ManagedImage", "runOutputName": "out", "location": "westus2",
                    "imageId": f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.Compute/images/schema"}]}}
SPEC_P = "/subscriptions/{subscriptionId}/resourceGroups/{resourceGroupName}/providers/Microsoft.VirtualMachineImages/imageTemplates"


def _local_refs(value: Any) -> Any:
    if isinstance(value, dict):
        out = {k: _local_refs(v) for k, v in value.items()}
        ref = out.get("$ref")
        if isinstance(ref, str) and ref.startswith(COMMON):
            kind, name = ref.split("#/", 1)[1].split("/")
            out["$ref"] = f"#/{kind}/common_{name}"
        return out
    if isinstance(value, list):
        return [_local_refs(v) for v in value]
    return value


def spec() -> dict[str, Any]:
    raw = _local_refs(json.loads((conformance() / SPEC).read_text()))
    raw["definitions"].update(copy.deepcopy(COMMON_DEFINITIONS))
    raw.setdefault("parameters", {}).update(copy.deepcopy(COMMON_PARAMETERS))
    raw["definitions"]["ImageTemplateProperties"]["properties"].pop("autoRun")  # no generated build (see above)
    return raw


@pytest.fixture(scope="module")
def schema(server) -> Any:
    loaded = schemathesis.openapi.from_dict(spec())
    loaded.config.update(base_url=server.url)
    return loaded


@pytest.fixture(scope="module")
def auth(server) -> dict[str, str]:
    return {"Authorization": f"Bearer {server.token('schemathesis', SUB)}"}


@pytest.fixture
def existing(server, auth) -> str:
    """A template every generated request may name, made anew for each operation (a generated PATCH
    or DELETE may have changed or removed it)."""
    requests.delete(f"{server.url}{P}/{EXISTING}", params={"api-version": API_VERSION}, headers=auth, timeout=30)
    r = requests.put(f"{server.url}{P}/{EXISTING}", params={"api-version": API_VERSION}, json=EXISTING_BODY,
                     headers=auth, timeout=30)
    assert r.status_code in (200, 201), r.text
    r = requests.put(f"{server.url}{P}/{EXISTING}/triggers/{TRIGGER}", params={"api-version": API_VERSION},
                     json={"properties": {"kind": "SourceImage"}}, headers=auth, timeout=30)
    assert r.status_code == 201, r.text
    return EXISTING


def _operation(schema: Any, method: str, path: str) -> Any:
    return schema[path.replace("{P}", SPEC_P)][method]


def _definition(raw: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = raw["definitions"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


def _properties(raw: dict[str, Any], schema: dict[str, Any], value: dict[str, Any]) -> dict[str, Any]:
    """The properties a schema names, its allOf parents' included; a discriminated base type's are
    its subtype's (chosen by the value's discriminator, as the spec's x-ms-discriminator-value says)."""
    schema = _definition(raw, schema)
    props = dict(schema.get("properties", {}))
    for parent in schema.get("allOf", []):
        props.update(_properties(raw, parent, {}))
    if (key := schema.get("discriminator")) is not None:
        name = next((n for n, d in raw["definitions"].items() if d is schema), "")
        for sub in raw["definitions"].values():
            if sub.get("x-ms-discriminator-value") == value.get(key) and \
                    any(p.get("$ref", "").endswith(f"/{name}") for p in sub.get("allOf", [])):
                props.update(sub.get("properties", {}))
    return props


def _named_only(raw: dict[str, Any], schema: dict[str, Any], value: Any) -> Any:
    """`value` without the properties its schema does not name (kiln refuses those, naming each)."""
    schema = _definition(raw, schema)
    if isinstance(value, list):
        return [_named_only(raw, schema.get("items", {}), v) for v in value]
    if not isinstance(value, dict) or "additionalProperties" in schema:
        return value
    props = _properties(raw, schema, value)
    return {k: _named_only(raw, props[k], v) for k, v in value.items() if k in props}


def _kiln_can_build(raw: dict[str, Any]) -> Any:
    """Half the generated valid template bodies are made ones kiln can accept: only the properties
    the spec names (kiln refuses others, naming each), and a source, steps and a target kiln has
    (the rest stays as generated: vmProfile, optimize, validate, errorHandling, tags, identity...)."""

    def patch(pair: tuple[Any, bool]) -> Any:
        case, wanted = pair
        if wanted and isinstance(case.body, dict) and case.method.upper() == "PUT" and "triggers" in case.path:
            case.body = {"properties": {"kind": "SourceImage"}}  # the spec's one kind (its name is free text there)
        elif wanted and isinstance(case.body, dict) and case.method.upper() == "PUT":
            body = _named_only(raw, {"$ref": "#/definitions/ImageTemplate"}, case.body)
            props = body.get("properties") if isinstance(body.get("properties"), dict) else {}
            body["properties"] = {**props, **copy.deepcopy(EXISTING_BODY["properties"])}
            body["location"] = "westus2"
            case.body = body
        return case

    return patch


@pytest.mark.parametrize(("method", "path"), GENERATED, ids=[f"{m} {p.replace('{P}', '')}" for m, p in GENERATED])
def test_generated_requests_get_answers_that_conform(schema, server, auth, existing, method: str, path: str) -> None:
    operation = _operation(schema, method, path)
    session = requests.Session()
    modes = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    strategies = [operation.as_strategy(mode, **FIXED) for mode in modes]
    if "{imageTemplateName}" in path:  # as many again that name the template (and its trigger) that exist
        named = {**FIXED, "path_parameters": {**FIXED["path_parameters"], "imageTemplateName": existing}}
        strategies += [operation.as_strategy(mode, **named) for mode in modes]
        if "{triggerName}" in path:
            named["path_parameters"] = {**named["path_parameters"], "triggerName": TRIGGER}
            strategies += [operation.as_strategy(mode, **named) for mode in modes]
    strategy = st.tuples(st.one_of(strategies), st.booleans()).map(_kiln_can_build(schema.raw_schema))
    seen: collections.Counter[int] = collections.Counter()

    @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(case=strategy)
    def conforms(case: Any) -> None:
        response = case.call(base_url=server.url, session=session, headers=dict(auth))
        seen[response.status_code] += 1
        case.validate_response(response, checks=CHECKS)

    conforms()
    assert sum(seen.values()) >= 1, seen  # requests were really sent
    print(method, path, dict(seen))


def _check(schema: Any, server: Any, auth: dict[str, str], method: str, path: str, name: str,
           body: Any = None) -> requests.Response:
    """One request as a client sends it, its answer checked as the generated ones are."""
    operation = _operation(schema, method, path)
    kwargs = {"body": body} if body is not None else {}
    case = operation.Case(path_parameters={"subscriptionId": SUB, "resourceGroupName": RG, "imageTemplateName": name},
                          query={"api-version": API_VERSION}, **kwargs)
    url = f"{server.url}{P}/{name}{path.split('{imageTemplateName}', 1)[1]}"
    response = requests.request(method, url, params={"api-version": API_VERSION}, json=body, headers=auth, timeout=30)
    case.validate_response(response, checks=CHECKS)
    return response


def test_run_and_cancel_answers_conform(schema, server, auth) -> None:
    """A run (of a template whose build fails at once: Windows cannot be built here) and its cancel."""
    body = copy.deepcopy(EXISTING_BODY)
    body["properties"]["source"] = {"type": "PlatformImage", "publisher": "MicrosoftWindowsServer",
                                    "offer": "WindowsServer", "sku": "2022-datacenter-g2", "version": "latest"}
    body["properties"]["customize"] = [{"type": "PowerShell", "name": "hello", "inline": ["Write-Output hello"]}]
    assert _check(schema, server, auth, "PUT", "{P}/{imageTemplateName}", "schema-run", body).status_code == 201
    run = _check(schema, server, auth, "POST", "{P}/{imageTemplateName}/run", "schema-run")
    assert run.status_code == 202
    deadline = time.monotonic() + 120
    while requests.get(run.headers["Azure-AsyncOperation"], headers=auth, timeout=30).json()["status"] == "InProgress":
        assert time.monotonic() < deadline, "the run did not end"
        time.sleep(0.5)
    got = _check(schema, server, auth, "GET", "{P}/{imageTemplateName}", "schema-run")
    assert got.json()["properties"]["lastRunStatus"]["runState"] == "Failed"
    assert _check(schema, server, auth, "POST", "{P}/{imageTemplateName}/cancel", "schema-run").status_code == 409
    assert _check(schema, server, auth, "DELETE", "{P}/{imageTemplateName}", "schema-run").status_code == 202


def test_a_template_put_back_as_get_answered_it_is_the_same_template(schema, server, auth, existing) -> None:
    """What a GET answers (read-only fields, identity {type: None} for none) PUT back changes nothing: 200."""
    got = _check(schema, server, auth, "GET", "{P}/{imageTemplateName}", existing).json()
    again = _check(schema, server, auth, "PUT", "{P}/{imageTemplateName}", existing, got)
    assert again.status_code == 200, again.text
    assert again.json()["identity"] == {"type": "None"}
