"""The catalog database, on an SQLAlchemy Engine: SQLite (the embedded default) or PostgreSQL.

One schema (kiln.store.schema), one set of queries, both backends. A store module writes SQL
once, portable to both: `db.execute(sql, args)` with `?` markers, which become named binds of a
`text()` clause (so the driver's own paramstyle never shows), and only what both understand
(`INSERT ... ON CONFLICT`, `RETURNING`, `lower()`, no SQLite-only functions or `OR REPLACE`).
Rows answer to `row["col"]`, `row[0]` and tuple unpacking, as sqlite3.Row did.

Every write happens in `Catalog.write()`, which serializes writers from its first statement, so
two processes that both read-then-write (say, "highest version, plus one") never compute the same
answer: on SQLite `BEGIN IMMEDIATE` takes the database's write lock (WAL: readers never block);
on PostgreSQL the transaction takes one transaction-level advisory lock, released at its commit
or rollback (also when the connection dies). `busy_timeout` / the lock wait make a waiting
process wait rather than fail. Work that competes row by row (claims) uses `claim_lock()`'s
`FOR UPDATE SKIP LOCKED` on PostgreSQL instead.

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

# pg_advisory_xact_lock key of Catalog.write() (any fixed 64-bit number; "kiln" in ASCII).
WRITE_LOCK = 0x6B696C6E
CATALOG_HINT = "check [cluster] catalog in config.toml (postgresql://USER[:PASSWORD]@HOST[:PORT]/DATABASE) " \
               "and that the server is up and reachable from this host"


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

    def __init__(self, connection: sa.Connection) -> None:
        self.connection = connection

    def execute(self, sql: str, args: Sequence[object] | Mapping[str, object] = ()) -> Result:
        if isinstance(args, Mapping):
            return Result(self.connection.execute(sa.text(sql), {k: _value(v) for k, v in args.items()}))
        clause, names = _named(sql)
        if len(names) != len(args):
            raise TypeError(f"{len(names)} markers, {len(args)} arguments: {sql}")
        return Result(self.connection.execute(clause, {n: _value(a) for n, a in zip(names, args, strict=True)}))


    def executemany(self, sql: str, rows: Sequence[Sequence[object]]) -> None:
        """One statement for many rows (the driver's executemany: one round trip per batch)."""
        clause, names = _named(sql)
        self.connection.execute(clause, [{n: _value(a) for n, a in zip(names, row, strict=True)} for row in rows])


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
        self.conn = Db(self.connection)

    @contextmanager
    def write(self) -> Iterator[Db]:
        """A write transaction, serialized with every other writer's from its first statement."""
        if self.dialect == "sqlite":
            self.connection.exec_driver_sql("BEGIN IMMEDIATE")
        else:
            self.connection.exec_driver_sql("BEGIN")
        try:
            if self.dialect == "postgresql":
                self.conn.execute("SELECT pg_advisory_xact_lock(?)", (WRITE_LOCK,))
            yield self.conn
        except BaseException:
            self.connection.exec_driver_sql("ROLLBACK")
            raise
        self.connection.exec_driver_sql("COMMIT")

    @contextmanager
    def read(self) -> Iterator[Db]:
        """A consistent snapshot for several reads."""
        self.connection.exec_driver_sql("BEGIN" if self.dialect == "sqlite" else
                                        "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        try:
            yield self.conn
        finally:
            self.connection.exec_driver_sql("COMMIT")

    def claim_lock(self) -> str:
        """The suffix of a SELECT that claims rows other workers may be claiming at the same time:
        on PostgreSQL each worker locks the rows it gets and skips those another holds; on SQLite
        `write()`'s database lock already makes the claims one at a time."""
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
        shown = url.set(drivername="postgresql").render_as_string(hide_password=True)
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
