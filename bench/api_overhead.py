"""Benchmark: what the REST API costs on top of the CLI, and how fast it answers reads (issue 11).

1. API overhead of a run. The same Debian 12 template (cached root, one Shell step, boot test,
   a managed image) is built by `kiln build` on the CLI and through `kiln serve` with Azure's SDK
   (azure-mgmt-imagebuilder over HTTPS: create + run + polling at Retry-After 1 until done), in
   the same state home, alternately, `--runs` times each. A build with its boot test takes a
   minute or more and swings by seconds between runs on a shared machine, so the figure that
   matters is measured per run: wall time minus the pipeline's own time (the run record's start
   to end, written by the same `build()` on both sides). What is left is process start, imports,
   the HTTP round trips, the queue and the poller. Goal: the API's part < 1 s more than the CLI's.
2. 200 concurrent GETs (one request on each of 200 kept-alive TLS connections, all sent at
   once, `--rounds` times) of an image template and of its runOutputs, with the server idle and
   while a build runs; the floor is the same request pattern against a FastAPI + uvicorn app that
   returns a constant JSON body of the same size, over the same TLS certificate. Goal: p99 < 50 ms.
   The build that runs under the storm is compared with the unloaded ones (its pipeline time).

    .venv/bin/python bench/api_overhead.py            # --runs 1 --rounds 5 --home DIR (reuse a root cache)
    .venv/bin/python bench/api_overhead.py --no-validate   # builds without their boot test, on both sides

The root cache is taken from the tests' (KILN_TEST_CACHE, default /var/tmp/kiln-test-cache) when
it is there; else the first build bootstraps one (not counted: a warm-up build runs first).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
KILN = [str(REPO / ".venv/bin/kiln"), "--progress", "quiet"]
SUB = "00000000-0000-0000-0000-0000000000b1"
RG = "bench-api"
API_VERSION = "2025-10-01"
P = f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.VirtualMachineImages/imageTemplates"
TEST_CACHE = Path(os.environ.get("KILN_TEST_CACHE", "/var/tmp/kiln-test-cache")) / "kiln-home" / "cache"


def template(name: str) -> dict:
    image = f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.Compute/images/{name}"
    return {"type": "Microsoft.VirtualMachineImages/imageTemplates", "apiVersion": API_VERSION, "name": name,
            "location": "westus2", "properties": {
                "source": {"type": "PlatformImage", "publisher": "Debian", "offer": "debian-12", "sku": "12-gen2",
                           "version": "latest"},
                "customize": [{"type": "Shell", "name": "marker", "inline": [f"echo {name} > /etc/kiln-bench"]}],
                "distribute": [{"type": "ManagedImage", "runOutputName": "out", "location": "westus2",
                                "imageId": image}]}}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_listening(port: int, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited:\n{log.read_text()[-3000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit("the server did not start listening")


def kiln(home: Path, *args: str) -> str:
    return subprocess.run([*KILN, "--home", str(home), *args], capture_output=True, text=True, check=True).stdout


def iso(t: str) -> float:
    return datetime.datetime.fromisoformat(t.replace("Z", "+00:00")).timestamp()


def last_run(home: Path, name: str) -> tuple[float, str]:
    """The pipeline's own time of the newest run of template `name`, and its state."""
    runs = [r for r in json.loads(kiln(home, "runs", "list", "--json"))
            if r["templateId"].lower().endswith(f"/imagetemplates/{name}")]
    st = max(runs, key=lambda r: iso(r["lastRunStatus"]["startTime"]))["lastRunStatus"]
    return iso(st["endTime"]) - iso(st["startTime"]), st["runState"]


@dataclass
class Built:
    wall: float
    pipeline: float
    create: float = 0.0  # the API's PUT and its polling, inside `wall`

    @property
    def outside(self) -> float:
        return self.wall - self.pipeline


NO_VALIDATE: list[str] = []  # ["--no-validate"]: both sides skip the boot test (a loaded host's boots time out)


def cli_build(home: Path, work: Path, name: str) -> Built:
    path = work / f"{name}.json"
    path.write_text(json.dumps(template(name)))
    t0 = time.monotonic()
    subprocess.run([*KILN, "--home", str(home), "build", str(path), *NO_VALIDATE], check=True, capture_output=True)
    wall = time.monotonic() - t0
    pipeline, state = last_run(home, name)
    assert state == "Succeeded", state
    return Built(wall, pipeline)


class Token:
    def __init__(self, token: str) -> None:
        self.token = token

    def get_token(self, *scopes: str, **kwargs: object):  # azure-core's TokenCredential
        from azure.core.credentials import AccessToken

        return AccessToken(self.token, int(time.time()) + 3600)


