"""The Debian 12 platform image root, bootstrapped once through kiln's own sources code.

Shared by the sources, sandbox and customizers tests (their conftest.py files import this).
The bootstrap goes through `kiln.sources.bootstrap.platform_root` into a test state home under
KILN_TEST_CACHE (default /var/tmp/kiln-test-cache): the content-addressed cache there makes
later sessions on the same machine unpack in seconds instead of bootstrapping; CI starts clean
and bootstraps once per session. Tests that change a root get their own unpacked copy.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from envcheck import unavailable
from kiln.config import Config, load_config
from kiln.events import NullMonitor
from kiln.sources.bootstrap import cache_entry, platform_root, unpack_root, wait_for_cache_writes
from kiln.sources.roottree import RootTree
from kiln.template.model import PlatformImageSource

TEST_CACHE = Path(os.environ.get("KILN_TEST_CACHE", "/var/tmp/kiln-test-cache"))
DEBIAN12 = PlatformImageSource(publisher="Debian", offer="debian-12", sku="12-gen2", version="latest")


@dataclass(frozen=True)
class CachedRoot:
    tree: RootTree  # an unpacked copy nobody may change
    archive: Path  # the cache entry (a directory tree), to make fresh copies from
    config: Config


def missing_tools() -> str:
    if os.geteuid() != 0:
        return "needs root (mmdebstrap, namespaces, chroot)"
    for tool in ("mmdebstrap", "unshare", "setpriv", "zstd", "tar"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (run scripts/setup)"
    return ""


def shared_test_config() -> Config:
    home = TEST_CACHE / "kiln-home"
    home.mkdir(parents=True, exist_ok=True)
    return load_config(home)


def bootstrap_debian12(dest_parent: Path) -> CachedRoot:
    if why := missing_tools():
        unavailable(why)
    config = shared_test_config()
    if not config.debian_mirror:
        unavailable("the host has no Debian mirror in its apt sources")
    tree = platform_root(DEBIAN12, config=config, dest=dest_parent / "root", monitor=NullMonitor())
    wait_for_cache_writes()  # the pristine root is written to the cache in the background
    assert tree.cache_key
    return CachedRoot(tree, cache_entry(config, tree.cache_key), config)


def fresh_copy(cached: CachedRoot, dest: Path) -> Path:
    unpack_root(cached.archive, dest)
    return dest
