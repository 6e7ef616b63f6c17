"""Azure Blob Storage regions: a VHD replicated as a page blob, empty pages never sent.

A region with `kind = "azureblob"` names an account (`url`: an account URL with a SAS, or a
connection string) and a `container`. A blob `<digest>.vhd` there is complete once it carries the
metadata `kiln_digest` = its digest, set after the last page is written: a replication killed
half-way leaves a page blob without that mark, which the next replication overwrites.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, TypedDict

from kiln.config import RegionConfig
from kiln.errors import KilnError
from kiln.store.files import data_extents

if TYPE_CHECKING:
    from azure.storage.blob import ContainerClient

PAGE = 512
MAX_PUT = 4 * 1024 * 1024  # the largest Put Page request
_ZERO = bytes(MAX_PUT)


class _ClientOptions(TypedDict):
    retry_total: int
    retry_backoff_factor: float
    connection_timeout: int


def _container(region: RegionConfig) -> ContainerClient:  # azure is imported lazily: it is slow to import
    from azure.core.exceptions import ResourceExistsError
    from azure.storage.blob import BlobServiceClient

    # A few quick retries: an unreachable account should fail in seconds, not after minutes of backoff.
    opts: _ClientOptions = {"retry_total": 2, "retry_backoff_factor": 0.2, "connection_timeout": 20}
    if "AccountName=" in region.url or "UseDevelopmentStorage" in region.url:
        svc = BlobServiceClient.from_connection_string(region.url, **opts)
    else:
        svc = BlobServiceClient(account_url=region.url, **opts)
    container = svc.get_container_client(region.container or "kiln")
    try:
        container.create_container()
    except ResourceExistsError:
        pass
    return container


def _error(region: RegionConfig, e: Exception) -> KilnError:
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return KilnError(f"region {region.name}: Azure Blob Storage failed: {first}",
                     hint=f"check the url and container of [regions.{region.name}] in config.toml and that the account is reachable")


def upload_vhd(path: Path, digest: str, region: RegionConfig) -> tuple[str, str]:
    """Replicate the blob file `path` as page blob `<digest>.vhd`; returns (url, method)."""
    from azure.core.exceptions import AzureError, ResourceNotFoundError

    try:
        client = _container(region).get_blob_client(f"{digest}.vhd")
        size = path.stat().st_size
        try:
            props = client.get_blob_properties()
            if props.metadata.get("kiln_digest") == digest and props.size == size:
                return client.url, "existing"
        except ResourceNotFoundError:
            pass
        client.create_page_blob(size=size)
        with path.open("rb") as f:
            fd = f.fileno()
            for start, stop in data_extents(fd, size):
                start -= start % PAGE
                stop += -stop % PAGE
                for pos in range(start, stop, MAX_PUT):
                    n = min(MAX_PUT, stop - pos)
                    buf = os.pread(fd, n, pos)
                    if buf != _ZERO[:n]:  # empty pages of a page blob read as zeros anyway
                        client.upload_page(buf, offset=pos, length=n)
        client.set_blob_metadata({"kiln_digest": digest})
        return client.url, "page blob"
    except AzureError as e:
        raise _error(region, e) from e


def delete_vhd(digest: str, region: RegionConfig) -> None:
    from azure.core.exceptions import AzureError, ResourceNotFoundError

    try:
        _container(region).get_blob_client(f"{digest}.vhd").delete_blob()
    except ResourceNotFoundError:
        pass
    except AzureError as e:
        raise _error(region, e) from e


def download(region: RegionConfig, digest: str) -> bytes:
    """The whole page blob (tests compare it with the local blob)."""
    data: bytes = _container(region).get_blob_client(f"{digest}.vhd").download_blob().readall()
    return data


def stored_digest(region: RegionConfig, digest: str) -> str | None:
    from azure.core.exceptions import ResourceNotFoundError

    try:
        mark: str | None = _container(region).get_blob_client(f"{digest}.vhd").get_blob_properties().metadata.get("kiln_digest")
        return mark
    except ResourceNotFoundError:
        return None


def list_digests(region: RegionConfig) -> list[str]:
    """The digests of the `<digest>.vhd` page blobs in the region's container (gc looks for orphans)."""
    from azure.core.exceptions import AzureError

    try:
        return [b.name[:-4] for b in _container(region).list_blobs() if b.name.endswith(".vhd")]
    except AzureError as e:
        raise _error(region, e) from e
