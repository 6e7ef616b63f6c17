"""Benchmark: publish a freshly assembled 2 GiB sparse raw disk (~700 MB used) as a fixed VHD.

    .venv/bin/python bench/store_vhd_publish.py [--dir DIR] [--size-mib 2048] [--used-mib 700]

Compares, on the same input in the same run:
  qemu-img convert -O vpc -o subformat=fixed,force_size      (a full, sparse-aware copy)
  kiln conversion: footer appended in place                   (kiln.disk.vhd.append_fixed_footer)
  kiln publish: hash (hole-aware digest) + footer + rename    (BlobStore.ingest(move=True))
  kiln publish in a build: the digest was computed while the boot test ran (KnownDigest), so
    publishing is footer + rename; the hashing time is reported separately (off the critical path)
  kiln import of a user's file (must not modify it: sparse copy + hash)
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from store_common import MIB, Timer, free_bytes, make_sparse_disk  # noqa: E402

from kiln.config import load_config  # noqa: E402
from kiln.disk import vhd  # noqa: E402
from kiln.store import Store  # noqa: E402
from kiln.store.blobs import KnownDigest  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", type=Path, default=Path("/var/tmp"))
    ap.add_argument("--size-mib", type=int, default=2048)
    ap.add_argument("--used-mib", type=int, default=700)
    args = ap.parse_args()
    need = args.used_mib * MIB * 6
    if free_bytes(args.dir) < need:
        sys.exit(f"need {need >> 20} MiB free in {args.dir}")
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="kiln-bench-") as tmp:
        root = Path(tmp)
        home = root / "home"
        with Store.open(load_config(home)) as store:
            src = store.config.work_dir / "disk.raw"
            make_sparse_disk(src, args.size_mib * MIB, args.used_mib * MIB, seed=1)
            copies = []
            for name in ("a.raw", "b.raw", "c.raw"):
                dst = store.config.work_dir / name
                subprocess.run(["cp", "--sparse=always", str(src), str(dst)], check=True)
                copies.append(dst)
            subprocess.run(["sync"], check=True)

            with Timer() as q:
                subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "vpc", "-o", "subformat=fixed,force_size",
                                str(src), str(root / "qemu.vhd")], check=True)
                subprocess.run(["sync", str(root / "qemu.vhd")], check=True)
            with Timer() as conv:
                vhd.append_fixed_footer(copies[0])  # includes its fsync
            with Timer() as pub:
                store.blobs.ingest(copies[1], holder="bench", move=True)
            with Timer() as ahead:  # in a build this runs in a thread during the ~40-60 s boot test
                known = KnownDigest.compute(copies[2])
            with Timer() as pub_known:
                store.blobs.ingest(copies[2], holder="bench", move=True, known=known)
            with Timer() as imp:
                store.blobs.ingest(src, holder="bench", move=False)  # dedupes at the end, but copies+hashes first
            store.blobs.release_holder("bench")

    print(f"input: {args.size_mib} MiB sparse raw, {args.used_mib} MiB used")
    print(f"qemu-img convert (fixed VHD)     {q.seconds:8.3f} s")
    print(f"kiln conversion (footer append)  {conv.seconds:8.4f} s   {q.seconds / conv.seconds:8.0f}x faster")
    print(f"kiln publish (hash+footer+rename){pub.seconds:8.3f} s   {q.seconds / pub.seconds:8.1f}x faster")
    print(f"kiln publish in a build          {pub_known.seconds:8.4f} s   {q.seconds / pub_known.seconds:8.0f}x faster"
          f"   (its hash, {ahead.seconds:.2f} s, ran during the boot test)")
    print(f"kiln import of a user's file     {imp.seconds:8.3f} s   {q.seconds / imp.seconds:8.1f}x")


if __name__ == "__main__":
    main()
