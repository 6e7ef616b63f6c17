"""A throwaway PostgreSQL server for the catalog tests and bench: 127.0.0.1, a free port, its data
directory in a temporary folder, trust authentication, stopped (and its folder removed) at the end.

Debian keeps initdb and pg_ctl in /usr/lib/postgresql/<major>/bin (the `postgresql` package; see
src/kiln/tools.toml). PostgreSQL refuses to run as root: as root the server runs as the `postgres`
user the package made, and owns its folder.
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import psycopg


def pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    return Path(found[-1]).parent if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class PostgresServer:
    """`start()` it, `database()` for a fresh empty database's URL, `halt()`/`resume()` it, `stop()` it."""

    durable: bool = False  # True: fsync on (the bench, against SQLite's synchronous = FULL)
    port: int = 0
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="kiln-pg-")))
    _seq: itertools.count[int] = field(default_factory=itertools.count)

    def _as_owner(self, argv: list[str]) -> subprocess.CompletedProcess[str]:
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        return subprocess.run([*prefix, *argv], capture_output=True, text=True, timeout=120, check=True)

    def start(self) -> PostgresServer:
        bindir = pg_bin()
        if bindir is None:
            raise FileNotFoundError("PostgreSQL's initdb (Debian package postgresql) is not installed")
        data = self.root / "data"
        if os.geteuid() == 0:
            user = pwd.getpwnam("postgres")
            os.chown(self.root, user.pw_uid, user.pw_gid)
        self._as_owner([str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "kiln", "-E", "UTF8",
                        "--no-sync", "--no-instructions"])
        self.port = _free_port()
        self.resume()
        return self

    def resume(self) -> None:
        """Start the server (again, after `halt()`): same data, same port."""
        bindir = pg_bin()
        assert bindir is not None
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root} -c max_connections=200"
        if not self.durable:
            options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        self._as_owner([str(bindir / "pg_ctl"), "-D", str(self.root / "data"), "-l", str(self.root / "server.log"),
                        "-o", options, "-w", "-t", "60", "start"])

    def halt(self) -> None:
        """Stop the server, keeping its data (`resume()` starts it again): "fast" ends every open
        session, as a server going down under its clients would, and rolls back their transactions."""
        bindir = pg_bin()
        assert bindir is not None
        self._as_owner([str(bindir / "pg_ctl"), "-D", str(self.root / "data"), "-m", "fast", "-w", "-t", "60", "stop"])

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://kiln@127.0.0.1:{self.port}/{database}"

    def database(self) -> str:
        """A new, empty database (its URL): one per test, so no test sees another's rows."""
        name = f"t{os.getpid()}_{next(self._seq)}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        bindir = pg_bin()
        if bindir is not None and (self.root / "data" / "postmaster.pid").exists():
            self._as_owner([str(bindir / "pg_ctl"), "-D", str(self.root / "data"), "-m", "immediate", "-w", "stop"])
        shutil.rmtree(self.root, ignore_errors=True)
