"""The content-addressed blob store: every disk kiln keeps, once, named by its digest.

A blob is a fixed VHD: the disk's raw bytes (a whole number of MiB), then kiln's canonical
512-byte footer (`kiln.disk.vhd`). It lives at `blobs/<d[:2]>/<digest>.vhd`, read-only, where
`digest` is `kiln.store.digest.disk_digest` of the raw part. Because the footer is derived from
the digest, a blob verifies by recomputing the digest and comparing the footer bytes.

Publishing a disk the build assembled in the work dir (same filesystem) copies nothing: the file is
extended sparsely to a whole MiB, hashed, given its footer, fsynced and renamed into place. A
user's file is never modified: it is reflinked or sparse-copied first. Everything is written under
a temporary `.unverified` name and only renamed to the digest's name when complete, so a blob path
that exists is a complete blob, and a crash leaves at worst a temporary file that `kiln gc` removes.

A *lease* says "a live process is using this digest": gc never deletes a leased blob. A lease
records the holder's pid and its start time, so the lease of a killed process simply expires.

With a shared blob store (`[cluster] blobs`, see `kiln.store.shared`) this store is the host's
working copy and cache of it: publishing uploads the verified bytes under the digest's key and
only then inserts the catalog row; `get` of a blob this host does not have yet fetches it into the
cache, and verifies its digest before anyone uses it.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from kiln.disk import formats, vhd
from kiln.errors import KilnError
from kiln.events import Monitor, NullMonitor
from kiln.store import files
from kiln.store.db import Catalog, now
from kiln.store.digest import disk_digest
from kiln.store.shared import SharedBlobError, SharedBlobs


@dataclass(frozen=True)
class DiskRef:
    """A disk others can boot (`qemu -drive format=<format>,readonly=on`) and read partitions from at
    plain offsets (the data starts at byte 0). Blobs are shared: open them read-only or use a snapshot."""

    path: Path
    format: Literal["raw", "vpc"]
    virtual_size: int


@dataclass(frozen=True)
class KnownDigest:
    """A disk's digest computed ahead of publishing, with what identifies the exact file state it
    was computed from (inode, size, mtime): if any of them moved, the digest is not trusted.
    mtime ticks at the kernel's timestamp granularity (milliseconds), so this guards against a
    file that was changed or replaced, not against a racing writer; the build guarantees there is
    none (the boot test runs on an overlay)."""

    digest: str
    virtual_size: int
    inode: int
    size: int
    mtime_ns: int

    @classmethod
    def compute(cls, path: Path) -> KnownDigest:
        before = path.stat()
        virtual_size = vhd.round_up_mib(before.st_size)
        digest = disk_digest(path, virtual_size)
        after = path.stat()
        if (before.st_ino, before.st_size, before.st_mtime_ns) != (after.st_ino, after.st_size, after.st_mtime_ns):
            raise RuntimeError(f"{path} changed while it was hashed")
        return cls(digest, virtual_size, after.st_ino, after.st_size, after.st_mtime_ns)

    def matches(self, path: Path) -> bool:
        st = path.stat()
        return (st.st_ino, st.st_size, st.st_mtime_ns) == (self.inode, self.size, self.mtime_ns)


@dataclass(frozen=True)
class Blob:
    digest: str
    path: Path
    virtual_size: int
    size: int

    @property
    def disk(self) -> DiskRef:
        return DiskRef(self.path, "vpc", self.virtual_size)


class BlobCorrupt(KilnError):
    """A blob's bytes do not match its name."""


@functools.cache
def pid_space() -> str:
    """Which pids this process sees: the kernel's boot id and this pid namespace. A pid recorded in
    a catalog that hosts share means something only where both match (another machine, a reboot or
    another container's namespace all have other processes under the same numbers)."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        ns = os.readlink("/proc/self/ns/pid").removeprefix("pid:").strip("[]")
    except OSError:
        return ""
    return f"{boot}/{ns}"


def process_start(pid: int) -> str:
    """The start time of `pid` (from /proc), to tell a live holder from a reused pid, and the pid
    space it is in (`TICKS@SPACE`); '' if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return f"{stat.rsplit(')', 1)[1].split()[19]}@{pid_space()}"


