"""Platform images: bootstrap a Debian-family root with mmdebstrap, cached by content.

A platform image source becomes a `Recipe` (platform.py), the mirror's Release file pins the
exact version (mirror.py), and the pair gives the cache key: a sha256 over the recipe (distro,
suite, mirror, components, package set), the mirror's exact version and this module's recipe
version (bumped whenever the way a root is made changes, the hooks included).

A cached root is a plain directory tree under `Config.cache_dir/roots/<key>/`, written once and
never changed: a build gets its own copy (`cp -a`, owners, modes, hardlinks, device nodes and
xattrs kept), which takes about a second where unpacking a compressed archive took three or four.

Speed, measured on 2 cores (see docs/benchmarks.md): the bootstrap uses a warm `.deb` cache
(`Config.cache_dir/debs/<distro>-<suite>/`, seeded into apt's archive by a setup hook and
refreshed from it afterwards, so a rebuild downloads only what changed on the mirror), keeps the
docs/man/locale excludes out of mmdebstrap's Python tar filter, and builds the initramfs once
instead of once per package that carries an initramfs hook, while the packages that do not
affect it are being installed (platform-hooks.sh says how).

A cache entry is written under a temporary name and renamed when complete, so a killed bootstrap
never leaves an entry that looks valid; an exclusive lock per key makes two concurrent builds
of the same source bootstrap once. The bootstrap happens in scratch space (RAM when there is room,
see kiln.scratch); the build continues with its own copy while the pristine tree is written
into the cache in the background.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shlex
import shutil
import threading
from dataclasses import asdict
from pathlib import Path
from typing import IO, Any, TypedDict

from kiln.config import Config
from kiln.diskfull import translated
from kiln.errors import BuildFailed, InvalidInput
from kiln.events import Monitor
from kiln.run import CommandFailed, run, run_streamed
from kiln.sources.mirror import SuiteRelease, fetch_release
from kiln.sources.platform import Recipe, recipe_for
from kiln.sources.roottree import RootTree, read_os_release
from kiln.template.model import PlatformImageSource


class CacheMeta(TypedDict):
    """What a cached root's `<entry>.json` records (for a person looking at the cache)."""

    exact_version: str
    recipe: dict[str, Any]  # dataclasses.asdict(Recipe)

RECIPE_VERSION = "5"  # 5: cloud-init, growpart, systemd-boot, the generic kernel
SETUP_HOOK = Path(__file__).with_name("platform-setup.sh")
SPEED_HOOKS = Path(__file__).with_name("platform-hooks.sh")
BOOTSTRAP_TIMEOUT_S = 3600

# Packages that put something into an initramfs (hooks, the binaries it copies, its config) are
# installed by mmdebstrap itself; the rest of a recipe's packages are installed by the customize
# hook while the initramfs is built (platform-hooks.sh), which also rebuilds it should one of
# them have changed what goes in after all. So this list is about speed, not correctness.
_INITRAMFS_PACKAGES = frozenset({
    "initramfs-tools", "udev", "kmod", "zstd", "busybox", "klibc-utils", "dmsetup", "lvm2", "mdadm",
    "cryptsetup-initramfs", "e2fsprogs", "btrfs-progs", "xfsprogs", "plymouth",
    "systemd",  # pulls in dmsetup (libcryptsetup -> libdevmapper), which has an initramfs hook
})


