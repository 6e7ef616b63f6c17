"""DevTest Labs golden images: a lab VM ARM template plus artifacts, as one `ImageTemplate`.

The DevTest Labs image factory describes a golden image as the ARM template that would create a lab
VM (`Microsoft.DevTestLab/labs/virtualmachines`): `galleryImageReference` names the Marketplace
image, `artifacts` lists what to install, `notes` describes it. kiln reads that unchanged and turns
it into the same frozen `ImageTemplate` an AIB template becomes, so the build pipeline runs both:

- `galleryImageReference` → a PlatformImage source (its `osType` decides Linux or Windows);
- each artifact → a File step per file of the artifact's folder (checksummed when the template is
  read, so a file changed mid-build is caught) into `/tmp/kiln-artifacts/<name>/`, then a Shell
  step that runs its `commandToExecute` there (a PowerShell step for Windows artifacts);
- `notes` → the description the custom images carry.

Artifacts come from a local artifact repository in DevTest Labs' own layout: `<name>/Artifactfile.json`
beside the files it runs. The artifact's parameters are checked as DevTest Labs would (unknown
names, missing values, `allowedValues`, `allowEmpty`), and `commandToExecute` is an ARM expression
evaluated with those values. Every problem is collected with its file and JSON path.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kiln.errors import Problem
from kiln.template.arm import ArmError, Deployment, Scope, evaluate_string, evaluate_value
from kiln.template.model import FileStep, ImageTemplate, PlatformImageSource, PowerShellStep, ShellStep
from kiln.template.paths import JsonPath, render

VM_TYPE = "microsoft.devtestlab/labs/virtualmachines"
ARTIFACT_FILE = "Artifactfile.json"
STAGE = "/tmp/kiln-artifacts"
# What the image factory passes to every golden image template; other parameters need a default.
FACTORY_PARAMETERS = {"newVMName": "", "labName": "", "size": "Standard_D2s_v3", "userName": "kiln", "password": ""}


@dataclass(frozen=True)
class ArtifactParameter:
    name: str
    type: str = "string"
    default: Any = None
    allowed: tuple[Any, ...] | None = None
    allow_empty: bool = False


@dataclass(frozen=True)
class Artifact:
    """One artifact definition from a repository folder."""

    name: str
    folder: Path
    title: str
    target_os: str  # Linux | Windows
    parameters: tuple[ArtifactParameter, ...]
    command: Any  # the raw commandToExecute (an ARM expression string)
    file_uris: Any = None  # runAzureVMExtension.settings.fileUris, when the artifact uses that form

    @property
    def file(self) -> Path:
        return self.folder / ARTIFACT_FILE

    def files(self) -> list[Path]:
        """The files the artifact's command may use: everything in its folder but the definition."""
        return sorted(p for p in self.folder.rglob("*") if p.is_file() and p.name != ARTIFACT_FILE)


def is_dtl_vm_template(data: Any) -> bool:
    return isinstance(data, dict) and isinstance(data.get("resources"), list) and any(
        isinstance(r, dict) and str(r.get("type", "")).lower() == VM_TYPE for r in data["resources"])


def find_artifact(repos: tuple[Path, ...], name: str) -> Path | None:
    for repo in repos:
        if not repo.is_dir():
            continue
        # DevTest Labs matches artifact names case-insensitively.
        for candidate in (repo / name, *(p for p in repo.iterdir() if p.name.lower() == name.lower())):
            if (candidate / ARTIFACT_FILE).is_file():
                return candidate
    return None


