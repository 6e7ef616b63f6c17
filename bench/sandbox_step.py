"""The sandbox's cost per step: set-up + tear-down of a no-op command (`true`) in an IsolatedRoot.

    .venv/bin/python bench/sandbox_step.py            # --steps 20 [--root PATH]

"before" is kiln's first sandbox (util-linux unshare + chroot, commit dd411fe), loaded from git
into a throw-away module; "after" is the current `kiln.sandbox.isolated` (bubblewrap with
pivot_root, seccomp, its own network namespace behind pasta, cgroup limits). Both run in the same
Debian 12 root (the tests' shared bootstrap, unpacked into a temporary folder unless --root).
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "tests"))

BEFORE_COMMIT = "dd411fe"  # main before issue 9: unshare --mount --pid --uts --ipc + chroot


def load_before(tmp: Path):
    source = subprocess.run(["git", "-C", str(REPO), "show", f"{BEFORE_COMMIT}:src/kiln/sandbox/isolated.py"],
                            check=True, capture_output=True, text=True).stdout
    if importlib.util.find_spec("kiln.sandbox.stream") is None:  # stream.py moved into kiln.run
        source = source.replace("from kiln.sandbox.stream import run_streamed", "from kiln.run import run_streamed")
    path = tmp / "kiln_isolated_before.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("kiln_isolated_before", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def per_step(isolated_root_cls, root: Path, steps: int) -> list[float]:
    times = []
    with isolated_root_cls(root) as sandbox:
        sandbox.run(["true"], check=True)  # warm-up: page cache, first-use set-up
        for _ in range(steps):
            t0 = time.monotonic()
            sandbox.run(["true"], check=True)
            times.append(time.monotonic() - t0)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--root", type=Path, help="a root tree to use (default: a copy of the tests' Debian 12 root)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kiln-bench-sandbox-", dir="/var/tmp") as tmp_name:
        tmp = Path(tmp_name)
        root = args.root
        if root is None:
            from debian_root import bootstrap_debian12, fresh_copy

            root = fresh_copy(bootstrap_debian12(tmp / "cached"), tmp / "root")
        before_mod = load_before(tmp)
        from kiln.sandbox.isolated import IsolatedRoot

        results = {}
        for label, cls in (("before (unshare + chroot)", before_mod.IsolatedRoot), ("after (bwrap sandbox)", IsolatedRoot)):
            times = per_step(cls, root, args.steps)
            results[label] = statistics.median(times)
            print(f"{label:28s} median {results[label]:.3f} s/step  min {min(times):.3f}  max {max(times):.3f}"
                  f"  ({args.steps} steps)")
        before, after = results.values()
        print(f"ratio after/before: {after / before:.2f}x")


if __name__ == "__main__":
    main()
