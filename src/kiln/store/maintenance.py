"""Keeping the store honest: garbage collection and the integrity check.

`gc` removes what nothing needs: blobs no catalog row references and no live process leases,
replicas of such blobs in folder and Azure regions, expired leases (their process is gone),
temporary `.unverified` files left by killed processes (their name carries the owner's pid), and
the work directories of killed runs (their lock is free, see kiln.store.worklock) unless they
hold a `.kiln-keep` file. It works with the leases table locked (SQLite: the database's write
lock; PostgreSQL: `LOCK TABLE leases IN EXCLUSIVE MODE`, taken before its snapshot), so no
process can start referencing a blob while gc decides to delete it (a publisher leases a blob
before it makes it visible), while writers that take or drop no lease go on meanwhile. Two gcs
at once take turns on that lock; killed runs' work dirs are claimed by their file lock
(kiln.store.worklock), so two hosts never remove the same one. The order is always: commit the rows' deletion, then delete the bytes. A gc killed in
between leaves files no row references, which the next gc finds on disk and takes; the other
order would leave a row whose bytes are gone.

`check` is what "the catalog is consistent" means, and what the kill tests assert after every kill:
every referenced blob has a row and a complete file whose bytes match its digest; every image and
gallery version has its replicas; no blob file is visible under a final name without being
complete (verified by re-hashing); runs refer to templates that exist. It also reports killed
runs' leftover work directories (gc removes them).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kiln.events import Monitor, NullMonitor
from kiln.store import files, worklock
from kiln.store.blobs import BlobCorrupt, pid_alive
from kiln.store.db import Db
from kiln.store.worklock import KEEP_MARKER

if TYPE_CHECKING:
    from kiln.config import RegionConfig
    from kiln.store.store import Store


@dataclass
class GcReport:
    blobs: list[str] = field(default_factory=list)
    replicas: list[str] = field(default_factory=list)
    temp_files: list[str] = field(default_factory=list)
    work_dirs: list[str] = field(default_factory=list)
    shared: list[str] = field(default_factory=list)  # digests deleted from the shared blob store
    leases: int = 0
    bytes_freed: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"blobs": self.blobs, "replicas": self.replicas, "tempFiles": self.temp_files,
                "workDirs": self.work_dirs, "sharedBlobs": self.shared, "expiredLeases": self.leases, "bytesFreed": self.bytes_freed}


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
    # A VM's overlay reads its image's blob (by path, in the blob store): the blob stays while the VM does.
    for r in db.query("SELECT digest FROM vms"):
        digests.add(r["digest"])
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
    """Forget, then delete: rows go in one committed transaction, bytes only after it.

    A kill at any instant leaves at worst a file that no row references, which the next gc takes
    (phase 2 looks at what is on disk, not at what phase 1 decided). The other order would leave
    a row whose bytes are gone, which no later run can repair.
    """
    monitor = monitor or NullMonitor()
    report = GcReport()
    monitor.step("gc")
    with store.catalog.write(tables=["leases"]) as db:
        for r in db.execute("SELECT id, pid, pid_start FROM leases").fetchall():
            if not pid_alive(r["pid"], r["pid_start"]):
                db.execute("DELETE FROM leases WHERE id = ?", (r["id"],))
                report.leases += 1
        live = _live_leases(db)
        digests, needed_replicas = _referenced(store)
        keep = digests | live
        for r in db.execute("SELECT region, digest FROM replicas").fetchall():
            if r["digest"] not in live and (r["region"], r["digest"]) not in needed_replicas:
                db.execute("DELETE FROM replicas WHERE region = ? AND digest = ?", (r["region"], r["digest"]))
                report.replicas.append(f"{r['region']}/{r['digest']}")
        for r in db.execute("SELECT digest FROM blobs").fetchall():
            if r["digest"] not in keep:
                db.execute("DELETE FROM replicas WHERE digest = ?", (r["digest"],))
                db.execute("DELETE FROM blobs WHERE digest = ?", (r["digest"],))
                report.blobs.append(r["digest"])
    _delete_unreferenced_bytes(store, report, monitor)
    for p in _temp_files(store):
        if _owner_gone(p):
            try:
                report.bytes_freed += p.stat().st_blocks * 512
                p.unlink()
                report.temp_files.append(str(p))
            except FileNotFoundError:
                pass
    _reclaim_work_dirs(store, report)
    monitor.result("gc", message=f"{len(report.blobs)} blob(s), {len(report.replicas)} replica(s), "
                                 f"{len(report.temp_files)} temp file(s), {len(report.work_dirs)} work dir(s)")
    return report


def _live_leases(db: Db) -> set[str]:
    return {r["digest"] for r in db.execute("SELECT digest, pid, pid_start FROM leases").fetchall()
            if pid_alive(r["pid"], r["pid_start"])}


def _freed(p: Path) -> int:
    try:
        st = p.stat()
    except FileNotFoundError:
        return 0
    return st.st_blocks * 512 if st.st_nlink == 1 else 0  # a hardlinked replica frees nothing until the last name


def _delete_unreferenced_bytes(store: Store, report: GcReport, monitor: Monitor) -> None:
    """Delete blob and replica files no row references (this gc's or a killed gc's leftovers).

    Under the leases lock, though nothing is written: a publisher leases a digest (a write) before
    it looks for the digest's file, so no file can gain a user while it is being deleted here.
    """
    with store.catalog.write(tables=["leases"]) as db:
        live = _live_leases(db)
        blob_rows = {r["digest"] for r in db.execute("SELECT digest FROM blobs").fetchall()}
        replica_rows = {(r["region"], r["digest"]) for r in db.execute("SELECT region, digest FROM replicas").fetchall()}
        for p in sorted(store.blobs.root.glob("??/*.vhd")):
            digest = p.name[:-4]
            if digest not in blob_rows and digest not in live:
                report.bytes_freed += _freed(p)
                p.unlink(missing_ok=True)
                if digest not in report.blobs:
                    report.blobs.append(digest)
        report.shared = store.blobs.sweep_shared(blob_rows | live, monitor)
        for region in store.config.regions:
            key = region.name.lower()
            if region.kind == "folder":
                found = sorted(Path(region.path).glob("*.vhd")) if Path(region.path).is_dir() else []
                names: dict[str, Path | None] = {p.name[:-4]: p for p in found}
            elif region.kind == "azureblob":
                names = _azure_names(region, monitor)
            else:
                continue
            for digest, replica in names.items():
                if (key, digest) in replica_rows or digest in live or not _is_digest(digest):
                    continue
                if replica is not None:  # a folder region's file
                    report.bytes_freed += _freed(replica)
                    replica.unlink(missing_ok=True)
                else:
                    _azure_delete(region, digest, monitor)
                if f"{key}/{digest}" not in report.replicas:
                    report.replicas.append(f"{key}/{digest}")


def _is_digest(name: str) -> bool:
    return len(name) == 64 and all(c in "0123456789abcdef" for c in name)


def _azure_names(region: RegionConfig, monitor: Monitor) -> dict[str, Path | None]:
    from kiln.errors import KilnError
    from kiln.store import azureblob

    try:
        return dict.fromkeys(azureblob.list_digests(region))
    except KilnError as e:  # its catalog is already right; its leftovers wait for a gc that reaches it
        monitor.log(f"gc: {e.message} (its unreferenced page blobs stay until the next gc)")
        return {}


def _azure_delete(region: RegionConfig, digest: str, monitor: Monitor) -> None:
    from kiln.errors import KilnError
    from kiln.store import azureblob

    try:
        azureblob.delete_vhd(digest, region)
    except KilnError as e:
        monitor.log(f"gc: {e.message} (the page blob {digest}.vhd stays until the next gc)")


def _dir_size(path: Path) -> int:
    total = 0
    for p in path.rglob("*"):
        try:
            st = p.lstat()
        except OSError:
            continue
        if st.st_nlink == 1 or p.is_dir():
            total += st.st_blocks * 512
    return total


def leftover_work_dirs(store: Store) -> list[tuple[Path, int]]:
    """(directory, bytes used) of work directories whose run's process is gone and that are not kept."""
    found = []
    for work, fd in worklock.dead_work_dirs(store.config.work_dir):
        try:
            if not (work / KEEP_MARKER).exists():
                found.append((work, _dir_size(work)))
        finally:
            os.close(fd)
    return found


