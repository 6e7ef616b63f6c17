"""The catalog on either backend: concurrent publishers, migrations at open, the declared schema,
a pre-Alembic SQLite catalog upgraded in place, and an unreachable PostgreSQL server."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from store_helpers import REPO, free_port, kiln_cmd

SUB = "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg/providers/Microsoft.Compute"
DEFINITION = f"{SUB}/galleries/g/images/web"
DIGEST = "ab" * 32

PUBLISHER = textwrap.dedent(f'''\
    import sys
    from kiln.config import load_config
    from kiln.store.galleries import VersionRule
    from kiln.store.store import Store

    with Store.open(load_config()) as store:  # all open a new catalog at once: one migrates
        with store.catalog.write() as db:
            db.execute("INSERT INTO blobs (digest, virtual_size, size, created) VALUES (?, 1, 513, 0)"
                       " ON CONFLICT (digest) DO NOTHING", ("{DIGEST}",))
        store.galleries.create("{SUB}/galleries/g")
        d = store.galleries.create_definition("{DEFINITION}", publisher="p", offer="o", sku="s")
        for _ in range(int(sys.argv[1])):
            v = store.galleries.add_version(d, "{DIGEST}", rule=VersionRule("Latest", major=1), target_regions=())
            print(v.version, flush=True)
''')


def test_many_processes_publish_versions_into_one_definition(kiln_home: Path, tmp_path: Path,
                                                              catalog_backend: str) -> None:
    # Each allocates "highest patch plus one" and inserts it: without the write lock two would
    # read the same highest version (a duplicate refused by UNIQUE, or a lost update).
    script = tmp_path / "publish.py"
    script.write_text(PUBLISHER)
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    procs, each = 6, 8
    running = [subprocess.Popen([sys.executable, str(script), str(each)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=env) for _ in range(procs)]
    printed: list[str] = []
    for p in running:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err
        printed += out.split()
    want = [f"1.0.{i}" for i in range(procs * each)]
    assert sorted(printed, key=lambda v: int(v.split(".")[2])) == want  # each number handed out once
    from kiln.config import load_config
    from kiln.store.store import Store

    with Store.open(load_config(kiln_home)) as store:
        assert [v.version for v in store.galleries.list_versions(DEFINITION)] == sorted(want, key=lambda v: int(v[4:]))
        assert store.catalog.dialect == catalog_backend
        assert len(store.catalog.query("SELECT * FROM alembic_version")) == 1


def test_the_catalog_matches_the_declared_schema(kiln_home: Path) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    from kiln.config import load_config
    from kiln.store import migrations, schema
    from kiln.store.store import Store

    assert ScriptDirectory(str(migrations.HERE)).get_current_head() == migrations.HEAD
    with Store.open(load_config(kiln_home)) as store:
        context = MigrationContext.configure(store.catalog.connection, opts={"compare_type": False})
        assert compare_metadata(context, schema.metadata) == []
        assert migrations.current(store.catalog.connection) == migrations.HEAD


def _legacy_catalog(path: Path, version: int) -> None:
    """A catalog as kiln made it before Alembic: the old statement list up to `version`, with rows."""
    from kiln.store import legacy

    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    for i in range(version):
        for stmt in legacy.MIGRATIONS[i]:
            conn.execute(stmt)
    conn.execute(f"PRAGMA user_version = {version}")
    conn.execute("INSERT INTO blobs VALUES (?, 1048576, 1049088, 1700000000.5)", (DIGEST,))
    conn.execute("INSERT INTO galleries (key, id, location, created) VALUES (?, ?, 'westus2', 1.0)",
                 (f"{SUB}/galleries/g".lower(), f"{SUB}/galleries/g"))
    conn.execute("INSERT INTO images (key, id, location, os_type, os_state, hyper_v_generation, digest, created)"
                 " VALUES ('i', 'I', 'westus2', 'Linux', 'Generalized', 'V2', ?, 2.0)", (DIGEST,))
    conn.close()


@pytest.mark.parametrize("version", [7, 4])
def test_a_catalog_made_before_alembic_upgrades_in_place(kiln_home: Path, catalog_backend: str, version: int) -> None:
    if catalog_backend != "sqlite":
        pytest.skip("catalogs made before Alembic were all SQLite files; PostgreSQL ones start at the baseline")
    from kiln.config import load_config
    from kiln.store import migrations
    from kiln.store.store import Store

    _legacy_catalog(kiln_home / "catalog.sqlite", version)
    for _ in range(2):
        with Store.open(load_config(kiln_home)) as store:
            assert migrations.current(store.catalog.connection) == migrations.HEAD
            assert [(b.digest, b.virtual_size) for b in [store.blobs.get(DIGEST)]] == [(DIGEST, 1048576)]
            assert [g.location for g in store.galleries.list()] == ["westus2"]
            row = store.catalog.one("SELECT boot_generations, boot_test FROM images WHERE key = 'i'")
            assert row is not None and tuple(row) == ("", "")  # migration 5's and 6's columns, on the old row
            assert store.catalog.one("SELECT count(*) FROM vms")[0] == 0  # migration 7's table, made for a version-4 one
            assert store.catalog.one("PRAGMA user_version")[0] == 7


def test_an_unreachable_catalog_is_a_clear_error(kiln_home: Path) -> None:
    from kiln.store.db import open_catalog

    port = free_port()  # nothing listens there
    (kiln_home / "config.toml").write_text(f'[cluster]\ncatalog = "postgresql://kiln:s3cret@127.0.0.1:{port}/kiln"\n')
    proc = kiln_cmd(kiln_home, "image", "list")
    assert proc.returncode == 2, proc.stderr
    assert "cannot open the catalog postgresql://kiln:***@127.0.0.1" in proc.stderr
    assert "[cluster] catalog" in proc.stderr and "Traceback" not in proc.stderr and "s3cret" not in proc.stderr
    assert not (kiln_home / "catalog.sqlite").exists()  # no SQLite catalog made instead
    (kiln_home / "config.toml").write_text('[cluster]\ncatalog = "mysql://h/db"\n')
    proc = kiln_cmd(kiln_home, "image", "list")
    assert proc.returncode == 2 and "cluster.catalog" in proc.stderr and "Traceback" not in proc.stderr
    from kiln.errors import InvalidInput

    with pytest.raises(InvalidInput, match="cannot open the catalog"):
        open_catalog(f"postgresql://kiln@127.0.0.1:{port}/kiln")


def test_queries_bind_the_same_on_both(catalog_url: str) -> None:
    from kiln.store.db import open_catalog

    catalog = open_catalog(catalog_url)
    try:
        # `?` in a quoted literal is text, not a marker; flags bind as 0/1 integers; rows index both ways.
        row = catalog.one("SELECT '?' AS q, ? AS a, ? AS flag", ("x", True))
        assert row is not None and (row["q"], row["a"], row[2]) == ("?", "x", 1) and row.keys() == ["q", "a", "flag"]
        with catalog.write() as db:
            db.execute("INSERT INTO labs (key, id, location, created) VALUES (?, ?, ?, ?)", ("k", "K", "w", 1.5))
            assert db.execute("UPDATE labs SET location = ? WHERE key = ?", ("e", "k")).rowcount == 1
        with pytest.raises(ZeroDivisionError), catalog.write() as db:  # an error rolls the transaction back
            db.execute("DELETE FROM labs")
            raise ZeroDivisionError
        assert [tuple(r) for r in catalog.query("SELECT key, location, created FROM labs")] == [("k", "e", 1.5)]
        assert catalog.dump() == ['labs: ["k", "K", "e", 1.5]']
    finally:
        catalog.close()
