"""The catalog database, on an SQLAlchemy Engine: SQLite (the embedded default) or PostgreSQL.

One schema (kiln.store.schema), one set of queries, both backends. A store module writes SQL
once, portable to both: `db.execute(sql, args)` with `?` markers, which become named binds of a
`text()` clause (so the driver's own paramstyle never shows), and only what both understand
(`INSERT ... ON CONFLICT`, `RETURNING`, `lower()`, no SQLite-only functions or `OR REPLACE`).
Rows answer to `row["col"]`, `row[0]` and tuple unpacking, as sqlite3.Row did.

Every write happens in a write transaction, which keeps one guarantee the store modules rely on:
a read-then-write ("highest version, plus one", "does this name exist yet", lease bookkeeping) is
never interleaved with a competing writer on the same thing. On SQLite that is `BEGIN IMMEDIATE`:
the database's one write lock, from the first statement (WAL: readers never block). SQLite has one
writer at a time anyway, so nothing finer would run more in parallel there.

On PostgreSQL there is no global lock (a writer into one gallery image definition must not wait
for a writer into another, or for a lab publish, or a lease); each transaction locks what it
competes on, and only that:

- `write(parents=[(table, key), ...])`: the hot spots, where many writers really collide (versions
  published into one definition, images committed into one lab, definitions created in one
  gallery). READ COMMITTED, and the first statements lock the parent rows (`SELECT ... FOR
  UPDATE`, in key order, so two multi-lab batches cannot deadlock). Every writer of a parent's
  children takes its lock, so writers into one parent queue, each seeing the previous one's commit
  once it holds the lock (each READ COMMITTED statement reads what is committed when it starts),
  and writers into different parents run in parallel. Chosen over SERIALIZABLE for these because
  a serializable transaction's snapshot is taken at its first statement, before the lock wait:
  every waiter would then read stale rows and fail with a serialization error, so a hot spot would
  retry (up to once per writer ahead of it) instead of queueing.
- `write(tables=[...])`: `LOCK TABLE ... IN EXCLUSIVE MODE` first (gc takes `leases`: no lease can
  be taken or dropped while gc decides what is unreferenced; readers go on).
- `transact(body)`: read-then-write without a parent row to lock (a new lab or image name, a VM's
  SSH port, an image in use by a VM): SERIALIZABLE, so PostgreSQL itself refuses an interleaving
  that no serial order would give (SQLSTATE 40001, or 40P01 for a deadlock), and the whole body is
  run again, a bounded number of times. `body` is a function of the Db because a `with` block
  cannot be re-run; it must do nothing but catalog work (or work that is safe to repeat).
- `write()` without locks: single statements (an upsert, an update by key, a conditional update
  such as "Running -> Failed"), which READ COMMITTED makes atomic and re-checks on the newest row.
- Where workers compete to handle one item (a run whose process is gone, seen by every `kiln runs
  list` at once), the rows are claimed with `claim_lock()`'s `FOR UPDATE SKIP LOCKED`: each reaper
  takes the rows nobody else holds, so each is handled once and nobody waits.

Opening takes one transaction-level advisory lock (`MIGRATE_LOCK`) around the migrations, the one
place where the whole schema is the thing competed for. A connection that dies (the server stopped
or unreachable) is a clear error naming the catalog (`InvalidInput`, exit 2); its open
transaction is rolled back by the server, so no partial rows stay behind.

The connection runs in autocommit mode and the transactions are begun and ended here by SQL, so a
statement outside `write()`/`read()` is its own transaction and nothing is left open between
calls (an idle PostgreSQL transaction would hold its snapshot and locks).

Opening applies Alembic migrations (kiln.store.migrations, inside the package: no alembic.ini)
inside one write transaction, so two processes opening at once cannot both migrate. A catalog made
before Alembic (SQLite, `PRAGMA user_version` 1..7, kiln.store.legacy) is finished to version 7
and stamped at the baseline revision, in place.

`synchronous = FULL` makes every SQLite commit an fsync of the WAL: a few milliseconds each, so
many small writes from many threads go through `GroupCommit`, which puts whatever is waiting into
one transaction (on PostgreSQL it saves a round trip and a commit per row as well).
"""

from __future__ import annotations

import json
import random
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Generic, TypeVar, cast

import sqlalchemy as sa
from sqlalchemy import event, exc
from sqlalchemy.pool import NullPool

from kiln.errors import InvalidInput
from kiln.store import legacy, schema

