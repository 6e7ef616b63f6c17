"""Every test in tests/store runs twice: on the embedded SQLite catalog and on PostgreSQL.

The PostgreSQL server is started once per session (tests/store/postgres.py: 127.0.0.1, a free
port, data in a temporary folder) and each test gets a database of its own, named to kiln by
KILN_CATALOG (which the CLI processes the tests start inherit, and which config.toml's
`[cluster] catalog` would name in production).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from envcheck import unavailable

BACKENDS = ("sqlite", "postgresql")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "catalog_backend" in metafunc.fixturenames:
        metafunc.parametrize("catalog_backend", BACKENDS, indirect=True)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[object]:
    from postgres import PostgresServer, pg_bin

    if pg_bin() is None:
        unavailable("PostgreSQL (Debian package postgresql) is not installed: run scripts/setup")
    server = PostgresServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(autouse=True)
def catalog_backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """This test's catalog: "sqlite" (the state home's file) or "postgresql" (KILN_CATALOG set)."""
    backend = str(getattr(request, "param", "sqlite"))
    monkeypatch.delenv("KILN_CATALOG", raising=False)
    if backend == "postgresql":
        server = request.getfixturevalue("postgres_server")
        monkeypatch.setenv("KILN_CATALOG", server.database())  # type: ignore[attr-defined]
    return backend


@pytest.fixture
def catalog_url(catalog_backend: str, kiln_home: Path) -> str:
    """What kiln opens for this test's catalog (a path for SQLite, a URL for PostgreSQL)."""
    return os.environ.get("KILN_CATALOG") or str(kiln_home / "catalog.sqlite")