def sdk_client(url: str, token: str, cert: Path):
    from azure.mgmt.imagebuilder import ImageBuilderClient

    return ImageBuilderClient(Token(token), SUB, base_url=url, connection_verify=str(cert))


def api_build(client, home: Path, name: str) -> Built:
    body = {k: v for k, v in template(name).items() if k in ("location", "properties")}  # the SDK takes JSON too
    t0 = time.monotonic()
    client.virtual_machine_image_templates.begin_create_or_update(RG, name, body).result()
    t1 = time.monotonic()
    client.virtual_machine_image_templates.begin_run(RG, name).result()
    wall = time.monotonic() - t0
    pipeline, state = last_run(home, name)
    assert state == "Succeeded", state
    return Built(wall, pipeline, create=t1 - t0)


# ---------------------------------------------------------------- the GET storm


async def storm(port: int, path: str, token: str, cert: Path, conns: int, rounds: int) -> list[float]:
    """`conns` kept-alive TLS connections; each round sends one GET on every one at once. Latencies in s."""
    ctx = ssl.create_default_context(cafile=str(cert))
    request = (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {token}\r\n"
               "Accept: application/json\r\n\r\n").encode()
    streams = [await asyncio.open_connection("127.0.0.1", port, ssl=ctx) for _ in range(conns)]

    async def one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> float:
        t0 = time.perf_counter()
        writer.write(request)
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        status = head.split(b" ", 2)[1]
        length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:"))
        await reader.readexactly(length)
        if status != b"200":
            raise SystemExit(f"GET {path} answered {status.decode()}")
        return time.perf_counter() - t0

    await asyncio.gather(*(one(r, w) for r, w in streams))  # warm-up, not counted: the server's threads open their stores
    latencies: list[float] = []
    for _ in range(rounds):
        latencies += await asyncio.gather(*(one(r, w) for r, w in streams))
    for _, w in streams:
        w.close()
    return latencies


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


