"""Benchmark: gallery image versions published per second, SQLite against PostgreSQL, N processes.

    .venv/bin/python bench/catalog_publish.py [--procs 4] [--versions 50] [--definitions 1]

Each of N processes opens the catalog and publishes `--versions` versions into one gallery image
definition (Latest: "highest patch plus one", allocated and inserted in one write transaction,
`Galleries.add_version`), all at once, so every publish competes for the same lock. With
`--definitions K`, process i publishes into definition i mod K: on PostgreSQL publishers into
different definitions do not wait for each other (each locks its definition's row), on SQLite
they still take turns on the database's one write lock. SQLite: the
state home's file (WAL, synchronous = FULL, BEGIN IMMEDIATE). PostgreSQL: a throwaway server on
127.0.0.1 (tests/store/postgres.py) with fsync on, as durable as SQLite's FULL. The catalog rows
only: no blob bytes move (the blob row is made once). Prints both rates and the ratio.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "store"))
sys.path.insert(0, str(REPO / "src"))
from postgres import PostgresServer  # noqa: E402

SUB = "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg/providers/Microsoft.Compute"
DIGEST = "cd" * 32
WORKER = f'''
import sys, time
from kiln.store.galleries import VersionRule
from kiln.config import load_config
from kiln.store.store import Store

with Store.open(load_config()) as store:
    d = store.galleries.get_definition("{SUB}/galleries/g/images/web" + sys.argv[2])
    sys.stdin.readline()  # start together
    for _ in range(int(sys.argv[1])):
        store.galleries.add_version(d, "{DIGEST}", rule=VersionRule("Latest", major=1), target_regions=())
'''


def run(catalog: str, home: Path, procs: int, versions: int, definitions: int = 1) -> float:
    env = {**os.environ, "KILN_HOME": str(home), "KILN_CATALOG": catalog, "PYTHONPATH": str(REPO / "src")}
    if not catalog:
        env.pop("KILN_CATALOG")
    setup = (f"from kiln.config import load_config\nfrom kiln.store.store import Store\n"
             f"with Store.open(load_config()) as s:\n"
             f"    with s.catalog.write() as db:\n"
             f"        db.execute(\"INSERT INTO blobs (digest, virtual_size, size, created) VALUES ('{DIGEST}', 1, 513, 0)\")\n"
             f"    s.galleries.create('{SUB}/galleries/g')\n"
             f"    for i in range({definitions}):\n"
             f"        s.galleries.create_definition(f'{SUB}/galleries/g/images/web{{i}}', publisher='p', offer='o', sku='s')\n")
    subprocess.run([sys.executable, "-c", setup], env=env, check=True)
    workers = [subprocess.Popen([sys.executable, "-c", WORKER, str(versions), str(n % definitions)], env=env,
                                stdin=subprocess.PIPE, text=True) for n in range(procs)]
    time.sleep(3)  # let every worker import kiln and open the catalog
    start = time.perf_counter()
    for w in workers:
        assert w.stdin is not None
        w.stdin.write("go\n")
        w.stdin.flush()
    for w in workers:
        assert w.wait() == 0
    return procs * versions / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--procs", type=int, default=4)
    ap.add_argument("--versions", type=int, default=50)
    ap.add_argument("--definitions", type=int, default=1)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="kiln-bench-catalog-", dir="/var/tmp") as tmp:
        sqlite = run("", Path(tmp) / "sqlite-home", args.procs, args.versions, args.definitions)
        server = PostgresServer(durable=True).start()
        try:
            pg = run(server.database(), Path(tmp) / "pg-home", args.procs, args.versions, args.definitions)
        finally:
            server.stop()
    print(f"{args.procs} processes x {args.versions} versions into {args.definitions} definition(s)")
    print(f"sqlite:     {sqlite:8.1f} publishes/s")
    print(f"postgresql: {pg:8.1f} publishes/s")
    print(f"ratio postgresql/sqlite: {pg / sqlite:.2f}")


if __name__ == "__main__":
    main()
