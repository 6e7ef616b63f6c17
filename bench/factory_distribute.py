"""Benchmark: factory distribution, kiln vs one full copy per lab and image (issue 5).

Part 1, side by side in one run: N images (sparse, ~300 MiB used each) saved in the factory lab,
distributed to L labs, by
  - the DevTest Labs factory's approach: one `cp --sparse=always` of each image into each lab, and
  - `kiln factory distribute` (the real command, as a subprocess).
Part 2, kiln alone: M images to K labs with --max-concurrent-jobs 20: wall time and peak memory.

    .venv/bin/python bench/factory_distribute.py        # --images 5 --labs 10 --big-images 20 --big-labs 200 --runs 3

kiln's side runs `--runs` times, each on a fresh snapshot of the same state home (the catalog
copied, the blobs hardlinked: kiln never changes a blob in place), and the median is reported with
every run's time; the naive side runs once (it writes 15 GB). kiln runs with Python's bytecode
cache, as an installed kiln does, unless --no-bytecode-cache. Free disk is checked before the naive
side, which scales the number of labs down rather than fill it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from store_common import MIB, Timer, free_bytes, make_sparse_disk, used_bytes  # noqa: E402

from kiln.ids import NULL_SUBSCRIPTION  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TEMPLATE = REPO / "tests" / "factory" / "data" / "Configuration" / "GoldenImages" / "Debian" / "base.json"
SUB = "22222222-0000-0000-0000-000000000000"


BYTECODE_CACHE = True  # --no-bytecode-cache sets it to False


def kiln(home: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], int]:
    """Run the kiln CLI; returns the process and its peak resident memory in bytes."""
    env = {**os.environ, "KILN_HOME": str(home), "PYTHONPATH": str(REPO / "src")}
    if BYTECODE_CACHE:
        # An installed kiln starts from compiled bytecode; a PYTHONDONTWRITEBYTECODE=1 environment would
        # make every run compile every module again (about a third of a small distribution's time).
        env.pop("PYTHONDONTWRITEBYTECODE", None)
    # Popen + wait4, not kiln.run.run(): the benchmark needs this child's own rusage (peak memory).
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen([sys.executable, "-m", "kiln", "--progress", "quiet", *args], env=env, text=True,
                                stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        done = subprocess.CompletedProcess(proc.args, proc.returncode, out.read(), err.read())
    if done.returncode != 0:
        raise SystemExit(f"kiln {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    return done, usage.ru_maxrss * 1024


def setup(base: Path, n_images: int, n_labs: int, size: int, used: int, tag: str) -> tuple[Path, Path]:
    """A state home with n_images saved in the factory lab, and a configuration with n_labs labs."""
    home = base / f"home-{tag}"
    cfg = base / f"config-{tag}"
    (cfg / "GoldenImages" / "bench").mkdir(parents=True)
    template = json.loads(TEMPLATE.read_text())
    labs = {"Labs": [{"SubscriptionId": SUB, "ResourceGroup": "bench", "LabName": f"lab{j:03d}", "ImagePaths": ["bench"]}
                     for j in range(n_labs)]}
    (cfg / "Labs.json").write_text(json.dumps(labs))
    factory_rg = f"/subscriptions/{NULL_SUBSCRIPTION}/resourceGroups/kiln-factory"
    for i in range(n_images):
        template["name"] = f"img{i:02d}"
        (cfg / "GoldenImages" / "bench" / f"img{i:02d}.json").write_text(json.dumps(template))
        disk = base / f"disk-{tag}-{i}.raw"
        make_sparse_disk(disk, size, used, seed=1000 + i)
        kiln(home, "image", "import", str(disk), "--id", f"{factory_rg}/providers/Microsoft.Compute/images/img{i:02d}",
             "--location", "eastus", "--tag", f"ImagePath=bench/img{i:02d}.json", "--tag", "kilnFactory=golden",
             "--tag", "osState=Generalized")
        disk.unlink()
    # Imported disks are not boot-tested; the factory's boot test is not what is measured here.
    kiln(home, "factory", "save")
    return home, cfg


def snapshot(home: Path, dst: Path) -> Path:
    """A copy of `home` to distribute into: SQLite's files copied, every other file hardlinked."""
    def link_or_copy(src: str, to: str) -> None:
        if Path(src).name.startswith("catalog.sqlite"):
            shutil.copy2(src, to)
        else:
            os.link(src, to)

    shutil.copytree(home, dst, symlinks=True, copy_function=link_or_copy)
    return dst


