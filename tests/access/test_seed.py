"""A NoCloud seed as cloud-init reads it: an ISO 9660 volume labelled cidata whose meta-data and
user-data say what the seed was asked to say (read back with xorriso, not with kiln's code)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from kiln.access.keys import make_key, read_public_key
from kiln.access.seed import Seed, write_seed
from kiln.errors import InvalidInput


def extract(iso: Path, name: str, out: Path) -> str:
    subprocess.run(["xorriso", "-osirrox", "on", "-indev", str(iso), "-extract", f"/{name}", str(out / name)],
                   check=True, capture_output=True)
    return (out / name).read_text()


def test_a_seed_is_a_cidata_volume_with_the_user_and_key(tmp_path: Path) -> None:
    key = make_key(tmp_path / "key")
    assert key.public.startswith("ssh-ed25519 ") and (tmp_path / "key").stat().st_mode & 0o077 == 0
    iso = write_seed(Seed("i-123", "vm1", "azureuser", (key.public,)), tmp_path / "seed.iso")
    label = iso.read_bytes()[16 * 2048 + 40:16 * 2048 + 72].decode().strip()
    assert label == "cidata"
    assert json.loads(extract(iso, "meta-data", tmp_path)) == {"instance-id": "i-123", "local-hostname": "vm1"}
    user_data = extract(iso, "user-data", tmp_path)
    assert user_data.startswith("#cloud-config\n")
    (user,) = json.loads(user_data.split("\n", 1)[1])["users"]
    assert user["name"] == "azureuser" and user["ssh_authorized_keys"] == [key.public]


def test_a_private_key_given_as_public_is_refused_with_a_hint(tmp_path: Path) -> None:
    make_key(tmp_path / "key")
    assert read_public_key(tmp_path / "key.pub").startswith("ssh-ed25519 ")
    with pytest.raises(InvalidInput, match="not an OpenSSH public key") as e:
        read_public_key(tmp_path / "key")
    assert ".pub" in (e.value.hint or "")
