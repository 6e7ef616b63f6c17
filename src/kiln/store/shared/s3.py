"""Shared blobs in an S3 bucket (`[cluster] blobs = "s3://bucket/prefix"`), through boto3.

Objects are `<prefix><digest>.vhd`. An upload larger than one part is a multipart upload, which S3
makes visible only when it is completed; a smaller one is a single PUT, atomic too. An upload
killed half-way leaves parts that nobody can see under the key: `sweep_partial` aborts those older
than an hour. Credentials and the endpoint come from `[cluster]` (`blobs_endpoint_url`,
`blobs_region`, `blobs_access_key_id`, `blobs_secret_access_key`) or from boto3's usual sources
(the AWS_* environment variables, ~/.aws). The bucket must exist: kiln does not create buckets.
"""

from __future__ import annotations

import time
from functools import cached_property
from pathlib import Path
from typing import Any

from kiln.config import SharedBlobsConfig
from kiln.store.shared import PART, STALE_UPLOAD_SECONDS, THREADS, SharedBlobs, is_digest, ranged_fetch


def _errors() -> tuple[type[Exception], ...]:
    from boto3.exceptions import Boto3Error
    from botocore.exceptions import BotoCoreError, ClientError

    return (Boto3Error, BotoCoreError, ClientError)


def _not_found(e: Exception) -> bool:
    from botocore.exceptions import ClientError

    return isinstance(e, ClientError) and e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound")


class S3Blobs(SharedBlobs):
    def __init__(self, config: SharedBlobsConfig) -> None:
        self.url = config.url
        self.config = config
        self.bucket = config.container
        self.prefix = config.prefix

    @cached_property
    def client(self) -> Any:  # botocore builds its client classes at run time: no static type  # boto3 is imported here: it takes a while, and only S3 users need it
        import boto3
        from botocore.config import Config

        c = self.config
        return boto3.session.Session().client(  # type: ignore[no-untyped-call]
            "s3",
            endpoint_url=c.endpoint_url or None,
            region_name=c.region or None,
            aws_access_key_id=c.access_key_id or None,
            aws_secret_access_key=c.secret_access_key or None,
            # A few quick retries: an unreachable store should fail in seconds, not after minutes.
            config=Config(retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=10, read_timeout=120,  # type: ignore[no-untyped-call]
                          max_pool_connections=THREADS * 2,
                          s3={"addressing_style": "path"} if c.endpoint_url else None),
        )

    def _key(self, digest: str) -> str:
        return f"{self.prefix}{digest}.vhd"

    def put(self, digest: str, path: Path) -> None:
        from boto3.s3.transfer import TransferConfig

        transfer = TransferConfig(multipart_threshold=PART, multipart_chunksize=PART, max_concurrency=THREADS)  # type: ignore[no-untyped-call]
        try:
            self.client.upload_file(str(path), self.bucket, self._key(digest), Config=transfer,
                                    ExtraArgs={"Metadata": {"kiln-digest": digest}})
        except _errors() as e:
            raise self.error(e, "upload") from e

    def fetch(self, digest: str, dest: Path) -> None:
        key = self._key(digest)
        try:
            size = int(self.client.head_object(Bucket=self.bucket, Key=key)["ContentLength"])
        except _errors() as e:
            if _not_found(e):
                raise self.missing(digest) from e
            raise self.error(e, "download") from e

        def read(offset: int, length: int) -> bytes:
            body = self.client.get_object(Bucket=self.bucket, Key=key, Range=f"bytes={offset}-{offset + length - 1}")["Body"]
            data: bytes = body.read()
            return data

        try:
            ranged_fetch(size, read, dest)
        except _errors() as e:
            if _not_found(e):
                raise self.missing(digest) from e
            raise self.error(e, "download") from e

    def exists(self, digest: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(digest))
            return True
        except _errors() as e:
            if _not_found(e):
                return False
            raise self.error(e, "a lookup") from e

    def delete(self, digest: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self._key(digest))
        except _errors() as e:
            raise self.error(e, "a delete") from e

    def digests(self) -> list[str]:
        found = []
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.prefix):
                for obj in page.get("Contents", []):
                    name = obj["Key"][len(self.prefix):]
                    if name.endswith(".vhd") and is_digest(name[:-4]):
                        found.append(name[:-4])
        except _errors() as e:
            raise self.error(e, "listing") from e
        return sorted(found)

    def sweep_partial(self) -> int:
        """Abort multipart uploads (of killed publishers, on any host) started over an hour ago."""
        count = 0
        try:
            pages = self.client.get_paginator("list_multipart_uploads").paginate(Bucket=self.bucket, Prefix=self.prefix)
            for page in pages:
                for up in page.get("Uploads", []):
                    if time.time() - up["Initiated"].timestamp() > STALE_UPLOAD_SECONDS:
                        self.client.abort_multipart_upload(Bucket=self.bucket, Key=up["Key"], UploadId=up["UploadId"])
                        count += 1
        except _errors() as e:
            raise self.error(e, "sweeping unfinished uploads") from e
        return count