def distribute_runs(home: Path, cfg: Path, runs: int) -> tuple[list[float], int, Path]:
    """`kiln factory distribute` `runs` times on fresh snapshots of `home`: (seconds of each run,
    the largest peak RSS, the last run's home)."""
    times, rss, last = [], 0, home
    for n in range(runs):
        last = snapshot(home, home.parent / f"{home.name}-run{n}")
        with Timer() as t:
            _, peak = kiln(last, "factory", "distribute", str(cfg), "--max-concurrent-jobs", "20",
                           "--include-unverified", "--create-labs-in", "eastus")
        times.append(t.seconds)
        rss = max(rss, peak)
        if n < runs - 1:
            shutil.rmtree(last)
    return times, rss, last


def seconds(times: list[float]) -> str:
    return f"{statistics.median(times):.2f} s (median of {', '.join(f'{t:.2f}' for t in times)})"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", type=Path, default=Path("/var/tmp"))
    ap.add_argument("--images", type=int, default=5)
    ap.add_argument("--labs", type=int, default=10)
    ap.add_argument("--used-mib", type=int, default=300)
    ap.add_argument("--size-mib", type=int, default=2048)
    ap.add_argument("--big-images", type=int, default=20)
    ap.add_argument("--big-labs", type=int, default=200)
    ap.add_argument("--big-used-mib", type=int, default=16)
    ap.add_argument("--runs", type=int, default=3, help="kiln runs per part (the median is reported)")
    ap.add_argument("--no-bytecode-cache", action="store_true",
                    help="keep PYTHONDONTWRITEBYTECODE from the environment (kiln compiles its modules at every start)")
    args = ap.parse_args()
    global BYTECODE_CACHE
    BYTECODE_CACHE = not args.no_bytecode_cache
    print(f"bytecode cache: {'yes' if BYTECODE_CACHE else 'no (PYTHONDONTWRITEBYTECODE=' + os.environ.get('PYTHONDONTWRITEBYTECODE', '') + ')'}")
    base = Path(tempfile.mkdtemp(prefix="kiln-bench-factory-", dir=args.dir))
    try:
        used, size = args.used_mib * MIB, args.size_mib * MIB
        home, cfg = setup(base, args.images, args.labs, size, used, "small")
        blobs = home / "blobs"
        unique = used_bytes(blobs)
        # kiln side first (so the naive side's writeback does not slow its fsyncs): the real command; the factory lab
        # and the labs are in one region on this filesystem.
        times, _, done_home = distribute_runs(home, cfg, args.runs)
        used_after = used_bytes(done_home / "blobs", done_home / "regions")
        shutil.rmtree(done_home)
        # Naive side: one full copy per lab and image, as the factory's scripts do.
        labs = args.labs
        need = unique * labs
        if need > free_bytes(base) * 0.8:
            labs = max(1, int(free_bytes(base) * 0.8 // unique))
            print(f"scaled the naive side down to {labs} lab(s) for the free disk")
        naive = base / "naive"
        images = sorted(blobs.glob("??/*.vhd"))
        with Timer() as t_cp:
            for j in range(labs):
                (naive / f"lab{j:03d}").mkdir(parents=True)
                for img in images:
                    subprocess.run(["cp", "--sparse=always", str(img), str(naive / f"lab{j:03d}" / img.name)], check=True)
            subprocess.run(["sync"], check=True)
        cp_used = used_bytes(naive)
        shutil.rmtree(naive)
        cp_rate = t_cp.seconds / labs  # per lab, so a scaled-down naive side still compares
        kiln_rate = statistics.median(times) / args.labs
        print(f"part 1: {args.images} images (~{args.used_mib} MiB used each) to {args.labs} labs")
        print(f"  cp --sparse=always per pair (+ sync): {t_cp.seconds:.2f} s for {labs} lab(s), {cp_used / 1e6:,.0f} MB")
        print(f"  kiln factory distribute --max-concurrent-jobs 20: {seconds(times)}, "
              f"{(used_after - unique) / 1e6:,.1f} MB beyond the {unique / 1e6:,.0f} MB of unique bytes "
              f"({(used_after - unique) / unique * 100:.2f}% above)")
        print(f"  speed-up per lab: {cp_rate / kiln_rate:.0f}x")
        shutil.rmtree(home)
        # Part 2: kiln alone, many images to many labs.
        home2, cfg2 = setup(base, args.big_images, args.big_labs, 256 * MIB, args.big_used_mib * MIB, "big")
        big_times, rss, big_home = distribute_runs(home2, cfg2, args.runs)
        with_labs = json.loads(kiln(big_home, "lab", "list", "--json")[0].stdout)
        total = sum(lab["kiln"]["customImages"] for lab in with_labs if lab["name"] != "ImageFactory")
        print(f"part 2: {args.big_images} images to {args.big_labs} labs ({total} lab images) with "
              f"--max-concurrent-jobs 20: {seconds(big_times)} wall (whole command), peak RSS {rss / MIB:.0f} MiB")
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