def _reclaim_work_dirs(store: Store, report: GcReport) -> None:
    """Remove the work directories of runs that were killed (their lock is free), unless kept on purpose."""
    for work, fd in worklock.dead_work_dirs(store.config.work_dir):
        try:  # holding the dead run's lock: nobody else decides about this directory meanwhile
            if (work / KEEP_MARKER).exists():
                continue
            report.bytes_freed += _dir_size(work)
            shutil.rmtree(work, ignore_errors=True)
            report.work_dirs.append(str(work))
        finally:
            os.close(fd)


def _same_file(a: Path, b: Path) -> bool:
    """False also when `b` is not there (a shared store's blob this host has not fetched)."""
    try:
        return a.samefile(b)
    except FileNotFoundError:
        return False


def check(store: Store, *, verify_data: bool = True) -> list[str]:
    problems: list[str] = []
    db = store.catalog
    blob_rows = {r["digest"]: r for r in db.query("SELECT * FROM blobs")}
    digests, needed_replicas = _referenced(store)
    for digest in sorted(digests):
        if digest not in blob_rows:
            problems.append(f"a catalog row references blob {digest} which has no blobs row")
    shared_url = store.blobs.shared.url if store.blobs.shared is not None else ""
    shared = set(store.blobs.shared.digests()) if store.blobs.shared is not None else None
    for digest, r in sorted(blob_rows.items()):
        if shared is not None and digest not in shared:
            problems.append(f"blob {digest}: missing from the shared store {shared_url}")
        path = store.blobs.path_for(digest)
        if not path.exists():
            if shared is None:  # with a shared store, this host's cache fetches blobs when they are used
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
            elif verify_data and digest in blob_rows and not _same_file(p, store.blobs.path_for(digest)):
                try:
                    store.blobs.verify_file(p, digest, blob_rows[digest]["virtual_size"])
                except BlobCorrupt as e:
                    problems.append(f"region {region.name}: {e.message}")
    for work, used in leftover_work_dirs(store):
        problems.append(f"work directory {work} ({used >> 20} MiB) belongs to a run whose process is gone: "
                        "kiln gc removes it (a .kiln-keep file in it keeps it)")
    for r in db.query("SELECT run_id, template_key FROM runs"):
        if db.one("SELECT 1 FROM image_templates WHERE key = ?", (r["template_key"],)) is None:
            problems.append(f"run {r['run_id']} refers to template {r['template_key']}, which is not registered")
    return problems
