"""Keeping the store honest: garbage collection and the integrity check.

`gc` removes what nothing needs: blobs no catalog row references and no live process leases,
replicas of such blobs in folder and Azure regions, expired leases (their process is gone), and
temporary `.unverified` files left by killed processes (their name carries the owner's pid). It
works under the catalog's write lock, so no process can start referencing a blob while gc decides
to delete it (a publisher leases a blob before it makes it visible).

`check` is what "the catalog is consistent" means, and what the kill tests assert after every kill:
every referenced blob has a row and a complete file whose bytes match its digest; every image and
gallery version has its replicas; no blob file is visible under a final name without being
complete (verified by re-hashing); runs refer to templates that exist.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from kiln.events import Monitor, NullMonitor
from kiln.store import files
from kiln.store.blobs import BlobCorrupt, pid_alive

if TYPE_CHECKING:
    from kiln.store.store import Store


@dataclass
class GcReport:
    blobs: list[str] = field(default_factory=list)
    replicas: list[str] = field(default_factory=list)
    temp_files: list[str] = field(default_factory=list)
    leases: int = 0
    bytes_freed: int = 0

    def to_json(self) -> dict:
        return {"blobs": self.blobs, "replicas": self.replicas, "tempFiles": self.temp_files,
                "expiredLeases": self.leases, "bytesFreed": self.bytes_freed}


def _referenced(store: Store) -> tuple[set[str], set[tuple[str, str]]]:
    """Digests that rows reference, and the (region, digest) replicas they need."""
    db = store.catalog
    digests: set[str] = set()
    replicas: set[tuple[str, str]] = set()
    for r in db.query("SELECT digest, location FROM images"):
        digests.add(r["digest"])
        replicas.add((r["location"].lower(), r["digest"]))

    # Lab custom images (kiln.store.labs) need their blob and its replica in the lab's region.
    for r in db.query("SELECT c.digest, l.location FROM lab_custom_images c JOIN labs l ON l.key = c.lab_key"):
        digests.add(r["digest"])
        replicas.add((r["location"].lower(), r["digest"]))
    for r in db.query("SELECT digest, target_regions FROM gallery_image_versions"):
        digests.add(r["digest"])
        for t in json.loads(r["target_regions"]):
            replicas.add((t["name"].lower(), r["digest"]))
    return digests, replicas


def _temp_files(store: Store) -> list[Path]:
    dirs = [store.blobs.tmp_dir, store.blobs.root, *[Path(r.path) for r in store.config.regions if r.kind == "folder"]]
    dirs += [p for p in store.blobs.root.iterdir() if p.is_dir()] if store.blobs.root.is_dir() else []
    found = []
    for d in dirs:
        if d.is_dir():
            found += [p for p in d.iterdir() if p.name.endswith(files.TMP_SUFFIX)]
    return found


def _owner_gone(path: Path) -> bool:
    pid = files.tmp_owner_pid(path)
    if pid is None:
        return True
    try:
        os.kill(pid, 0)
        return False
    except ProcessLookupError:
        return True
    except PermissionError:
        return False


def gc(store: Store, monitor: Monitor | None = None) -> GcReport:
    monitor = monitor or NullMonitor()
    report = GcReport()
    monitor.step("gc")
    with store.catalog.write() as db:
        leases = db.execute("SELECT id, digest, pid, pid_start FROM leases").fetchall()
        live = set()
        for r in leases:
            if pid_alive(r["pid"], r["pid_start"]):
                live.add(r["digest"])
            else:
                db.execute("DELETE FROM leases WHERE id = ?", (r["id"],))
                report.leases += 1
        digests, needed_replicas = _referenced(store)
        keep = digests | live
        for r in db.execute("SELECT region, digest FROM replicas").fetchall():
            if r["digest"] in live or (r["region"], r["digest"]) in needed_replicas:
                continue
            try:
                region = store.regions.get(r["region"])
            except Exception:
                region = None
            if region is not None and region.kind == "folder":
                p = store.regions.replica_path(region, r["digest"])
                if p.exists() and p.stat().st_nlink == 1:
                    report.bytes_freed += p.stat().st_blocks * 512
                p.unlink(missing_ok=True)
            elif region is not None:
                from kiln.store import azureblob

                azureblob.delete_vhd(r["digest"], region)
            db.execute("DELETE FROM replicas WHERE region = ? AND digest = ?", (r["region"], r["digest"]))
            report.replicas.append(f"{r['region']}/{r['digest']}")
        rows = {r["digest"] for r in db.execute("SELECT digest FROM blobs").fetchall()}
        on_disk = {p.name[:-4]: p for p in store.blobs.root.glob("??/*.vhd")}
        for digest in (rows | set(on_disk)) - keep:
            p = on_disk.get(digest)
            if p is not None:
                st = p.stat()
                if st.st_nlink == 1:
                    report.bytes_freed += st.st_blocks * 512
                p.unlink()
            db.execute("DELETE FROM replicas WHERE digest = ?", (digest,))
            db.execute("DELETE FROM blobs WHERE digest = ?", (digest,))
            report.blobs.append(digest)
        for p in _temp_files(store):
            if _owner_gone(p):
                try:
                    report.bytes_freed += p.stat().st_blocks * 512
                    p.unlink()
                    report.temp_files.append(str(p))
                except FileNotFoundError:
                    pass
    monitor.result("gc", message=f"{len(report.blobs)} blob(s), {len(report.replicas)} replica(s), "
                                 f"{len(report.temp_files)} temp file(s)")
    return report


def check(store: Store, *, verify_data: bool = True) -> list[str]:
    problems: list[str] = []
    db = store.catalog
    blob_rows = {r["digest"]: r for r in db.query("SELECT * FROM blobs")}
    digests, needed_replicas = _referenced(store)
    for digest in sorted(digests):
        if digest not in blob_rows:
            problems.append(f"a catalog row references blob {digest} which has no blobs row")
    for digest, r in sorted(blob_rows.items()):
        path = store.blobs.path_for(digest)
        if not path.exists():
            problems.append(f"blob {digest}: file {path} is missing")
            continue
        if verify_data:
            try:
                store.blobs.verify_file(path, digest, r["virtual_size"])
            except BlobCorrupt as e:
                problems.append(f"blob {digest}: {e.message}")
    # A file under a final blob name must be a complete blob even without a row (rows come later).
    for p in sorted(store.blobs.root.glob("??/*.vhd")):
        digest = p.name[:-4]
        if digest in blob_rows:
            continue
        if verify_data:
            try:
                size = p.stat().st_size
                store.blobs.verify_file(p, digest, size - 512)
            except BlobCorrupt as e:
                problems.append(f"unreferenced blob file {p} is not complete: {e.message}")
    replica_rows = {(r["region"], r["digest"]): r for r in db.query("SELECT * FROM replicas")}
    for region_key, digest in sorted(needed_replicas):
        if (region_key, digest) not in replica_rows:
            problems.append(f"region {region_key}: replica of {digest[:16]} is referenced but not recorded")
    for (region_key, digest), _r in sorted(replica_rows.items()):
        try:
            region = store.regions.get(region_key)
        except Exception:
            problems.append(f"replica of {digest[:16]} is in region {region_key}, which is not configured")
            continue
        if region.kind == "folder":
            p = store.regions.replica_path(region, digest)
            if not p.exists():
                problems.append(f"region {region.name}: replica file {p} is missing")
            elif verify_data and digest in blob_rows and not p.samefile(store.blobs.path_for(digest)):
                try:
                    store.blobs.verify_file(p, digest, blob_rows[digest]["virtual_size"])
                except BlobCorrupt as e:
                    problems.append(f"region {region.name}: {e.message}")
    for r in db.query("SELECT run_id, template_key FROM runs"):
        if db.one("SELECT 1 FROM image_templates WHERE key = ?", (r["template_key"],)) is None:
            problems.append(f"run {r['run_id']} refers to template {r['template_key']}, which is not registered")
    return problems