def in_this_pid_space(start: str) -> bool:
    """A `process_start` record made where this process's pids are the same (a record from before
    the pid space was recorded, plain TICKS, is taken as this host's, as it was then)."""
    return "@" not in start or start.split("@", 1)[1] == pid_space()


def alive_here(pid: int, start: str) -> bool:
    """The very process recorded as (`pid`, `start`) is alive on this host."""
    if not start or not in_this_pid_space(start):
        return False
    now = process_start(pid)
    return bool(now) and (now == start or ("@" not in start and now.split("@", 1)[0] == start))


def pid_alive(pid: int, start: str) -> bool:
    """Alive as far as this host can tell: alive here, or recorded on another host (a shared
    catalog's run, lease or VM of another machine is that host's to judge, or the cluster's
    "worker lost" rule's; never reaped here for its pid being free on this machine)."""
    return (bool(start) and not in_this_pid_space(start)) or alive_here(pid, start)


class BlobStore:
    def __init__(self, root: Path, catalog: Catalog, work_dir: Path, shared: SharedBlobs | None = None) -> None:
        self.root = root
        self.tmp_dir = root / "tmp"
        self.catalog = catalog
        self.work_dir = work_dir
        self.shared = shared
        self.tmp_dir.mkdir(parents=True, exist_ok=True)

    def path_for(self, digest: str) -> Path:
        return self.root / digest[:2] / f"{digest}.vhd"

    def get(self, digest: str, *, fetch: bool = True) -> Blob:
        """The blob `digest` names, its file on this host (fetched from the shared store first if
        this host has none; `fetch=False` for callers that only want its metadata)."""
        row = self.catalog.one("SELECT * FROM blobs WHERE digest = ?", (digest,))
        if row is None:
            raise KilnError(f"blob {digest} is not in the catalog", hint="run kiln store check")
        blob = Blob(digest, self.path_for(digest), row["virtual_size"], row["size"])
        if fetch and self.shared is not None and not blob.path.exists():
            self.fetch_shared(digest, blob.virtual_size)
        return blob

    # ------------------------------------------------------------------ the shared store

    def fetch_shared(self, digest: str, virtual_size: int) -> Path:
        """Copy the shared store's object `digest` into this host's cache, verified first: a damaged
        object raises BlobCorrupt and never gets a name in the cache."""
        assert self.shared is not None
        final = self.path_for(digest)
        tmp = files.tmp_name(self.tmp_dir, "fetch")
        try:
            self.shared.fetch(digest, tmp)
            try:
                self.verify_file(tmp, digest, virtual_size)
            except BlobCorrupt as e:
                why = e.message.split(": ", 1)[-1]
                raise BlobCorrupt(f"the shared store's copy of blob {digest} ({self.shared.url}) is damaged: {why}; "
                                  "it was not used",
                                  hint="delete that object from the shared store: the next publish of this disk "
                                       "from a host whose cache holds it uploads it again") from None
            os.chmod(tmp, 0o444)
            final.parent.mkdir(exist_ok=True)
            if not final.exists():  # another process of this host may have fetched it meanwhile
                os.replace(tmp, final)
                files.fsync_dir(final.parent)
            return final
        except OSError as e:
            if (err := files.no_space(e, self.root)) is not None:
                raise err from e
            raise
        finally:
            tmp.unlink(missing_ok=True)

    def _share(self, digest: str, path: Path, monitor: Monitor) -> None:
        """Make sure the shared store holds `digest` (the verified local file `path`), before any row names it."""
        assert self.shared is not None
        if self.shared.exists(digest):
            return
        monitor.step("upload", f"{path.stat().st_size >> 20} MiB to {self.shared.url}")
        self.shared.put(digest, path)
        monitor.result("upload")

    def sweep_shared(self, keep: set[str], monitor: Monitor) -> list[str]:
        """gc: delete the shared objects whose digest is not in `keep` (the digests that have a catalog
        row or a live lease; the caller holds the catalog's write lock, so no publisher can start
        referencing one meanwhile), and what killed uploads left. Returns the deleted digests."""
        if self.shared is None:
            return []
        removed = []
        try:
            for digest in self.shared.digests():
                if digest not in keep:
                    self.shared.delete(digest)
                    removed.append(digest)
            self.shared.sweep_partial()
        except SharedBlobError as e:  # the catalog is already right: the leftovers wait for a gc that reaches it
            monitor.log(f"gc: {e.message} (unreferenced shared blobs stay until the next gc)")
        return removed

    # ------------------------------------------------------------------ leases

    @contextmanager
    def lease(self, digest: str, holder: str) -> Iterator[None]:
        """Keep gc away from `digest` while the block runs (and, if killed, until the pid is gone)."""
        lease_id = self.take_lease(digest, holder)
        try:
            yield
        finally:
            self.release_lease(lease_id)

    def take_lease(self, digest: str, holder: str) -> int:
        pid = os.getpid()
        with self.catalog.write() as db:
            cur = db.execute(
                "INSERT INTO leases (digest, holder, pid, pid_start, created) VALUES (?, ?, ?, ?, ?) RETURNING id",
                (digest, holder, pid, process_start(pid), now()),
            )
            row = cur.fetchone()
            assert row is not None
            return int(row[0])

    def release_lease(self, lease_id: int) -> None:
        with self.catalog.write() as db:
            db.execute("DELETE FROM leases WHERE id = ?", (lease_id,))

    def release_holder(self, holder: str) -> None:
        with self.catalog.write() as db:
            db.execute("DELETE FROM leases WHERE holder = ?", (holder,))

    def live_leases(self) -> set[str]:
        return {r["digest"] for r in self.catalog.query("SELECT * FROM leases") if pid_alive(r["pid"], r["pid_start"])}

    # ------------------------------------------------------------------ ingest

    def ingest(self, path: Path, *, holder: str, move: bool = False, monitor: Monitor | None = None,
               known: KnownDigest | None = None) -> Blob:
        """Put the disk at `path` into the store and return its blob (already there: deduplicated).

        `move=True` consumes a disk in the work dir (raw, or a fixed VHD): no byte is copied. Otherwise
        `path` is left untouched and its content is reflinked, sparse-copied or (qcow2, dynamic VHD)
        converted into a temporary file first. The blob is leased to `holder` before it becomes
        visible; the caller releases the lease (`release_holder`) once a catalog row references it.
        `known` is a digest the caller computed of this very file earlier (a build hashes its disk
        while the boot test runs); it is used only if the file provably did not change since.
        """
        monitor = monitor or NullMonitor()
        info = formats.detect(path)
        same_fs = _same_fs(path, self.root)
        try:
            if move and same_fs and (info.format == "raw" or info.subformat == "fixed"):
                work, data_size = path, info.data_size
            else:
                work, data_size = self._private_copy(path, info, monitor), None
            try:
                reuse = known if known is not None and work == path and known.matches(path) else None
                return self._publish(work, data_size, holder=holder, monitor=monitor, known=reuse)
            finally:
                if work != path:
                    work.unlink(missing_ok=True)
        except OSError as e:
            if (err := files.no_space(e, self.root)) is not None:
                raise err from e
            raise

    def _private_copy(self, path: Path, info: formats.DiskInfo, monitor: Monitor) -> Path:
        tmp = files.tmp_name(self.tmp_dir, "import")
        try:
            monitor.step("copy", f"{info.label} {path}")
            if info.format == "raw" or info.subformat == "fixed":
                if files.try_reflink(path, tmp):
                    os.truncate(tmp, info.data_size)
                    method = "reflink"
                else:
                    files.sparse_copy(path, tmp, info.data_size)
                    method = "sparse copy"
            else:
                formats.convert_to_raw(path, info, tmp)
                method = "qemu-img convert"
            monitor.result("copy", message=method)
            return tmp
        except BaseException as e:
            full = files.no_space(e, self.root) if isinstance(e, OSError) else None  # before the copy's room is freed
            tmp.unlink(missing_ok=True)
            if full is not None:
                raise full from e
            raise

    def _publish(self, work: Path, data_size: int | None, *, holder: str, monitor: Monitor,
                 known: KnownDigest | None = None) -> Blob:
        with work.open("r+b") as f:
            size = data_size if data_size is not None else os.fstat(f.fileno()).st_size
            virtual_size = vhd.round_up_mib(size)
            # A fixed VHD: drop its footer, zero-extend to the MiB (sparse, nothing written).
            os.ftruncate(f.fileno(), size)
            os.ftruncate(f.fileno(), virtual_size)
        if known is not None and known.virtual_size == virtual_size:
            digest = known.digest
            monitor.log(f"hash: {digest[:16]} (computed while the disk was boot-tested, file unchanged since)")
        else:
            monitor.step("hash", f"{virtual_size >> 20} MiB")
            digest = disk_digest(work, virtual_size)
            monitor.result("hash", message=digest[:16])
        vhd.append_fixed_footer(work, bytes.fromhex(digest)[:16])
        self.take_lease(digest, holder)
        final = self.path_for(digest)
        final.parent.mkdir(exist_ok=True)
        if final.exists():
            work.unlink()  # the same disk is already stored: this copy is redundant
        else:
            os.chmod(work, 0o444)  # blobs are shared by hardlinks: nobody may write them
            os.replace(work, final)
            files.fsync_dir(final.parent)
        if self.shared is not None:  # the row below may only exist once the shared store has the bytes
            self._share(digest, final, monitor)
        with self.catalog.write() as db:
            db.execute(
                "INSERT INTO blobs (digest, virtual_size, size, created) VALUES (?, ?, ?, ?) ON CONFLICT (digest) DO NOTHING",
                (digest, virtual_size, virtual_size + vhd.FOOTER_SIZE, now()),
            )
        return Blob(digest, final, virtual_size, virtual_size + vhd.FOOTER_SIZE)

    # ------------------------------------------------------------------ verification

    def verify_file(self, path: Path, digest: str, virtual_size: int) -> None:
        """Raise BlobCorrupt unless `path` is exactly the blob `digest` (size, data digest, footer)."""
        size = path.stat().st_size
        if size != virtual_size + vhd.FOOTER_SIZE:
            raise BlobCorrupt(f"{path}: {size} bytes, expected {virtual_size + vhd.FOOTER_SIZE}")
        with path.open("rb") as f:
            f.seek(virtual_size)
            footer = f.read(vhd.FOOTER_SIZE)
        if footer != vhd.make_footer(virtual_size, bytes.fromhex(digest)[:16]):
            raise BlobCorrupt(f"{path}: its VHD footer is not kiln's footer for {digest[:16]}")
        got = disk_digest(path, virtual_size)
        if got != digest:
            raise BlobCorrupt(f"{path}: content digest {got[:16]} does not match its name {digest[:16]}")

    def verify(self, blob: Blob) -> None:
        self.verify_file(blob.path, blob.digest, blob.virtual_size)


def content_digest(path: Path, info: formats.DiskInfo) -> str | None:
    """The digest the disk at `path` would be stored under, computed without storing anything (raw
    and MiB-aligned fixed VHD); None for formats that would need a conversion first."""
    if info.format == "raw" or (info.subformat == "fixed" and info.data_size % vhd.MIB == 0):
        return disk_digest(path, vhd.round_up_mib(info.data_size))
    return None


def _same_fs(a: Path, b: Path) -> bool:
    try:
        return a.stat().st_dev == b.stat().st_dev
    except OSError:
        return False
