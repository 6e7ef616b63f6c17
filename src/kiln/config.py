"""The state home and its configuration.

Everything kiln keeps lives under one directory, the state home: `KILN_HOME`, or
`$XDG_DATA_HOME/kiln` (default `~/.local/share/kiln`). It holds the catalog database, the blob
store, region folders, caches, run logs and temporary work directories (on the same filesystem as
the blobs, so publishing a finished disk is a rename, not a copy).

`config.toml` in the state home is optional:

    [mirrors]
    debian = "http://mirror.example/debian"        # default: the host's own apt sources
    ubuntu = "http://mirror.example/ubuntu"        # no default: Ubuntu offers need it

    [[uri_rewrites]]                               # so a template written for Azure builds offline
    prefix = "https://raw.githubusercontent.com/danielsollondon/"
    target = "/srv/mirror/scripts/"                # a folder, or another URL prefix

    [locations]
    allowed = ["westus2", "westeurope"]            # default: Azure's public region names

    [regions.westus2]                              # default: a few folder regions under regions/
    path = "/data/regions/westus2"

The first region listed is the default location: where a command that takes `--location` (image
import, gallery create, lab create, the factory lab) puts what it creates when given none.

    [cluster]                                      # default: none (blobs stay on this host only)
    queue = "redis://10.0.0.5:6379/0"              # builds go to `kiln worker`s (rediss://, unix:///run/redis.sock too)
    retries = 1                                    # a build whose worker was lost is enqueued once more (default 0)
    blobs = "s3://bucket/prefix"                   # or "azureblob://container/prefix", "file:///srv/kiln-blobs"
    blobs_endpoint_url = "http://127.0.0.1:9000"   # s3: an S3-compatible server (default: AWS)
    blobs_region = "eu-west-1"                     # s3 (default: AWS_DEFAULT_REGION)
    blobs_access_key_id = "..."                    # s3 (default: the AWS env vars, ~/.aws)
    blobs_secret_access_key = "..."
    blobs_connection_string = "..."                # azureblob (default: AZURE_STORAGE_CONNECTION_STRING)
    blobs_account_url = "https://acct.blob.core.windows.net/?sv=..."  # azureblob: an account URL with a SAS

With `queue`, `kiln build` and `kiln serve` enqueue builds for the workers (`kiln.cluster`).
With `blobs`, the hosts that share one catalog share its blobs too (`kiln.store.shared`): the local
blob store becomes this host's cache of the shared one.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

from kiln.errors import InvalidInput

DEFAULT_REGIONS = ("eastus", "westus2", "westeurope", "northeurope", "southeastasia")


@dataclass(frozen=True)
class UriRewrite:
    prefix: str
    target: str
    exact: bool = False  # only this very URI (a cluster job's file: kiln.cluster.jobfiles), before any prefix rule


@dataclass(frozen=True)
class RegionConfig:
    name: str
    kind: str = "folder"  # folder | azureblob
    path: str = ""  # folder regions
    url: str = ""  # azureblob: account URL or connection string
    container: str = ""


@dataclass(frozen=True)
class SharedBlobsConfig:
    """Where the blobs of a shared catalog live (`[cluster] blobs`), parsed and checked."""

    url: str
    kind: Literal["azureblob", "s3", "file"]
    container: str = ""  # the S3 bucket or the Azure container
    prefix: str = ""  # object names start with it ("" or ending in "/")
    path: str = ""  # file: the shared folder
    endpoint_url: str = ""
    region: str = ""
    access_key_id: str = ""
    secret_access_key: str = ""
    connection_string: str = ""
    account_url: str = ""


@dataclass(frozen=True)
class ClusterConfig:
    blobs: SharedBlobsConfig | None = None  # None: blobs stay on this host
    queue: str = ""  # the job engine's Redis (redis://, rediss://, unix://); "": builds run where started
    catalog: str | None = None  # postgresql://...; None: the state home's SQLite file (kiln.store.db)
    retries: int = 0  # 0 | 1: a build whose worker was lost is enqueued again once (a template's kiln.retries wins)


@dataclass(frozen=True)
class Config:
    home: Path
    debian_mirror: str | None = None
    ubuntu_mirror: str | None = None
    uri_rewrites: tuple[UriRewrite, ...] = ()
    allowed_locations: tuple[str, ...] | None = None  # None: Azure's public regions
    regions: tuple[RegionConfig, ...] = field(default_factory=tuple)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)

    @property
    def catalog_path(self) -> Path:
        return self.home / "catalog.sqlite"

    @property
    def blobs_dir(self) -> Path:
        return self.home / "blobs"

    @property
    def cache_dir(self) -> Path:
        return self.home / "cache"

    @property
    def runs_dir(self) -> Path:
        return self.home / "runs"

    @property
    def work_dir(self) -> Path:
        return self.home / "work"

    @property
    def default_location(self) -> str:
        """The first configured region (see the module docstring)."""
        if not self.regions:
            raise InvalidInput("no region is configured", file=str(self.home / "config.toml"),
                               hint="add a [regions.NAME] table, or remove [regions] to get the default regions")
        return self.regions[0].name

    def region(self, name: str) -> RegionConfig:
        for r in self.regions:
            if r.name.lower() == name.lower():
                return r
        known = ", ".join(r.name for r in self.regions)
        raise InvalidInput(f"unknown region {name!r}", hint=f"configured regions: {known} (see {self.home / 'config.toml'})")


def default_home() -> Path:
    if env := os.environ.get("KILN_HOME"):
        return Path(env).expanduser().absolute()
    xdg = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(xdg) / "kiln"


def host_debian_mirror(root: Path = Path("/")) -> str | None:
    """The Debian mirror the host's own apt uses (deb822 .sources first, then sources.list)."""
    candidates: list[str] = []
    src_dir = root / "etc/apt/sources.list.d"
    for f in sorted(src_dir.glob("*.sources")) if src_dir.is_dir() else []:
        for stanza in re.split(r"\n\s*\n", f.read_text(errors="replace")):
            fields = _deb822(stanza)
            if "deb" not in fields.get("types", "").split() or fields.get("enabled", "yes").lower() == "no":
                continue
            suites = fields.get("suites", "").split()
            if suites and all(s.endswith(("-security", "/updates")) for s in suites):
                continue
            candidates += fields.get("uris", "").split()
    lists = [root / "etc/apt/sources.list", *sorted(src_dir.glob("*.list"))] if src_dir.is_dir() else [root / "etc/apt/sources.list"]
    for f in lists:
        if not f.is_file():
            continue
        for line in f.read_text(errors="replace").splitlines():
            words = re.sub(r"\[[^]]*\]", "", line.split("#", 1)[0]).split()
            if len(words) >= 3 and words[0] == "deb" and not words[2].endswith("-security"):
                candidates.append(words[1])
    for uri in candidates:
        if uri.rstrip("/").endswith("/debian"):
            return uri.rstrip("/")
    return candidates[0].rstrip("/") if candidates else None


