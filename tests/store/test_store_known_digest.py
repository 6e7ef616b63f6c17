"""A digest computed ahead of publishing (a build hashes its disk while the boot test runs) is used
only for the exact file it was computed from; a disk that changed since is hashed again."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from kiln.store import Store
from kiln.store.blobs import KnownDigest
from kiln.store.common import new_holder
from kiln.store.digest import disk_digest


@pytest.fixture
def store(kiln_home: Path):
    from kiln.config import load_config

    with Store.open(load_config(kiln_home)) as s:
        yield s


def work_disk(store: Store, raw_disk: Path, name: str) -> Path:
    work = store.config.work_dir / name / "disk.raw"
    work.parent.mkdir(parents=True)
    shutil.copyfile(raw_disk, work)
    return work


def test_known_digest_is_the_store_digest(store: Store, raw_disk: Path) -> None:
    work = work_disk(store, raw_disk, "a")
    known = KnownDigest.compute(work)
    assert known.digest == disk_digest(raw_disk, known.virtual_size)
    blob = store.blobs.ingest(work, holder=new_holder("test"), move=True, known=known)
    assert blob.digest == known.digest
    store.blobs.verify(blob)  # the stored bytes really have that digest


def test_a_disk_changed_after_hashing_is_hashed_again(store: Store, raw_disk: Path) -> None:
    work = work_disk(store, raw_disk, "b")
    known = KnownDigest.compute(work)
    time.sleep(0.05)  # file times tick at the kernel's clock granularity (a few ms), not per write
    with work.open("r+b") as f:  # the disk changes after the digest was taken
        f.seek(4096)
        f.write(b"changed after hashing")
    blob = store.blobs.ingest(work, holder=new_holder("test"), move=True, known=known)
    assert blob.digest != known.digest
    store.blobs.verify(blob)
