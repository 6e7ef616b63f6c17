"""Benchmark 2: rebuild after changing only a customizer, kiln vs mkosi 14 incremental (issue 4).

Both sides first build once (not counted): kiln bootstraps and caches its root, mkosi with
`Incremental=yes` keeps its cache images (`NspawnKeepUnit=yes` is needed for that here). Then each
measured run changes only the customization (the text a step writes into /etc/kiln/bench-marker:
kiln's Shell step, mkosi's mkosi.postinst) and builds again:

- kiln: `kiln build --no-validate` (cached root: no bootstrap; a fresh 4 GiB GPT/UEFI disk,
  published as a managed image);
- mkosi: `mkosi -f build` with `Incremental=yes`, `Format=gpt_ext4`, `Bootable=no`.

    .venv/bin/python bench/build_rebuild.py              # --runs 5
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
    set_mkosi_marker,
    shell,
    template,
    timed,
)


def kiln_template(path: Path, marker: str) -> None:
    path.write_text(json.dumps(template("bench-rebuild", platform_source(),
                                        [shell("marker", "mkdir -p /etc/kiln", f"echo {marker} > /etc/kiln/bench-marker")],
                                        [managed_image_target("bench-rebuild")])))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--dir", type=Path, default=Path("/var/tmp"))
    ap.add_argument("--home", type=Path, help="a kiln state home to reuse (its root cache saves the first bootstrap)")
    args = ap.parse_args()
    need("mkosi", "mmdebstrap")
    base = Path(tempfile.mkdtemp(prefix="kiln-bench-rebuild-", dir=args.dir))
    try:
        run(base, args.runs, args.home or base / "home")
    finally:
        shutil.rmtree(base, ignore_errors=True)


def run(base: Path, runs: int, home: Path) -> None:
    tpl = base / "rebuild.json"
    env = {"KILN_HOME": str(home)}
    kiln_template(tpl, "first")
    project = mkosi_project(base / "mkosi", incremental=True, marker="first")
    print(f"first builds, not counted ({load()})", flush=True)
    timed(kiln_argv("build", "--no-validate", str(tpl)), env=env, log=base / "kiln-first.log")
    timed(["mkosi", "-f", "build"], cwd=project, log=base / "mkosi-first.log")
    kiln_runs: list[Sample] = []
    mkosi_runs: list[Sample] = []
    for i in range(runs):
        kiln_template(tpl, f"change-{i}")
        kiln_runs.append(timed(kiln_argv("build", "--no-validate", str(tpl)), env=env, log=base / f"kiln-{i}.log"))
        set_mkosi_marker(project, f"change-{i}")
        mkosi_runs.append(timed(["mkosi", "-f", "build"], cwd=project, log=base / f"mkosi-{i}.log"))
        if "Basing off cached image" not in (base / f"mkosi-{i}.log").read_text(errors="replace"):
            raise SystemExit(f"mkosi did not use its incremental cache (see {base / f'mkosi-{i}.log'})")
        print(f"run {i + 1}: kiln {kiln_runs[-1]}, mkosi {mkosi_runs[-1]} ({load()})", flush=True)
    report("Rebuild after a customizer change: kiln --no-validate (cached root) vs mkosi 14 Incremental=yes",
           [("mkosi 14 `Incremental=yes` rebuild", mkosi_runs), ("kiln build --no-validate, cached root", kiln_runs)],
           base="mkosi 14 `Incremental=yes` rebuild")


if __name__ == "__main__":
    main()
