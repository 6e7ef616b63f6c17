"""Shared blobs (`[cluster] blobs`): two state homes on one catalog, as two hosts, share one blob store.

Every test runs against each backend: a shared folder (file://), S3 (moto's server, started here
on 127.0.0.1) and Azure Blob Storage (Azurite). Host B's `catalog.sqlite` is a symlink to host A's:
one catalog (what `[cluster] catalog` gives a fleet), two blob caches, two work dirs. The real CLI
runs in subprocesses; what the shared store holds is read with each backend's own SDK, not kiln's.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from envcheck import unavailable
from kiln.store import files
from kiln.store.blobs import BlobStore, KnownDigest
from kiln.store.db import Catalog
from store_helpers import KILN, REPO, free_port, kiln_cmd, make_disk

SUB = "/subscriptions/0000/resourceGroups/rg/providers"
IMAGE = f"{SUB}/Microsoft.Compute/images/web"
BUCKET = "kiln-blobs"
S3_KEYS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing", "region_name": "us-east-1"}


# ---------------------------------------------------------------- servers

@pytest.fixture(scope="session")
def moto_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """moto's S3 server on 127.0.0.1 (a free port), its spooled object data in a temp folder; yields its URL."""
    server = Path(sys.executable).parent / "moto_server"
    if not server.exists():
        unavailable("moto[server] is not installed (pip install -e .[test])")
    data = tmp_path_factory.mktemp("moto")
    port = free_port()
    proc = subprocess.Popen([str(server), "-H", "127.0.0.1", "-p", str(port)],  # a server: run() is for commands
                            env={**os.environ, "TMPDIR": str(data)}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        import boto3

        client = boto3.client("s3", endpoint_url=url, **S3_KEYS)
        deadline = time.monotonic() + 60
        while True:
            try:
                client.create_bucket(Bucket=BUCKET)
                break
            except Exception:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail("moto_server did not start")
                time.sleep(0.2)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


# ---------------------------------------------------------------- what the shared store holds, seen with each SDK

class Probe:
    """The shared store as its own SDK (or the filesystem) sees it."""

    @property
    def config(self) -> str:  # the [cluster] lines of config.toml
        raise NotImplementedError

    def visible(self, digest: str) -> bool:
        raise NotImplementedError

    def uploading(self) -> bool:  # an upload has begun and not completed
        raise NotImplementedError

    def read(self, digest: str) -> bytes:
        raise NotImplementedError

    def write(self, digest: str, data: bytes) -> None:
        raise NotImplementedError


@dataclass
class PosixProbe(Probe):
    root: Path

    @property
    def config(self) -> str:
        return f'[cluster]\nblobs = "{self.root.as_uri()}"\n'

    def _path(self, digest: str) -> Path:
        return self.root / digest[:2] / f"{digest}.vhd"

    def visible(self, digest: str) -> bool:
        return self._path(digest).exists()

    def uploading(self) -> bool:
        return any(p.stat().st_size > 0 for p in (self.root / "tmp").glob("*.unverified"))

    def read(self, digest: str) -> bytes:
        return self._path(digest).read_bytes()

    def write(self, digest: str, data: bytes) -> None:
        self._path(digest).chmod(0o644)
        self._path(digest).write_bytes(data)


@dataclass
class S3Probe(Probe):
    url: str
    prefix: str

    def __post_init__(self) -> None:
        import boto3

        self.client = boto3.client("s3", endpoint_url=self.url, **S3_KEYS)

    @property
    def config(self) -> str:
        return (f'[cluster]\nblobs = "s3://{BUCKET}/{self.prefix}"\nblobs_endpoint_url = "{self.url}"\n'
                f'blobs_region = "us-east-1"\nblobs_access_key_id = "testing"\nblobs_secret_access_key = "testing"\n')

    def _key(self, digest: str) -> str:
        return f"{self.prefix}/{digest}.vhd"

    def visible(self, digest: str) -> bool:
        return any(o["Key"] == self._key(digest) for o in
                   self.client.list_objects_v2(Bucket=BUCKET, Prefix=self.prefix).get("Contents", []))

    def uploading(self) -> bool:
        return bool(self.client.list_multipart_uploads(Bucket=BUCKET, Prefix=self.prefix).get("Uploads"))

    def read(self, digest: str) -> bytes:
        data: bytes = self.client.get_object(Bucket=BUCKET, Key=self._key(digest))["Body"].read()
        return data

    def write(self, digest: str, data: bytes) -> None:
        self.client.put_object(Bucket=BUCKET, Key=self._key(digest), Body=data)


@dataclass
class AzureProbe(Probe):
    conn: str
    prefix: str

    def __post_init__(self) -> None:
        from azure.storage.blob import BlobServiceClient

        self.container = BlobServiceClient.from_connection_string(self.conn).get_container_client("shared")

    @property
    def config(self) -> str:
        return f'[cluster]\nblobs = "azureblob://shared/{self.prefix}"\nblobs_connection_string = "{self.conn}"\n'

    def _name(self, digest: str) -> str:
        return f"{self.prefix}/{digest}.vhd"

    def visible(self, digest: str) -> bool:
        return any(b.name == self._name(digest) for b in self.container.list_blobs(name_starts_with=self.prefix))

    def uploading(self) -> bool:
        if not self.container.exists():
            return False
        return any(b.name.startswith(self.prefix) for b in self.container.list_blobs(include=["uncommittedblobs"]))

    def read(self, digest: str) -> bytes:
        data: bytes = self.container.download_blob(self._name(digest)).readall()
        return data

    def write(self, digest: str, data: bytes) -> None:
        self.container.upload_blob(self._name(digest), data, overwrite=True)


@pytest.fixture(params=["posix", "s3", "azure"])
def probe(request: pytest.FixtureRequest, tmp_path: Path) -> Probe:
    prefix = f"t-{uuid.uuid4().hex[:12]}"  # the servers live for the session: each test its own prefix
    if request.param == "posix":
        (tmp_path / "shared").mkdir()
        return PosixProbe(tmp_path / "shared")
    if request.param == "s3":
        return S3Probe(request.getfixturevalue("moto_s3"), prefix)
    return AzureProbe(request.getfixturevalue("azurite"), prefix)


@dataclass
class Hosts:
    a: Path
    b: Path

    def catalog(self) -> Catalog:
        """A's catalog (the state home's SQLite file, or tests/store's PostgreSQL database)."""
        return Catalog(os.environ.get("KILN_CATALOG") or self.a / "catalog.sqlite")

    def cached(self, home: Path, digest: str) -> Path:
        return home / "blobs" / digest[:2] / f"{digest}.vhd"


@pytest.fixture
def hosts(tmp_path: Path, probe: Probe) -> Hosts:
    """Two state homes, one catalog (B's is a symlink to A's), one region folder, the same [cluster] blobs."""
    a, b = tmp_path / "host-a", tmp_path / "host-b"
    config = f'[regions.eastus]\npath = "{tmp_path / "regions" / "eastus"}"\n\n{probe.config}'
    for home in (a, b):
        home.mkdir()
        (home / "config.toml").write_text(config)
    kiln_cmd(a, "region", "list", check=True)  # creates A's catalog
    (b / "catalog.sqlite").symlink_to(a / "catalog.sqlite")
    return Hosts(a, b)


def import_image(home: Path, disk: Path, image_id: str = IMAGE) -> dict[str, Any]:
    out = kiln_cmd(home, "image", "import", str(disk), "--id", image_id, "--location", "eastus", "--json", check=True)
    result: dict[str, Any] = json.loads(out.stdout)
    return result


# ---------------------------------------------------------------- tests

def test_one_host_publishes_the_other_fetches_and_verifies(hosts: Hosts, probe: Probe, raw_disk: Path,
                                                           tmp_path: Path) -> None:
    image = import_image(hosts.a, raw_disk)
    digest = image["kiln"]["digest"]
    assert probe.visible(digest)
    assert probe.read(digest) == hosts.cached(hosts.a, digest).read_bytes()  # the verified bytes, footer included

    # Host B sees the image in the catalog; listing fetches nothing.
    listed = json.loads(kiln_cmd(hosts.b, "image", "list", "--json", check=True).stdout)
    assert [i["kiln"]["digest"] for i in listed] == [digest]
    assert not hosts.cached(hosts.b, digest).exists()
    assert kiln_cmd(hosts.b, "store", "check", check=True).returncode == 0  # a blob not fetched yet is fine
    assert not hosts.cached(hosts.b, digest).exists()

    # Using the disk fetches it into B's cache, verified, and it is the disk A imported.
    out = tmp_path / "from-b.raw"
    kiln_cmd(hosts.b, "image", "export", IMAGE, "--format", "raw", "-o", str(out), check=True)
    assert out.read_bytes() == raw_disk.read_bytes()
    cached = hosts.cached(hosts.b, digest)
    assert cached.stat().st_mode & 0o222 == 0  # read-only, like every blob
    assert cached.read_bytes() == hosts.cached(hosts.a, digest).read_bytes()
    assert cached.stat().st_blocks * 512 < cached.stat().st_size // 4  # fetched sparse: the holes stay holes
    assert KnownDigest.compute(out).digest == digest
    for home in (hosts.a, hosts.b):
        assert kiln_cmd(home, "store", "check", check=True).returncode == 0


def test_gc_removes_unreferenced_shared_blobs_and_keeps_leased_ones(hosts: Hosts, probe: Probe, raw_disk: Path) -> None:
    from kiln.config import load_config
    from kiln.store import Store

    digest = import_image(hosts.a, raw_disk)["kiln"]["digest"]
    kiln_cmd(hosts.a, "image", "delete", IMAGE, check=True)
    with Store.open(load_config(hosts.a)) as store:  # a live process on host A still uses the disk
        with store.blobs.lease(digest, "test"):
            kept = json.loads(kiln_cmd(hosts.b, "gc", "--json", check=True).stdout)
            assert kept["sharedBlobs"] == [] and probe.visible(digest)
    gone = json.loads(kiln_cmd(hosts.b, "gc", "--json", check=True).stdout)
    assert gone["sharedBlobs"] == [digest]
    assert not probe.visible(digest)
    assert hosts.catalog().execute("SELECT COUNT(*) FROM blobs").fetchone()[0] == 0


def test_upload_killed_midway_leaves_no_row_and_no_object_then_retry_completes(
        hosts: Hosts, probe: Probe, tmp_path: Path) -> None:
    disk = make_disk(tmp_path / "big.raw", 320, 256, seed=7)  # 20 parts of 16 MiB, all data
    if isinstance(probe, PosixProbe) and files.try_reflink(disk, tmp_path / "clone"):
        pytest.skip("this filesystem reflinks: a shared-folder upload is one ioctl, with no mid-way to cut")
    digest = KnownDigest.compute(disk).digest
    env = {**os.environ, "KILN_HOME": str(hosts.a), "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.Popen([*KILN, "--progress", "quiet", "image", "import", str(disk), "--id", IMAGE,
                             "--location", "eastus"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while not probe.uploading():
        assert proc.poll() is None, "the import ended before its upload was seen"
        assert time.monotonic() < deadline, "no upload began"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL

    assert probe.uploading(), "the kill landed after the upload completed"
    assert not probe.visible(digest)
    db = hosts.catalog()
    assert db.execute("SELECT COUNT(*) FROM images").fetchone()[0] == 0
    assert db.execute("SELECT COUNT(*) FROM blobs").fetchone()[0] == 0
    db.close()

    # gc sweeps an unfinished upload only once it is an hour old (it may be another host's, still running).
    kiln_cmd(hosts.b, "gc", check=True)
    if isinstance(probe, S3Probe):  # moto reports every multipart upload as initiated in 2010: stale
        assert not probe.uploading()
    else:  # Azure drops uncommitted blocks itself, after a week
        assert probe.uploading()
    if isinstance(probe, PosixProbe):
        for p in (probe.root / "tmp").iterdir():
            os.utime(p, (time.time() - 7200, time.time() - 7200))
        kiln_cmd(hosts.b, "gc", check=True)
        assert not probe.uploading()

    import_image(hosts.a, disk)  # the retry: the local file was complete, the upload starts over
    assert probe.visible(digest)
    assert probe.read(digest) == hosts.cached(hosts.a, digest).read_bytes()
    out = tmp_path / "from-b.raw"
    kiln_cmd(hosts.b, "image", "export", IMAGE, "--format", "raw", "-o", str(out), check=True)
    assert KnownDigest.compute(out).digest == digest


def test_a_damaged_shared_object_is_detected_and_never_used(hosts: Hosts, probe: Probe, raw_disk: Path,
                                                            tmp_path: Path) -> None:
    digest = import_image(hosts.a, raw_disk)["kiln"]["digest"]
    data = bytearray(probe.read(digest))
    data[1 << 20] ^= 0xFF  # one flipped bit in the partition table's MiB: same size, same footer
    probe.write(digest, bytes(data))

    out = tmp_path / "from-b.raw"
    proc = kiln_cmd(hosts.b, "image", "export", IMAGE, "--format", "raw", "-o", str(out))
    assert proc.returncode == 1, proc.stderr
    assert f"the shared store's copy of blob {digest}" in proc.stderr and "it was not used" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not out.exists()
    assert not hosts.cached(hosts.b, digest).exists()
    assert not list((hosts.b / "blobs" / "tmp").iterdir())  # the damaged download is gone too


def test_cluster_blobs_config_mistakes_are_clear(tmp_path: Path, raw_disk: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "config.toml").write_text('[cluster]\nblobs = "ftp://somewhere/x"\n')
    proc = kiln_cmd(home, "image", "list")
    assert proc.returncode == 2 and "cluster.blobs" in proc.stderr and "unknown scheme ftp://" in proc.stderr
    assert "s3://BUCKET" in proc.stderr and "Traceback" not in proc.stderr

    # A shared folder that is not there (an unmounted share) fails the import, and nothing is published.
    (home / "config.toml").write_text(f'[cluster]\nblobs = "{(tmp_path / "not-mounted").as_uri()}"\n')
    proc = kiln_cmd(home, "image", "import", str(raw_disk), "--id", IMAGE, "--location", "eastus")
    assert proc.returncode == 1 and "is not a directory" in proc.stderr and "mount the shared folder" in proc.stderr
    assert json.loads(kiln_cmd(home, "image", "list", "--json", check=True).stdout) == []


def test_without_cluster_nothing_is_shared(kiln_home: Path, raw_disk: Path) -> None:
    from kiln.config import load_config
    from kiln.store import Store

    with Store.open(load_config(kiln_home)) as store:
        assert store.blobs.shared is None and isinstance(store.blobs, BlobStore)
        image = store.images.import_disk(raw_disk, IMAGE, "eastus")
        assert image.disk.path.is_relative_to(kiln_home / "blobs")
        assert store.gc().shared == []


@pytest.mark.parametrize("kind", ["s3", "azure"])
def test_an_unreachable_shared_store_fails_the_publish_cleanly(tmp_path: Path, raw_disk: Path, kind: str) -> None:
    home = tmp_path / "home"
    home.mkdir()
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    if kind == "s3":
        cluster = (f'[cluster]\nblobs = "s3://{BUCKET}/x"\nblobs_endpoint_url = "{dead}"\nblobs_region = "us-east-1"\n'
                   'blobs_access_key_id = "testing"\nblobs_secret_access_key = "testing"\n')
    else:
        conn = (f"DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=a2V5;"
                f"BlobEndpoint={dead}/devstoreaccount1;")
        cluster = f'[cluster]\nblobs = "azureblob://shared/x"\nblobs_connection_string = "{conn}"\n'
    (home / "config.toml").write_text(cluster)
    proc = kiln_cmd(home, "image", "import", str(raw_disk), "--id", IMAGE, "--location", "eastus")
    assert proc.returncode == 1, proc.stderr
    scheme = "s3" if kind == "s3" else "azureblob"
    assert f"shared blobs {scheme}://" in proc.stderr and "failed" in proc.stderr and "Traceback" not in proc.stderr
    db = Catalog(os.environ.get("KILN_CATALOG") or home / "catalog.sqlite")
    assert db.execute("SELECT COUNT(*) FROM images").fetchone()[0] == 0
    assert db.execute("SELECT COUNT(*) FROM blobs").fetchone()[0] == 0
