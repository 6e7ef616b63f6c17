"""Many lab images in one catalog transaction: the group commit, per-row outcomes, labs created together.

Everything here runs on a real SQLite catalog and a real store (small real disks); only the order
in which threads arrive is arranged, so that what ends up in one transaction is known.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from kiln.config import load_config
from kiln.distribute.labs import prepare_lab_image, publish_lab_image
from kiln.errors import InvalidInput, KilnError, NotFound
from kiln.store import Store
from kiln.store.db import Catalog, GroupCommit

from .conftest import check_labs_complete, lab_id


def _wait_until(predicate) -> None:
    """Poll until other threads get somewhere (no time limit of our own: this is not a timing test)."""
    pause = threading.Event()
    while not predicate():
        pause.wait(0.01)


def test_group_commit_puts_waiting_items_in_one_transaction(tmp_path: Path) -> None:
    catalog = Catalog(tmp_path / "t.db")
    catalog.conn.execute("CREATE TABLE rows (n INTEGER)")
    commits: GroupCommit[int, int] = GroupCommit()
    writing, release = threading.Event(), threading.Event()
    results: dict[int, int] = {}
    lock = threading.Lock()

    def write(items):
        if 0 in items:
            writing.set()
            release.wait()  # the first batch is being written while the others arrive
        with lock, catalog.write() as db:
            db.executemany("INSERT INTO rows VALUES (?)", [(n,) for n in items])
        return [n * 10 for n in items]

    def submit(n: int) -> None:
        results[n] = commits.submit(n, write)

    first = threading.Thread(target=submit, args=(0,))
    first.start()
    writing.wait()
    others = [threading.Thread(target=submit, args=(n,)) for n in range(1, 10)]
    for t in others:
        t.start()
    _wait_until(lambda: commits.queued == 9)
    release.set()
    for t in [first, *others]:
        t.join()
    assert commits.batches == 2  # the first item alone, then the nine that waited, together
    assert results == {n: n * 10 for n in range(10)}  # each caller gets its own item's result
    assert sorted(n for (n,) in catalog.query("SELECT n FROM rows")) == list(range(10))  # each written once


def test_group_commit_gives_a_failed_batch_error_to_each_of_its_items(tmp_path: Path) -> None:
    commits: GroupCommit[int, int] = GroupCommit()

    def fail(items):
        raise KilnError(f"disk full while writing {len(items)} item(s)")

    with pytest.raises(KilnError, match="disk full"):
        commits.submit(1, fail)
    assert commits.submit(2, lambda items: [n + 1 for n in items]) == 3  # the next batch is not affected
    assert commits.batches == 2 and commits.queued == 0


@pytest.fixture
def two_blobs(kiln_home: Path, disks: list[Path]):
    config = load_config(kiln_home)
    with Store.open(config) as store:
        first = store.images.import_disk(disks[0], "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/images/a",
                                         "eastus", "Linux")
        second = store.images.import_disk(disks[1], "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/images/b",
                                          "eastus", "Linux")
        yield store, store.blobs.get(first.digest), store.blobs.get(second.digest)


def test_commit_images_fails_rows_alone(kiln_home: Path, two_blobs) -> None:
    store, blob, other = two_blobs
    lab_a, lab_b = store.labs.create_many([lab_id("LabA"), lab_id("LabB")], "eastus")
    one = prepare_lab_image(store, lab_a, "one", blob, image_path="Debian/base.json")
    two = prepare_lab_image(store, lab_b, "two", blob)
    three = prepare_lab_image(store, lab_a, "three", blob)
    # Meanwhile (another process): "three" is published with other bytes, and LabB is deleted.
    publish_lab_image(store, lab_a.id, "three", other)
    store.labs.delete(lab_b.id)
    before = {i.name: i.digest for i in store.labs.images(lab_a.id)}
    assert before == {"three": other.digest}

    outcomes = store.labs.commit_images([one, two, three])

    assert outcomes[0] is None
    assert isinstance(outcomes[1], NotFound) and "was deleted" in outcomes[1].render()
    assert isinstance(outcomes[2], InvalidInput) and "already exists with other content" in outcomes[2].render()
    listed = {i.name: (i.digest, i.image_path) for i in store.labs.images(lab_a.id)}
    assert listed == {"one": (blob.digest, "Debian/base.json"), "three": (other.digest, "")}
    assert store.labs.commit_images([one]) == [None]  # committing again changes nothing
    assert len(store.labs.images(lab_a.id)) == 2
    check_labs_complete(kiln_home)


def test_a_prepared_image_is_not_listed_until_committed(kiln_home: Path, two_blobs) -> None:
    store, blob, _ = two_blobs
    lab = store.labs.create(lab_id("LabW"), "westeurope")
    pending = prepare_lab_image(store, lab, "w", blob)
    # The bytes are in the lab's region already (a verified copy: another region), the row is not.
    store.blobs.verify_file(store.regions.replica_path(store.regions.get("westeurope"), blob.digest), blob.digest,
                            blob.virtual_size)
    assert store.labs.images(lab.id) == []
    assert store.labs.commit_images([pending]) == [None]
    assert [i.name for i in store.labs.images(lab.id)] == ["w"]
    check_labs_complete(kiln_home)


def test_create_many_refuses_a_lab_in_another_region_and_creates_none(kiln_home: Path) -> None:
    with Store.open(load_config(kiln_home)) as store:
        store.labs.create(lab_id("LabA"), "eastus")
        dump = store.catalog.dump()
        with pytest.raises(InvalidInput, match="already exists in eastus"):
            store.labs.create_many([lab_id("LabB"), lab_id("LabA"), lab_id("LabC")], "westeurope")
        assert store.catalog.dump() == dump
        created = store.labs.create_many([lab_id("LabB"), lab_id("laba"), lab_id("LabC")], "eastus")
        assert [lab.id.name for lab in created] == ["LabB", "LabA", "LabC"]  # an existing lab keeps its spelling
        assert [lab.id.name for lab in store.labs.list()] == ["LabA", "LabB", "LabC"]
