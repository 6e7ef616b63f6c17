"""The catalog's Alembic migrations, run by kiln itself when it opens a catalog (no alembic.ini).

`upgrade(connection)` runs inside `Catalog.write()` (its lock keeps a second process out):
- a new catalog (no tables) is made from kiln.store.schema and stamped at the newest revision
  (Alembic's way of building a current database: no replay of every step);
- a catalog made before Alembic (tables, no alembic_version; kiln.store.db has already finished
  it to legacy version 7) is stamped at the baseline revision, which stands for exactly that schema;
- then every revision after the catalog's own runs, in order.

A schema change is an edit of kiln.store.schema plus a new file in versions/ (down_revision = the
previous head) whose upgrade() makes the same change with alembic.op (batch mode on SQLite, so
columns can change there too). tests/store/test_migrations.py checks that a catalog built either
way matches the schema.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import sqlalchemy as sa

from kiln.store import schema

if TYPE_CHECKING:
    from alembic.config import Config

HERE = Path(__file__).resolve().parent
BASELINE = "0001"  # the schema of legacy version 7
# The newest revision (tests/store/test_migrations.py checks it against versions/): a catalog
# already there opens without loading Alembic at all, which costs a CLI call a second or so.
HEAD = "0001"


def config(connection: sa.Connection) -> Config:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(HERE))
    cfg.attributes["connection"] = connection  # env.py runs on it, inside the caller's transaction
    return cfg


def current(connection: sa.Connection) -> str | None:
    if not sa.inspect(connection).has_table("alembic_version"):
        return None
    return connection.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()


def upgrade(connection: sa.Connection) -> None:
    if current(connection) == HEAD:
        return
    from alembic import command

    cfg = config(connection)
    if current(connection) is None:
        if sa.inspect(connection).has_table("blobs"):
            command.stamp(cfg, BASELINE)
        else:
            schema.metadata.create_all(connection)
            command.stamp(cfg, "head")
    command.upgrade(cfg, "head")
