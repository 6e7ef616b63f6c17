"""A template's local files, packed into a shared blob folder on the submitter and unpacked on a
worker's host (kiln.cluster.jobfiles): which URIs travel, that the worker's fetch gets the
submitter's bytes, and that a damaged object is refused. No build: tests/cluster/test_cluster.py
runs one through the queue."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from kiln.cluster.jobfiles import pack, unpack
from kiln.config import load_config
from kiln.errors import KilnError
from kiln.fetch import Fetcher
from kiln.template.load import load_template_data


def home(root: Path, name: str, shared: Path, rewrites: str = "") -> Path:
    h = root / name
    h.mkdir()
    (h / "config.toml").write_text(f'[cluster]\nblobs = "file://{shared}"\n{rewrites}')
    return h


def templates(steps: list[dict]) -> tuple:
    doc = {"type": "Microsoft.VirtualMachineImages/imageTemplates", "apiVersion": "2022-02-14", "location": "westus2",
           "name": "files", "properties": {
               "source": {"type": "PlatformImage", "publisher": "Debian", "offer": "debian-12", "sku": "12-gen2",
                          "version": "latest"},
               "customize": steps,
               "distribute": [{"type": "VHD", "runOutputName": "out"}]}}
    return load_template_data(json.loads(json.dumps(doc)), file="t.json")


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_local_files_travel_and_remote_ones_do_not(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    here = tmp_path / "cwd"
    (here / "s").mkdir(parents=True)
    (here / "s" / "a.sh").write_text("echo a\n")
    (tmp_path / "b.txt").write_text("bee\n")
    mapped = tmp_path / "mirror"
    mapped.mkdir()
    (mapped / "c.sh").write_text("echo c\n")
    submitter = load_config(home(tmp_path, "submitter", shared,
                                 f'[[uri_rewrites]]\nprefix = "https://example.invalid/scripts/"\ntarget = "{mapped}"\n'))
    monkeypatch.chdir(here)  # a relative path is relative to where `kiln build` runs
    ts = templates([
        {"type": "Shell", "scriptUri": "s/a.sh"},
        {"type": "File", "sourceUri": (tmp_path / "b.txt").as_uri(), "destination": "/etc/b"},
        {"type": "Shell", "scriptUri": "https://example.invalid/scripts/c.sh"},  # the submitter's rewrite: local
        {"type": "Shell", "scriptUri": "https://example.invalid/elsewhere.sh"},  # remote: the worker fetches it
        {"type": "Shell", "scriptUri": "s/missing.sh"},  # no such file: the worker's step fails as a local one would
        {"type": "Shell", "scriptUri": "s/a.sh"},  # twice: once in the job
    ])
    files = pack(submitter, ts)
    assert files == {"s/a.sh": sha(b"echo a\n"), (tmp_path / "b.txt").as_uri(): sha(b"bee\n"),
                     "https://example.invalid/scripts/c.sh": sha(b"echo c\n")}
    assert sorted(p.name.split(".")[0] for p in shared.rglob("*.vhd")) == sorted(set(files.values()))

    monkeypatch.chdir(tmp_path)  # the worker runs elsewhere, with a state home of its own
    worker = unpack(load_config(home(tmp_path, "worker", shared)), json.loads(json.dumps(files)))
    fetcher = Fetcher(worker)
    assert fetcher.fetch_text("s/a.sh", sha(b"echo a\n")) == "echo a\n"
    assert fetcher.fetch_text((tmp_path / "b.txt").as_uri(), None) == "bee\n"
    assert fetcher.fetch_text("https://example.invalid/scripts/c.sh", None) == "echo c\n"
    assert fetcher.rewrite("https://example.invalid/elsewhere.sh") == "https://example.invalid/elsewhere.sh"
    assert fetcher.rewrite("s/a.sh.orig") == "s/a.sh.orig"  # exact rules match only their own URI
    assert all(Path(worker.cache_dir, "job-files", d).is_file() for d in files.values())


def test_a_damaged_shared_object_is_refused(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    (tmp_path / "a.sh").write_text("echo a\n")
    files = pack(load_config(home(tmp_path, "submitter", shared)),
                 templates([{"type": "Shell", "scriptUri": str(tmp_path / "a.sh")}]))
    (obj,) = shared.rglob("*.vhd")
    obj.chmod(0o644)
    obj.write_text("echo evil\n")
    worker = load_config(home(tmp_path, "worker", shared))
    with pytest.raises(KilnError, match="is damaged"):
        unpack(worker, files)
    assert not any((worker.cache_dir / "job-files").iterdir())


def test_no_shared_blobs_packs_nothing(tmp_path: Path) -> None:
    (tmp_path / "a.sh").write_text("echo a\n")
    h = tmp_path / "solo"
    h.mkdir()
    assert pack(load_config(h), templates([{"type": "Shell", "scriptUri": str(tmp_path / "a.sh")}])) == {}
