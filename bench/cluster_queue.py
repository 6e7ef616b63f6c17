"""Benchmark: what the cluster queue costs per build, from submit until the worker starts the child (issue 12).

One `kiln worker` on a Redis started here (127.0.0.1, a free port, append-only file with
appendfsync always, as docs/architecture.md recommends), and the same child process run two
ways, alternately, `--rounds` times:

- direct: `python -m kiln.cluster.child HOME --job FILE` (the worker's build process), started
  and waited for here;
- queued: `RqEngine.enqueue()` of the same request, a worker takes it and starts that child, and
  this process follows the run's event stream to its end record (as `kiln build` does).

The request is an API template id that is not in the catalog, so the child does all of its
start-up (interpreter, imports, config, opening the catalog) and exits at once: its own cost is
the same on both sides and the difference is the queue's. Reported per round: enqueue until the
worker started the build (the worker's in-flight stamp; same clock, same host), and the total
queued minus the direct run. Goal: < 100 ms.

    .venv/bin/python bench/cluster_queue.py            # --rounds 20
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from kiln.cluster import state  # noqa: E402
from kiln.cluster.connect import redis_from_url  # noqa: E402
from kiln.cluster.engine import BuildRequest  # noqa: E402
from kiln.cluster.follow import follow  # noqa: E402
from kiln.cluster.rq_engine import RqEngine  # noqa: E402

TEMPLATE = "/subscriptions/00000000-0000-0000-0000-0000000000c1/resourceGroups/bench/providers/" \
           "Microsoft.VirtualMachineImages/imageTemplates/absent"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=20)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="kiln-bench-cluster-", dir="/var/tmp"))
    port = free_port()
    redis_proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(tmp),
                                   "--appendonly", "yes", "--appendfsync", "always", "--save", ""],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    worker = None
    try:
        home = tmp / "home"
        home.mkdir()
        url = f"redis://127.0.0.1:{port}/0"
        (home / "config.toml").write_text(f'[cluster]\nqueue = "{url}"\n')
        for _ in range(100):
            try:
                r = redis_from_url(url)
                break
            except Exception:  # noqa: BLE001 - not up yet
                time.sleep(0.05)
        engine = RqEngine(r)
        log = (tmp / "worker.log").open("w")
        worker = subprocess.Popen([str(REPO / ".venv/bin/kiln"), "--home", str(home), "worker", "--name", "bench",
                                   "--queues", "kiln.host.bench"], stdout=log, stderr=subprocess.STDOUT)
        while not any(w.name == "bench" for w in state.workers(r)):
            time.sleep(0.05)
        time.sleep(1.0)  # the RQ worker is in its blocking dequeue
        request = BuildRequest("api", "absent", template_id=TEMPLATE, host="bench")
        job_file = tmp / "job.json"
        job_file.write_text(json.dumps(request.to_json()))
        env = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "HOME")}
        direct_ms, queued_ms, pickup_ms = [], [], []
        for _ in range(args.rounds + 1):  # the first round warms caches and is dropped
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-m", "kiln.cluster.child", str(home), "--job", str(job_file)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd="/")
            direct = (time.perf_counter() - t0) * 1000

            seen: list[float] = []
            t_wall = time.time()
            t0 = time.perf_counter()
            job_id = engine.enqueue(request)
            while not seen:  # the in-flight stamp is written just before the child is spawned
                raw = r.hget(state.INFLIGHT, job_id)
                if raw:
                    seen.append(json.loads(raw)["started"])
                elif state.ended(r, job_id):
                    break
                else:
                    time.sleep(0.001)
            ended = follow(r, job_id, lambda e: None)
            queued = (time.perf_counter() - t0) * 1000
            assert ended is not None and ended.code == 2, ended
            direct_ms.append(direct)
            queued_ms.append(queued)
            pickup_ms.append((seen[0] - t_wall) * 1000 if seen else float("nan"))
        direct_ms, queued_ms, pickup_ms = direct_ms[1:], queued_ms[1:], pickup_ms[1:]
        over = [q - d for q, d in zip(queued_ms, direct_ms, strict=True)]
        med = statistics.median
        print(f"rounds: {args.rounds} (load average {os.getloadavg()[0]:.1f})")
        print(f"child run directly:            median {med(direct_ms):7.1f} ms")
        print(f"same child through the queue:  median {med(queued_ms):7.1f} ms  (ratio {med(queued_ms) / med(direct_ms):.2f})")
        print(f"enqueue -> worker starts child: median {med(pickup_ms):6.1f} ms, max {max(pickup_ms):.1f} ms  (goal < 100 ms)")
        print(f"queued minus direct:           median {med(over):7.1f} ms, p90 {sorted(over)[int(len(over) * 0.9) - 1]:.1f} ms")
    finally:
        if worker is not None:
            worker.terminate()
            worker.wait(30)
        redis_proc.terminate()
        redis_proc.wait(30)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
