"""Helpers for the store benchmarks: sparse test disks and disk-space accounting."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import time
from pathlib import Path

MIB = 1 << 20


def make_sparse_disk(path: Path, size: int, used: int, seed: int) -> None:
    """A `size`-byte sparse file with `used` bytes of incompressible data in 4 MiB runs spread over it."""
    rng = random.Random(seed)
    block = 4 * MIB
    slots = sorted(rng.sample(range(1, size // block - 1), used // block))  # clear of the GPT at both ends
    chunk = os.urandom(block)
    with path.open("wb") as f:
        f.truncate(size)
        for i, slot in enumerate(slots):
            f.seek(slot * block)
            f.write(i.to_bytes(8, "big") + seed.to_bytes(8, "big") + chunk[16:])
        os.fsync(f.fileno())
    subprocess.run(["sgdisk", "-o", "-n", "1:2048:0", "-t", "1:8300", str(path)], check=True, capture_output=True)


def used_bytes(*paths: Path) -> int:
    """Disk blocks used by the files under `paths`, each inode counted once (hardlinks are free)."""
    seen: set[int] = set()
    total = 0
    for root in paths:
        for p in [root] if root.is_file() else root.rglob("*"):
            st = p.stat()
            if p.is_file() and st.st_ino not in seen:
                seen.add(st.st_ino)
                total += st.st_blocks * 512
    return total


def free_bytes(path: Path) -> int:
    return shutil.disk_usage(path).free


class Timer:
    def __enter__(self) -> Timer:
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.t0
