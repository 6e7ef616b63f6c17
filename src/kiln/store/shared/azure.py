"""Shared blobs in an Azure Blob Storage container (`[cluster] blobs = "azureblob://container/prefix"`).

Objects are block blobs `<prefix><digest>.vhd`. An upload stages its blocks and then commits the
block list: until the commit, Azure shows no blob under the name (a killed upload's uncommitted
blocks are invisible, and Azure drops them after a week). The account comes from
`blobs_connection_string` (Azurite: its well-known development account), else
`AZURE_STORAGE_CONNECTION_STRING`, else `blobs_account_url` (an account URL with a SAS). The
container is created if missing, as for Azure regions.
"""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from kiln.config import SharedBlobsConfig
from kiln.errors import InvalidInput
from kiln.store.shared import PART, THREADS, SharedBlobs, is_digest, ranged_fetch

if TYPE_CHECKING:
    from azure.storage.blob import ContainerClient


class AzureBlobs(SharedBlobs):
    def __init__(self, config: SharedBlobsConfig) -> None:
        self.url = config.url
        self.config = config
        self.prefix = config.prefix

    @cached_property
    def container(self) -> ContainerClient:  # azure is imported here: it is slow to import
        from azure.core.exceptions import AzureError, ResourceExistsError
        from azure.storage.blob import BlobServiceClient, ExponentialRetry

        c = self.config
        conn = c.connection_string or os.environ.get("AZURE_STORAGE_CONNECTION_STRING", "")
        # A few quick retries (the SDK's default first backoff is 15 s): an unreachable account
        # should fail in seconds, not after a minute.
        opts = {"retry_policy": ExponentialRetry(initial_backoff=1, increment_base=2, retry_total=2),
                "connection_timeout": 20, "max_block_size": PART, "max_single_put_size": PART}
        if conn:
            svc = BlobServiceClient.from_connection_string(conn, **opts)  # type: ignore[arg-type]
        elif c.account_url:
            svc = BlobServiceClient(account_url=c.account_url, **opts)  # type: ignore[arg-type]
        else:
            raise InvalidInput(f"cluster.blobs {self.url!r} names no Azure account", path="cluster.blobs_connection_string",
                               hint="set blobs_connection_string or blobs_account_url in [cluster], "
                                    "or AZURE_STORAGE_CONNECTION_STRING")
        container = svc.get_container_client(c.container)
        try:
            container.create_container()
        except ResourceExistsError:
            pass
        except AzureError as e:
            raise self.error(e, "opening the container") from e
        return container

    def _name(self, digest: str) -> str:
        return f"{self.prefix}{digest}.vhd"

    def put(self, digest: str, path: Path) -> None:
        from azure.core.exceptions import AzureError

        try:
            with path.open("rb") as f:
                self.container.upload_blob(self._name(digest), f, length=os.fstat(f.fileno()).st_size, overwrite=True,
                                           metadata={"kiln_digest": digest}, max_concurrency=THREADS)
        except AzureError as e:
            raise self.error(e, "upload") from e

    def fetch(self, digest: str, dest: Path) -> None:
        from azure.core import MatchConditions
        from azure.core.exceptions import AzureError, ResourceNotFoundError

        client = self.container.get_blob_client(self._name(digest))
        try:
            props = client.get_blob_properties()

            def read(offset: int, length: int) -> bytes:
                # etag: a blob replaced half-way through the download fails instead of mixing two.
                return client.download_blob(offset=offset, length=length, etag=props.etag,
                                            match_condition=MatchConditions.IfNotModified).readall()

            ranged_fetch(int(props.size), read, dest)
        except ResourceNotFoundError as e:
            raise self.missing(digest) from e
        except AzureError as e:
            raise self.error(e, "download") from e

    def exists(self, digest: str) -> bool:
        from azure.core.exceptions import AzureError

        try:
            return bool(self.container.get_blob_client(self._name(digest)).exists())
        except AzureError as e:
            raise self.error(e, "a lookup") from e

    def delete(self, digest: str) -> None:
        from azure.core.exceptions import AzureError, ResourceNotFoundError

        try:
            self.container.get_blob_client(self._name(digest)).delete_blob()
        except ResourceNotFoundError:
            pass
        except AzureError as e:
            raise self.error(e, "a delete") from e

    def digests(self) -> list[str]:
        from azure.core.exceptions import AzureError

        found = []
        try:
            for b in self.container.list_blobs(name_starts_with=self.prefix or None):
                name = b.name[len(self.prefix):]
                if name.endswith(".vhd") and is_digest(name[:-4]):
                    found.append(name[:-4])
        except AzureError as e:
            raise self.error(e, "listing") from e
        return sorted(found)