def split_packages(packages: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """(installed before the initramfs is built, installed while it is built)."""
    first = [p for p in packages if p.startswith("linux-") or p in _INITRAMFS_PACKAGES]
    return first, [p for p in packages if p not in first]


# Docs, man pages and translations are not installed (as in Ubuntu's minimal images): they cost
# dpkg time and space and nothing on a server reads them. Licences stay. platform-hooks.sh
# writes the dpkg path-excludes; its hash is part of the cache key.


def cache_key(recipe: Recipe, release: SuiteRelease) -> str:
    material = {
        "recipe": asdict(recipe),
        "exact_version": release.exact_version,
        "codename": release.codename,
        "recipe_version": RECIPE_VERSION,
        "setup_hook": hashlib.sha256(SETUP_HOOK.read_bytes()).hexdigest(),
        "speed_hooks": hashlib.sha256(SPEED_HOOKS.read_bytes()).hexdigest(),
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()


def roots_cache(config: Config) -> Path:
    return config.cache_dir / "roots"


def cache_entry(config: Config, key: str) -> Path:
    """Where the cached root for `key` lives: a directory tree, complete once it exists."""
    return roots_cache(config) / key


def debs_cache(config: Config, recipe: Recipe) -> Path:
    """The warm package cache of one distro release (shared by all package sets of that release)."""
    return config.cache_dir / "debs" / f"{recipe.distro}-{recipe.suite}"


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
    lock = _KeyLock(cache / f"{key}.lock")
    try:
        entry = cache_entry(config, key)
        for stale in cache.glob(f".partial-*-{key}"):  # a writer killed mid-copy (the live one holds this lock)
            shutil.rmtree(stale, ignore_errors=True)
        if entry.is_dir():
            monitor.log(f"cached root {entry.name} (exactVersion {release.exact_version}): copying", name="source")
            unpack_root(entry, dest)
            lock.release()
        else:
            monitor.log(f"no cached root for key {key[:16]}…: bootstrapping {recipe.suite}", name="source")
            _bootstrap_and_cache(recipe, entry, dest, lock, monitor, debs=debs_cache(config, recipe),
                                 meta={"exact_version": release.exact_version, "recipe": asdict(recipe)})
    except BaseException:
        lock.release()
        raise
    return RootTree(path=dest, os_release=read_os_release(dest), exact_version=release.exact_version, cache_key=key)


def _bootstrap_and_cache(recipe: Recipe, entry: Path, dest: Path, lock: _KeyLock, monitor: Monitor, *,
                         debs: Path, meta: CacheMeta) -> None:
    """Bootstrap a pristine root in scratch space, give the build its own copy at `dest`, and write
    the pristine one into the cache in the background (it is on the critical path otherwise: a few
    seconds of disk writes while the build could be customizing). The key stays locked until the
    entry is complete; kiln waits for the writer before it exits (a non-daemon thread)."""
    from kiln.scratch import ScratchDir

    pristine = ScratchDir.create(entry.parent, f"bootstrap-{entry.name[:12]}")
    try:
        tree = pristine.path / "root"
        bootstrap(recipe, tree, monitor, debs=debs)
        keep_debs(tree, debs)
        copy_tree(tree, dest)
    except BaseException as e:
        error = translated(e, [pristine.path, dest])  # a full disk: say how full before the tree is deleted
        pristine.remove()
        if error is not e:
            raise error from e
        raise

    def write_cache() -> None:
        try:
            store_root(tree, entry, meta)
        except Exception:  # nothing is cached (no partial entry either): the next build bootstraps again
            pass
        finally:
            pristine.remove()
            lock.release()

    # The run's log may be closed by the time the writer finishes: say it now.
    monitor.log(f"caching the root as {entry} (in the background)", name="source")

    writer = threading.Thread(target=write_cache, name="kiln-root-cache", daemon=False)
    _WRITERS.append(writer)
    writer.start()


_WRITERS: list[threading.Thread] = []


def wait_for_cache_writes(timeout: float | None = None) -> None:
    """Block until roots being written to the cache are complete (tests; kiln's exit does it too)."""
    for t in list(_WRITERS):
        t.join(timeout)
    _WRITERS[:] = [t for t in _WRITERS if t.is_alive()]


def bootstrap(recipe: Recipe, dest: Path, monitor: Monitor, *, debs: Path | None = None) -> None:
    """Run mmdebstrap for `recipe` into the empty (or missing) folder `dest`.

    `debs`: a folder of .deb files to seed apt's archive with (the warm package cache). The
    packages stay in the tree's /var/cache/apt/archives for `keep_debs` to collect.
    """
    if dest.exists() and any(dest.iterdir()):
        raise FileExistsError(f"{dest} is not empty")
    mirror_line = f"deb {recipe.mirror} {recipe.suite} {' '.join(recipe.components)}"
    hook = f'sh {SPEED_HOOKS} %s "$1" {shlex.quote(str(debs or "/nonexistent"))}'
    first, later = split_packages(recipe.packages)
    cmd = [
        # mmdebstrap mounts /proc, /sys and /dev in the new root while it works: give it its own
        # mount and pid namespaces so nothing it mounts is visible on the host or outlives kiln.
        "setpriv", "--pdeathsig", "KILL", "--",
        "unshare", "--mount", "--pid", "--fork", "--kill-child=SIGKILL", "--propagation", "private", "--",
        "mmdebstrap", "--mode=root", "--variant=minbase", "--format=directory",
        f"--components={','.join(recipe.components)}",
        f"--include={','.join(first)}",
        "--dpkgopt=force-unsafe-io",
        '--aptopt=Acquire::Languages "none"',
        # Keep downloaded packages for the cache: essential ones are not unlinked, the archive
        # is not emptied before downloading (it holds the seeded ones) nor at the end.
        "--skip=essential/unlink", "--skip=download/empty", "--skip=cleanup/apt/cache",
        f"--setup-hook={hook % 'setup'}",
        f"--essential-hook={hook % 'essential'}",
        f"--customize-hook={hook % 'customize'} {shlex.quote(','.join(later))}",
        f'--customize-hook=sh {SETUP_HOOK} "$1" {recipe.hostname}',
        recipe.suite, str(dest), mirror_line,
    ]
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        _run_logged(cmd, monitor)
    except CommandFailed as e:
        shutil.rmtree(dest, ignore_errors=True)
        lost = mirror_lost(recipe, e)
        if lost is not None:
            raise lost from e
        raise


# What apt says when it cannot get a file from the mirror.
_FETCH_FAILED = ("Failed to fetch", "Could not connect", "Connection refused", "Unable to connect",
                 "Connection failed", "Unable to fetch", "Temporary failure resolving", "Could not resolve")


def mirror_lost(recipe: Recipe, e: CommandFailed) -> BuildFailed | None:
    """A bootstrap that failed because the mirror stopped answering, as the user should read it
    (None: it failed for another reason, and the tool's own error says more)."""
    try:
        fetch_release(recipe.mirror, recipe.suite)
        now = ""
    except InvalidInput as gone:
        now = gone.message
    said = [line.strip() for line in e.output.splitlines() if any(t in line for t in _FETCH_FAILED)]
    if not now and not said:
        return None
    return BuildFailed(
        f"the apt mirror {recipe.mirror} stopped serving packages during the bootstrap"
        + (f" (now: {now})" if now else "") + ("".join(f"\n  {line}" for line in said[-3:])),
        hint="nothing was cached; run the build again once the mirror answers (it is set by [mirrors] in "
             "config.toml, else by the host's apt sources)")


def keep_debs(root: Path, debs: Path) -> None:
    """Move the packages the bootstrap used from the root's apt archive into the warm cache.

    The cache ends up holding exactly what this bootstrap installed plus other packages of the
    release (other package sets); older versions of the packages installed now are dropped, so
    it does not grow with every mirror update.
    """
    archives = root / "var/cache/apt/archives"
    debs.mkdir(parents=True, exist_ok=True)
    used = sorted(archives.glob("*.deb"))
    names = {p.name.split("_", 1)[0] for p in used}
    current = {p.name for p in used}
    for old in debs.glob("*.deb"):
        if old.name.split("_", 1)[0] in names and old.name not in current:
            old.unlink(missing_ok=True)
    for deb in used:
        target = debs / deb.name
        if not target.exists():
            tmp = debs / f".partial-{os.getpid()}-{deb.name}"
            shutil.copyfile(deb, tmp)
            os.replace(tmp, target)
        deb.unlink()
    # The rest of what `apt-get clean` (skipped above) removes.
    for leftover in [*(archives / "partial").glob("*"), *(root / "var/cache/apt").glob("*.bin")]:
        leftover.unlink(missing_ok=True)


def store_root(root: Path, entry: Path, meta: CacheMeta) -> None:
    """Copy `root` to the cache `entry` (a directory): under a temporary name, renamed when complete."""
    tmp = entry.with_name(f".partial-{os.getpid()}-{entry.name}")
    try:
        if os.stat(root).st_dev == os.stat(entry.parent).st_dev:
            os.rename(root, tmp)  # the pristine tree was bootstrapped on the cache's filesystem
        else:
            copy_tree(root, tmp)
        entry.with_name(entry.name + ".json").write_text(json.dumps(meta, indent=2) + "\n")
        os.rename(tmp, entry)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def unpack_root(entry: Path, dest: Path) -> None:
    """Make `dest` a private copy of the cached root `entry`."""
    copy_tree(entry, dest)


def copy_tree(src: Path, dest: Path) -> None:
    """A full copy of a root tree: owners, modes, times, hardlinks, device nodes, xattrs, ACLs.

    A real copy, never hardlinks into the cache: a customizer that rewrites a file in place
    (`echo > /etc/motd`) would otherwise change the cached root for every later build.
    """
    dest.mkdir(parents=True, exist_ok=True)
    run(["cp", "-a", "--sparse=always", f"{src}/.", f"{dest}/"], capture=True)


def _run_logged(cmd: list[str], monitor: Monitor) -> None:
    result = run_streamed(cmd, monitor, name="source", timeout=BOOTSTRAP_TIMEOUT_S)
    if result.returncode != 0:
        raise CommandFailed(cmd, result.returncode, ("timed out\n" if result.timed_out else "") + result.tail)


class _KeyLock:
    """An exclusive lock on one cache key; released by the kernel if kiln dies. Release is idempotent
    (the cache writer thread releases it when the entry is complete)."""

    def __init__(self, path: Path) -> None:
        self._fh: IO[str] | None = path.open("a")
        fcntl.flock(self._fh, fcntl.LOCK_EX)

    def release(self) -> None:
        fh, self._fh = self._fh, None
        if fh is not None:
            fcntl.flock(fh, fcntl.LOCK_UN)
            fh.close()
