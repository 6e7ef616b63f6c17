"""The local files a template names travel with its job, through the shared blob store.

A template built with `kiln build` may name files on the submitter's host: a Shell or PowerShell
`scriptUri`, a File `sourceUri`, an ISO source, an in-VM validator's script, a plain path
relative to where `kiln build` runs or a `file://` URI (after the submitter's own
`[[uri_rewrites]]`). A worker on another host has none of them. So before a job is queued,
`pack` puts each such file into the cluster's shared blob store under the sha256 of its bytes
(content-addressed, as disks are: a file two templates share is stored once) and records
URI → digest in the job (`BuildRequest.files`). On the worker, `unpack` fetches each digest into
the host's cache (`cache/job-files/DIGEST`, verified before it gets its name, kept for the next
job) and gives the build a config whose exact URI rules (`UriRewrite(exact=True)`) point each URI
at its cached copy. The build then fetches and checks them as a local build does, with
`sha256Checksum` still verified against the bytes the submitter sent.

The submitter leases each digest for as long as it follows its builds (`BlobStore.take_lease`):
`kiln store gc` keeps the shared objects that a live lease names. A file that does not exist is
not packed: the worker's build then fails at that step, as a local build would. Without
`[cluster] blobs` nothing is packed, and the files must be at the same path on every worker.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from kiln.errors import InvalidInput, KilnError

if TYPE_CHECKING:
    from kiln.config import Config
    from kiln.store.shared import SharedBlobs
    from kiln.template.model import ImageTemplate

CACHE = "job-files"


def uris(template: ImageTemplate) -> list[str]:
    """Every URI the template's build fetches, in template order, each once."""
    found: list[str] = []
    for step in (template.source, *template.customize, *template.validate.in_vm_validations):
        uri = getattr(step, "script_uri", None) or getattr(step, "source_uri", None)
        if uri:
            found.append(uri)
    if template.optimize is not None and template.optimize.workload_script_uri:
        found.append(template.optimize.workload_script_uri)
    return list(dict.fromkeys(found))


def pack(config: Config, templates: tuple[ImageTemplate, ...]) -> dict[str, str]:
    """Upload the templates' local files to the shared store; returns URI → sha256 for the job."""
    from kiln.fetch import Fetcher, local_file, sha256_file
    from kiln.store.shared import open_shared

    shared = open_shared(config.cluster.blobs)
    if shared is None:
        return {}
    fetcher = Fetcher(config)
    files: dict[str, str] = {}
    for t in templates:
        for uri in uris(t):
            try:  # the file this host's fetch would read (a bad file:// URI fails on the worker, as locally)
                path = local_file(fetcher.rewrite(uri))
            except InvalidInput:
                continue
            if uri in files or path is None or not path.is_file():
                continue
            digest = sha256_file(path)
            if not shared.exists(digest):
                shared.put(digest, path)
            files[uri] = digest
    return files


@contextmanager
def leased(config: Config, files: dict[str, str]) -> Iterator[None]:
    """Keep `kiln store gc` from removing the job's files from the shared store while the block runs.
    The catalog is opened only to take and to release the leases, not held open meanwhile."""
    from kiln.store.store import Store

    if not files:
        yield
        return
    holder = f"job files of pid {os.getpid()}"
    with Store.open(config) as store:
        taken = [store.blobs.take_lease(digest, holder) for digest in set(files.values())]
    try:
        yield
    finally:
        with Store.open(config) as store:
            for lease in taken:
                store.blobs.release_lease(lease)


def unpack(config: Config, files: dict[str, str]) -> Config:
    """On the worker: the job's files in this host's cache, and `config` with a rule per URI to its copy."""
    from kiln.config import UriRewrite
    from kiln.store.shared import open_shared

    if not files:
        return config
    shared = open_shared(config.cluster.blobs)
    if shared is None:
        raise KilnError("this job carries files in the cluster's shared blob store, but this host has no "
                        "[cluster] blobs", hint="give every host of the cluster the same [cluster] blobs in config.toml")
    rules = tuple(UriRewrite(uri, str(cached(config, shared, digest)), exact=True) for uri, digest in files.items())
    return dataclasses.replace(config, uri_rewrites=(*rules, *config.uri_rewrites))


def cached(config: Config, shared: SharedBlobs, digest: str) -> Path:
    """The job file `digest` in this host's cache, fetched from the shared store if it is not there yet."""
    from kiln.fetch import sha256_file
    from kiln.store import files
    final = config.cache_dir / CACHE / digest
    if final.is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = files.tmp_name(final.parent, "fetch")
    try:
        shared.fetch(digest, tmp)
        got = sha256_file(tmp)
        if got != digest:
            raise KilnError(f"the shared store's copy of job file {digest} ({shared.url}) is damaged (sha256 {got}); "
                            "it was not used", hint="delete that object from the shared store and submit the build again")
        os.chmod(tmp, 0o444)
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    return final