# pg_advisory_xact_lock key taken while migrating at open (any fixed 64-bit number; "kiln" in ASCII).
MIGRATE_LOCK = 0x6B696C6E
# Tables whose rows are parents that write(parents=...) locks (their primary key is `key`).
PARENT_TABLES = frozenset({"galleries", "gallery_images", "labs"})
# SQLSTATEs after which PostgreSQL asks for the transaction to be run again: serialization failure, deadlock.
RETRY_STATES = frozenset({"40001", "40P01"})
TRANSACT_ATTEMPTS = 30
CATALOG_HINT = "check [cluster] catalog in config.toml (postgresql://USER[:PASSWORD]@HOST[:PORT]/DATABASE) " \
               "and that the server is up and reachable from this host"

T = TypeVar("T")
R = TypeVar("R")


@lru_cache(maxsize=1024)
def _named(sql: str) -> tuple[sa.TextClause, tuple[str, ...]]:
    """`sql` with each `?` outside quotes made a named bind :p0, :p1, ... (and the names, in order)."""
    names: list[str] = []

    def bind(m: re.Match[str]) -> str:
        if m.group(0) != "?":
            return m.group(0)  # a quoted literal or identifier, left as it is
        names.append(f"p{len(names)}")
        return f":{names[-1]}"

    return sa.text(re.sub(r"'(?:[^']|'')*'|\"[^\"]*\"|\?", bind, sql)), tuple(names)


def _value(v: object) -> object:
    # Flags are 0/1 integers in both backends; PostgreSQL refuses a boolean for an integer column.
    return int(v) if isinstance(v, bool) else v


class Row:
    """One row: `row["col"]`, `row[0]`, `a, b = row`, `row.keys()` (what sqlite3.Row offered)."""

    __slots__ = ("_values", "_map")

    def __init__(self, row: sa.Row[Any]) -> None:
        self._values: tuple[Any, ...] = tuple(row)
        self._map = row._mapping

    def __getitem__(self, key: int | str) -> Any:
        return self._map[key] if isinstance(key, str) else self._values[key]

    def __iter__(self) -> Iterator[Any]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def keys(self) -> list[str]:
        return [str(k) for k in self._map.keys()]

    def __repr__(self) -> str:
        return f"Row({dict(self._map)!r})"


class Result:
    """A statement's rows (read at once, so no cursor stays open) and its rowcount."""

    def __init__(self, result: sa.CursorResult[Any]) -> None:
        self.rowcount: int = result.rowcount
        self._rows = [Row(r) for r in result] if result.returns_rows else []
        self._next = 0

    def fetchone(self) -> Row | None:
        if self._next >= len(self._rows):
            return None
        self._next += 1
        return self._rows[self._next - 1]

    def scalar(self) -> Any:
        """The first column of the first row (None if there is none): counts, max()."""
        return self._rows[0][0] if self._rows else None

    def fetchall(self) -> list[Row]:
        rows, self._next = self._rows[self._next:], len(self._rows)
        return rows

    def __iter__(self) -> Iterator[Row]:
        return iter(self.fetchall())


class Db:
    """What `write()` and `read()` hand out, and `Catalog.conn`: `execute(sql, args)` on one connection."""

    def __init__(self, connection: sa.Connection, url: str = "") -> None:
        self.connection = connection
        self.url = url

    def execute(self, sql: str, args: Sequence[object] | Mapping[str, object] = ()) -> Result:
        with _connection_errors(self.url):
            if isinstance(args, Mapping):
                return Result(self.connection.execute(sa.text(sql), {k: _value(v) for k, v in args.items()}))
            clause, names = _named(sql)
            if len(names) != len(args):
                raise TypeError(f"{len(names)} markers, {len(args)} arguments: {sql}")
            return Result(self.connection.execute(clause, {n: _value(a) for n, a in zip(names, args, strict=True)}))

    def executemany(self, sql: str, rows: Sequence[Sequence[object]]) -> None:
        """One statement for many rows (the driver's executemany: one round trip per batch)."""
        clause, names = _named(sql)
        with _connection_errors(self.url):
            self.connection.execute(clause, [{n: _value(a) for n, a in zip(names, row, strict=True)} for row in rows])

    def driver(self, sql: str) -> None:
        """A statement without binds (BEGIN, COMMIT, LOCK TABLE), straight to the driver."""
        with _connection_errors(self.url):
            self.connection.exec_driver_sql(sql)


def _sqlstate(e: BaseException) -> str | None:
    return getattr(getattr(e, "orig", None), "sqlstate", None)


def _connection_lost(e: exc.DBAPIError) -> bool:
    """The server went away or cannot be reached (not an error of the statement itself)."""
    if e.connection_invalidated:
        return True
    state = _sqlstate(e)
    if state is None:
        return isinstance(e, exc.OperationalError)  # the driver's own "server closed the connection"
    return state.startswith("08") or state in ("57P01", "57P02", "57P03")  # connection exception, shutdown


