"""Benchmark: a factory of 4 golden images on 1 `kiln worker` against 2, in one run (issue 12).

The factory is tests/cluster/test_factory.py's: 4 golden images (Debian 12 from the test cache's
root, each with one tiny Shell step and its in-VM validation) and 4 labs. For each worker count a
fresh cluster is made as the tests make it (tests/cluster/clusterlib.py: Redis on 127.0.0.1 with
the append-only settings, a PostgreSQL catalog server, shared blobs and region folder, each worker a state home
of its own) and `kiln factory run --max-concurrent-builds 4` is timed from submit to its end
(builds with their boot tests, save, distribution, retention). On this 2-core machine two TCG
builds compete for the same two cores, so expect far less than 2x: the ratio is reported as measured.

    .venv/bin/python bench/cluster_factory.py            # [--no-validate] to skip the boot tests
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for p in (REPO / "src", REPO / "tests", REPO / "tests" / "cluster"):
    sys.path.insert(0, str(p))

from clusterlib import CatalogServer, Cluster, RedisServer  # noqa: E402
from test_factory import GOLDEN, factory_dir  # noqa: E402

from debian_root import bootstrap_debian12  # noqa: E402


def one(tmp: Path, roots: Path, config: Path, workers: int, validate: bool) -> float:
    redis = RedisServer(tmp / "redis")
    catalog = CatalogServer.started()
    cluster = Cluster(tmp / "hosts", redis, roots, catalog.database())
    try:
        for i in range(workers):
            cluster.start_worker(f"w{i + 1}")
        args = [sys.executable, "-m", "kiln", "--home", str(cluster.submitter), "factory", "run", str(config),
                "--max-concurrent-builds", str(len(GOLDEN)), "--create-labs-in", "westus2", "--images-to-save", "1",
                "--boot-timeout", "1800", *([] if validate else ["--no-validate"])]
        t0 = time.monotonic()
        p = subprocess.run(args, capture_output=True, text=True, env=dict(os.environ))
        wall = time.monotonic() - t0
        assert p.returncode == 0, p.stdout + p.stderr
        took = {w.name: len(w.runs()) for w in cluster.workers.values()}
        print(f"{workers} worker(s): {wall:7.1f} s  (builds per worker: {took}; load average {os.getloadavg()[0]:.1f})",
              flush=True)
        return wall
    finally:
        cluster.stop()
        redis.stop()
        catalog.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--no-validate", action="store_true", help="Skip the boot tests (and so the labs get nothing).")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="kiln-bench-cluster-factory-", dir="/var/tmp"))
    try:
        roots = bootstrap_debian12(tmp / "bootstrap").config.cache_dir / "roots"
        config = factory_dir(tmp / "Configuration")
        walls = {n: one(tmp / f"cluster-{n}", roots, config, n, not args.no_validate) for n in (1, 2)}
        print(f"1 worker / 2 workers: {walls[1] / walls[2]:.2f}x")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
