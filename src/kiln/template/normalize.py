"""One shape for every apiVersion: old spellings folded into the 2025-10-01 REST shape.

Image templates have been written against every API version from 2019-05-01-preview to
2025-10-01. Before 2024-02-01 Azure matched property names and discriminator values without
regard to case and ignored properties it did not know; since then it is strict. So for a legacy
apiVersion kiln folds `imageVersionID` into `imageVersionId`, `sourceURI` into `sourceUri`,
`shell` into `Shell`, and the schema stage drops unknown-property errors; for a current one the
same spellings are errors with a "did you mean" hint.

Old forms folded for every version: `replicationRegions` (+ the distributor's
`storageAccountType`) becomes `targetRegions`, as the model keeps only that; preview templates'
`valid_exit_codes` becomes `validExitCodes`.

Renaming keys would make error paths point at names the user never wrote, so every rename is
recorded in an `Origin` map (normalized path -> path as written) that the loader applies to each
problem's path.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from kiln.template.paths import JsonPath
from kiln.template.schema import Finding, schema

API_VERSIONS = (
    "2019-05-01-preview",
    "2020-02-14",
    "2021-10-01",
    "2022-02-14",
    "2022-07-01",
    "2023-07-01",
    "2024-02-01",
    "2025-10-01",
)
LATEST_API = API_VERSIONS[-1]
STRICT_SINCE = "2024-02-01"  # case-sensitive names, unknown properties rejected
ISO_UNTIL = "2019-05-01-preview"  # the last API with the ISO source
PREVIEW_EXIT_CODES_UNTIL = "2019-05-01-preview"  # `valid_exit_codes`

# Maps whose keys are the user's (tags, identities), never renamed.
_FREE_FORM = frozenset({"tags", "artifactTags", "managedResourceTags", "userAssignedIdentities"})
# Where a discriminator value may need its case folded: (parent key, discriminator, union name)
_UNIONS = {"source": "Source", "customize": "Customizer", "inVMValidations": "InVMValidator",
           "distribute": "Distributor", "versioning": "Versioning"}


def api_key(api_version: str) -> str:
    """Comparable form: previews sort before the release of the same date."""
    return api_version[:10]


def is_legacy(api_version: str) -> bool:
    return api_key(api_version) < STRICT_SINCE


@dataclass
class Origin:
    """Normalized path -> the path the user wrote, for every renamed or moved value."""

    renames: dict[JsonPath, JsonPath] = field(default_factory=dict)

    def add(self, normalized: JsonPath, written: JsonPath) -> None:
        self.renames[normalized] = self.original(written)

    def original(self, path: JsonPath) -> JsonPath:
        for cut in range(len(path), 0, -1):
            head = path[:cut]
            if head in self.renames:
                return self.renames[head] + path[cut:]
        return path


def _property_names() -> dict[str, str]:
    """Every property name in the schema, by its lower-case form."""
    names: dict[str, str] = {}

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, sub in node.get("properties", {}).items():
                names.setdefault(key.lower(), key)
                walk(sub)
            for key, sub in node.items():
                if key != "properties":
                    walk(sub)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(schema())
    return names


def _union_values(union: str) -> dict[str, str]:
    values = schema()["$defs"][union]["properties"]
    (disc,) = values
    return {v.lower(): v for v in values[disc]["enum"]}


@dataclass
class Normalized:
    data: dict[str, Any]
    api_version: str
    origin: Origin
    findings: list[Finding]


def normalize(resource: dict[str, Any], api_version: str) -> Normalized:
    """Fold `resource` (already free of ARM expressions) into the 2025-10-01 shape."""
    data = copy.deepcopy(resource)
    origin = Origin()
    findings: list[Finding] = []
    if is_legacy(api_version):
        data = _fold_case(data, (), origin, _property_names(), parent="")
    props = data.get("properties")
    if isinstance(props, dict):
        _fold_distribute(props, origin, findings)
        if api_key(api_version) <= api_key(PREVIEW_EXIT_CODES_UNTIL):
            for list_key, items in (("customize", props.get("customize")),
                                    ("inVMValidations", _get(props, "validate", "inVMValidations"))):
                base: JsonPath = ("properties", list_key) if list_key == "customize" else (
                    "properties", "validate", "inVMValidations")
                for i, step in enumerate(items if isinstance(items, list) else []):
                    if isinstance(step, dict) and "valid_exit_codes" in step and "validExitCodes" not in step:
                        step["validExitCodes"] = step.pop("valid_exit_codes")
                        origin.add((*base, i, "validExitCodes"), (*base, i, "valid_exit_codes"))
    return Normalized(data, api_version, origin, findings)


def _get(node: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(node, dict):
            return None
        node = node.get(key)
    return node


def _fold_case(node: Any, path: JsonPath, origin: Origin, names: dict[str, str], parent: str) -> Any:
    if isinstance(node, list):
        return [_fold_case(v, (*path, i), origin, names, parent) for i, v in enumerate(node)]
    if not isinstance(node, dict):
        return node
    free = parent in _FREE_FORM
    out: dict[str, Any] = {}
    for key, value in node.items():
        canon = key if free or not isinstance(key, str) else names.get(key.lower(), key)
        if canon in out:  # both spellings given: keep the user's keys apart so the schema sees both
            canon = key
        if canon != key:
            origin.add((*path, canon), (*path, key))
        out[canon] = _fold_case(value, (*path, canon), origin, names, canon)
    union = _UNIONS.get(parent)
    if union and not free:
        disc = "scheme" if union == "Versioning" else "type"
        value = out.get(disc)
        if isinstance(value, str):
            out[disc] = _union_values(union).get(value.lower(), value)
    return out


def _fold_distribute(props: dict[str, Any], origin: Origin, findings: list[Finding]) -> None:
    targets = props.get("distribute")
    for i, target in enumerate(targets if isinstance(targets, list) else []):
        if not isinstance(target, dict) or "replicationRegions" not in target:
            continue
        base: JsonPath = ("properties", "distribute", i)
        if "targetRegions" in target:
            findings.append(Finding((*base, "replicationRegions"),
                                    "give either targetRegions or the deprecated replicationRegions, not both",
                                    "move the regions into targetRegions: [{\"name\": \"westus2\"}]"))
            continue
        regions = target["replicationRegions"]
        if not isinstance(regions, list):
            continue  # the schema reports the wrong type at replicationRegions
        storage = target.pop("storageAccountType", None)
        converted: list[Any] = []
        for j, name in enumerate(regions):
            region: dict[str, Any] = {"name": name}
            if storage is not None:
                region["storageAccountType"] = storage
                origin.add((*base, "targetRegions", j, "storageAccountType"), (*base, "storageAccountType"))
            origin.add((*base, "targetRegions", j, "name"), (*base, "replicationRegions", j))
            origin.add((*base, "targetRegions", j), (*base, "replicationRegions", j))
            converted.append(region)
        del target["replicationRegions"]
        target["targetRegions"] = converted
        origin.add((*base, "targetRegions"), (*base, "replicationRegions"))
