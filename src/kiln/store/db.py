"""The catalog database: SQLite in WAL mode, shared safely by many kiln processes.

Every write happens in a `BEGIN IMMEDIATE` transaction (`Catalog.write()`), which takes SQLite's
write lock up front: two processes that both read-then-write (say, "highest version, plus one")
are serialised instead of both computing the same answer. Readers never block writers (WAL).
`busy_timeout` makes a waiting process wait rather than fail.

The schema is versioned from the first release: `MIGRATIONS` is an append-only list, the database's
`PRAGMA user_version` says how many have been applied, and `open_catalog` applies the rest inside
one write transaction (so two processes starting at once cannot both migrate). A later part adds
DevTest Labs tables by appending a migration, never by editing an old one.

`synchronous = FULL` makes every commit an fsync of the WAL: a few milliseconds each, so many small
writes from many threads go through `GroupCommit`, which puts whatever is waiting into one
transaction.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar, cast

MIGRATIONS: list[tuple[str, ...]] = [
    # 1: blobs, managed images, galleries, regions' replicas, templates, runs, run outputs, leases.
    (
        """CREATE TABLE blobs (
            digest TEXT PRIMARY KEY,
            virtual_size INTEGER NOT NULL,
            size INTEGER NOT NULL,
            created REAL NOT NULL)""",
        """CREATE TABLE images (
            key TEXT PRIMARY KEY,
            id TEXT NOT NULL,
            location TEXT NOT NULL,
            os_type TEXT NOT NULL,
            os_state TEXT NOT NULL,
            hyper_v_generation TEXT NOT NULL,
            digest TEXT NOT NULL REFERENCES blobs(digest),
            tags TEXT NOT NULL DEFAULT '{}',
            source TEXT NOT NULL DEFAULT '',
            boot_tested INTEGER NOT NULL DEFAULT 0,
            created REAL NOT NULL)""",
        """CREATE TABLE galleries (
            key TEXT PRIMARY KEY,
            id TEXT NOT NULL,
            location TEXT NOT NULL,
            description TEXT NOT NULL DEFAULT '',
            created REAL NOT NULL)""",
        """CREATE TABLE gallery_images (
            key TEXT PRIMARY KEY,
            id TEXT NOT NULL,
            gallery_key TEXT NOT NULL REFERENCES galleries(key),
            publisher TEXT NOT NULL,
            offer TEXT NOT NULL,
            sku TEXT NOT NULL,
            os_type TEXT NOT NULL,
            os_state TEXT NOT NULL,
            hyper_v_generation TEXT NOT NULL,
            created REAL NOT NULL)""",
        """CREATE TABLE gallery_image_versions (
            key TEXT PRIMARY KEY,
            id TEXT NOT NULL,
            image_key TEXT NOT NULL REFERENCES gallery_images(key),
            major INTEGER NOT NULL,
            minor INTEGER NOT NULL,
            patch INTEGER NOT NULL,
            digest TEXT NOT NULL REFERENCES blobs(digest),
            exclude_from_latest INTEGER NOT NULL DEFAULT 0,
            target_regions TEXT NOT NULL DEFAULT '[]',
            tags TEXT NOT NULL DEFAULT '{}',
            source TEXT NOT NULL DEFAULT '',
            boot_tested INTEGER NOT NULL DEFAULT 0,
            created REAL NOT NULL,
            UNIQUE (image_key, major, minor, patch))""",
        """CREATE TABLE replicas (
            region TEXT NOT NULL,
            digest TEXT NOT NULL REFERENCES blobs(digest),
            uri TEXT NOT NULL,
            method TEXT NOT NULL,
            created REAL NOT NULL,
            PRIMARY KEY (region, digest))""",
        """CREATE TABLE image_templates (
            key TEXT PRIMARY KEY,
            id TEXT NOT NULL,
            template_json TEXT NOT NULL,
            created REAL NOT NULL,
            updated REAL NOT NULL)""",
        """CREATE TABLE runs (
            run_id TEXT PRIMARY KEY,
            template_key TEXT NOT NULL,
            run_state TEXT NOT NULL,
            run_sub_state TEXT NOT NULL,
            message TEXT NOT NULL DEFAULT '',
            start_time REAL NOT NULL,
            end_time REAL,
            log_path TEXT NOT NULL DEFAULT '',
            pid INTEGER,
            pid_start TEXT NOT NULL DEFAULT '')""",
        "CREATE INDEX runs_by_template ON runs (template_key, start_time)",
        """CREATE TABLE run_outputs (
            run_id TEXT NOT NULL REFERENCES runs(run_id),
            name TEXT NOT NULL,
            template_key TEXT NOT NULL,
            target_type TEXT NOT NULL,
            artifact_id TEXT NOT NULL DEFAULT '',
            artifact_uri TEXT NOT NULL DEFAULT '',
            provisioning_state TEXT NOT NULL,
            error TEXT NOT NULL DEFAULT '',
            created REAL NOT NULL,
            PRIMARY KEY (run_id, name))""",
        "CREATE INDEX run_outputs_by_template ON run_outputs (template_key, name, created)",
        """CREATE TABLE leases (
            id INTEGER PRIMARY KEY,
            digest TEXT NOT NULL,
            holder TEXT NOT NULL,
            pid INTEGER NOT NULL,
            pid_start TEXT NOT NULL,
            created REAL NOT NULL)""",
        "CREATE INDEX leases_by_digest ON leases (digest)",
    ),
    # 2: DevTest Labs: labs (in a region) and their custom images (kiln.store.labs).
    (
        """CREATE TABLE labs (
            key TEXT PRIMARY KEY,
            id TEXT NOT NULL,
            location TEXT NOT NULL,
            created REAL NOT NULL)""",
        """CREATE TABLE lab_custom_images (
            key TEXT PRIMARY KEY,
            id TEXT NOT NULL,
            lab_key TEXT NOT NULL REFERENCES labs(key),
            name TEXT NOT NULL,
            os_type TEXT NOT NULL,
            os_state TEXT NOT NULL,
            description TEXT NOT NULL DEFAULT '',
            author TEXT NOT NULL DEFAULT '',
            image_path TEXT NOT NULL DEFAULT '',
            digest TEXT NOT NULL REFERENCES blobs(digest),
            boot_tested INTEGER NOT NULL DEFAULT 0,
            source TEXT NOT NULL DEFAULT '',
            tags TEXT NOT NULL DEFAULT '{}',
            created REAL NOT NULL)""",
        "CREATE INDEX lab_custom_images_by_lab ON lab_custom_images (lab_key, image_path, created)",
    ),
    # 3: the REST API (kiln serve): its access tokens (hashed; kiln.store.tokens), the image
    # template resources it was given and its long-running operations (kiln.api.resources).
    (
        """CREATE TABLE api_tokens (
            name TEXT PRIMARY KEY,
            token_hash TEXT NOT NULL UNIQUE,
            subscriptions TEXT NOT NULL,
            read_only INTEGER NOT NULL DEFAULT 0,
            created REAL NOT NULL)""",
        """CREATE TABLE api_templates (
            key TEXT PRIMARY KEY,
            id TEXT NOT NULL,
            body TEXT NOT NULL,
            created_by TEXT NOT NULL,
            created REAL NOT NULL,
            updated_by TEXT NOT NULL,
            updated REAL NOT NULL)""",
        """CREATE TABLE api_operations (
            id TEXT PRIMARY KEY,
            kind TEXT NOT NULL,
            template_key TEXT NOT NULL,
            status TEXT NOT NULL,
            run_id TEXT NOT NULL DEFAULT '',
            error TEXT NOT NULL DEFAULT '',
            created REAL NOT NULL,
            ended REAL)""",
        "CREATE INDEX api_operations_by_template ON api_operations (template_key, created)",
    ),
    # 4: AIB triggers of API image templates (kiln.store.triggers): what each last saw of its
    # template's source, its status, and a run it asked for that no server has started yet.
    (
        """CREATE TABLE api_triggers (
            key TEXT PRIMARY KEY,
            id TEXT NOT NULL,
            template_key TEXT NOT NULL,
            kind TEXT NOT NULL,
            created_by TEXT NOT NULL,
            created REAL NOT NULL,
            seen TEXT NOT NULL DEFAULT '',
            status_code TEXT NOT NULL,
            status_message TEXT NOT NULL DEFAULT '',
            status_time REAL NOT NULL,
            pending TEXT NOT NULL DEFAULT '',
            last_operation TEXT NOT NULL DEFAULT '',
            last_reason TEXT NOT NULL DEFAULT '')""",
        "CREATE INDEX api_triggers_by_template ON api_triggers (template_key)",
    ),
    # 5: which Hyper-V generations an image's or version's disk boots, read from the disk when it
    # was published ("V1,V2" for kiln's hybrid disks; '' for rows made before this: unknown).
    (
        "ALTER TABLE images ADD COLUMN boot_generations TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE gallery_image_versions ADD COLUMN boot_generations TEXT NOT NULL DEFAULT ''",
    ),
    # 6: which boot test proved a built image (ssh-login | serial; '' when none ran), on the image
    # and on the run output that made it (kiln.validate.choose).
    (
        "ALTER TABLE images ADD COLUMN boot_test TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE run_outputs ADD COLUMN boot_test TEXT NOT NULL DEFAULT ''",
    ),
    # 7: virtual machines made from stored images (kiln.store.vms): each one's disk is an overlay
    # on its image's blob, so the blob stays while the VM does (kiln.store.maintenance keeps it).
    (
        """CREATE TABLE vms (
            key TEXT PRIMARY KEY,
            id TEXT NOT NULL,
            name TEXT NOT NULL,
            lab_key TEXT NOT NULL DEFAULT '',
            image_id TEXT NOT NULL,
            image_key TEXT NOT NULL,
            digest TEXT NOT NULL REFERENCES blobs(digest),
            os_type TEXT NOT NULL,
            hyper_v_generation TEXT NOT NULL,
            admin_username TEXT NOT NULL,
            public_key TEXT NOT NULL,
            key_path TEXT NOT NULL,
            ssh_port INTEGER NOT NULL,
            cpus INTEGER NOT NULL,
            memory_mib INTEGER NOT NULL,
            disk_size INTEGER NOT NULL,
            dir TEXT NOT NULL,
            pid INTEGER,
            pid_start TEXT NOT NULL DEFAULT '',
            created REAL NOT NULL)""",
        "CREATE INDEX vms_by_name ON vms (name)",
        "CREATE INDEX vms_by_digest ON vms (digest)",
    ),
]


class Catalog:
    """One connection to the catalog. Not shared between threads; open one per process/thread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        # isolation_level=None: no implicit transactions; `write()` and `read()` say where they begin.
        self.conn = sqlite3.connect(path, timeout=60, isolation_level=None, check_same_thread=False)
        self.conn.row_factory = sqlite3.Row
        self.conn.execute("PRAGMA busy_timeout = 60000")
        self.conn.execute("PRAGMA journal_mode = WAL")
        self.conn.execute("PRAGMA synchronous = FULL")
        self.conn.execute("PRAGMA foreign_keys = ON")

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction holding the database's write lock from its first statement."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """A consistent snapshot for several reads."""
        self.conn.execute("BEGIN")
        try:
            yield self.conn
        finally:
            self.conn.execute("COMMIT")

    def query(self, sql: str, args: tuple[object, ...] = ()) -> list[sqlite3.Row]:
        return self.conn.execute(sql, args).fetchall()

    def one(self, sql: str, args: tuple[object, ...] = ()) -> sqlite3.Row | None:
        row: sqlite3.Row | None = self.conn.execute(sql, args).fetchone()
        return row

    def close(self) -> None:
        self.conn.close()

    def dump(self) -> list[str]:
        """Every row of every table as text (tests compare dumps taken before and after)."""
        return list(self.conn.iterdump())


