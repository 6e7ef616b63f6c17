"""Benchmark: lab custom images listed per second, PostgreSQL with 20 concurrent writers against
SQLite's group commit (issue 12, Performance: the catalog's part of a fleet's distribution).

    .venv/bin/python bench/catalog_labs.py [--writers 20] [--images 25] [--labs 10]

`--writers` writers each list `--images` custom images (`Labs.commit_images`, the store's half of a
lab publish: the bytes are already in the lab's region), spread round-robin over `--labs` labs, so
writers collide on the same lab's lock as a factory feeding many labs would. All start together;
the rate is images listed per second of wall time. The catalog rows only: no bytes move. Cases:

  sqlite group     one process, the writers as threads (each its own connection) handing their
                   rows to one GroupCommit, as kiln.distribute.labs does on one host
  sqlite each      the writers as processes, one transaction per image (several hosts cannot
                   share a GroupCommit, and SQLite is not shared across hosts anyway: for context)
  postgresql each  the writers as processes, one transaction per image: a fleet of hosts
  postgresql group one process, threads and a GroupCommit, as one host publishing many labs does

PostgreSQL is a throwaway server on 127.0.0.1 (tests/store/postgres.py) with fsync on, as durable
as SQLite's synchronous = FULL. Prints each rate and the ratio PostgreSQL each / SQLite group.
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

DIGEST = "ef" * 32
LABS = "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg/providers/Microsoft.DevTestLab/labs"
WORKER = f'''
import sys, threading
from kiln.config import load_config
from kiln.ids import parse
from kiln.store.db import GroupCommit
from kiln.store.labs import PendingImage
from kiln.store.store import Store

threads, images, labs, group, tag = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "group", sys.argv[5]
stores = [Store.open(load_config()) for _ in range(threads)]
found = [stores[0].labs.get(f"{LABS}/lab{{i}}") for i in range(labs)]
commits = GroupCommit()
go = threading.Event()

def write(n):
    store = stores[n]
    go.wait()
    for i in range(images):
        lab = found[(n + i) % labs]
        p = PendingImage(parse(f"{{lab.id}}/customimages/{{tag}}-{{n}}-{{i}}"), lab, "{DIGEST}", "Linux", "Generalized",
                         "", "kiln", "", True, "", {{}}, float(i))
        outcome = commits.submit(p, store.labs.commit_images) if group else store.labs.commit_images([p])[0]
        assert outcome is None, outcome

running = [threading.Thread(target=write, args=(n,)) for n in range(threads)]
for t in running:
    t.start()
sys.stdin.readline()  # start together
go.set()
for t in running:
    t.join()
print(commits.batches, sum(s.catalog.retries for s in stores))
'''


def setup(env: dict[str, str], labs: int) -> None:
    script = (f"from kiln.config import load_config\nfrom kiln.store.store import Store\n"
              f"with Store.open(load_config()) as s:\n"
              f"    with s.catalog.write() as db:\n"
              f"        db.execute(\"INSERT INTO blobs (digest, virtual_size, size, created) VALUES ('{DIGEST}', 1, 513, 0)\")\n"
              f"    s.labs.create_many([f'{LABS}/lab{{i}}' for i in range({labs})], 'westus2')\n")
    subprocess.run([sys.executable, "-c", script], env=env, check=True)


def run(catalog: str, home: Path, *, procs: int, threads: int, images: int, labs: int, group: bool) -> tuple[float, str]:
    env = {**os.environ, "KILN_HOME": str(home), "KILN_CATALOG": catalog, "PYTHONPATH": str(REPO / "src")}
    if not catalog:
        env.pop("KILN_CATALOG")
    setup(env, labs)
    workers = [subprocess.Popen([sys.executable, "-c", WORKER, str(threads), str(images), str(labs),
                                 "group" if group else "each", f"w{n}"],
                                env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for n in range(procs)]
    time.sleep(3 + procs * threads * 0.05)  # let every worker import kiln and open its connections
    start = time.perf_counter()
    for w in workers:
        assert w.stdin is not None
        w.stdin.write("go\n")
        w.stdin.flush()
    outs = [w.communicate()[0] for w in workers]
    elapsed = time.perf_counter() - start
    assert all(w.returncode == 0 for w in workers)
    batches = sum(int(o.split()[0]) for o in outs)
    retries = sum(int(o.split()[1]) for o in outs)
    note = f"{batches} transactions" if group else f"{retries} retries"
    return procs * threads * images / elapsed, note


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--writers", type=int, default=20)
    ap.add_argument("--images", type=int, default=25)
    ap.add_argument("--labs", type=int, default=10)
    args = ap.parse_args()
    n, k, labs = args.writers, args.images, args.labs
    results: dict[str, tuple[float, str]] = {}
    with tempfile.TemporaryDirectory(prefix="kiln-bench-labs-", dir="/var/tmp") as tmp:
        results["sqlite group"] = run("", Path(tmp) / "s1", procs=1, threads=n, images=k, labs=labs, group=True)
        results["sqlite each"] = run("", Path(tmp) / "s2", procs=n, threads=1, images=k, labs=labs, group=False)
        server = PostgresServer(durable=True).start()
        try:
            results["postgresql each"] = run(server.database(), Path(tmp) / "p1", procs=n, threads=1, images=k,
                                             labs=labs, group=False)
            results["postgresql group"] = run(server.database(), Path(tmp) / "p2", procs=1, threads=n, images=k,
                                              labs=labs, group=True)
        finally:
            server.stop()
    print(f"{n} writers x {k} lab images over {labs} labs ({os.cpu_count()} cores)")
    for name, (rate, note) in results.items():
        print(f"{name:17s} {rate:8.1f} images/s  ({note})")
    ratio = results["postgresql each"][0] / results["sqlite group"][0]
    print(f"ratio postgresql each / sqlite group: {ratio:.2f}")


if __name__ == "__main__":
    main()