def load_artifact(folder: Path, problems: list[Problem]) -> Artifact | None:
    file = str(folder / ARTIFACT_FILE)
    try:
        data = json.loads((folder / ARTIFACT_FILE).read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        problems.append(Problem(f"cannot read the artifact definition: {e}", "", file, "fix the Artifactfile.json"))
        return None
    if not isinstance(data, dict):
        problems.append(Problem("an artifact definition is a JSON object", "", file))
        return None
    before = len(problems)
    target = data.get("targetOsType")
    if target not in ("Linux", "Windows"):
        problems.append(Problem(f"targetOsType {json.dumps(target)} is not Linux or Windows", ".targetOsType", file))
    params: list[ArtifactParameter] = []
    raw_params = data.get("parameters") or {}
    if not isinstance(raw_params, dict):
        problems.append(Problem("parameters must be an object", ".parameters", file))
        raw_params = {}
    for pname, spec in raw_params.items():
        if not isinstance(spec, dict):
            problems.append(Problem(f"parameter {pname!r} must be an object", render(("parameters", pname)), file))
            continue
        allowed = spec.get("allowedValues")
        params.append(ArtifactParameter(pname, str(spec.get("type", "string")).lower(), spec.get("defaultValue"),
                                        tuple(allowed) if isinstance(allowed, list) else None,
                                        bool(spec.get("allowEmpty", False))))
    command, file_uris = None, None
    if isinstance(data.get("runCommand"), dict):
        command = data["runCommand"].get("commandToExecute")
    elif isinstance(data.get("runAzureVMExtension"), dict):
        settings = data["runAzureVMExtension"].get("settings") or {}
        command, file_uris = settings.get("commandToExecute"), settings.get("fileUris")
    if not isinstance(command, str) or not command.strip():
        problems.append(Problem("the artifact has no runCommand.commandToExecute", ".runCommand.commandToExecute", file,
                                "DevTest Labs artifacts run a command: add runCommand.commandToExecute"))
    if len(problems) != before:
        return None
    return Artifact(folder.name, folder, str(data.get("title", folder.name)), str(target), tuple(params), command, file_uris)


def _artifact_name(artifact_id: str) -> str:
    """The artifact's folder name: the segment after the last `artifacts/` of its id."""
    parts = [p for p in artifact_id.split("/") if p]
    lowered = [p.lower() for p in parts]
    if "artifacts" in lowered:
        at = len(lowered) - 1 - lowered[::-1].index("artifacts")
        if at + 1 < len(parts):
            return parts[at + 1]
    return parts[-1] if parts else ""


def _arg_values(artifact: Artifact, given: Any, file: str, path: JsonPath, problems: list[Problem]) -> dict[str, Any] | None:
    values: dict[str, Any] = {}
    if given is None:
        given = []
    if not isinstance(given, list):
        problems.append(Problem("artifact parameters must be an array of {name, value}", render(path), file))
        return None
    before = len(problems)
    by_name = {p.name.lower(): p for p in artifact.parameters}
    for i, item in enumerate(given):
        ipath = render((*path, i))
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            problems.append(Problem("an artifact parameter is {\"name\": ..., \"value\": ...}", ipath, file))
            continue
        spec = by_name.get(item["name"].lower())
        if spec is None:
            known = ", ".join(p.name for p in artifact.parameters) or "none"
            problems.append(Problem(f"artifact {artifact.name!r} has no parameter {item['name']!r}", f"{ipath}.name", file,
                                    f"its parameters: {known}"))
            continue
        values[spec.name] = item.get("value")
    for spec in artifact.parameters:
        value = values.get(spec.name, spec.default)
        where = f"{render(path)} ({spec.name})"
        if value is None or (value == "" and not spec.allow_empty):
            if value is None and spec.allow_empty:
                value = ""
            else:
                problems.append(Problem(f"artifact {artifact.name!r} needs a value for parameter {spec.name!r}", where, file,
                                        f"add {{\"name\": \"{spec.name}\", \"value\": ...}} to the artifact's parameters"))
                continue
        if spec.allowed is not None and value not in spec.allowed and str(value) not in [str(a) for a in spec.allowed]:
            problems.append(Problem(f"artifact {artifact.name!r}: {spec.name} = {json.dumps(value)} is not allowed", where, file,
                                    f"allowed values: {', '.join(json.dumps(a) for a in spec.allowed)}"))
            continue
        values[spec.name] = value
    return values if len(problems) == before else None


def artifact_steps(artifact: Artifact, values: dict[str, Any], image_os: str, file: str, path: JsonPath,
                   problems: list[Problem]) -> list[Any]:
    """The File + Shell (or PowerShell) steps that apply one artifact."""
    from kiln.fetch import sha256_file

    where = render(path)
    if artifact.target_os != image_os:
        hint = ("Windows artifacts need a Windows image, which cannot be built on this host"
                if artifact.target_os == "Windows" else "use a Linux image for Linux artifacts")
        problems.append(Problem(f"artifact {artifact.name!r} is a {artifact.target_os} artifact; this image is {image_os}",
                                where, file, hint))
        return []
    scope = Scope(parameters=values, variables={})
    try:
        command = evaluate_string(artifact.command, scope)
        uris = evaluate_value(artifact.file_uris, scope) if artifact.file_uris is not None else []
    except ArmError as e:
        problems.append(Problem(f"artifact {artifact.name!r}: commandToExecute: {e.message}", ".runCommand.commandToExecute",
                                str(artifact.file), e.hint))
        return []
    if not isinstance(command, str):
        problems.append(Problem(f"artifact {artifact.name!r}: commandToExecute is not a string", ".runCommand.commandToExecute",
                                str(artifact.file)))
        return []
    stage = f"{STAGE}/{artifact.name}"
    steps: list[Any] = []
    for f in artifact.files():
        rel = f.relative_to(artifact.folder).as_posix()
        steps.append(FileStep(name=f"artifact {artifact.name}: {rel}", source_uri=str(f.absolute()),
                              destination=f"{stage}/{rel}", sha256_checksum=sha256_file(f)))
    for uri in uris if isinstance(uris, list) else [uris]:
        steps.append(FileStep(name=f"artifact {artifact.name}: {uri}", source_uri=str(uri), destination=f"{stage}/"))
    if artifact.target_os == "Windows":
        steps.append(PowerShellStep(name=f"artifact {artifact.name}", inline=(f"Set-Location '{stage}'", command)))
    else:
        steps.append(ShellStep(name=f"artifact {artifact.name}",
                               inline=(f"mkdir -p {stage}", f"cd {stage}", command, "cd /", f"rm -rf {stage}")))
    return steps


@dataclass(frozen=True)
class DtlGolden:
    template: ImageTemplate
    os_type: str
    description: str
    tags: dict[str, str]


def convert_vm_template(data: dict[str, Any], *, file: str, name: str, lab_name: str, location: str,
                        repos: tuple[Path, ...], problems: list[Problem]) -> DtlGolden | None:
    """A DevTest Labs VM ARM template → the golden image's template (None if it has problems)."""
    before = len(problems)
    vms = [(i, r) for i, r in enumerate(data["resources"]) if isinstance(r, dict) and str(r.get("type", "")).lower() == VM_TYPE]
    if len(vms) != 1:
        problems.append(Problem(f"a golden image holds one lab virtual machine, this file holds {len(vms)}", ".resources", file))
        return None
    index, vm = vms[0]
    base: JsonPath = ("resources", index)
    declared = data.get("parameters") or {}
    values: dict[str, Any] = {}
    missing = []
    for pname, spec in declared.items() if isinstance(declared, dict) else ():
        known = {k.lower(): v for k, v in FACTORY_PARAMETERS.items()}
        if pname.lower() in known:
            values[pname] = {"newvmname": name, "labname": lab_name}.get(pname.lower(), known[pname.lower()])
        elif isinstance(spec, dict) and "defaultValue" in spec:
            values[pname] = spec["defaultValue"]
        else:
            missing.append(pname)
    scope = Scope(parameters=values, variables=data.get("variables") or {},
                  deployment=Deployment(location=location), missing=frozenset(missing))
    props = vm.get("properties")
    if not isinstance(props, dict):
        problems.append(Problem("the virtual machine has no properties", render((*base, "properties")), file))
        return None

    def value(key: str) -> Any:
        try:
            return evaluate_value(props.get(key), scope)
        except ArmError as e:
            problems.append(Problem(e.message, render((*base, "properties", key)), file, e.hint))
            return None

    ref = value("galleryImageReference")
    ref_path = render((*base, "properties", "galleryImageReference"))
    source = None
    os_type = "Linux"
    if not isinstance(ref, dict):
        if "galleryImageReference" not in props:
            problems.append(Problem("the virtual machine has no galleryImageReference", ref_path, file,
                                    "kiln builds golden images from Marketplace (platform) images: add galleryImageReference"))
    else:
        for key in ("publisher", "offer", "sku"):
            if not isinstance(ref.get(key), str) or not ref[key]:
                problems.append(Problem(f"galleryImageReference.{key} is missing", f"{ref_path}.{key}", file))
        os_type = str(ref.get("osType") or "Linux")
        if os_type not in ("Linux", "Windows"):
            problems.append(Problem(f"osType {os_type!r} is not Linux or Windows", f"{ref_path}.osType", file))
        if len(problems) == before:
            source = PlatformImageSource(publisher=ref["publisher"], offer=ref["offer"], sku=ref["sku"],
                                         version=str(ref.get("version") or "latest"))
    notes = value("notes")
    steps: list[Any] = []
    raw_artifacts = props.get("artifacts") or []
    art_path: JsonPath = (*base, "properties", "artifacts")
    if not isinstance(raw_artifacts, list):
        problems.append(Problem("artifacts must be an array", render(art_path), file))
        raw_artifacts = []
    for i, item in enumerate(raw_artifacts):
        ipath: JsonPath = (*art_path, i)
        if not isinstance(item, dict):
            problems.append(Problem("an artifact is {\"artifactId\": ..., \"parameters\": [...]}", render(ipath), file))
            continue
        try:
            artifact_id = evaluate_value(item.get("artifactId"), scope)
            given = evaluate_value(item.get("parameters"), scope)
        except ArmError as e:
            problems.append(Problem(e.message, render(ipath), file, e.hint))
            continue
        aname = _artifact_name(artifact_id) if isinstance(artifact_id, str) else ""
        folder = find_artifact(repos, aname) if aname else None
        if folder is None:
            shown = ", ".join(str(r) for r in repos) or "(none configured)"
            problems.append(Problem(f"artifact {aname or artifact_id!r} is not in the artifact repository",
                                    render((*ipath, "artifactId")), file,
                                    f"put <name>/{ARTIFACT_FILE} and its files in one of: {shown}"))
            continue
        artifact = load_artifact(folder, problems)
        if artifact is None:
            continue
        args = _arg_values(artifact, given, file, (*ipath, "parameters"), problems)
        if args is not None:
            steps += artifact_steps(artifact, args, os_type, file, ipath, problems)
    raw_tags = vm.get("tags") or {}
    tags = {str(k): str(v) for k, v in raw_tags.items()} if isinstance(raw_tags, dict) else {}
    if len(problems) != before or source is None:
        return None
    template = ImageTemplate(name=name, api_version="2025-10-01", location=location, source=source, distribute=(),
                             customize=tuple(steps), tags=tags, file=file)
    return DtlGolden(template, os_type, notes if isinstance(notes, str) else "", tags)
