"""Semantic checks: what the schema cannot say, each with its JSON path and a hint.

These run on the normalized template (2025-10-01 shape) after the schema, and are written to
survive a template the schema already rejected: every check looks at the types it needs and
stays silent otherwise, so one mistake is reported once.

Which apiVersion forbade what: a gallery source of `.../versions/latest` is evaluated at build
time only since 2022-07-01 (the API's description of `imageVersionId` says so from that version
on; 2022-02-14 and earlier name a concrete version), so older templates must name a version.
The ISO source exists only in 2019-05-01-preview.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Iterator
from functools import cache
from importlib import resources
from typing import Any

from kiln import ids
from kiln.config import Config
from kiln.template.model import WINDOWS_ONLY_STEPS, is_windows_publisher
from kiln.template.normalize import ISO_UNTIL, api_key
from kiln.template.paths import JsonPath
from kiln.template.schema import Finding

LATEST_SOURCE_SINCE = "2022-07-01"
RUN_OUTPUT_NAME = re.compile(r"^[A-Za-z0-9\-_.]{1,64}$")
SHA256 = re.compile(r"^[0-9A-Fa-f]{64}$")
# Go durations, as Packer's windows-restart takes them: 5m, 2h, 1h30m, 90s.
DURATION = re.compile(r"^(\d+(\.\d+)?(ns|us|µs|ms|s|m|h))+$")


@cache
def azure_regions() -> tuple[str, ...]:
    text = resources.files("kiln.template").joinpath("azure_regions.json").read_text()
    return tuple(json.loads(text)["regions"])


def allowed_locations(config: Config | None) -> tuple[str, ...]:
    if config is not None and config.allowed_locations:
        return config.allowed_locations
    return azure_regions()


def location_key(name: str) -> str:
    """Azure accepts 'West US 2' for 'westus2'."""
    return name.replace(" ", "").lower()


def check(data: dict[str, Any], api_version: str, config: Config | None = None) -> list[Finding]:
    """Every semantic problem of one normalized template."""
    props = data.get("properties")
    props = props if isinstance(props, dict) else {}
    found: list[Finding] = []
    found += _check_location(data.get("location"), ("location",), config)
    found += _check_source(props.get("source"), api_version)
    found += _check_steps(props.get("customize"), ("properties", "customize"), _is_linux(props.get("source")))
    validate = props.get("validate")
    if isinstance(validate, dict):
        found += _check_steps(validate.get("inVMValidations"), ("properties", "validate", "inVMValidations"), False)
    found += _check_distribute(props, config)
    found += _check_identity(data.get("identity"))
    found += _check_vm_profile(props.get("vmProfile"))
    optimize = props.get("optimize")
    workload = optimize.get("workload") if isinstance(optimize, dict) else None
    if isinstance(workload, dict):
        found += _check_sha(workload.get("sha256Checksum"), ("properties", "optimize", "workload", "sha256Checksum"))
    return found


def _items(value: Any) -> Iterator[tuple[int, dict[str, Any]]]:
    for i, item in enumerate(value if isinstance(value, list) else []):
        if isinstance(item, dict):
            yield i, item


def _check_location(value: Any, path: JsonPath, config: Config | None) -> list[Finding]:
    if not isinstance(value, str) or not value:
        return []
    allowed = allowed_locations(config)
    if location_key(value) in {location_key(a) for a in allowed}:
        return []
    close = difflib.get_close_matches(location_key(value), list(allowed), n=3, cutoff=0.7)
    hint = f"did you mean {' or '.join(close)}?" if close else (
        f"allowed locations: {', '.join(allowed[:12])}{', ...' if len(allowed) > 12 else ''}")
    if value.startswith("[") and value.endswith("]"):
        hint = "ARM expressions are evaluated only in a deployment template (one with a 'resources' list)"
    elif value.startswith("<") or value.startswith("{"):
        hint = "replace the placeholder with a region name, e.g. westus2"
    return [Finding(path, f"location {value!r} is not a known region", hint)]


def _is_linux(source: Any) -> bool:
    """True only when the source is known to be Linux; a managed or gallery image's OS is the store's to say."""
    if not isinstance(source, dict):
        return False
    if source.get("type") == "ISO":
        return True
    if source.get("type") == "PlatformImage":
        publisher, offer = source.get("publisher"), source.get("offer")
        return isinstance(publisher, str) and isinstance(offer, str) and not is_windows_publisher(publisher, offer)
    return False


def _check_id(value: Any, kind: str, path: JsonPath, what: str) -> list[Finding]:
    if not isinstance(value, str):
        return []
    rid = ids.try_parse(value)
    if rid is not None and rid.kind.lower() == kind.lower():
        return []
    got = f"it is a {rid.kind} id" if rid is not None else "it is not a resource id"
    return [Finding(path, f"{what} {value!r} is malformed ({got})", f"expected the form {ids.example(kind)}")]


def _check_sha(value: Any, path: JsonPath) -> list[Finding]:
    if not isinstance(value, str) or value == "" or SHA256.match(value):
        return []
    return [Finding(path, f"sha256Checksum {value!r} is not 64 hexadecimal digits",
                    "compute it with: sha256sum FILE")]


def _check_source(source: Any, api_version: str) -> list[Finding]:
    if not isinstance(source, dict):
        return []
    base: JsonPath = ("properties", "source")
    kind = source.get("type")
    found: list[Finding] = []
    if kind == "ManagedImage":
        found += _check_id(source.get("imageId"), ids.IMAGE, (*base, "imageId"), "managed image id")
    elif kind == "SharedImageVersion":
        version_id = source.get("imageVersionId")
        found += _check_id(version_id, ids.GALLERY_IMAGE_VERSION, (*base, "imageVersionId"), "image version id")
        rid = ids.try_parse(version_id) if isinstance(version_id, str) else None
        if rid is not None and rid.name.lower() == "latest" and api_key(api_version) < LATEST_SOURCE_SINCE:
            found.append(Finding((*base, "imageVersionId"),
                                 f"apiVersion {api_version} does not accept 'latest' as a source image version",
                                 f"name a version (…/versions/1.0.0) or use apiVersion {LATEST_SOURCE_SINCE} or later"))
    elif kind == "ISO":
        found += _check_sha(source.get("sha256Checksum"), (*base, "sha256Checksum"))
        if api_key(api_version) > api_key(ISO_UNTIL):
            found.append(Finding((*base, "type"), f"the ISO source does not exist in apiVersion {api_version}",
                                 f"use apiVersion {ISO_UNTIL}, or a PlatformImage source"))
    return found


def _check_steps(steps: Any, base: JsonPath, linux_source: bool) -> list[Finding]:
    found: list[Finding] = []
    seen: dict[str, int] = {}
    for i, step in _items(steps):
        path = (*base, i)
        kind = step.get("type")
        name = step.get("name")
        if isinstance(name, str) and name:
            if name.lower() in seen:
                found.append(Finding((*path, "name"), f"name {name!r} is already used by step {seen[name.lower()]}",
                                     "give every step a unique name"))
            else:
                seen[name.lower()] = i
        if kind in ("Shell", "PowerShell"):
            has_uri = isinstance(step.get("scriptUri"), str) and step.get("scriptUri") != ""
            has_inline = "inline" in step and step.get("inline") is not None
            if has_uri == has_inline:
                where = (*path, "inline") if has_inline else path
                what = "both 'scriptUri' and 'inline'" if has_uri else "neither 'scriptUri' nor 'inline'"
                found.append(Finding(where, f"a {kind} step needs exactly one of 'scriptUri' or 'inline'; it has {what}",
                                     "keep the script URI or the list of commands, not both" if has_uri
                                     else "add \"inline\": [\"command\", ...] or \"scriptUri\": \"https://...\""))
            found += _check_sha(step.get("sha256Checksum"), (*path, "sha256Checksum"))
            if kind == "PowerShell" and step.get("runAsSystem") is True and step.get("runElevated") is not True:
                found.append(Finding((*path, "runAsSystem"), "runAsSystem needs runElevated",
                                     "add \"runElevated\": true"))
        elif kind == "File":
            for key in ("sourceUri", "destination"):
                if step.get(key) in (None, ""):  # a wrong type is the schema's to report
                    found.append(Finding((*path, key), f"a File step needs {key!r}",
                                         "give the file's URI and the absolute path it goes to"))
            found += _check_sha(step.get("sha256Checksum"), (*path, "sha256Checksum"))
        elif kind == "WindowsRestart":
            timeout = step.get("restartTimeout")
            if isinstance(timeout, str) and not DURATION.match(timeout):
                found.append(Finding((*path, "restartTimeout"), f"restartTimeout {timeout!r} is not a duration",
                                     "a magnitude and a unit, such as '5m' or '2h'"))
        if kind in WINDOWS_ONLY_STEPS and linux_source:
            found.append(Finding((*path, "type"), f"{kind} runs only on Windows, and the source image is Linux",
                                 "remove the step, or start from a Windows image"))
    return found


def _check_distribute(props: dict[str, Any], config: Config | None) -> list[Finding]:
    base: JsonPath = ("properties", "distribute")
    targets = props.get("distribute")
    found: list[Finding] = []
    validate = props.get("validate")
    source_only = isinstance(validate, dict) and validate.get("sourceValidationOnly") is True
    if isinstance(targets, list) and not targets and not source_only:
        found.append(Finding(base, "there is no distribution target",
                             "add a ManagedImage, SharedImage or VHD target"))
    seen: dict[str, int] = {}
    for i, target in _items(targets):
        path = (*base, i)
        name = target.get("runOutputName")
        if isinstance(name, str) and RUN_OUTPUT_NAME.match(name):
            if name.lower() in seen:
                found.append(Finding((*path, "runOutputName"),
                                     f"runOutputName {name!r} is already used by distribute[{seen[name.lower()]}]",
                                     "every target needs its own run output name"))
            else:
                seen[name.lower()] = i
        kind = target.get("type")
        if kind == "ManagedImage":
            found += _check_id(target.get("imageId"), ids.IMAGE, (*path, "imageId"), "managed image id")
        elif kind == "SharedImage":
            found += _check_id(target.get("galleryImageId"), ids.GALLERY_IMAGE, (*path, "galleryImageId"),
                               "gallery image id")
            if "storageAccountType" in target:
                found.append(Finding((*path, "storageAccountType"),
                                     "storageAccountType goes with the deprecated replicationRegions only",
                                     "set storageAccountType on each entry of targetRegions"))
            for j, region in _items(target.get("targetRegions")):
                found += _check_location(region.get("name"), (*path, "targetRegions", j, "name"), config)
    return found


def _check_identity(identity: Any) -> list[Finding]:
    if not isinstance(identity, dict):
        return []
    base: JsonPath = ("identity",)
    users = identity.get("userAssignedIdentities")
    users = users if isinstance(users, dict) else {}
    found: list[Finding] = []
    if len(users) > 1:
        found.append(Finding((*base, "userAssignedIdentities"),
                             f"an image template takes at most one user-assigned identity, this one has {len(users)}",
                             "keep one; give the build VM more with vmProfile.userAssignedIdentities"))
    for key in users:
        found += _check_id(key, ids.USER_ASSIGNED_IDENTITY, (*base, "userAssignedIdentities", key), "identity id")
    kind = identity.get("type")
    if kind == "UserAssigned" and not users and isinstance(identity.get("userAssignedIdentities", {}), dict):
        found.append(Finding((*base, "userAssignedIdentities"), "identity type UserAssigned needs an identity",
                             "add \"userAssignedIdentities\": {\"/subscriptions/.../userAssignedIdentities/NAME\": {}}"))
    if kind == "None" and users:
        found.append(Finding((*base, "type"), "identity type None cannot carry user-assigned identities",
                             "set type to UserAssigned, or remove userAssignedIdentities"))
    return found


def _check_vm_profile(profile: Any) -> list[Finding]:
    if not isinstance(profile, dict):
        return []
    base: JsonPath = ("properties", "vmProfile")
    found: list[Finding] = []
    users = profile.get("userAssignedIdentities")
    for i, value in enumerate(users if isinstance(users, list) else []):
        found += _check_id(value, ids.USER_ASSIGNED_IDENTITY, (*base, "userAssignedIdentities", i), "identity id")
    vnet = profile.get("vnetConfig")
    if isinstance(vnet, dict):
        if vnet.get("containerInstanceSubnetId") and not vnet.get("subnetId"):
            found.append(Finding((*base, "vnetConfig", "containerInstanceSubnetId"),
                                 "containerInstanceSubnetId needs subnetId", "add the build VM's subnetId"))
        if vnet.get("containerInstanceSubnetId") and vnet.get("proxyVmSize"):
            found.append(Finding((*base, "vnetConfig", "proxyVmSize"),
                                 "proxyVmSize cannot be given with containerInstanceSubnetId",
                                 "no proxy VM is deployed with a container instance subnet; remove proxyVmSize"))
    return found
