"""Benchmark: replicate 5 distinct sparse images (~300 MB used each) to 10 folder regions.

    .venv/bin/python bench/store_replicate.py [--dir DIR] [--images 5] [--regions 10] [--used-mib 300]

kiln (Regions.replicate: reflink, else hardlink, else sparse copy) against plain
`cp --sparse=always` of each image into each region folder, same run, same images. Reports wall time
and the disk space each consumed (inodes counted once). Scales the image count down if the
filesystem has too little free space for the cp side (it needs images x regions x used).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from store_common import MIB, Timer, free_bytes, make_sparse_disk, used_bytes  # noqa: E402

from kiln.config import load_config  # noqa: E402
from kiln.store import Store  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", type=Path, default=Path("/var/tmp"))
    ap.add_argument("--images", type=int, default=5)
    ap.add_argument("--regions", type=int, default=10)
    ap.add_argument("--used-mib", type=int, default=300)
    ap.add_argument("--size-mib", type=int, default=2048)
    args = ap.parse_args()
    images = args.images
    per_image = args.used_mib * MIB
    while images > 1 and per_image * images * (args.regions + 3) > free_bytes(args.dir) * 0.8:
        images -= 1  # scale down rather than fill the disk
    if images != args.images:
        print(f"scaled down to {images} image(s): not enough free space in {args.dir}")
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="kiln-bench-") as tmp:
        root = Path(tmp)
        home = root / "home"
        home.mkdir()
        names = [f"r{i:02d}" for i in range(args.regions)]
        (home / "config.toml").write_text("".join(f"[regions.{n}]\n" for n in names))
        sources = []
        for i in range(images):
            p = root / f"img{i}.raw"
            make_sparse_disk(p, args.size_mib * MIB, per_image, seed=10 + i)
            sources.append(p)
        with Store.open(load_config(home)) as store:
            blobs = [store.blobs.ingest(p, holder="bench") for p in sources]
            unique = used_bytes(store.config.blobs_dir)
            subprocess.run(["sync"], check=True)
            with Timer() as k:
                for b in blobs:
                    for n in names:
                        store.regions.replicate(b, n)
            kiln_bytes = used_bytes(store.config.blobs_dir, home / "regions") - unique
            store.blobs.release_holder("bench")
        cp_root = root / "cp"
        for n in names:
            (cp_root / n).mkdir(parents=True)
        with Timer() as c:
            for p in sources:
                for n in names:
                    subprocess.run(["cp", "--sparse=always", str(p), str(cp_root / n / p.name)], check=True)
            subprocess.run(["sync"], check=True)
        cp_bytes = used_bytes(cp_root)

    print(f"{images} images x {args.regions} regions, {args.used_mib} MiB used of {args.size_mib} MiB each;"
          f" unique bytes {unique / 1e6:.0f} MB")
    print(f"cp --sparse=always: {c.seconds:8.2f} s  {cp_bytes / 1e6:10.1f} MB written")
    print(f"kiln replicate:     {k.seconds:8.3f} s  {kiln_bytes / 1e6:10.1f} MB more than the unique bytes")
    print(f"speed-up {c.seconds / k.seconds:.0f}x; kiln's total use is {(unique + kiln_bytes) / unique * 100 - 100:.2f}%"
          f" above the unique bytes (cp: {cp_bytes / unique * 100 - 100:.0f}% above)")


if __name__ == "__main__":
    main()
