"""A cluster on one machine for the tests: Redis and PostgreSQL on 127.0.0.1, workers as separate hosts.

`RedisServer` runs Debian's redis-server on a free port with its data (the append-only file) in
a temp folder, with the persistence settings docs/architecture.md names. `CatalogServer` is
tests/store's PostgreSQL server (free port, data in a temp folder) that a test may also stop and
start again on the same port and data. `Cluster` makes a submitter's state home and one per
worker, each with its own work, scratch and cache folders, all sharing one catalog
(`[cluster] catalog = "postgresql://..."`, a database of its own), one shared blob folder
(`[cluster] blobs = "file://..."`) and one region folder, as hosts of one cluster would.
Workers are real `kiln worker` processes.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from envcheck import unavailable
from processes import alive, eventually

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "store"))
from postgres import PostgresServer, pg_bin  # noqa: E402

SUB = "00000000-0000-0000-0000-000000000000"
RG = "rg"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    def __init__(self, data: Path) -> None:
        if shutil.which("redis-server") is None:
            unavailable("redis-server is not installed (run scripts/setup)")
        self.data = data
        data.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.data),
             "--appendonly", "yes", "--appendfsync", "always", "--save", "", "--daemonize", "no",
             "--logfile", str(self.data / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        import redis

        client = redis.Redis(port=self.port)
        assert eventually(lambda: _pings(client), timeout=30), (self.data / "redis.log").read_text()

    def kill(self, sig: int = signal.SIGKILL) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)
        self.proc.wait(30)
        self.proc = None

    def restart(self) -> None:
        self.kill()
        self.start()

    def stop(self) -> None:
        if self.proc is not None:
            self.kill(signal.SIGTERM)


class CatalogServer(PostgresServer):
    """The cluster's shared catalog server; `pause()` stops it (its clients' connections end) and
    `resume()` starts it again on the same port and data, as a restarted database server would."""

    @classmethod
    def started(cls) -> CatalogServer:
        if pg_bin() is None:
            unavailable("PostgreSQL (Debian package postgresql) is not installed: run scripts/setup")
        server = cls()
        server.start()
        return server

    @staticmethod
    def _bin() -> Path:
        found = pg_bin()
        assert found is not None
        return found

    def pause(self) -> None:
        self._as_owner([str(self._bin() / "pg_ctl"), "-D", str(self.root / "data"), "-m", "fast", "-w", "stop"])

    def resume(self) -> None:
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root} -c max_connections=200" \
                  " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        self._as_owner([str(self._bin() / "pg_ctl"), "-D", str(self.root / "data"), "-l", str(self.root / "server.log"),
                        "-o", options, "-w", "-t", "60", "start"])


def _pings(client: object) -> bool:
    try:
        return bool(client.ping())  # type: ignore[attr-defined]
    except Exception:  # noqa: BLE001 - not up yet
        return False


def kiln(home: Path, *args: str, check: bool = True, timeout: float = 900, env: dict[str, str] | None = None
         ) -> subprocess.CompletedProcess[str]:
    p = subprocess.run([sys.executable, "-m", "kiln", "--home", str(home), *args], capture_output=True, text=True,
                       timeout=timeout, env={**os.environ, **(env or {})})
    if check:
        assert p.returncode == 0, f"kiln {' '.join(args)} -> {p.returncode}\n{p.stdout}\n{p.stderr}"
    return p


def template(path: Path, name: str, *inline: str, tags: dict[str, str] | None = None) -> Path:
    """A Debian 12 template (the test cache's root) with one Shell step and a managed image output."""
    path.write_text(json.dumps({
        "type": "Microsoft.VirtualMachineImages/imageTemplates", "apiVersion": "2022-02-14", "location": "westus2",
        "name": name, "tags": tags or {},
        "properties": {
            "source": {"type": "PlatformImage", "publisher": "Debian", "offer": "debian-12", "sku": "12-gen2",
                       "version": "latest"},
            "customize": [{"type": "Shell", "name": "say", "inline": list(inline) or [f"echo built-{name}"]}],
            "distribute": [{"type": "ManagedImage", "runOutputName": "out", "location": "westus2",
                            "imageId": image_id(name)}]}}))
    return path


def image_id(name: str) -> str:
    return f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.Compute/images/{name}"


@dataclass
class Worker:
    name: str
    home: Path
    scratch: Path
    log: Path
    proc: subprocess.Popen[str] | None = None
    _out: IO[str] | None = None

    def lines(self) -> list[str]:
        return self.log.read_text().splitlines() if self.log.exists() else []

    def runs(self) -> list[list[str]]:
        """The worker's one line per run: [run id, template, result]."""
        return [line.split()[1:] for line in self.lines() if line.startswith("run ")]

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(60)

    def stop(self) -> None:
        if self.proc is None:
            return
        self.kill(signal.SIGTERM) if self.proc.poll() is None else None
        if self._out:
            self._out.close()


@dataclass
class Cluster:
    root: Path
    redis: RedisServer
    roots_cache: Path  # the test cache's bootstrapped roots (each host's cache links it: no mirror needed)
    catalog: str  # the shared catalog's postgresql:// URL
    submitter: Path = field(init=False)
    workers: dict[str, Worker] = field(default_factory=dict)

    def __post_init__(self) -> None:
        (self.root / "shared-blobs").mkdir(parents=True)
        self.submitter = self.home("submitter")
        kiln(self.submitter, "runs", "list")  # creates the catalog every host shares

    def config(self) -> str:
        return (f'[cluster]\nqueue = "{self.redis.url}"\ncatalog = "{self.catalog}"\n'
                f'blobs = "file://{self.root / "shared-blobs"}"\n'
                f'[regions.westus2]\npath = "{self.root / "regions" / "westus2"}"\n')

    def home(self, name: str) -> Path:
        home = self.root / name
        (home / "cache").mkdir(parents=True)
        (home / "config.toml").write_text(self.config())
        (home / "cache" / "roots").symlink_to(self.roots_cache)
        return home

    def start_worker(self, name: str, *args: str) -> Worker:
        w = self.workers.get(name)
        if w is None:
            w = Worker(name, self.home(name), self.root / f"scratch-{name}", self.root / f"{name}.log")
            self.workers[name] = w
        started_before = sum(line.startswith(f"worker {name}:") for line in w.lines())
        w._out = w.log.open("a")
        env = {**os.environ, "KILN_HOME": str(w.home), "KILN_SCRATCH": str(w.scratch)}
        w.proc = subprocess.Popen([sys.executable, "-m", "kiln", "worker", "--name", name, "--heartbeat", "2",
                                   "--kill-grace", "30", *args], stdout=w._out, stderr=subprocess.STDOUT, text=True,
                                  env=env, start_new_session=True)
        assert eventually(lambda: sum(line.startswith(f"worker {name}:") for line in w.lines()) > started_before,
                          timeout=60), "\n".join(w.lines())
        return w

    def status(self) -> dict:
        return json.loads(kiln(self.submitter, "cluster", "status", "--json").stdout)

    def build(self, path: Path, *args: str, cwd: Path | None = None) -> subprocess.Popen[str]:
        """`kiln build` on the submitter, in the background (it follows the run until it ends)."""
        return subprocess.Popen([sys.executable, "-m", "kiln", "--home", str(self.submitter), "build",
                                 "--no-validate", *args, str(path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, cwd=cwd)

    def run_in_flight(self, template_name: str, timeout: float = 300) -> dict:
        found: dict = {}

        def started() -> bool:
            for f in self.status()["runsInFlight"]:
                if f["template"] == template_name and f["runId"]:
                    found.update(f)
                    return True
            return False

        assert eventually(started, timeout=timeout, interval=0.5), self.status()
        return found

    def stop(self) -> None:
        for w in self.workers.values():
            w.stop()
        for w in self.workers.values():
            if w.proc is not None:
                try:
                    w.proc.wait(30)
                except subprocess.TimeoutExpired:
                    w.kill()


def wait_done(p: subprocess.Popen[str], timeout: float = 900) -> tuple[int, str, str]:
    out, err = p.communicate(timeout=timeout)
    return p.returncode, out, err


def processes_with(text: str) -> list[int]:
    mine = os.getpid()
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == mine:
            continue
        try:
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmd and alive(int(d.name)):
            found.append(int(d.name))
    return found


def settle(seconds: float) -> None:
    time.sleep(seconds)
