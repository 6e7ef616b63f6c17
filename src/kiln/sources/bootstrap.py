"""Platform images: bootstrap a Debian-family root with mmdebstrap, cached by content.

A platform image source becomes a `Recipe` (platform.py), the mirror's Release file pins the
exact version (mirror.py), and the pair gives the cache key: a sha256 over the recipe (distro,
suite, mirror, components, package set), the mirror's exact version and this module's recipe
version (bumped whenever the way a root is made changes, the setup hook included). A cached
root is a `tar --xattrs --acls --numeric-owner` archive compressed with zstd under
`Config.cache_dir/roots/`; unpacking one takes seconds where a bootstrap takes a minute or more.

A cache entry is written to a temporary name and renamed when complete, so a killed bootstrap
never leaves an entry that looks valid; an exclusive lock per key makes two concurrent builds
of the same source bootstrap once.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

from kiln.config import Config
from kiln.errors import InvalidInput
from kiln.events import Monitor
from kiln.run import CommandFailed, run
from kiln.sandbox.stream import run_streamed
from kiln.sources.mirror import SuiteRelease, fetch_release
from kiln.sources.platform import Recipe, recipe_for
from kiln.sources.roottree import RootTree, read_os_release
from kiln.template.model import PlatformImageSource

RECIPE_VERSION = "3"
SETUP_HOOK = Path(__file__).with_name("platform-setup.sh")
BOOTSTRAP_TIMEOUT_S = 3600

# Docs, man pages and translations are not installed (as in Ubuntu's minimal images): they cost
# dpkg time and space and nothing on a server reads them. Licences stay.
_DPKG_EXCLUDES = (
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/locale/*",
    "path-include=/usr/share/locale/locale.alias",
)
_TAR_FLAGS = ("--xattrs", "--xattrs-include=*", "--acls", "--numeric-owner")


def cache_key(recipe: Recipe, release: SuiteRelease) -> str:
    material = {
        "recipe": asdict(recipe),
        "exact_version": release.exact_version,
        "codename": release.codename,
        "recipe_version": RECIPE_VERSION,
        "setup_hook": hashlib.sha256(SETUP_HOOK.read_bytes()).hexdigest(),
        "dpkg": list(_DPKG_EXCLUDES),
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()


def roots_cache(config: Config) -> Path:
    return config.cache_dir / "roots"


def platform_root(source: PlatformImageSource, *, config: Config, dest: Path, monitor: Monitor) -> RootTree:
    """Make `dest` the root tree of a platform image: from the cache, or bootstrapped (and cached)."""
    recipe = recipe_for(source, config)
    monitor.log(f"platform image {source.publisher}:{source.offer}:{source.sku} → {recipe.distro} {recipe.suite} "
                f"from {recipe.mirror}", name="source")
    release = fetch_release(recipe.mirror, recipe.suite)
    if source.version.lower() != "latest" and source.version != release.exact_version:
        raise InvalidInput(
            f"platform image version {source.version!r} is not on the mirror, which offers {release.exact_version}",
            path=".properties.source.version",
            hint=f'use "latest" (resolves to {release.exact_version}) or "{release.exact_version}"',
        )
    key = cache_key(recipe, release)
    cache = roots_cache(config)
    cache.mkdir(parents=True, exist_ok=True)
    archive = cache / f"{key}.tar.zst"
    with _key_lock(cache / f"{key}.lock"):
        if archive.is_file():
            monitor.log(f"cached root {archive.name} (exactVersion {release.exact_version}): unpacking", name="source")
            unpack_root(archive, dest)
        else:
            monitor.log(f"no cached root for key {key[:16]}…: bootstrapping {recipe.suite}", name="source")
            bootstrap(recipe, dest, monitor)
            store_root(dest, archive, meta={"exact_version": release.exact_version, "recipe": asdict(recipe)})
            monitor.log(f"cached the root as {archive}", name="source")
    return RootTree(path=dest, os_release=read_os_release(dest), exact_version=release.exact_version, cache_key=key)


def bootstrap(recipe: Recipe, dest: Path, monitor: Monitor) -> None:
    """Run mmdebstrap for `recipe` into the empty (or missing) folder `dest`."""
    if dest.exists() and any(dest.iterdir()):
        raise FileExistsError(f"{dest} is not empty")
    mirror_line = f"deb {recipe.mirror} {recipe.suite} {' '.join(recipe.components)}"
    cmd = [
        # mmdebstrap mounts /proc, /sys and /dev in the new root while it works: give it its own
        # mount and pid namespaces so nothing it mounts is visible on the host or outlives kiln.
        "setpriv", "--pdeathsig", "KILL", "--",
        "unshare", "--mount", "--pid", "--fork", "--kill-child=SIGKILL", "--propagation", "private", "--",
        "mmdebstrap", "--mode=root", "--variant=minbase", "--format=directory",
        f"--components={','.join(recipe.components)}",
        f"--include={','.join(recipe.packages)}",
        "--dpkgopt=force-unsafe-io",
        *(f"--dpkgopt={o}" for o in _DPKG_EXCLUDES),
        '--aptopt=Acquire::Languages "none"',
        f'--customize-hook=sh {SETUP_HOOK} "$1" {recipe.hostname}',
        recipe.suite, str(dest), mirror_line,
    ]
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        _run_logged(cmd, monitor)
    except CommandFailed:
        shutil.rmtree(dest, ignore_errors=True)
        raise


def store_root(root: Path, archive: Path, meta: dict) -> None:
    """Archive `root` as `archive` (tar.zst): written under a temporary name, renamed when complete."""
    tmp = archive.with_name(f".partial-{os.getpid()}-{archive.name}")
    try:
        run(["tar", *_TAR_FLAGS, "--use-compress-program=zstd -T0 -3 -q", "-C", root, "-cf", tmp, "."])
        archive.with_name(archive.name.removesuffix(".tar.zst") + ".json").write_text(json.dumps(meta, indent=2) + "\n")
        os.replace(tmp, archive)
    finally:
        tmp.unlink(missing_ok=True)


def unpack_root(archive: Path, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    run(["tar", *_TAR_FLAGS, "--use-compress-program=zstd -T0 -q", "-C", dest, "-xpf", archive])


def _run_logged(cmd: list[str], monitor: Monitor) -> None:
    result = run_streamed(cmd, monitor, name="source", timeout=BOOTSTRAP_TIMEOUT_S)
    if result.returncode != 0:
        raise CommandFailed(cmd, result.returncode, ("timed out\n" if result.timed_out else "") + result.tail)


@contextmanager
def _key_lock(path: Path) -> Iterator[None]:
    with path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)  # released by the kernel if kiln dies
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
