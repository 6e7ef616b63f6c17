"""The store: one state home's catalog, blobs, regions and runs behind one object.

    with Store.open(config) as store:
        image = store.images.import_disk(Path("disk.raw"), image_id, "westus2", "Linux")
        boot(image.disk)            # a DiskRef: qemu -drive file=...,format=vpc,readonly=on

`Store.open` creates the state home and applies schema migrations. Every process opens its own
Store; they coordinate through the catalog (SQLite or PostgreSQL: kiln.store.db's write transactions) and the filesystem (atomic
renames), never through memory.
"""

from __future__ import annotations

from pathlib import Path
from types import TracebackType

from kiln.config import Config
from kiln.events import Monitor
from kiln.store.blobs import BlobStore
from kiln.store.db import Catalog, open_catalog
from kiln.store.galleries import Galleries
from kiln.store.images import Images
from kiln.store.labs import Labs
from kiln.store.maintenance import GcReport, check, gc
from kiln.store.regions import Regions
from kiln.store.runs import Runs
from kiln.store.shared import open_shared
from kiln.store.vms import Vms


class Store:
    def __init__(self, config: Config, catalog: Catalog) -> None:
        self.config = config
        self.catalog = catalog
        self.blobs = BlobStore(config.blobs_dir, catalog, config.work_dir, shared=open_shared(config.cluster.blobs))
        self.regions = Regions(config, catalog, self.blobs)
        self.images = Images(catalog, self.blobs, self.regions)
        self.galleries = Galleries(catalog, self.blobs, self.regions)
        self.runs = Runs(catalog)
        self.labs = Labs(catalog, self.blobs, self.regions)
        self.vms = Vms(catalog)

    @classmethod
    def open(cls, config: Config) -> Store:
        for d in (config.home, config.blobs_dir, config.work_dir, config.runs_dir):
            Path(d).mkdir(parents=True, exist_ok=True)
        return cls(config, open_catalog(config.cluster.catalog or config.catalog_path))

    def gc(self, monitor: Monitor | None = None) -> GcReport:
        return gc(self, monitor)

    def check(self, *, verify_data: bool = True) -> list[str]:
        """Integrity problems (empty list: all good). See `kiln.store.maintenance.check`."""
        return check(self, verify_data=verify_data)

    def close(self) -> None:
        self.catalog.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()