def _deb822(stanza: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    key = None
    for line in stanza.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        if line[0].isspace() and key:
            fields[key] += " " + line.strip()
        elif ":" in line:
            key, value = line.split(":", 1)
            key = key.strip().lower()
            fields[key] = value.strip()
    return fields


def load_config(home: Path | None = None) -> Config:
    """Read `config.toml` from the state home (if any) and fill in defaults."""
    home = (home or default_home()).absolute()
    path = home / "config.toml"
    data: dict[str, Any] = {}  # parsed TOML, checked field by field below
    if path.is_file():
        try:
            data = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as e:
            raise InvalidInput(f"config is not valid TOML: {e}", file=str(path), hint="fix the syntax") from e
    mirrors = data.get("mirrors", {})
    rewrites = tuple(
        UriRewrite(str(r["prefix"]), str(r["target"])) for r in data.get("uri_rewrites", []) if "prefix" in r and "target" in r
    )
    allowed = data.get("locations", {}).get("allowed")
    regions_cfg = data.get("regions") or {name: {} for name in DEFAULT_REGIONS}
    regions = tuple(
        RegionConfig(
            name=name,
            kind=str(r.get("kind", "folder")),
            path=str(r.get("path") or home / "regions" / name),
            url=str(r.get("url", "")),
            container=str(r.get("container", "")),
        )
        for name, r in regions_cfg.items()
    )
    return Config(
        home=home,
        debian_mirror=mirrors.get("debian") or host_debian_mirror(),
        ubuntu_mirror=mirrors.get("ubuntu"),
        uri_rewrites=rewrites,
        allowed_locations=tuple(allowed) if allowed else None,
        regions=regions,
        cluster=_cluster(data.get("cluster", {}), path),
    )


_BLOBS_SETTINGS = ("endpoint_url", "region", "access_key_id", "secret_access_key", "connection_string", "account_url")
_BLOBS_HINT = 'use "s3://BUCKET[/PREFIX]", "azureblob://CONTAINER[/PREFIX]" or "file:///ABSOLUTE/PATH"'


_QUEUE_HINT = 'use "redis://HOST:PORT/DB" (or rediss:// for TLS, unix:///PATH/redis.sock), e.g. "redis://127.0.0.1:6379/0"'


def _queue(table: dict[str, Any], path: Path) -> str:
    url = table.get("queue", "")
    if not isinstance(url, str):
        raise InvalidInput("cluster.queue must be a string", file=str(path), path="cluster.queue", hint=_QUEUE_HINT)
    if not url:
        return ""
    parts = urlsplit(url)

    def bad(why: str) -> InvalidInput:
        return InvalidInput(f"cluster.queue {url!r}: {why}", file=str(path), path="cluster.queue", hint=_QUEUE_HINT)

    if parts.scheme not in ("redis", "rediss", "unix"):
        raise bad(f"unknown scheme {parts.scheme + '://' if parts.scheme else '(none)'}")
    try:
        port = parts.port
    except ValueError:
        raise bad("the port is not a number from 1 to 65535") from None
    if parts.scheme == "unix":
        if not parts.path.startswith("/"):
            raise bad("a unix URL names the socket's absolute path")
        return url
    if not parts.hostname:
        raise bad("the host is missing")
    if port == 0:
        raise bad("the port is not a number from 1 to 65535")
    db = parts.path.strip("/")
    if db and not db.isdigit():
        raise bad(f"the database {db!r} is not a number")
    return url


def _cluster(table: object, path: Path) -> ClusterConfig:
    """The `[cluster]` table: the queue, the shared catalog URL and the blob settings."""
    if not isinstance(table, dict):
        raise InvalidInput("[cluster] must be a table", file=str(path), path="cluster", hint="write [cluster] on its own line")
    queue = _queue(table, path)
    # KILN_CATALOG names the catalog when config.toml does not (as KILN_HOME names the state home).
    catalog = table.get("catalog", os.environ.get("KILN_CATALOG") or None)
    if catalog is not None and (not isinstance(catalog, str) or not catalog.startswith(("postgresql://", "postgresql+psycopg://"))):
        raise InvalidInput(f"cluster.catalog {catalog!r} is not a PostgreSQL URL", file=str(path), path="cluster.catalog",
                           hint='use "postgresql://USER[:PASSWORD]@HOST[:PORT]/DATABASE" (leave it out for the local SQLite catalog)')
    retries = table.get("retries", 0)
    if type(retries) is not int or retries not in (0, 1):  # noqa: E721 - a TOML true is not a count
        raise InvalidInput(f"cluster.retries {retries!r} is not 0 or 1", file=str(path), path="cluster.retries",
                           hint="retries = 1 enqueues a build whose worker was lost once more, on another worker; "
                                "0 (the default) fails it \"worker lost\"; never more than once")
    blobs = table.get("blobs")
    if blobs is None:
        return ClusterConfig(queue=queue, catalog=catalog, retries=retries)
    settings: dict[str, str] = {}
    for key in ("blobs", *(f"blobs_{s}" for s in _BLOBS_SETTINGS)):
        value = table.get(key, "")
        if not isinstance(value, str):
            raise InvalidInput(f"cluster.{key} must be a string", file=str(path), path=f"cluster.{key}", hint="quote it")
        settings[key] = value
    url = settings["blobs"]
    parts = urlsplit(url)
    extra = {s: settings[f"blobs_{s}"] for s in _BLOBS_SETTINGS}

    def bad(why: str) -> InvalidInput:
        return InvalidInput(f"cluster.blobs {url!r}: {why}", file=str(path), path="cluster.blobs", hint=_BLOBS_HINT)

    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
            raise bad("a file URL names an absolute path on this host")
        return ClusterConfig(SharedBlobsConfig(url, "file", path=unquote(parts.path).rstrip("/") or "/", **extra),
                             queue=queue, catalog=catalog, retries=retries)
    if parts.scheme in ("s3", "azureblob"):
        if not parts.netloc:
            raise bad("the bucket or container name is missing")
        prefix = parts.path.strip("/")
        kind: Literal["s3", "azureblob"] = "s3" if parts.scheme == "s3" else "azureblob"
        return ClusterConfig(SharedBlobsConfig(url, kind, container=parts.netloc, prefix=prefix + "/" if prefix else "",
                                               **extra), queue=queue, catalog=catalog, retries=retries)
    raise bad(f"unknown scheme {parts.scheme + '://' if parts.scheme else '(none)'}")
