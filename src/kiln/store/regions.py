"""Regions: named places an image is replicated to, and the one rule that they never get a byte twice.

A region is configured in the state home's `config.toml` (default: a few folders under
`regions/`). A replica of blob D in region R is `<R's folder>/<D>.vhd` (or the page blob
`<D>.vhd` in R's container). Because names are content digests, "does R already hold these bytes?"
is "does the name exist?". A folder replica is made by reflink where the filesystem can, else a
hardlink when R is on the blob store's filesystem, else a sparse copy that is verified before it is
renamed into place. The `replicas` table records which (region, digest) pairs exist; gc removes
replicas nothing references.

`replicate` is a blob primitive (bytes placed atomically, then their row), not a publish: which
regions a managed image, a gallery version or a lab image needs, and when its row may appear,
is kiln.distribute's to decide (`Galleries.add_version` refuses a row a target region lacks).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from kiln.config import Config, RegionConfig
from kiln.errors import InvalidInput, KilnError
from kiln.events import Monitor, NullMonitor
from kiln.store import azureblob, files
from kiln.store.blobs import Blob, BlobStore
from kiln.store.db import Catalog, now


@dataclass(frozen=True)
class Replica:
    region: str
    digest: str
    uri: str
    method: str  # existing | reflink | hardlink | copy | page blob


class Regions:
    def __init__(self, config: Config, catalog: Catalog, blobs: BlobStore) -> None:
        self.config = config
        self.catalog = catalog
        self.blobs = blobs

    def list(self) -> list[RegionConfig]:
        return list(self.config.regions)

    def get(self, name: str, *, path: str = "") -> RegionConfig:
        for r in self.config.regions:
            if r.name.lower() == name.lower():
                if r.kind not in ("folder", "azureblob"):
                    raise InvalidInput(f"region {r.name} has unknown kind {r.kind!r}", file=str(self.config.home / "config.toml"),
                                       hint="kind is folder or azureblob")
                return r
        known = ", ".join(r.name for r in self.config.regions) or "(none)"
        raise InvalidInput(f"unknown region {name!r}", path=path,
                           hint=f"configured regions: {known} (add [regions.{name}] to {self.config.home / 'config.toml'})")

    def replica_path(self, region: RegionConfig, digest: str) -> Path:
        return Path(region.path) / f"{digest}.vhd"

    def replicate(self, blob: Blob, region_name: str, monitor: Monitor | None = None) -> Replica:
        """Make `region_name` hold `blob` (idempotent; never writes bytes the region already holds)."""
        monitor = monitor or NullMonitor()
        region = self.get(region_name)
        row = self.catalog.one("SELECT * FROM replicas WHERE region = ? AND digest = ?", (region.name.lower(), blob.digest))
        if row is not None and self._present(region, blob.digest):
            return Replica(region.name, blob.digest, row["uri"], "existing")
        monitor.step(f"replicate {region.name}")
        if region.kind == "azureblob":
            uri, method = azureblob.upload_vhd(blob.path, blob.digest, region)
        else:
            dst = self.replica_path(region, blob.digest)
            try:
                method = files.place(blob.path, dst, verify=lambda p: self.blobs.verify_file(p, blob.digest, blob.virtual_size))
            except OSError as e:
                if (err := files.no_space(e, dst.parent)) is not None:
                    raise err from e
                raise KilnError(f"region {region.name}: cannot write {dst.parent}: {e.strerror}",
                                hint=f"check the path of region {region.name} in config.toml") from e
            uri = dst.as_uri()
        with self.catalog.write() as db:
            db.execute(
                "INSERT INTO replicas (region, digest, uri, method, created) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (region, digest) DO UPDATE SET uri = excluded.uri",
                (region.name.lower(), blob.digest, uri, method, now()),
            )
        monitor.result(f"replicate {region.name}", message=method)
        return Replica(region.name, blob.digest, uri, method)

    def _present(self, region: RegionConfig, digest: str) -> bool:
        if region.kind == "azureblob":
            return azureblob.stored_digest(region, digest) == digest
        return self.replica_path(region, digest).exists()

    def get_replica(self, region_name: str, digest: str) -> Replica | None:
        row = self.catalog.one("SELECT * FROM replicas WHERE region = ? AND digest = ?", (region_name.lower(), digest))
        return Replica(row["region"], digest, row["uri"], row["method"]) if row else None

    def remove(self, region_name: str, digest: str) -> None:
        """Delete a replica (gc only: the caller has checked that nothing references it)."""
        region = self.get(region_name)
        # The row goes first: killed in between, a file without a row is left (gc takes it), never a row without bytes.
        with self.catalog.write() as db:
            db.execute("DELETE FROM replicas WHERE region = ? AND digest = ?", (region.name.lower(), digest))
        if region.kind == "azureblob":
            azureblob.delete_vhd(digest, region)
        else:
            self.replica_path(region, digest).unlink(missing_ok=True)