@contextmanager
def _connection_errors(url: str) -> Iterator[None]:
    try:
        yield
    except exc.DBAPIError as e:
        if url and "://" in url and _connection_lost(e):
            raise InvalidInput(f"lost the connection to the catalog {url}: {_first_line(e)}",
                               hint=CATALOG_HINT) from None
        raise


Parent = tuple[str, str]  # (table, key): a row write(parents=...) locks


class Catalog:
    """One connection to the catalog. Not shared between threads; open one per process/thread."""

    def __init__(self, where: Path | str) -> None:
        """`where`: an SQLite file, or a postgresql:// URL ([cluster] catalog)."""
        self.url, self.engine = _engine(where)
        self.dialect: str = self.engine.dialect.name  # "sqlite" | "postgresql"
        self.path = Path(where) if self.dialect == "sqlite" else None
        try:
            connection = self.engine.connect()
        except (exc.OperationalError, exc.InterfaceError) as e:
            self.engine.dispose()
            raise InvalidInput(f"cannot open the catalog {self.url}: {_first_line(e)}", hint=CATALOG_HINT) from None
        self.connection = connection.execution_options(isolation_level="AUTOCOMMIT")
        self.conn = Db(self.connection, self.url)
        self.retries = 0  # transact() bodies run again after a serialization failure (tests, benchmarks)

    def _begin(self, *, serializable: bool, parents: Sequence[Parent], tables: Sequence[str]) -> None:
        if self.dialect == "sqlite":
            self.conn.driver("BEGIN IMMEDIATE")  # the database's write lock: one writer, whatever it touches
            return
        self.conn.driver("BEGIN ISOLATION LEVEL " + ("SERIALIZABLE" if serializable else "READ COMMITTED"))
        try:
            for table in sorted(set(tables)):  # before any query: a serializable snapshot comes after the lock
                if table not in schema.metadata.tables:
                    raise ValueError(f"no table {table!r} to lock")
                self.conn.driver(f"LOCK TABLE {table} IN EXCLUSIVE MODE")
            for table, key in sorted(set(parents)):  # one order for all: two batches never deadlock
                if table not in PARENT_TABLES:
                    raise ValueError(f"{table!r} is not a parent table ({', '.join(sorted(PARENT_TABLES))})")
                self.conn.execute(f"SELECT 1 FROM {table} WHERE key = ? FOR UPDATE", (key,))
        except BaseException:
            self._rollback()
            raise

    def _rollback(self) -> None:
        if self.connection.invalidated:  # the connection died: the server ended its transaction with it
            self.connection.rollback()  # (SQLAlchemy's side of it, so a later statement may reconnect)
            return
        try:
            self.conn.driver("ROLLBACK")
        except InvalidInput:
            self.connection.rollback()

    @contextmanager
    def write(self, *, parents: Sequence[Parent] = (), tables: Sequence[str] = ()) -> Iterator[Db]:
        """A write transaction, run once (see the module docstring for what each backend locks).

        `parents`: rows of PARENT_TABLES whose children this transaction reads and writes (on
        PostgreSQL they are locked first, and writers of the same parent queue); `tables`: tables
        locked whole against other writers. Without either, use it for single statements; a
        read-then-write with nothing to lock is `transact()`."""
        self._begin(serializable=False, parents=parents, tables=tables)
        try:
            yield self.conn
        except BaseException:
            self._rollback()
            raise
        self.conn.driver("COMMIT")

    def transact(self, body: Callable[[Db], T], *, parents: Sequence[Parent] = (),
                 tables: Sequence[str] = ()) -> T:
        """`body(db)` in one write transaction, and its result. On PostgreSQL the transaction is
        SERIALIZABLE and a serialization failure or deadlock runs all of `body` again (at most
        TRANSACT_ATTEMPTS times, with a short random pause that grows), so `body` must do catalog
        work only, or work that is safe to repeat."""
        if self.dialect == "sqlite":
            with self.write() as db:
                return body(db)
        for attempt in range(1, TRANSACT_ATTEMPTS + 1):
            try:
                self._begin(serializable=True, parents=parents, tables=tables)  # a lock can fail to serialize too
                result = body(self.conn)
                self.conn.driver("COMMIT")  # a serialization failure can also come here
                return result
            except exc.DBAPIError as e:
                self._rollback()
                if _sqlstate(e) not in RETRY_STATES or attempt == TRANSACT_ATTEMPTS:
                    raise
                self.retries += 1
            except BaseException:
                self._rollback()
                raise
            time.sleep(random.uniform(0, 0.002 * min(attempt, 10)))  # spread the retries of colliding writers
        raise AssertionError("unreachable")

    @contextmanager
    def read(self) -> Iterator[Db]:
        """A consistent snapshot for several reads."""
        self.conn.driver("BEGIN" if self.dialect == "sqlite" else "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        try:
            yield self.conn
        finally:
            self.conn.driver("COMMIT")

    def claim_lock(self) -> str:
        """The suffix of a SELECT that claims rows other workers may be claiming at the same time:
        on PostgreSQL each worker locks the rows it gets and skips those another holds (inside
        `write()`, READ COMMITTED: a row another claimed and committed is read as it is now); on
        SQLite `write()`'s database lock already makes the claims one at a time."""
        return "" if self.dialect == "sqlite" else " FOR UPDATE SKIP LOCKED"

    def execute(self, sql: str, args: Sequence[object] = ()) -> Result:
        """One statement, its own transaction (outside `write()`)."""
        return self.conn.execute(sql, args)

    def query(self, sql: str, args: Sequence[object] = ()) -> list[Row]:
        return self.conn.execute(sql, args).fetchall()

    def one(self, sql: str, args: Sequence[object] = ()) -> Row | None:
        return self.conn.execute(sql, args).fetchone()

    def close(self) -> None:
        self.connection.close()
        self.engine.dispose()

    def dump(self) -> list[str]:
        """Every row of every table as text, tables by name and rows by primary key, the same on
        both backends (tests compare dumps taken before and after)."""
        out: list[str] = []
        with self.read():
            present = set(sa.inspect(self.connection).get_table_names())
            for table in sorted(schema.metadata.tables.values(), key=lambda t: t.name):
                if table.name not in present:
                    continue
                order = list(table.primary_key.columns) or list(table.columns)
                for r in self.connection.execute(sa.select(table).order_by(*order)):
                    out.append(f"{table.name}: {json.dumps(list(r), default=str)}")
        return out


def _first_line(e: BaseException) -> str:
    text = str(getattr(e, "orig", None) or e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def shown_url(url: sa.URL | str) -> str:
    """A PostgreSQL catalog URL as messages name it: the plain `postgresql` scheme, no password."""
    return sa.make_url(url).set(drivername="postgresql").render_as_string(hide_password=True)


def _engine(where: Path | str) -> tuple[str, sa.Engine]:
    """The engine for an SQLite path or a PostgreSQL URL, and how to name it in messages (no password)."""
    if isinstance(where, str) and "://" in where:
        try:
            url = sa.make_url(where)
        except exc.ArgumentError as e:
            raise InvalidInput(f"the catalog URL {where!r} is not valid: {e}", hint=CATALOG_HINT) from None
        if url.drivername not in ("postgresql", "postgresql+psycopg"):
            raise InvalidInput(f"the catalog URL {url.render_as_string(hide_password=True)!r} is not a PostgreSQL URL",
                               hint=CATALOG_HINT)
        url = url.set(drivername="postgresql+psycopg")
        shown = shown_url(url)
        return shown, sa.create_engine(url, poolclass=NullPool, connect_args={"connect_timeout": 10})
    path = Path(where)
    engine = sa.create_engine(f"sqlite:///{path}", poolclass=NullPool,
                              connect_args={"timeout": 60, "check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_connection: Any, _record: Any) -> None:
        cur = dbapi_connection.cursor()
        for pragma in ("busy_timeout = 60000", "journal_mode = WAL", "synchronous = FULL", "foreign_keys = ON"):
            cur.execute(f"PRAGMA {pragma}")
        cur.close()

    return str(path), engine




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


def open_catalog(where: Path | str) -> Catalog:
    """Open (making it if new) the catalog at an SQLite path or a postgresql:// URL, migrated to
    the newest revision."""
    if not (isinstance(where, str) and "://" in where):
        Path(where).parent.mkdir(parents=True, exist_ok=True)
    cat = Catalog(where)
    try:
        from kiln.store.migrations import upgrade

        with cat.write() as db:  # the lock: a second process opening now waits, then finds it done
            if cat.dialect == "sqlite":
                _finish_legacy(db)
            else:
                db.execute("SELECT pg_advisory_xact_lock(?)", (MIGRATE_LOCK,))
            upgrade(cat.connection)
    except BaseException:
        cat.close()
        raise
    return cat


def _finish_legacy(db: Db) -> None:
    """Bring a pre-Alembic SQLite catalog (user_version 1..6) to legacy version 7, in place."""
    row = db.execute("PRAGMA user_version").fetchone()
    version = int(row[0]) if row else 0
    if version == 0:
        return
    if version > legacy.VERSION:
        raise InvalidInput(f"the catalog's schema version {version} is newer than this kiln knows",
                           hint="use the kiln that made it, or a newer one")
    for i in range(version, legacy.VERSION):
        for stmt in legacy.MIGRATIONS[i]:
            db.execute(stmt)
    db.execute(f"PRAGMA user_version = {legacy.VERSION}")


def now() -> float:
    return time.time()