PEER = textwrap.dedent("""
    import json, sys
    import uvicorn
    from fastapi import FastAPI
    body = json.loads(open(sys.argv[3]).read())
    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)

    @app.get("/hello")
    def hello() -> dict:
        return body

    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False,
                ssl_certfile=sys.argv[2] + "/serve.crt", ssl_keyfile=sys.argv[2] + "/serve.key")
""")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=1, help="measured builds on each side")
    ap.add_argument("--rounds", type=int, default=5, help="rounds of 200 concurrent GETs per row")
    ap.add_argument("--conns", type=int, default=200)
    ap.add_argument("--home", type=Path, help="a kiln state home to use (kept); default: a temporary one")
    ap.add_argument("--no-validate", action="store_true", help="builds skip the boot test (kiln build and kiln serve)")
    args = ap.parse_args()
    if args.no_validate:
        NO_VALIDATE.append("--no-validate")

    work = Path(tempfile.mkdtemp(prefix="kiln-bench-api-", dir="/var/tmp"))
    home = args.home or work / "home"
    home.mkdir(parents=True, exist_ok=True)
    if not (home / "cache").exists() and TEST_CACHE.is_dir():
        (home / "cache").symlink_to(TEST_CACHE)  # the tests' root cache: no bootstrap
    port, peer_port = free_port(), free_port()
    log = work / "serve.log"
    server = subprocess.Popen([*KILN, "--home", str(home), "serve", "--port", str(port), *NO_VALIDATE],
                              stdout=subprocess.DEVNULL, stderr=log.open("w"))
    peer = None
    try:
        wait_listening(port, server, log)
        url, cert = f"https://127.0.0.1:{port}", home / "tls" / "serve.crt"
        token = kiln(home, "token", "create", f"bench-{port}", "--subscription", SUB).strip()
        client = sdk_client(url, token, cert)
        load0 = os.getloadavg()[0]

        print("warm-up build (not counted) ...", flush=True)
        cli_build(home, work, "warmup")
        cli_runs, api_runs = [], []
        for i in range(args.runs):
            print(f"run {i + 1}/{args.runs}: kiln build ...", flush=True)
            cli_runs.append(cli_build(home, work, f"cli-{i}"))
            print(f"run {i + 1}/{args.runs}: SDK create + run + poll ...", flush=True)
            api_runs.append(api_build(client, home, f"api-{i}"))

        # The storm: a template with a finished run (its runOutputs list one output).
        reads = {"imageTemplate GET": f"{P}/api-0?api-version={API_VERSION}",
                 "runOutputs GET": f"{P}/api-0/runOutputs?api-version={API_VERSION}"}
        rows: list[tuple[str, list[float]]] = []
        for what, path in reads.items():
            rows.append((f"kiln, idle: {what}", asyncio.run(storm(port, path, token, cert, args.conns, args.rounds))))
        # One connection, one request at a time: what a request costs the server, without queueing.
        alone = [(f"kiln, idle, 1 connection: {what}", asyncio.run(storm(port, path, token, cert, 1, 200)))
                 for what, path in reads.items()]

        body_file = work / "body.json"
        import requests  # the very JSON kiln answers, for the floor to answer

        body_file.write_text(requests.get(f"{url}{reads['imageTemplate GET']}", headers={"Authorization": f"Bearer {token}"},
                                          verify=str(cert), timeout=30).text)
        peer_log = work / "peer.log"
        peer = subprocess.Popen([str(REPO / ".venv/bin/python"), "-c", PEER, str(peer_port), str(home / "tls"),
                                 str(body_file)], stdout=subprocess.DEVNULL, stderr=peer_log.open("w"))
        wait_listening(peer_port, peer, peer_log)
        rows.append(("floor: FastAPI + uvicorn constant JSON, same size, same TLS",
                     asyncio.run(storm(peer_port, "/hello", token, cert, args.conns, args.rounds))))
        alone.append(("floor, 1 connection", asyncio.run(storm(peer_port, "/hello", token, cert, 1, 200))))

        print("a build under the storm ...", flush=True)
        name = "storm"
        body = {k: v for k, v in template(name).items() if k in ("location", "properties")}
        client.virtual_machine_image_templates.begin_create_or_update(RG, name, body).result()
        running = client.virtual_machine_image_templates.begin_run(RG, name)
        time.sleep(5)  # past the queue: the child is building
        for what, path in reads.items():
            rows.append((f"kiln, build running: {what}",
                         asyncio.run(storm(port, path, token, cert, args.conns, args.rounds))))
        running.result()
        storm_pipeline, state = last_run(home, name)
        assert state == "Succeeded", state
        load1 = os.getloadavg()[0]
    finally:
        for proc in (peer, server):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(120)

    med = statistics.median
    print(f"\n## API overhead of a run (load average {load0:.1f} at start, {load1:.1f} at end; {args.runs} run(s) each)\n")
    print("| side | wall | pipeline (run record) | outside the pipeline |")
    print("|---|---|---|---|")
    for label, runs in (("`kiln build` (CLI)", cli_runs), ("SDK create + run + poll (kiln serve, HTTPS)", api_runs)):
        print(f"| {label} | {med(r.wall for r in runs):.2f} s | {med(r.pipeline for r in runs):.2f} s | "
              f"{med(r.outside for r in runs):.2f} s |")
    print(f"| of which the API's create (PUT + polling its operation) | {med(r.create for r in api_runs):.2f} s | - | "
          f"{med(r.create for r in api_runs):.2f} s |")
    extra = med(r.outside for r in api_runs) - med(r.outside for r in cli_runs)
    ratio = med(r.wall for r in api_runs) / med(r.wall for r in cli_runs)
    print(f"\nAPI extra over the CLI: {extra:+.2f} s (goal < 1 s: {'met' if extra < 1 else 'NOT met'}); "
          f"wall ratio API/CLI {ratio:.3f}x")
    print(f"\n## {args.conns} concurrent GETs x {args.rounds} rounds ({args.conns * args.rounds} requests a row)\n")
    print("| server, request | p50 | p99 | max | p99 vs floor |")
    print("|---|---|---|---|---|")
    floor = pct(next(v for k, v in rows if k.startswith("floor")), 99)
    for label, lat in rows:
        print(f"| {label} | {pct(lat, 50) * 1000:.1f} ms | {pct(lat, 99) * 1000:.1f} ms | {max(lat) * 1000:.1f} ms | "
              f"{pct(lat, 99) / floor:.1f}x |")
    print("\n| one request at a time (200 in a row) | p50 | p99 |\n|---|---|---|")
    for label, lat in alone:
        print(f"| {label} | {pct(lat, 50) * 1000:.2f} ms | {pct(lat, 99) * 1000:.2f} ms |")
    quiet = med(r.pipeline for r in cli_runs + api_runs)
    print(f"\nThe build under the storm: pipeline {storm_pipeline:.2f} s vs {quiet:.2f} s unloaded (median of "
          f"{len(cli_runs + api_runs)}): {storm_pipeline / quiet:.2f}x")
    if args.home is None:
        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"\nlogs: {work}")


if __name__ == "__main__":
    sys.exit(main())
