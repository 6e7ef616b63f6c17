"""ManagedImage / SharedImageVersion sources: the root comes back out of a real assembled disk."""

from __future__ import annotations

from pathlib import Path

import pytest

from debian_root import CachedRoot, fresh_copy
from kiln.events import NullMonitor
from kiln.sources import resolve_source, source_os_type
from kiln.template.model import ManagedImageSource, SharedImageVersionSource

pytestmark = pytest.mark.integration

IMAGE = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/images/base"
VERSION = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/galleries/g/images/d/versions/1.2.3"


@pytest.fixture(scope="module")
def stored_disk(debian12: CachedRoot, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from kiln.disk.assemble import assemble_disk
    from kiln.disk.boot import prepare_boot

    tmp = tmp_path_factory.mktemp("stored")
    root = fresh_copy(debian12, tmp / "root")
    (root / "etc/stored-marker").write_text("from the stored disk\n")
    return assemble_disk(root, tmp / "disk.raw", prepare_boot(root)).path


def test_managed_image_and_gallery_version_sources(stored_disk: Path, tmp_path: Path) -> None:
    asked = []

    def disk_for(source):
        asked.append(source)
        return stored_disk, "raw", "1.2.3" if isinstance(source, SharedImageVersionSource) else None

    managed = ManagedImageSource(image_id=IMAGE)
    tree = resolve_source(managed, config=None, work=tmp_path / "a", monitor=NullMonitor(), disk_for=disk_for)  # type: ignore[arg-type]
    assert (tree.path / "etc/stored-marker").read_text() == "from the stored disk\n"
    assert tree.os_release["VERSION_ID"] == "12" and tree.exact_version is None and tree.cache_key is None
    assert (tree.path / "usr/bin/sudo").stat().st_mode & 0o4000  # setuid kept

    version = SharedImageVersionSource(image_version_id=VERSION)
    tree = resolve_source(version, config=None, work=tmp_path / "b", monitor=NullMonitor(), disk_for=disk_for)  # type: ignore[arg-type]
    assert tree.exact_version == "1.2.3" and (tree.path / "etc/stored-marker").exists()
    assert source_os_type(version, None, disk_for=disk_for) == "Linux"  # type: ignore[arg-type]
    assert asked == [managed, version, version]
