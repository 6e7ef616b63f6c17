"""The image factory's configuration folder, read and checked as a whole.

    CONFIG_DIR/
      GoldenImages/**.json     one golden image per file: a kiln/AIB image template, or a DevTest
                               Labs VM ARM template (kiln.factory.dtl)
      Labs.json                {"Labs": [{"SubscriptionId", "ResourceGroup", "LabName", "ImagePaths": [...]}]}
      Artifacts/               (optional) a DevTest Labs artifact repository: <name>/Artifactfile.json

A golden image is known by its ImagePath: its path relative to GoldenImages, with `/` (the
factory's PowerShell wrote `\\`; both are read). A lab's ImagePath names one file or a folder (every
golden image below it), matched by whole path segments (`Win2016` does not select `Win2016R2/...`).

`load_factory` returns a frozen `Factory` or raises `ValidationFailed` with every problem at once:
malformed files, duplicate labs, ImagePaths that match nothing or escape the folder. Commands that
delete (retire) run only on a configuration that loads cleanly, so a broken configuration never
deletes anything.

`load_labs` is what distribution reads: Labs.json, checked exactly as `load_factory` checks it,
and which golden images exist, each file read as JSON but not compiled into a template.
Distribution publishes images that are already built and boot-tested, so their templates do not
change what it publishes (building checks them in full); a configuration that is half edited
(a golden file that does not parse, Labs.json naming a path that does not exist) still stops it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Literal

from kiln import ids
from kiln.config import Config
from kiln.errors import Problem, ValidationFailed
from kiln.ids import ResourceId
from kiln.jsonfile import read_json

if TYPE_CHECKING:
    # The template compiler is imported where it is used (`_load_one`): it is most of kiln's
    # start-up time, and `load_labs` needs none of it.
    from kiln.template.model import ImageTemplate

GOLDEN_DIR = "GoldenImages"
LABS_FILE = "Labs.json"
ARTIFACTS_DIR = "Artifacts"


@dataclass(frozen=True)
class GoldenImage:
    image_path: str  # "Debian/web.json", relative to GoldenImages, with '/'
    file: Path
    form: Literal["aib", "dtl"]
    template: ImageTemplate
    os_type: str
    description: str
    os_state: str = "Generalized"  # tag osState: Specialized saves without deprovisioning metadata


@dataclass(frozen=True)
class LabSpec:
    id: ResourceId
    image_paths: tuple[str, ...]
    index: int  # position in Labs.json, for messages

    def selects(self, image_path: str) -> bool:
        return any(path_selects(p, image_path) for p in self.image_paths)


@dataclass(frozen=True)
class Factory:
    root: Path
    golden_images: tuple[GoldenImage, ...]
    labs: tuple[LabSpec, ...]
    artifact_repos: tuple[Path, ...]

    @property
    def golden_dir(self) -> Path:
        return self.root / GOLDEN_DIR

    def golden(self, image_path: str) -> GoldenImage | None:
        for g in self.golden_images:
            if g.image_path.lower() == normalize_path(image_path).lower():
                return g
        return None

    def has_golden(self, image_path: str) -> bool:
        return self.golden(image_path) is not None


@dataclass(frozen=True)
class FactoryLabs:
    """What distribution reads of a configuration folder (see `load_labs`)."""

    root: Path
    image_paths: tuple[str, ...]  # the golden images that exist, as ImagePaths
    labs: tuple[LabSpec, ...]

    def has_golden(self, image_path: str) -> bool:
        wanted = normalize_path(image_path).lower()
        return any(p.lower() == wanted for p in self.image_paths)


def normalize_path(text: str) -> str:
    return "/".join(p for p in text.replace("\\", "/").split("/") if p not in ("", "."))


def path_selects(selector: str, image_path: str) -> bool:
    sel, img = normalize_path(selector).lower(), normalize_path(image_path).lower()
    return sel == "" or img == sel or img.startswith(sel + "/")


def load_factory(root: Path, config: Config, *, artifact_repos: tuple[Path, ...] = (),
                 lab_name: str = "ImageFactory", location: str | None = None) -> Factory:
    """Read and check the whole configuration folder (raises ValidationFailed with every problem).
    `location` is the factory lab's region (default: the config's default location)."""
    root = _config_root(root)
    location = location or config.default_location
    problems: list[Problem] = []
    repos = artifact_repos or ((root / ARTIFACTS_DIR,) if (root / ARTIFACTS_DIR).is_dir() else ())
    golden = _load_golden(root / GOLDEN_DIR, config, repos, lab_name, location, problems)
    labs = _load_labs(root / LABS_FILE, root / GOLDEN_DIR, problems)
    if problems:
        raise ValidationFailed(problems)
    return Factory(root, tuple(golden), tuple(labs), tuple(repos))


def load_labs(root: Path) -> FactoryLabs:
    """Labs.json and which golden images exist, for distribution (raises ValidationFailed with every problem)."""
    root = _config_root(root)
    problems: list[Problem] = []
    image_paths = []
    for f, image_path in _golden_files(root / GOLDEN_DIR, problems):
        try:
            data = read_json(f)
        except ValidationFailed as e:
            problems.extend(e.problems)
            continue
        if not isinstance(data, dict):
            problems.append(Problem("a golden image file holds one JSON object", "", str(f),
                                    "an image template, or a DevTest Labs VM template"))
            continue
        image_paths.append(image_path)
    labs = _load_labs(root / LABS_FILE, root / GOLDEN_DIR, problems)
    if problems:
        raise ValidationFailed(problems)
    return FactoryLabs(root, tuple(image_paths), tuple(labs))


def _config_root(root: Path) -> Path:
    root = Path(root).absolute()
    if not root.is_dir():
        raise ValidationFailed([Problem("the configuration folder does not exist", "", str(root),
                                        f"give the folder that holds {GOLDEN_DIR}/ and {LABS_FILE}")])
    return root


def _golden_files(folder: Path, problems: list[Problem]) -> list[tuple[Path, str]]:
    """(file, ImagePath) of every golden image file, sorted by ImagePath; links out of the folder are problems."""
    if not folder.is_dir():
        problems.append(Problem(f"there is no {GOLDEN_DIR} folder", "", str(folder),
                                "the configuration folder holds GoldenImages/ with one .json per golden image"))
        return []
    files = sorted(folder.rglob("*.json"), key=lambda p: p.relative_to(folder).as_posix().lower())
    if not files:
        problems.append(Problem("no golden image (.json) in the folder", "", str(folder),
                                "add one image template or DevTest Labs VM template per golden image"))
    real_root = folder.resolve()
    found = []
    for f in files:
        if not f.resolve().is_relative_to(real_root):
            problems.append(Problem("the golden image is a link that leads outside the GoldenImages folder", "", str(f),
                                    "keep golden images inside the configuration folder"))
            continue
        found.append((f, f.relative_to(folder).as_posix()))
    return found


def _load_golden(folder: Path, config: Config, repos: tuple[Path, ...], lab_name: str, location: str,
                 problems: list[Problem]) -> list[GoldenImage]:
    found: list[GoldenImage] = []
    for f, image_path in _golden_files(folder, problems):
        golden = _load_one(f, image_path, config, repos, lab_name, location, problems)
        if golden is not None:
            found.append(golden)
    return found


def _name_for(image_path: str) -> str:
    stem = PurePosixPath(image_path).with_suffix("").as_posix()
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in stem.replace("/", "_"))[:64] or "golden"


def _load_one(f: Path, image_path: str, config: Config, repos: tuple[Path, ...], lab_name: str, location: str,
              problems: list[Problem]) -> GoldenImage | None:
    from kiln.factory import dtl
    from kiln.template.load import load_template_data

    try:
        data = read_json(f)
    except ValidationFailed as e:
        problems.extend(e.problems)
        return None
    name = _name_for(image_path)
    if dtl.is_dtl_vm_template(data):
        converted = dtl.convert_vm_template(data, file=str(f), name=name, lab_name=lab_name, location=location,
                                            repos=repos, problems=problems)
        if converted is None:
            return None
        state = _os_state(converted.tags, str(f), problems)
        return GoldenImage(image_path, f, "dtl", converted.template, converted.os_type,
                           converted.description or f"golden image {image_path}", state or "Generalized")
    try:
        templates = load_template_data(data, file=str(f), config=config, name_hint=name)
    except ValidationFailed as e:
        problems.extend(e.problems)
        return None
    if len(templates) != 1:
        problems.append(Problem(f"a golden image file holds one image template, this one holds {len(templates)}", "", str(f)))
        return None
    t = templates[0]
    state = _os_state(t.tags, str(f), problems)
    description = t.tags.get("description") or t.tags.get("Description") or f"golden image {image_path}"
    return GoldenImage(image_path, f, "aib", t, t.os_type, description, state or "Generalized")


def _os_state(tags: dict[str, str], file: str, problems: list[Problem]) -> str | None:
    value = next((v for k, v in tags.items() if k.lower() == "osstate"), "Generalized")
    for allowed in ("Generalized", "Specialized"):
        if value.lower() == allowed.lower():
            return allowed
    problems.append(Problem(f"tag osState {value!r} is not Generalized or Specialized", ".tags.osState", file,
                            "Generalized (deprovisioned, the default) or Specialized (an exact copy)"))
    return None


def _load_labs(path: Path, golden_dir: Path, problems: list[Problem]) -> list[LabSpec]:
    file = str(path)
    try:
        data: Any = read_json(path)
    except ValidationFailed as e:
        problems.extend(e.problems)
        return []
    if not isinstance(data, dict) or not isinstance(data.get("Labs"), list):
        problems.append(Problem("Labs.json is {\"Labs\": [...]}", ".Labs", file,
                                "each lab: {\"SubscriptionId\", \"ResourceGroup\", \"LabName\", \"ImagePaths\": [...]}"))
        return []
    labs: list[LabSpec] = []
    seen: dict[str, int] = {}
    for i, item in enumerate(data["Labs"]):
        at = f".Labs[{i}]"
        before = len(problems)
        if not isinstance(item, dict):
            problems.append(Problem("a lab is an object", at, file))
            continue
        fields: dict[str, str] = {}  # complete once the lab's problems are none
        for key in ("SubscriptionId", "ResourceGroup", "LabName"):
            value = next((v for k, v in item.items() if k.lower() == key.lower()), None)
            if not isinstance(value, str) or not value.strip() or "/" in value:
                problems.append(Problem(f"{key} must be a non-empty name", f"{at}.{key}", file))
            else:
                fields[key] = value
        paths = next((v for k, v in item.items() if k.lower() == "imagepaths"), None)
        if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
            problems.append(Problem("ImagePaths must be an array of paths", f"{at}.ImagePaths", file,
                                    "paths relative to GoldenImages: a folder or one .json file"))
            paths = []
        for j, p in enumerate(paths):
            _check_image_path(p, golden_dir, file, f"{at}.ImagePaths[{j}]", problems)
        if len(problems) != before:
            continue
        text = (f"/subscriptions/{fields['SubscriptionId'].strip()}/resourceGroups/{fields['ResourceGroup'].strip()}"
                f"/providers/Microsoft.DevTestLab/labs/{fields['LabName'].strip()}")
        rid = ids.try_parse(text)
        if rid is None:
            problems.append(Problem("the lab's names do not make a valid lab id", at, file, f"got {text}"))
            continue
        if rid.key in seen:
            problems.append(Problem(f"duplicate lab {rid.name} (also at .Labs[{seen[rid.key]}])", at, file,
                                    "list each lab once, with all its ImagePaths"))
            continue
        seen[rid.key] = i
        labs.append(LabSpec(rid, tuple(normalize_path(p) for p in paths), i))
    return labs


def _check_image_path(text: str, golden_dir: Path, file: str, at: str, problems: list[Problem]) -> None:
    raw = text.replace("\\", "/")
    parts = [p for p in raw.split("/") if p not in ("", ".")]
    depth = 0
    for part in parts:
        depth += -1 if part == ".." else 1
        if depth < 0:
            break
    if raw.startswith("/") or (len(raw) > 1 and raw[1] == ":") or depth < 0:
        problems.append(Problem(f"ImagePath {text!r} leads outside the GoldenImages folder", at, file,
                                "paths are relative to GoldenImages, e.g. \"Linux/debian.json\" or \"Linux\""))
        return
    if ".." in parts:
        problems.append(Problem(f"ImagePath {text!r} uses '..'", at, file, "write the path without '..'"))
        return
    if not golden_dir.is_dir():
        return
    target = golden_dir.joinpath(*parts)
    if not target.resolve().is_relative_to(golden_dir.resolve()):
        problems.append(Problem(f"ImagePath {text!r} leads outside the GoldenImages folder (through a link)", at, file))
        return
    matches = [target] if target.is_file() and target.suffix == ".json" else (
        list(target.rglob("*.json")) if target.is_dir() else [])
    if not matches:
        problems.append(Problem(f"ImagePath {text!r} matches no golden image", at, file,
                                f"name a .json file or a folder under {golden_dir}"))
