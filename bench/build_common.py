"""Shared pieces of the build benchmarks (bench/build_*.py): timing, the kiln CLI, the peers' inputs.

Every peer runs from Debian's own package (scripts/setup-bench installs them) and is pointed at
the mirror kiln itself uses (`kiln.config.load_config().debian_mirror`, the host's apt sources),
with kiln's own Debian 12 package set (`kiln.sources.platform.recipe_for`), so both sides
install the same packages from the same place.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from kiln.config import load_config  # noqa: E402
from kiln.sources.platform import recipe_for  # noqa: E402
from kiln.template.model import PlatformImageSource  # noqa: E402

SUB = "00000000-0000-0000-0000-0000000000b1"
DEBIAN12 = PlatformImageSource(publisher="Debian", offer="debian-12", sku="12-gen2", version="latest")


@dataclass(frozen=True)
class Sample:
    wall: float  # seconds
    cpu: float  # user + system seconds of the command and all its children

    def __str__(self) -> str:
        return f"{self.wall:6.1f} s (cpu {self.cpu:5.1f} s)"


def timed(argv: list[str], *, env: dict[str, str] | None = None, cwd: Path | None = None, log: Path | None = None,
          check: bool = True) -> Sample:
    """Run `argv`, return wall and CPU time. Output goes to `log` (shown when the command fails)."""
    # Popen + wait4, not kiln.run.run(): the benchmark needs the child's own rusage.
    log = log or Path(os.devnull)
    with open(log, "w") as out:
        t0 = time.monotonic()
        proc = subprocess.Popen(argv, env={**os.environ, **(env or {})}, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.monotonic() - t0
    code = os.waitstatus_to_exitcode(status)
    if check and code != 0:
        tail = log.read_text(errors="replace")[-3000:] if log != Path(os.devnull) else ""
        raise SystemExit(f"failed ({code}): {' '.join(map(str, argv))}\n{tail}")
    return Sample(wall, usage.ru_utime + usage.ru_stime)


def kiln_argv(*args: str) -> list[str]:
    return [str(REPO / ".venv/bin/kiln"), "--progress", "quiet", *args]


def kiln_json(home: Path, *args: str) -> object:
    out = subprocess.run(kiln_argv(*args), env={**os.environ, "KILN_HOME": str(home)}, capture_output=True, text=True,
                         check=True).stdout
    return json.loads(out)


def mirror() -> str:
    m = load_config().debian_mirror
    if not m:
        raise SystemExit("the host has no Debian mirror in its apt sources")
    return m


def debian12_packages() -> tuple[str, ...]:
    return recipe_for(DEBIAN12, load_config()).packages


def load() -> str:
    return "load average " + " ".join(Path("/proc/loadavg").read_text().split()[:3])


def need(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        raise SystemExit(f"missing {', '.join(missing)}: run scripts/setup-bench")
    if os.geteuid() != 0:
        raise SystemExit("the build benchmarks need root (as kiln build and the peers do)")


def median(samples: list[Sample]) -> Sample:
    return Sample(statistics.median(s.wall for s in samples), statistics.median(s.cpu for s in samples))


def template(name: str, source: dict, steps: list[dict], distribute: list[dict], *, disk_gb: int | None = 4) -> dict:
    props: dict = {"buildTimeoutInMinutes": 60, "source": source, "customize": steps, "distribute": distribute}
    if disk_gb:
        props["vmProfile"] = {"vmSize": "Standard_D2s_v3", "osDiskSizeGB": disk_gb}
    return {"type": "Microsoft.VirtualMachineImages/imageTemplates", "apiVersion": "2022-02-14", "name": name,
            "location": "westus2", "properties": props}


def image_id(name: str) -> str:
    return f"/subscriptions/{SUB}/resourceGroups/bench/providers/Microsoft.Compute/images/{name}"


def platform_source(offer: str = "debian-12") -> dict:
    sku = f"{offer.rsplit('-', 1)[-1]}-gen2"  # debian-12 -> 12-gen2
    return {"type": "PlatformImage", "publisher": "Debian", "offer": offer, "sku": sku, "version": "latest"}


def managed_image_target(name: str) -> dict:
    return {"type": "ManagedImage", "runOutputName": name, "imageId": image_id(name), "location": "westus2"}


def shell(name: str, *lines: str) -> dict:
    return {"type": "Shell", "name": name, "inline": list(lines)}


def report(title: str, rows: list[tuple[str, list[Sample]]], base: str, goal: float | None = None) -> str:
    """Print (and return) a markdown table of medians with the ratio to the row named `base`."""
    medians = {name: median(s) for name, s in rows}
    ref = medians[base].wall
    lines = [f"### {title}", "", f"{load()}", "", "| what | runs (wall s) | median wall | median cpu | vs " + base + " |",
             "|---|---|---|---|---|"]
    for name, samples in rows:
        m = medians[name]
        runs = ", ".join(f"{s.wall:.1f}" for s in samples)
        lines.append(f"| {name} | {runs} | {m.wall:.1f} s | {m.cpu:.1f} s | {m.wall / ref:.2f}x |")
    text = "\n".join(lines) + "\n"
    print(text, flush=True)
    return text


def mkosi_project(where: Path, *, incremental: bool, marker: str) -> Path:
    """A mkosi 14 project building Debian 12 as `gpt_ext4` (`Bootable=no`: mkosi 14 cannot make a
    bootable disk here, it mounts the ESP as vfat) with kiln's package set, a 4 GiB disk and a
    postinst that writes `marker` (kiln's template writes the same with a Shell step)."""
    where.mkdir(parents=True, exist_ok=True)
    (where / "mkosi.cache").mkdir(exist_ok=True)
    (where / "mkosi.conf").write_text(f"""[Distribution]
Distribution=debian
Release=bookworm
Mirror={mirror()}

[Output]
Format=gpt_ext4
Bootable=no
Output=image.raw
Incremental={'yes' if incremental else 'no'}

[Content]
Packages={','.join(debian12_packages())}
WithDocs=no

[Partitions]
RootSize=4G

[Host]
NspawnKeepUnit=yes
""")
    set_mkosi_marker(where, marker)
    return where


def set_mkosi_marker(where: Path, marker: str) -> None:
    post = where / "mkosi.postinst"
    post.write_text(f"#!/bin/sh\nset -e\nmkdir -p /etc/kiln\necho {marker} > /etc/kiln/bench-marker\n")
    post.chmod(0o755)


def seed_debs(home: Path, warm: Path) -> None:
    """Give a fresh kiln state home the warm package cache (hardlinks: same filesystem, no copy)."""
    dest = home / "cache" / "debs"
    dest.mkdir(parents=True, exist_ok=True)
    subprocess.run(["cp", "-al", str(warm), str(dest / warm.name)], check=True)
