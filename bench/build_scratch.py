"""Benchmark 1: build Debian 12 from scratch, kiln vs mkosi 14, side by side in one run (issue 4).

Same work on both sides: Debian 12 from the host's configured mirror with kiln's platform package
set (kernel, systemd, sudo, openssh-server, ca-certificates, curl, ...), one step writing a marker
file, a 4 GiB GPT disk with an ext4 root. Warm *package* caches on both sides (mkosi.cache; kiln's
.deb cache), but no root cache: every kiln run gets a fresh state home (seeded only with .debs),
every mkosi run is `mkosi -f` without Incremental.

- kiln: `kiln build --no-validate` (no boot test) of a PlatformImage template, published as a
  managed image. Its disk is bootable: ESP with systemd-boot, kernel and initramfs.
- mkosi: `Format=gpt_ext4`, `Bootable=no` (mkosi 14 cannot make a bootable disk on these machines:
  it mounts the ESP as vfat), so it installs no bootloader and builds no initramfs.

    .venv/bin/python bench/build_scratch.py              # --runs 3

The first build of each is a warm-up (fills the package caches) and is not counted.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

from build_common import (
    Sample,
    kiln_argv,
    load,
    managed_image_target,
    mkosi_project,
    need,
    platform_source,
    report,
    seed_debs,
    shell,
    template,
    timed,
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--dir", type=Path, default=Path("/var/tmp"), help="where state homes and mkosi projects go")
    args = ap.parse_args()
    need("mkosi", "mmdebstrap")
    base = Path(tempfile.mkdtemp(prefix="kiln-bench-scratch-", dir=args.dir))
    try:
        run(base, args.runs)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def run(base: Path, runs: int) -> None:
    tpl = base / "debian12.json"
    tpl.write_text(json.dumps(template("bench-scratch", platform_source(),
                                       [shell("marker", "mkdir -p /etc/kiln", "echo scratch > /etc/kiln/bench-marker")],
                                       [managed_image_target("bench-scratch")])))
    project = mkosi_project(base / "mkosi", incremental=False, marker="scratch")
    warm_home = base / "home-warm"
    print(f"warm-up ({load()})", flush=True)
    timed(kiln_argv("build", "--no-validate", str(tpl)), env={"KILN_HOME": str(warm_home)}, log=base / "kiln-warm.log")
    timed(["mkosi", "-f", "build"], cwd=project, log=base / "mkosi-warm.log")
    warm_debs = next((warm_home / "cache" / "debs").iterdir())
    kiln_runs: list[Sample] = []
    mkosi_runs: list[Sample] = []
    for i in range(runs):
        home = base / f"home-{i}"
        seed_debs(home, warm_debs)
        kiln_runs.append(timed(kiln_argv("build", "--no-validate", str(tpl)), env={"KILN_HOME": str(home)},
                               log=base / f"kiln-{i}.log"))
        shutil.rmtree(home)
        mkosi_runs.append(timed(["mkosi", "-f", "build"], cwd=project, log=base / f"mkosi-{i}.log"))
        print(f"run {i + 1}: kiln {kiln_runs[-1]}, mkosi {mkosi_runs[-1]} ({load()})", flush=True)
    report("Build from scratch: kiln --no-validate vs mkosi 14 gpt_ext4 (warm package caches)",
           [("mkosi 14 `Format=gpt_ext4 Bootable=no`", mkosi_runs), ("kiln build --no-validate (bootable disk)", kiln_runs)],
           base="mkosi 14 `Format=gpt_ext4 Bootable=no`")


if __name__ == "__main__":
    main()
