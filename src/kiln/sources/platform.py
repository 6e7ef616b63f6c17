"""From an Azure platform image URN to a bootstrap recipe.

A template names a Marketplace image (`Debian` / `debian-12` / `12-gen2` / `latest`). kiln has
no Marketplace: a data file, `platform-images.toml` (shipped beside this module, extended or
overridden by `$KILN_HOME/platform-images.toml`), maps each publisher/offer/sku to a
Debian-family release (distro + suite) and the package set to bootstrap. The result is a frozen
`Recipe`; nothing below this module sees the TOML.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kiln.config import Config
from kiln.errors import InvalidInput
from kiln.template.model import PlatformImageSource

SHIPPED_MAP = Path(__file__).with_name("platform-images.toml")
USER_MAP_NAME = "platform-images.toml"


@dataclass(frozen=True)
class Recipe:
    """What to bootstrap for one platform image."""

    distro: str  # debian | ubuntu (any key of [distros])
    suite: str  # bookworm, noble, ...
    mirror_kind: str  # which configured mirror: debian | ubuntu
    mirror: str  # its URL
    components: tuple[str, ...]
    packages: tuple[str, ...]  # kernel first, then the base set and the suite's extras
    hostname: str


@dataclass(frozen=True)
class _ImageEntry:
    publisher: str
    offer: str
    skus: tuple[str, ...]
    distro: str
    suite: str
    origin: str  # the file it came from, for error messages


@dataclass(frozen=True)
class PlatformMap:
    images: tuple[_ImageEntry, ...]
    distros: dict[str, dict[str, Any]]
    suites: dict[str, dict[str, Any]]
    files: tuple[str, ...]

    def find(self, publisher: str, offer: str, sku: str) -> _ImageEntry | None:
        key = (publisher.lower(), offer.lower(), sku.lower())
        for e in self.images:
            if (e.publisher.lower(), e.offer.lower()) == key[:2] and key[2] in (s.lower() for s in e.skus):
                return e
        return None


def load_platform_map(config: Config) -> PlatformMap:
    """The shipped map with the user's file (if any) in front of it."""
    files = [SHIPPED_MAP]
    user = config.home / USER_MAP_NAME
    if user.is_file():
        files.insert(0, user)
    images: list[_ImageEntry] = []
    distros: dict[str, dict[str, Any]] = {}
    suites: dict[str, dict[str, Any]] = {}
    for f in reversed(files):  # shipped first, so the user's tables merge over it
        data = _read_toml(f)
        for name, table in data.get("distros", {}).items():
            distros.setdefault(name, {}).update(table)
        for name, table in data.get("suites", {}).items():
            suites.setdefault(name, {}).update(table)
    for f in files:  # the user's images first, so they win
        for i, raw in enumerate(_read_toml(f).get("images", [])):
            images.append(_image_entry(raw, f, i))
    return PlatformMap(tuple(images), distros, suites, tuple(str(f) for f in files))


def recipe_for(source: PlatformImageSource, config: Config) -> Recipe:
    """The bootstrap recipe for a platform image, or an `InvalidInput` saying how to add one."""
    pmap = load_platform_map(config)
    entry = pmap.find(source.publisher, source.offer, source.sku)
    urn = f"{source.publisher}:{source.offer}:{source.sku}:{source.version}"
    if entry is None:
        known = sorted({f"{e.publisher}:{e.offer}" for e in pmap.images})
        raise InvalidInput(
            f"platform image {urn} is not in kiln's platform image map",
            path=".properties.source",
            hint=f"map it in {config.home / USER_MAP_NAME} ([[images]] publisher/offer/skus/distro/suite); "
            f"known offers: {', '.join(known)}",
        )
    distro = pmap.distros.get(entry.distro)
    if distro is None:
        raise InvalidInput(f"platform image map: distro {entry.distro!r} has no [distros.{entry.distro}] table",
                           file=entry.origin, hint="add the table (mirror, kernel, packages)")
    mirror_kind = str(distro.get("mirror", entry.distro))
    mirror = {"debian": config.debian_mirror, "ubuntu": config.ubuntu_mirror}.get(mirror_kind)
    if not mirror:
        raise InvalidInput(
            f"no {mirror_kind.capitalize()} mirror configured for platform image {urn}",
            path=".properties.source",
            hint=f'set it in {config.home / "config.toml"}: [mirrors] {mirror_kind} = "http://..."'
            + (" (or map this offer to Debian in platform-images.toml)" if mirror_kind != "debian" else ""),
        )
    suite = pmap.suites.get(entry.suite, {})
    packages = [str(distro.get("kernel", "")), *map(str, distro.get("packages", [])), *map(str, suite.get("extra_packages", []))]
    return Recipe(
        distro=entry.distro,
        suite=entry.suite,
        mirror_kind=mirror_kind,
        mirror=mirror.rstrip("/"),
        components=tuple(str(c) for c in distro.get("components", ["main"])),
        packages=tuple(dict.fromkeys(p for p in packages if p)),
        hostname=str(distro.get("hostname", entry.distro)),
    )


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise InvalidInput(f"platform image map is not valid TOML: {e}", file=str(path), hint="fix the syntax") from e


def _image_entry(raw: Any, origin: Path, index: int) -> _ImageEntry:
    missing = [k for k in ("publisher", "offer", "skus", "distro", "suite") if k not in (raw or {})]
    if missing or not isinstance(raw.get("skus"), list):
        raise InvalidInput(
            f"platform image map entry images[{index}] lacks {', '.join(missing) or 'a skus list'}",
            file=str(origin), path=f"images[{index}]",
            hint="each [[images]] needs publisher, offer, skus = [...], distro and suite",
        )
    return _ImageEntry(str(raw["publisher"]), str(raw["offer"]), tuple(str(s) for s in raw["skus"]),
                       str(raw["distro"]), str(raw["suite"]), str(origin))
