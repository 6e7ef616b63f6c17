"""An Azure Blob Storage region (Azurite, started by the fixture on 127.0.0.1): VHDs become page
blobs, empty pages are never sent, and a replica already there is not sent again."""

from __future__ import annotations

from pathlib import Path

from kiln.config import load_config
from kiln.store import Store, azureblob

SUB = "/subscriptions/0000/resourceGroups/rg/providers"


def test_replicate_to_azure_blob_region(kiln_home: Path, raw_disk: Path, azurite: str) -> None:
    (kiln_home / "config.toml").write_text(
        f'[regions.eastus]\n[regions.cloud]\nkind = "azureblob"\nurl = "{azurite}"\ncontainer = "images"\n')
    config = load_config(kiln_home)
    with Store.open(config) as store:
        image = store.images.import_disk(raw_disk, f"{SUB}/Microsoft.Compute/images/web", "cloud")
        region = store.regions.get("cloud")
        replica = store.regions.get_replica("cloud", image.digest)
        assert replica is not None and replica.method == "page blob" and replica.uri.endswith(f"/images/{image.digest}.vhd")
        assert azureblob.download(region, image.digest) == image.disk.path.read_bytes()
        client = azureblob._container(region).get_blob_client(f"{image.digest}.vhd")
        sent = sum(r.end + 1 - r.start for r in client.list_page_ranges() if not r.cleared)
        allocated = image.disk.path.stat().st_blocks * 512
        assert 0 < sent <= allocated + 4096 < image.disk.path.stat().st_size // 4  # only the data pages (and the footer)
        # Replicating again sends nothing; a gallery version in that region reuses the page blob.
        again = store.regions.replicate(store.blobs.get(image.digest), "cloud")
        assert again.method == "existing"
        assert store.check() == []
        store.images.delete(image.id)
        assert store.gc().replicas == [f"cloud/{image.digest}"]
        assert azureblob.stored_digest(region, image.digest) is None


def test_unreachable_account_is_a_clear_error(kiln_home: Path, raw_disk: Path) -> None:
    bad = "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=a2V5;BlobEndpoint=http://127.0.0.1:9/devstoreaccount1;"
    (kiln_home / "config.toml").write_text(f'[regions.cloud]\nkind = "azureblob"\nurl = "{bad}"\ncontainer = "c"\n')
    import pytest

    from kiln.errors import KilnError

    with Store.open(load_config(kiln_home)) as store, pytest.raises(KilnError, match="region cloud: Azure Blob Storage failed"):
        store.images.import_disk(raw_disk, f"{SUB}/Microsoft.Compute/images/web", "cloud")