T = TypeVar("T")
R = TypeVar("R")


@dataclass
class _Slot(Generic[T, R]):
    item: T
    done: bool = False
    result: R | None = None
    error: BaseException | None = None


class GroupCommit(Generic[T, R]):
    """Many threads' small writes, committed together (group commit).

    Each commit costs an fsync (milliseconds) whatever it holds, and SQLite lets one writer in at a
    time, so threads that each commit their own row queue up behind each other's fsyncs. Here a
    thread hands its item to `submit` and waits: if no batch is being written, it writes every item
    queued so far (its own and others') with one call of its `write`, in its own connection; items
    that arrive meanwhile wait for the next batch. `write` returns one result per item, in order;
    if it raises, every item of that batch gets the exception. An item is written exactly once,
    and `submit` returns only after the transaction holding it has committed.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._queue: list[_Slot[T, R]] = []
        self._writing = False
        self.batches = 0  # transactions written, for tests and benchmarks

    @property
    def queued(self) -> int:
        """Items waiting for the next batch."""
        with self._cond:
            return len(self._queue)

    def submit(self, item: T, write: Callable[[Sequence[T]], Sequence[R]]) -> R:
        slot: _Slot[T, R] = _Slot(item)
        batch: list[_Slot[T, R]] = []
        with self._cond:
            self._queue.append(slot)
            while self._writing and not slot.done:
                self._cond.wait()
            if not slot.done:  # nobody is writing and ours is still queued: this thread writes the batch
                self._writing = True
                batch, self._queue = self._queue, []
        if batch:
            self._write(batch, write)
        if slot.error is not None:
            raise slot.error
        return cast(R, slot.result)  # set when done without an error (R itself may include None)

    def _write(self, batch: list[_Slot[T, R]], write: Callable[[Sequence[T]], Sequence[R]]) -> None:
        results: Sequence[R] = ()
        error: BaseException | None = None
        try:
            results = write([s.item for s in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"a batch write returned {len(results)} results for {len(batch)} items")
        except BaseException as e:  # handed to every thread of the batch, which re-raises it
            error = e
        with self._cond:
            for i, s in enumerate(batch):
                s.done, s.error = True, error
                if error is None:
                    s.result = results[i]
            self.batches += 1
            self._writing = False
            self._cond.notify_all()


def open_catalog(path: Path) -> Catalog:
    path.parent.mkdir(parents=True, exist_ok=True)
    cat = Catalog(path)
    (version,) = cat.conn.execute("PRAGMA user_version").fetchone()
    if version < len(MIGRATIONS):
        with cat.write() as db:
            (version,) = db.execute("PRAGMA user_version").fetchone()  # re-read under the lock
            for i in range(version, len(MIGRATIONS)):
                for stmt in MIGRATIONS[i]:
                    db.execute(stmt)
                db.execute(f"PRAGMA user_version = {i + 1}")
    return cat


def now() -> float:
    return time.time()
