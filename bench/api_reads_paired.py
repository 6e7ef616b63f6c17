"""Benchmark: the imageTemplate GET of two kiln source trees, paired under the same load (issue 11).

Two `kiln serve` over HTTPS (each with its own state home and self-signed certificate, one
template PUT), from the source trees given (default: /work/main/src against this checkout's src),
on the same venv (so the same FastAPI, uvicorn, uvloop, httptools). Alternately, ROUNDS times:
200 GETs one at a time on one connection, then 2 rounds of 200 GETs sent at once on 200
connections (bench/api_overhead.py's storm). On a shared, loaded machine this pairing is what
makes a before/after figure mean something.

    .venv/bin/python bench/api_reads_paired.py [ROUNDS] [BEFORE_SRC] [AFTER_SRC]
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[1]
PY = str(REPO / ".venv/bin/python")
sys.path.insert(0, str(REPO / "bench"))
import api_overhead as b  # noqa: E402  (the storm and the template, beside this file)


def start(src: str, home: Path) -> tuple[subprocess.Popen, int, str, Path]:
    home.mkdir(parents=True)
    port = b.free_port()
    env = dict(os.environ, PYTHONPATH=src)
    log = home / "serve.log"
    proc = subprocess.Popen([PY, "-m", "kiln", "--home", str(home), "serve", "--port", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=log.open("w"))
    b.wait_listening(port, proc, log)
    token = subprocess.run([PY, "-m", "kiln", "--home", str(home), "token", "create", "t", "--subscription", b.SUB],
                           env=env, capture_output=True, text=True, check=True).stdout.strip()
    body = {k: v for k, v in b.template("t").items() if k in ("location", "properties")}
    cert = home / "tls" / "serve.crt"
    r = requests.put(f"https://127.0.0.1:{port}{b.P}/t?api-version={b.API_VERSION}", json=body,
                     headers={"Authorization": f"Bearer {token}"}, verify=str(cert), timeout=30)
    assert r.status_code == 201, r.text
    return proc, port, token, cert


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 4
    before = sys.argv[2] if len(sys.argv) > 2 else "/work/main/src"
    after = sys.argv[3] if len(sys.argv) > 3 else str(REPO / "src")
    tmp = Path(tempfile.mkdtemp(prefix="kiln-bench-pair-", dir="/var/tmp"))
    servers = {f"before ({before})": start(before, tmp / "before"), f"after ({after})": start(after, tmp / "after")}
    alone: dict[str, list[float]] = {k: [] for k in servers}
    at_once: dict[str, list[float]] = {k: [] for k in servers}
    path = f"{b.P}/t?api-version={b.API_VERSION}"
    load0 = os.getloadavg()[0]
    try:
        for _ in range(rounds):
            for k, (_proc, port, token, cert) in servers.items():
                alone[k] += asyncio.run(b.storm(port, path, token, cert, 1, 200))
                at_once[k] += asyncio.run(b.storm(port, path, token, cert, 200, 2))
    finally:
        for proc, *_ in servers.values():
            proc.terminate()
            proc.wait(60)
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"load average {load0:.1f} at start, {os.getloadavg()[0]:.1f} at end\n")
    print("| server | 1 connection p50 | p99 | 200 at once p50 | p99 |\n|---|---|---|---|---|")
    for k in servers:
        print(f"| {k} | {b.pct(alone[k], 50) * 1e3:.2f} ms | {b.pct(alone[k], 99) * 1e3:.2f} ms | "
              f"{b.pct(at_once[k], 50) * 1e3:.1f} ms | {b.pct(at_once[k], 99) * 1e3:.1f} ms |")


if __name__ == "__main__":
    main()
